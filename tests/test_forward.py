"""Tests for lesson_lib.forward: diffusers agreement, closed form vs step by step, the posterior."""

import pytest
import torch
from diffusers import DDPMScheduler

from lesson_lib.forward import noise_like, q_posterior, q_sample, q_step
from lesson_lib.schedules import NoiseSchedule

S = NoiseSchedule.linear()


def test_q_sample_matches_diffusers_add_noise():
    theirs = DDPMScheduler(num_train_timesteps=1000)
    theirs.alphas_cumprod = S.alpha_bar.clone()  # compare the arithmetic in float64
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    diff = (q_sample(S, x0, t, noise) - theirs.add_noise(x0, noise, t)).abs().max().item()
    print(f"q_sample vs add_noise: {diff:.1e}")  # 0 or ~1e-16 in float64
    assert diff < 1e-12


def test_q_sample_formula_and_generator():
    x0 = torch.ones(2, 3)
    t = torch.tensor([0, 999])
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    out = q_sample(S, x0, t, noise)
    ab = S.alpha_bar[t].float()[:, None]
    assert torch.allclose(out, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)  # Ho et al. 2020, Eq. 4
    again = q_sample(S, x0, t, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("t", [0, 7, 49])
def test_closed_form_matches_step_by_step_in_distribution(t):
    """Iterating q_step from x0 up to t gives the distribution q_sample draws from."""
    s = NoiseSchedule.linear(50, 1e-3, 0.1)
    g = torch.Generator().manual_seed(t)
    n, x0 = 10_000, torch.full((10_000,), 1.5, dtype=torch.float64)
    x = x0
    for k in range(t + 1):
        x = q_step(s, x, k, generator=g)
    direct = q_sample(s, x0, torch.full((n,), t), generator=g)
    mean, std = s.alpha_bar[t].sqrt() * 1.5, (1 - s.alpha_bar[t]).sqrt()
    tol = 4 / n**0.5  # a few standard errors
    for sample in (x, direct):
        assert abs(sample.mean() - mean) < tol * std + 1e-12
        assert abs(sample.std() - std) < tol * std


def test_q_posterior_is_gaussian_conditioning():
    """Bayes: x_{t-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev), x_t | x_{t-1} ~ N(sqrt(a) x_{t-1}, b)."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 3, dtype=torch.float64, generator=g)
    x_t = torch.randn(4, 3, dtype=torch.float64, generator=g)
    t = torch.tensor([1, 2, 300, 999])
    mean, var = q_posterior(S, x0, x_t, t)
    a, b, ab_prev = (v[t][:, None] for v in (S.alphas, S.betas, S.alpha_bar_prev))
    var_ref = 1 / (1 / (1 - ab_prev) + a / b)
    mean_ref = var_ref * (ab_prev.sqrt() * x0 / (1 - ab_prev) + a.sqrt() * x_t / b)
    assert var.shape == (4, 1)
    assert torch.allclose(var, var_ref, rtol=1e-10, atol=0)
    assert torch.allclose(mean, mean_ref, rtol=1e-10, atol=1e-12)


def test_q_posterior_at_t0_is_x0():
    x0, x_t = torch.randn(2, 3), torch.randn(2, 3)
    mean, var = q_posterior(S, x0, x_t, torch.tensor([0, 0]))
    assert torch.allclose(mean, x0) and torch.all(var == 0)


x = torch.zeros(2, 3)
t2 = torch.tensor([1, 2])
BAD = [
    (lambda: q_sample(S, x, t2, torch.zeros(2, 4)), ValueError, "noise"),
    (
        lambda: q_sample(S, x, t2, torch.zeros(2, 3), generator=torch.Generator()),
        ValueError,
        "noise",
    ),
    (lambda: q_sample(S, x, torch.tensor([1.0, 2.0])), TypeError, "t"),
    (lambda: q_sample(S, x, torch.tensor([1, 1000])), ValueError, "t"),
    (lambda: q_sample(S, x, torch.tensor([-1, 0])), ValueError, "t"),
    (lambda: q_sample(S, x, torch.tensor([1, 2, 3])), ValueError, "t"),
    (lambda: q_sample(S, x, torch.tensor([[1, 2]])), ValueError, "t"),
    (lambda: q_sample(S, [[0.0]], t2), TypeError, "x0"),
    (lambda: q_step(S, x, 1000), ValueError, "t"),
    (lambda: q_step(S, x, 1.0), TypeError, "t"),
    (lambda: q_step(S, "x", 1), TypeError, "x_prev"),
    (lambda: q_posterior(S, x, torch.zeros(2, 2), t2), ValueError, "x_t"),
    (lambda: q_posterior(S, x, x, torch.tensor([5])), ValueError, "t"),
    (lambda: noise_like(x, torch.zeros(3)), ValueError, "noise"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD)
def test_bad_input(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()
