"""Tests for lesson_lib.param: the conversions are inverses and match their definitions."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lesson_lib.param import eps_from_score, eps_from_x0, score_from_eps, x0_from_eps
from lesson_lib.schedules import NoiseSchedule

S = NoiseSchedule.cosine(1000)


def _batch(seed, t):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(t), 2, 3, dtype=torch.float64, generator=g), torch.tensor(t)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), t=st.lists(st.integers(0, 998), min_size=1, max_size=4))
def test_x0_eps_round_trip(seed, t):
    # t = 999 is left out: alpha_bar ~ 2e-9 there, so x0 from eps amplifies rounding by 2e4
    x_t, t = _batch(seed, t)
    x0 = x_t.flip(0) * 0.7
    assert torch.allclose(x0_from_eps(S, x_t, t, eps_from_x0(S, x_t, t, x0)), x0, atol=1e-9)
    eps = x_t.roll(1, 0)
    assert torch.allclose(eps_from_x0(S, x_t, t, x0_from_eps(S, x_t, t, eps)), eps, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31), t=st.lists(st.integers(0, 999), min_size=1, max_size=4))
def test_score_eps_round_trip(seed, t):
    eps, t = _batch(seed, t)
    assert torch.allclose(eps_from_score(S, score_from_eps(S, eps, t), t), eps, rtol=1e-12)
    assert torch.allclose(score_from_eps(S, eps_from_score(S, eps, t), t), eps, rtol=1e-12)


def test_x0_from_eps_inverts_q_sample():
    x0, t = _batch(0, [0, 10, 500, 900])
    eps = torch.randn_like(x0)
    ab = S.alpha_bar[t][:, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # Ho et al. 2020, Eq. 4, written out
    assert torch.allclose(x0_from_eps(S, x_t, t, eps), x0, atol=1e-10)
    assert torch.allclose(eps_from_x0(S, x_t, t, x0), eps, atol=1e-10)


def test_score_is_gradient_of_log_q():
    """score_from_eps(eps) = grad_{x_t} log N(x_t; sqrt(ab) x0, (1 - ab) I), by autograd."""
    x0, t = _batch(1, [3, 200, 999])
    eps = torch.randn_like(x0)
    ab = S.alpha_bar[t][:, None, None]
    x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).requires_grad_()
    log_q = -((x_t - ab.sqrt() * x0) ** 2 / (2 * (1 - ab))).sum()
    (grad,) = torch.autograd.grad(log_q, x_t)
    assert torch.allclose(score_from_eps(S, eps, t), grad, rtol=1e-10)


def test_int_t_and_dtype():
    x_t = torch.randn(3, 4)
    out = x0_from_eps(S, x_t, 5, x_t)
    assert out.dtype == torch.float32
    assert torch.equal(out, x0_from_eps(S, x_t, torch.full((3,), 5), x_t))


x = torch.zeros(2, 3)
t2 = torch.tensor([1, 2])
BAD = [
    (lambda: x0_from_eps(S, x, t2, torch.zeros(2, 4)), ValueError, "eps"),
    (lambda: x0_from_eps(S, x, torch.tensor([1.0, 2.0]), x), TypeError, "t"),
    (lambda: eps_from_x0(S, x, t2, torch.zeros(3, 3)), ValueError, "x0"),
    (lambda: eps_from_x0(S, None, t2, x), TypeError, "x_t"),
    (lambda: score_from_eps(S, x, torch.tensor([0, 1000])), ValueError, "t"),
    (lambda: score_from_eps(S, 1.0, t2), TypeError, "eps"),
    (lambda: eps_from_score(S, x, torch.tensor([0])), ValueError, "t"),
    (lambda: eps_from_score(S, x, -1), ValueError, "t"),
    (lambda: eps_from_score(S, "s", t2), TypeError, "score"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD)
def test_bad_input(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()
