"""Tests for lesson_lib.solvers: diffusers' DPM-Solver++, Euler = DDIM, Heun written out, and the
order of convergence measured on Gaussian data, whose probability-flow ODE is solved exactly."""

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers import scheduling_dpmsolver_multistep

from lesson_lib.samplers import Trajectory, ddim_sample, ddim_timesteps
from lesson_lib.schedules import NoiseSchedule
from lesson_lib.solvers import (
    SOLVER_SPACINGS,
    dpmpp_2m_sample,
    euler_sample,
    heun_sample,
    karras_sigmas,
    network_calls,
    solver_timesteps,
    steps_for_calls,
)

S = NoiseSchedule.linear()
SOLVERS = [euler_sample, heun_sample, dpmpp_2m_sample]


def edm_sigmas(schedule):
    """EDM's sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (Karras et al. 2022, Table 1, VP)."""
    return ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()


def _gaussian_eps(schedule, mu, std):
    """The exact eps(x_t, t) = E[eps | x_t] when x0 ~ N(mu, std^2 I); checks how it is called."""

    def model(x_t, t):
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],) and t.unique().numel() == 1
        ab = schedule.alpha_bar[t].to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1))
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * std**2 + 1 - ab)

    return model


def _exact_endpoint(schedule, x_T, mu, std, sigma_last=0.0):
    """The PF-ODE's x_0 from x_T at t = T-1 for N(mu, std^2) data: in EDM's variables
    d(x / alpha) / d sigma = sigma (x / alpha - mu) / (std^2 + sigma^2), so x / alpha - mu grows
    like sqrt(std^2 + sigma^2) (Karras et al. 2022, Eq. 3 with this data's exact eps).
    With `sigma_last` > 0: the exact flow down to sigma_last, then one jump to x0_pred (the last
    step of every solver here), which lands at mu + c std^2 / sqrt(std^2 + sigma_last^2)."""
    sigma_T, alpha_T = edm_sigmas(schedule)[-1], schedule.alpha_bar[-1].sqrt()
    c = (x_T / alpha_T - mu) / (std**2 + sigma_T**2).sqrt()
    return mu + c * std**2 / math.sqrt(std**2 + sigma_last**2)


class _Float64Torch:
    """diffusers' DPMSolverMultistepScheduler.step casts the sample to float32 ("upcast", meant
    for float16 models); handed to its module as `torch`, this keeps it in float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def _diffusers_dpmpp(schedule, steps):
    """DPMSolverMultistepScheduler with its defaults (dpmsolver++, order 2, lower_order_final,
    final_sigmas_type="zero", linspace), given our float64 alpha_bar and sigmas."""
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.T, trained_betas=schedule.betas.numpy()
    )
    cfg = sched.config
    assert (cfg.algorithm_type, cfg.solver_order, cfg.lower_order_final) == ("dpmsolver++", 2, True)
    assert (cfg.final_sigmas_type, cfg.timestep_spacing) == ("zero", "linspace")
    sched.alphas_cumprod = schedule.alpha_bar.clone()
    sched.set_timesteps(steps)
    # set_timesteps rounds its sigmas to float32; the same ones in float64 (then 0 at the end)
    sched.sigmas = torch.cat([edm_sigmas(schedule)[sched.timesteps], torch.zeros(1).double()])
    return sched


@pytest.mark.parametrize("schedule", [S, NoiseSchedule.cosine(), NoiseSchedule.linear(37)])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 25, 36])
def test_dpmpp_2m_matches_diffusers(schedule, steps, monkeypatch):
    if steps >= schedule.T:
        pytest.skip("more steps than timesteps")
    monkeypatch.setattr(scheduling_dpmsolver_multistep, "torch", _Float64Torch())
    model = _gaussian_eps(schedule, 0.3, 0.5)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    sched = _diffusers_dpmpp(schedule, steps)
    assert torch.equal(sched.timesteps, solver_timesteps(schedule, steps))
    x = x_T
    for t in sched.timesteps.tolist():
        x = sched.step(model(x, torch.full((4,), t)), t, x).prev_sample
    assert x.dtype == torch.float64
    diff = (dpmpp_2m_sample(model, schedule, x_T, steps) - x).abs().max().item()
    assert diff < 1e-10, diff


@pytest.mark.parametrize("T", [1000, 37])
def test_linspace_timesteps_match_diffusers(T):
    sched = DPMSolverMultistepScheduler(num_train_timesteps=T)
    schedule = NoiseSchedule.linear(T)
    for steps in range(1, T):
        sched.set_timesteps(steps)
        assert torch.equal(solver_timesteps(schedule, steps), sched.timesteps), steps


@pytest.mark.parametrize("spacing", SOLVER_SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 5, 50, 400, 999])
def test_timesteps_strictly_decreasing_from_T_minus_1(spacing, steps):
    ts = solver_timesteps(S, steps, spacing)
    assert ts.dtype == torch.long and ts.shape == (steps,)
    assert ts[0] == S.T - 1 and ts.min() >= 0 and bool((ts[1:] < ts[:-1]).all())
    if spacing != "linspace" and steps > 1:
        assert ts[-1] == 0  # EDM's and the log-SNR grid end at sigma_min = sigma(0)


def _nearest(targets):
    log_sigma = edm_sigmas(S).log().tolist()
    return [min(range(S.T), key=lambda t: abs(log_sigma[t] - x)) for x in targets]


def test_karras_and_logsnr_grids_written_out():
    n = 12
    s_max, s_min = edm_sigmas(S)[-1].item(), edm_sigmas(S)[0].item()
    a, b = s_max ** (1 / 7), s_min ** (1 / 7)
    karras = [7 * math.log(a + i / (n - 1) * (b - a)) for i in range(n)]  # Karras Eq. 5, log
    logsnr = [math.log(s_max) + i / (n - 1) * math.log(s_min / s_max) for i in range(n)]
    assert solver_timesteps(S, n, "karras").tolist() == _nearest(karras)
    assert solver_timesteps(S, n, "logsnr").tolist() == _nearest(logsnr)
    karras_gaps, linspace_gaps = (
        -solver_timesteps(S, n, sp).diff() for sp in ("karras", "linspace")
    )
    assert karras_gaps[-1] * 5 < linspace_gaps[-1]  # rho = 7 spends its steps at low noise


def test_rounding_collisions_move_up():
    ts = solver_timesteps(S, 200, "karras").tolist()
    assert ts[-4:] == [3, 2, 1, 0]  # many of Eq. 5's last sigmas round to the same few timesteps


def _euler_in_sigma(model, schedule, x_T, ts):
    """Euler's method on d(x / alpha) / d sigma = eps (Karras et al. 2022, Eq. 3), written out."""
    alpha = schedule.alpha_bar.sqrt().tolist() + [1.0]  # index -1: done
    sigma = edm_sigmas(schedule).tolist() + [0.0]
    x_bar = x_T / alpha[ts[0]]
    for t, t_next in zip(ts, ts[1:] + [-1], strict=True):
        eps = model(alpha[t] * x_bar, torch.full((x_T.shape[0],), t))
        x_bar = x_bar + (sigma[t_next] - sigma[t]) * eps
    return x_bar


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_euler_in_sigma_is_ddim_eta0(spacing):
    model = _gaussian_eps(S, -0.2, 0.7)
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = ddim_timesteps(S.T, 12, spacing).tolist()
    ddim = ddim_sample(model, S, x_T, 12, eta=0.0, spacing=spacing)
    assert (_euler_in_sigma(model, S, x_T, ts) - ddim).abs().max() < 1e-12


@pytest.mark.parametrize("spacing", SOLVER_SPACINGS)
def test_euler_sample_is_euler_in_sigma(spacing):
    model = _gaussian_eps(S, -0.2, 0.7)
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ts = solver_timesteps(S, 9, spacing).tolist()
    ours = euler_sample(model, S, x_T, 9, spacing)
    assert (_euler_in_sigma(model, S, x_T, ts) - ours).abs().max() < 1e-12


@pytest.mark.parametrize("spacing", SOLVER_SPACINGS)
def test_heun_is_edm_algorithm_1(spacing):
    """Karras et al. 2022, Algorithm 1 (deterministic), written out in their x and sigma with
    D(x; sigma) = x - sigma * eps."""
    model = _gaussian_eps(S, 0.1, 0.6)
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = solver_timesteps(S, 8, spacing).tolist() + [-1]
    alpha = S.alpha_bar.sqrt().tolist() + [1.0]
    sigma = edm_sigmas(S).tolist() + [0.0]

    def denoise(x, t):  # D(x; sigma_t): the network sees x_t = alpha_t * x
        return x - sigma[t] * model(alpha[t] * x, torch.full((5,), t))

    x = x_T / alpha[ts[0]]
    for t, t_next in zip(ts, ts[1:], strict=False):
        d = (x - denoise(x, t)) / sigma[t]  # line 4
        x_next = x + (sigma[t_next] - sigma[t]) * d  # line 5
        if t_next >= 0:  # line 6: sigma_{i+1} != 0
            d_next = (x_next - denoise(x_next, t_next)) / sigma[t_next]  # line 7
            x_next = x + (sigma[t_next] - sigma[t]) * (d + d_next) / 2  # line 8
        x = x_next
    assert (heun_sample(model, S, x_T, 8, spacing) - x).abs().max() < 1e-10


def _slope(sampler, spacing, steps):
    """Least-squares slope of log(endpoint error) against log(steps), negated."""
    mu, std = 0.3, 0.5
    model = _gaussian_eps(S, mu, std)
    x_T = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]
    exact = _exact_endpoint(S, x_T, mu, std)
    errors = []
    for n in steps:
        x = sampler(model, S, x_T, n, spacing=spacing)
        errors.append((x - exact).abs().max().item())
    logs_n, logs_e = torch.tensor(steps).double().log(), torch.tensor(errors).log()
    centred = logs_n - logs_n.mean()
    return -(centred * (logs_e - logs_e.mean())).sum().item() / centred.square().sum().item()


ORDERS = [(ddim_sample, "trailing", 1), (ddim_sample, "linspace", 1)] + [
    (sampler, spacing, 1 if sampler is euler_sample else 2)
    for sampler in SOLVERS
    for spacing in ("karras", "logsnr")
]


@pytest.mark.parametrize(("sampler", "spacing", "order"), ORDERS)
def test_order_of_convergence_on_gaussian_data(sampler, spacing, order):
    slope = _slope(sampler, spacing, [20, 28, 40, 56, 80])
    assert abs(slope - order) < 0.3, (sampler.__name__, spacing, slope)


@pytest.mark.parametrize("sampler", [heun_sample, dpmpp_2m_sample])
@pytest.mark.parametrize("spacing", ["karras", "logsnr"])
def test_the_last_jump_is_below_the_errors_measured(sampler, spacing):
    """These grids end at t = 0, then jump to alpha_bar = 1 (x0_pred): an Euler step of fixed size
    sigma(0) = 0.01 whose error (about 2e-4 here) no solver can remove. It stays well below the
    errors at 80 steps, so the slopes above measure the solvers, not the jump."""
    mu, std = 0.3, 0.5
    x_T = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]
    jump = _exact_endpoint(S, x_T, mu, std, sigma_last=edm_sigmas(S)[0].item())
    exact = _exact_endpoint(S, x_T, mu, std)
    floor = (jump - exact).abs().max().item()
    assert 5e-5 < floor < 3e-4
    x = sampler(_gaussian_eps(S, mu, std), S, x_T, 80, spacing)
    assert (x - exact).abs().max() > 3 * floor


@pytest.mark.parametrize("sampler", [*SOLVERS, ddim_sample])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_network_calls_are_counted_and_at_integer_timesteps(sampler, steps):
    seen = []

    def model(x_t, t, y=None):
        seen.append((t.tolist(), y))
        return 0.1 * x_t

    sampler(model, S, torch.randn(3, 2), steps, y="label")
    assert len(seen) == network_calls(sampler, steps)
    grid = ddim_timesteps(S.T, steps) if sampler is ddim_sample else solver_timesteps(S, steps)
    assert {ts[0] for ts, _ in seen} == set(grid.tolist())  # every call at a grid point
    assert all(len(set(ts)) == 1 and y == "label" for ts, y in seen)


def test_steps_for_calls():
    assert [steps_for_calls(heun_sample, c) for c in (1, 2, 3, 4, 15, 50)] == [1, 1, 2, 2, 8, 25]
    assert steps_for_calls(dpmpp_2m_sample, 15) == network_calls(dpmpp_2m_sample, 15) == 15


@pytest.mark.parametrize("sampler", SOLVERS)
def test_trajectory_clip_and_dtype(sampler):
    def model(x_t, t):
        return -10 * torch.ones_like(x_t)  # predicts x0 far outside [-1, 1]

    x_T = torch.zeros(2, 1, 3, 3)
    out = sampler(model, S, x_T, 5, return_trajectory=True, progress=True)
    assert isinstance(out, Trajectory) and out.timesteps.tolist() == solver_timesteps(S, 5).tolist()
    assert out.x_t.shape == out.x0_pred.shape == (5, 2, 1, 3, 3) and torch.equal(out.x_t[0], x_T)
    assert out.x.dtype == torch.float32 and torch.equal(out.x, sampler(model, S, x_T, 5))
    assert out.x0_pred.max() > 1
    clipped = sampler(model, S, x_T, 5, clip_x0=True, return_trajectory=True)
    assert clipped.x0_pred.abs().max() <= 1 and torch.allclose(clipped.x, torch.ones_like(x_T))


def _model(x_t, t):
    return x_t


x = torch.zeros(2, 3)
BAD = [
    *[(lambda f=f: f(_model, S, x, 0), ValueError, "steps") for f in SOLVERS],
    (lambda: heun_sample(_model, S, x, 1000), ValueError, "steps"),
    (lambda: heun_sample(_model, S, x, 2.0), TypeError, "steps"),
    (lambda: dpmpp_2m_sample(_model, S, x, 5, "leading"), ValueError, "spacing"),
    (lambda: solver_timesteps(S, 5, "edm"), ValueError, "spacing"),
    (lambda: euler_sample(_model, S, "noise"), TypeError, "x_T"),
    (lambda: heun_sample(_model, S, torch.tensor(1.0)), ValueError, "x_T"),
    (lambda: heun_sample("model", S, x), TypeError, "model"),
    (lambda: dpmpp_2m_sample(lambda x_t, t: x_t[0], S, x, 2), ValueError, "model output"),
    (lambda: network_calls(print, 5), ValueError, "sampler"),
    (lambda: network_calls(heun_sample, 0), ValueError, "steps"),
    (lambda: steps_for_calls(heun_sample, 0), ValueError, "calls"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD)
def test_bad_input(call, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


def test_karras_sigmas_are_eq_5_from_sigma_max_to_sigma_min():
    sigmas = karras_sigmas(5, 0.1, 10.0)  # Karras et al. 2022, Eq. 5 with rho = 7, by hand:
    ramp = [10 ** (1 / 7) + i / 4 * (0.1 ** (1 / 7) - 10 ** (1 / 7)) for i in range(5)]
    assert torch.allclose(sigmas, torch.tensor([r**7 for r in ramp], dtype=torch.float64))
    assert sigmas[0] == pytest.approx(10.0) and sigmas[-1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="sigma_max"):
        karras_sigmas(5, 1.0, 0.5)
