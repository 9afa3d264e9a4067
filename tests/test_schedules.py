"""Tests for lesson_lib.schedules: diffusers agreement, invariants, fixed numbers, bad input."""

import dataclasses
import math

import pytest
import torch
from diffusers import DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from lesson_lib.schedules import NoiseSchedule, cosine_betas, linear_betas

# diffusers computes its schedules in float32; ours are float64. Largest differences seen:
# linear alpha_bar ~2e-7 (float32 cumprod), cosine betas ~6e-8 (float32 rounding).


@pytest.mark.parametrize(
    ("ours", "kind"),
    [(NoiseSchedule.linear(), "linear"), (NoiseSchedule.cosine(), "squaredcos_cap_v2")],
)
def test_matches_diffusers(ours, kind):
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind)
    betas, alpha_bar = theirs.betas.double(), theirs.alphas_cumprod.double()
    diff = max((ours.betas - betas).abs().max(), (ours.alpha_bar - alpha_bar).abs().max())
    print(f"{kind}: largest |ours - diffusers| = {diff:.2e}")
    assert diff < 1e-6
    assert torch.allclose(ours.betas, betas, rtol=1e-6, atol=0)


def test_linear_fixed_numbers():
    s = NoiseSchedule.linear()
    beta = [1e-4 + i * (0.02 - 1e-4) / 999 for i in range(1000)]  # independent, plain floats
    assert s.alpha_bar[999].item() == pytest.approx(math.prod(1 - b for b in beta), rel=1e-12)
    assert s.alpha_bar[999].item() == pytest.approx(4.0358297653756754e-05, rel=1e-12)
    assert s.alpha_bar[0].item() == pytest.approx(0.9999, rel=1e-15)


def test_cosine_fixed_numbers():
    s = NoiseSchedule.cosine()

    def f(t):  # Nichol & Dhariwal 2021, Eq. 17
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 1, 499, 998):  # unclipped: alpha_bar_t = f(t + 1) / f(0)
        assert s.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert s.betas[-1].item() == 0.999  # clipped at max_beta
    assert s.alpha_bar[500].item() == pytest.approx(0.49228517244880304, rel=1e-12)


def test_lesson_clipping_is_an_option():
    T, s = 1000, 0.008
    x = torch.linspace(0, T, T + 1, dtype=torch.float64)  # the lesson's cosine_beta_schedule
    ac = torch.cos(((x / T) + s) / (1 + s) * torch.pi * 0.5) ** 2
    ac = ac / ac[0]
    lesson = torch.clip(1 - (ac[1:] / ac[:-1]), 0.0001, 0.9999)
    ours = cosine_betas(T, min_beta=1e-4, max_beta=0.9999)
    assert torch.allclose(ours, lesson, rtol=1e-12, atol=0)
    assert cosine_betas(T)[0] < 1e-4  # not clipped below by default


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 2000),
    start=st.floats(1e-5, 0.05),
    span=st.floats(0, 0.5),
    cosine=st.booleans(),
)
def test_alpha_bar_strictly_decreasing_in_unit_interval(T, start, span, cosine):
    s = NoiseSchedule.cosine(T) if cosine else NoiseSchedule.linear(T, start, start + span)
    ab = s.alpha_bar
    assert s.T == T and ab.dtype == torch.float64 and ab.shape == (T,)
    assert bool(((ab > 0) & (ab < 1)).all())
    assert bool((ab[1:] < ab[:-1]).all())
    assert torch.equal(s.alphas, 1 - s.betas)
    assert s.alpha_bar_prev[0] == 1 and torch.equal(s.alpha_bar_prev[1:], ab[:-1])


def test_from_betas_copies_and_converts():
    betas = torch.linspace(0.01, 0.2, 10, dtype=torch.float32)
    s = NoiseSchedule.from_betas(betas)
    betas[0] = 0.5  # the schedule holds its own copy
    assert s.betas.dtype == torch.float64 and s.betas[0].item() == pytest.approx(0.01)
    assert torch.equal(NoiseSchedule(s.betas).alpha_bar, s.alpha_bar)


def test_frozen():
    s = NoiseSchedule.linear(10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = torch.ones(10)


def test_snr():
    s = NoiseSchedule.linear(100)
    ab = s.alpha_bar
    assert torch.allclose(s.snr(), ab / (1 - ab))
    assert torch.allclose(s.log_snr(), torch.log(ab / (1 - ab)))
    assert s.snr(3).item() == pytest.approx((ab[3] / (1 - ab[3])).item())
    assert torch.equal(s.snr(torch.tensor([0, 99])), s.snr()[[0, 99]])


def test_at_broadcasts_and_casts():
    s = NoiseSchedule.linear(100)
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float32)
    out = s.at("alpha_bar", torch.tensor([0, 5, 99]), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32 and out.device == x.device
    assert torch.allclose(out.flatten().double(), s.alpha_bar[[0, 5, 99]])
    assert torch.equal(
        s.at(s.alpha_bar.sqrt(), 7, x[:, 0, 0, 0]), s.alpha_bar[[7] * 3].sqrt().float()
    )


BAD = [
    (lambda: linear_betas(0), ValueError, "T"),
    (lambda: linear_betas(2.5), TypeError, "T"),
    (lambda: linear_betas(10, beta_start=0.0), ValueError, "beta_start"),
    (lambda: linear_betas(10, beta_end=1.0), ValueError, "beta_end"),
    (lambda: cosine_betas(-3), ValueError, "T"),
    (lambda: cosine_betas(10, s=-0.1), ValueError, "s"),
    (lambda: cosine_betas(10, max_beta=1.0), ValueError, "max_beta"),
    (lambda: cosine_betas(10, min_beta=-1e-4), ValueError, "min_beta"),
    (lambda: NoiseSchedule.linear(T=0), ValueError, "T"),
    (lambda: NoiseSchedule.cosine(T=True), TypeError, "T"),
    (lambda: NoiseSchedule.from_betas(torch.full((2, 5), 0.1)), ValueError, "betas"),
    (lambda: NoiseSchedule.from_betas(torch.tensor([])), ValueError, "betas"),
    (lambda: NoiseSchedule.from_betas(torch.tensor([0.1, 0.0])), ValueError, "betas"),
    (lambda: NoiseSchedule.from_betas(torch.tensor([0.1, 1.0])), ValueError, "betas"),
    (lambda: NoiseSchedule.from_betas(torch.tensor([0.1, float("nan")])), ValueError, "betas"),
    (lambda: NoiseSchedule.from_betas(torch.tensor([1, 2])), TypeError, "betas"),
    (lambda: NoiseSchedule.from_betas([0.1, 0.2]), TypeError, "betas"),
    (lambda: NoiseSchedule.linear(10).snr(10), ValueError, "t"),
    (
        lambda: NoiseSchedule.linear(10).at("alpha_bar", torch.tensor([0.5]), torch.zeros(1)),
        TypeError,
        "t",
    ),
    (
        lambda: NoiseSchedule.linear(10).at("alpha_bar", torch.tensor([1, 2]), torch.zeros(3)),
        ValueError,
        "t",
    ),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD)
def test_bad_input(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()
