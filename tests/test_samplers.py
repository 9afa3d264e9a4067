"""Tests for lesson_lib.samplers: diffusers agreement, DDIM/DDPM invariants, whole sampling runs."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from lesson_lib.samplers import (
    Trajectory,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    ddpm_step,
)
from lesson_lib.schedules import NoiseSchedule

# Largest |ours - diffusers| found, all in float64 with diffusers given our alpha_bar:
# ddpm_step 6e-13 (at t = 1, where diffusers recomputes beta_t as 1 - alpha_bar_t / alpha_bar_{t-1}
# and loses digits to cancellation), ddim_step 1e-14, whole DDPM/DDIM runs 1e-14; timesteps equal.

S = NoiseSchedule.linear()
SPACINGS = ["leading", "trailing", "linspace"]


def _float64(scheduler, schedule=S):
    """Give a diffusers scheduler our float64 alpha_bar: the step arithmetic is compared exactly."""
    scheduler.alphas_cumprod = schedule.alpha_bar.clone()
    scheduler.one = scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _ddpm(schedule=S):
    return _float64(
        DDPMScheduler(
            num_train_timesteps=schedule.T,
            trained_betas=schedule.betas.numpy(),
            variance_type="fixed_small",
            clip_sample=False,
        ),
        schedule,
    )


def _ddim(spacing="leading", schedule=S):
    return _float64(
        DDIMScheduler(
            num_train_timesteps=schedule.T,
            trained_betas=schedule.betas.numpy(),
            clip_sample=False,
            set_alpha_to_one=True,
            steps_offset=0,
            timestep_spacing=spacing,
        ),
        schedule,
    )


def _data(seed, shape=(3, 1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))


@pytest.mark.parametrize("t", [0, 1, 2, 10, 500, 998, 999])
def test_ddpm_step_matches_diffusers(t):
    x_t, eps, _ = _data(t)
    theirs = _ddpm().step(eps, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    ours = ddpm_step(S, x_t, t, eps, generator=torch.Generator().manual_seed(7))
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-11, diff


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_steps_match_diffusers(spacing, eta):
    theirs = _ddim(spacing)
    theirs.set_timesteps(50)
    jump = S.T // 50  # diffusers steps from t to t - T // steps, whatever the spacing
    for t in theirs.timesteps.tolist()[::7] + [jump - 1]:
        x_t, eps, noise = _data(t)
        expected = theirs.step(eps, t, x_t, eta=eta, variance_noise=noise).prev_sample
        ours = ddim_step(S, x_t, t, max(t - jump, -1), eps, eta, noise=noise)
        diff = (ours - expected).abs().max().item()
        assert diff < 1e-12, (t, diff)


@pytest.mark.parametrize("T", [1000, 37])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_timesteps_match_diffusers(T, spacing):
    theirs = DDIMScheduler(num_train_timesteps=T, steps_offset=0, timestep_spacing=spacing)
    for steps in range(1, T + 1):
        ours = ddim_timesteps(T, steps, spacing)
        theirs.set_timesteps(steps)
        expected = theirs.timesteps
        if spacing == "trailing":  # diffusers sometimes appends a stray -1 (float arange)
            assert torch.all(expected[steps:] == -1)
            expected = expected[:steps]
        assert torch.equal(ours, expected), (steps, ours, expected)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize(("T", "steps"), [(1000, 50), (1000, 3), (1000, 1000), (10, 1), (7, 7)])
def test_ddim_timesteps_shape(T, steps, spacing):
    ts = ddim_timesteps(T, steps, spacing)
    assert ts.dtype == torch.long and ts.shape == (steps,)
    assert bool((ts[1:] < ts[:-1]).all()) and 0 <= ts.min() and ts.max() <= T - 1
    if spacing == "trailing" or (spacing == "linspace" and steps > 1):
        assert ts[0] == T - 1
    if spacing == "leading":  # the lesson's range(0, T, T // steps), reversed, `steps` of them
        assert ts.tolist() == list(range(0, T, T // steps))[:steps][::-1]
    assert ddim_timesteps(1000, 50).tolist()[:2] == [980, 960]


@pytest.mark.parametrize("t", [0, 1, 10, 999])
def test_ddim_eta1_one_step_is_ddpm(t):
    x_t, eps, noise = _data(t)
    ddpm = ddpm_step(S, x_t, t, eps, noise=noise)
    assert torch.allclose(ddim_step(S, x_t, t, t - 1, eps, eta=1.0, noise=noise), ddpm, atol=1e-12)


def test_per_sample_timesteps():
    x_t, eps, noise = _data(3)
    t = torch.tensor([0, 5, 999])
    batched = ddpm_step(S, x_t, t, eps, noise=noise)
    for i in range(3):
        one = ddpm_step(S, x_t[i : i + 1], int(t[i]), eps[i : i + 1], noise=noise[i : i + 1])
        assert torch.allclose(batched[i : i + 1], one, atol=1e-14)
    # t = 0 adds no noise, even when noise is passed
    assert torch.equal(batched[0], ddpm_step(S, x_t, t, eps, noise=noise * 0)[0])
    ddim = ddim_step(S, x_t, t, torch.tensor([-1, 2, 500]), eps, 0.5, noise=noise)
    assert torch.allclose(ddim[2], ddim_step(S, x_t, 999, 500, eps, 0.5, noise=noise)[2])


def test_ddim_to_done_is_predicted_x0():
    x_t, eps, _ = _data(4)
    ab = S.alpha_bar[600]
    assert torch.allclose(
        ddim_step(S, x_t, 600, -1, eps), (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    )


def _gaussian_eps(schedule, mu, sigma):
    """The exact eps(x_t, t) = E[eps | x_t] when x0 ~ N(mu, sigma^2 I)."""

    def model(x_t, t):
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
        assert not torch.is_grad_enabled()
        ab = schedule.alpha_bar[t].to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1))
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * sigma**2 + 1 - ab)

    return model


def test_ddpm_sample_gaussian_data():
    mu, sigma = 0.3, 0.5
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    x = ddpm_sample(_gaussian_eps(S, mu, sigma), S, x_T, generator=g)
    assert abs(x.mean() - mu) < 0.03 and abs(x.std() - sigma) < 0.03


@pytest.mark.parametrize("schedule", [S, NoiseSchedule.cosine()])
def test_ddim_sample_gaussian_data(schedule):
    mu, sigma = -0.4, 0.5
    x_T = torch.randn(2000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_T = (x_T - x_T.mean()) / x_T.std()  # eta = 0 is deterministic and affine here
    x = ddim_sample(_gaussian_eps(schedule, mu, sigma), schedule, x_T, 250, spacing="trailing")
    assert abs(x.mean() - mu) < 0.01 and abs(x.std() - sigma) < 0.015


def test_ddim_sample_with_eta1_and_all_steps_is_ddpm_sample():
    s = NoiseSchedule.linear(60, 1e-3, 0.2)
    model = _gaussian_eps(s, 0.1, 0.7)
    x_T = torch.randn(5, 2, dtype=torch.float64)
    ddpm = ddpm_sample(model, s, x_T, generator=torch.Generator().manual_seed(3))
    ddim = ddim_sample(model, s, x_T, 60, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ddim, ddpm, atol=1e-12)


@torch.no_grad()
def test_sampling_loops_match_diffusers():
    s = NoiseSchedule.cosine(40)
    model = _gaussian_eps(s, 0.2, 0.6)
    x_T = torch.randn(4, 3, dtype=torch.float64)
    theirs, g = _ddpm(s), torch.Generator().manual_seed(5)
    x = x_T
    for t in range(s.T - 1, -1, -1):
        x = theirs.step(model(x, torch.full((4,), t)), t, x, generator=g).prev_sample
    ours = ddpm_sample(model, s, x_T, generator=torch.Generator().manual_seed(5))
    assert (ours - x).abs().max() < 1e-12
    theirs, g = _ddim("trailing", s), torch.Generator().manual_seed(6)
    theirs.set_timesteps(8)
    x = x_T
    for t in theirs.timesteps.tolist():
        x = theirs.step(model(x, torch.full((4,), t)), t, x, eta=0.5, generator=g).prev_sample
    gen = torch.Generator().manual_seed(6)
    ours = ddim_sample(model, s, x_T, 8, 0.5, "trailing", generator=gen)
    assert (ours - x).abs().max() < 1e-12


def test_trajectory_and_cond():
    s = NoiseSchedule.linear(20, 1e-3, 0.2)
    seen = []

    def model(x_t, t, y=None):
        seen.append(y)
        return 0.1 * x_t

    x_T = torch.randn(2, 1, 3, 3)
    out = ddim_sample(model, s, x_T, 5, return_trajectory=True, progress=True, y="label")
    assert isinstance(out, Trajectory) and seen == ["label"] * 5
    assert out.timesteps.tolist() == [16, 12, 8, 4, 0]
    assert out.x_t.shape == out.x0_pred.shape == (5, 2, 1, 3, 3)
    assert torch.equal(out.x_t[0], x_T) and out.x_t.device.type == "cpu"
    assert torch.equal(out.x, ddim_sample(model, s, x_T, 5, y="label"))
    assert torch.allclose(out.x, out.x0_pred[-1], atol=1e-6)  # the last step lands on x0
    full = ddpm_sample(model, s, x_T, return_trajectory=True, generator=torch.Generator())
    assert full.timesteps.tolist() == list(range(19, -1, -1)) and full.x_t.shape[0] == 20


def test_clip_x0_only_when_asked():
    s = NoiseSchedule.linear(10, 1e-3, 0.2)

    def model(x_t, t):
        return -10 * torch.ones_like(x_t)  # predicts x0 far outside [-1, 1]

    x_T = torch.zeros(2, 4)
    free = ddim_sample(model, s, x_T, 5, return_trajectory=True)
    clipped = ddim_sample(model, s, x_T, 5, clip_x0=True, return_trajectory=True)
    assert free.x0_pred.max() > 1 and clipped.x0_pred.abs().max() <= 1
    assert torch.allclose(clipped.x, torch.ones_like(x_T))
    g = torch.Generator().manual_seed(0)
    assert ddpm_sample(model, s, x_T, clip_x0=True, generator=g).abs().max() <= 1 + 1e-6


x = torch.zeros(2, 3)
e = torch.zeros(2, 3)


def _model(x_t, t):
    return x_t


BAD = [
    (lambda: ddim_timesteps(1000, 0), ValueError, "steps"),
    (lambda: ddim_timesteps(1000, 1001), ValueError, "steps"),
    (lambda: ddim_timesteps(1000, 2.5), TypeError, "steps"),
    (lambda: ddim_timesteps(0, 1), ValueError, "T"),
    (lambda: ddim_timesteps(1000, 50, "middle"), ValueError, "spacing"),
    (lambda: ddim_step(S, x, 10, 5, e, eta=-0.1), ValueError, "eta"),
    (lambda: ddim_step(S, x, 10, 5, e, eta=float("nan")), ValueError, "eta"),
    (lambda: ddim_step(S, x, 10, 10, e), ValueError, "t_prev"),
    (lambda: ddim_step(S, x, 10, 11, e), ValueError, "t_prev"),
    (lambda: ddim_step(S, x, 10, -2, e), ValueError, "t_prev"),
    (lambda: ddim_step(S, x, 10, torch.tensor([-2, 1]), e), ValueError, "t_prev"),
    (lambda: ddim_step(S, x, 10, torch.tensor([1.0, 1.0]), e), TypeError, "t_prev"),
    (lambda: ddim_step(S, x, 1000, 5, e), ValueError, "t"),
    (lambda: ddim_step(S, x, 10, 5, e, 1.0, noise=torch.zeros(3)), ValueError, "noise"),
    (lambda: ddim_step(S, x, 10, 5, torch.zeros(2, 2)), ValueError, "eps"),
    (lambda: ddpm_step(S, x, torch.tensor([1.0, 2.0]), e), TypeError, "t"),
    (lambda: ddpm_step(S, x, torch.tensor([1, 1000]), e), ValueError, "t"),
    (lambda: ddpm_step(S, x, torch.tensor([1, 2, 3]), e), ValueError, "t"),
    (lambda: ddpm_step(S, x, 3, e, noise=torch.zeros(2, 4)), ValueError, "noise"),
    (lambda: ddpm_step(S, x, 3, torch.zeros(1, 3)), ValueError, "eps"),
    (lambda: ddpm_step(S, [0.0], 3, e), TypeError, "x_t"),
    (lambda: ddim_sample(_model, S, x, steps=0), ValueError, "steps"),
    (lambda: ddim_sample(_model, S, x, eta=-1.0), ValueError, "eta"),
    (lambda: ddim_sample(_model, S, x, spacing="linear"), ValueError, "spacing"),
    (lambda: ddim_sample(lambda x_t, t: x_t[0], S, x, steps=2), ValueError, "model output"),
    (lambda: ddpm_sample(_model, S, "noise"), TypeError, "x_T"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD)
def test_bad_input(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()
