"""Tests for lesson_lib.guidance: cfg's limits and formula, one batched call, label dropout."""

import pytest
import torch

from lesson_lib.guidance import NULL_LABEL, cfg, drop_labels


class ToyModel:
    """eps depends on x_t, t and the label; NULL_LABEL (or y=None) is the unconditional branch."""

    def __init__(self):
        self.batches = []

    def __call__(self, x_t, t, y=None):
        self.batches.append(x_t.shape[0])
        if y is None:
            y = torch.full((x_t.shape[0],), NULL_LABEL)
        shift = torch.where(y == NULL_LABEL, -1.0, y.float() * 0.3)
        return torch.sin(x_t) * (1 + t[:, None, None, None]) + shift[:, None, None, None]


x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
t = torch.tensor([0, 3, 7, 999])
y = torch.tensor([0, 1, 9, 4])
null = torch.full_like(y, NULL_LABEL)


def test_w1_is_conditional_and_w0_unconditional():
    model = ToyModel()
    assert torch.allclose(cfg(model, 1.0)(x, t, y), model(x, t, y=y), atol=1e-6)
    assert torch.allclose(cfg(model, 0.0)(x, t, y), model(x, t, y=null), atol=1e-6)
    assert torch.allclose(cfg(model, 0)(x, t, y), model(x, t, y=None), atol=1e-6)


def test_formula_and_one_batched_call():
    model = ToyModel()
    guided = cfg(model, 3.5)
    out = guided(x, t, y)
    assert model.batches == [8]  # cond and uncond halves in one call
    eps_c, eps_u = model(x, t, y=y), model(x, t, y=null)
    assert torch.allclose(out, eps_u + 3.5 * (eps_c - eps_u), atol=1e-5)
    assert torch.equal(guided(x, t, None), model(x, t, y=None))


def test_drop_labels():
    labels = torch.randint(0, 10, (10_000,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(drop_labels(labels, 0.0), labels)
    assert torch.all(drop_labels(labels, 1.0) == NULL_LABEL)
    dropped = drop_labels(labels, 0.2, generator=torch.Generator().manual_seed(2))
    kept = dropped != NULL_LABEL
    assert torch.equal(dropped[kept], labels[kept])
    assert abs((~kept).float().mean().item() - 0.2) < 0.02
    again = drop_labels(labels, 0.2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(dropped, again) and labels.max() < NULL_LABEL  # input untouched


BAD = [
    (lambda: cfg(ToyModel(), float("nan")), ValueError, "w"),
    (lambda: cfg(ToyModel(), float("inf")), ValueError, "w"),
    (lambda: cfg(ToyModel(), "7.5"), TypeError, "w"),
    (lambda: cfg("model", 2.0), TypeError, "model"),
    (lambda: cfg(ToyModel(), 2.0)(x, t, y.float()), TypeError, "y"),
    (lambda: cfg(ToyModel(), 2.0)(x, t, torch.tensor([0, 1, 2])), ValueError, "y"),
    (lambda: cfg(ToyModel(), 2.0)(x, t, torch.tensor([0, 1, 2, 11])), ValueError, "y"),
    (lambda: drop_labels(y, 1.5), ValueError, "p_uncond"),
    (lambda: drop_labels(y, -0.1), ValueError, "p_uncond"),
    (lambda: drop_labels(y.float(), 0.1), TypeError, "y"),
    (lambda: drop_labels(y[None], 0.1), ValueError, "y"),
    (lambda: drop_labels([1, 2], 0.1), TypeError, "y"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD)
def test_bad_input(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()
