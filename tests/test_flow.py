"""Tests for lesson_lib.flow: DDIM (eta = 0) is Euler's method in flow coordinates, to rounding;
Euler against diffusers' FlowMatchEulerDiscreteScheduler; the flow-matching loss and its logit-normal times; argument errors.
"""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from lesson_lib.conventions import at_step
from lesson_lib.flow import (
    euler_sample,
    flow_loss,
    flow_path,
    flow_times,
    from_eps_model,
    vp_to_flow,
)
from lesson_lib.guidance import NULL_LABEL
from lesson_lib.mixture import GaussianMixture, exact_eps_model
from lesson_lib.samplers import Trajectory, ddim_sample, ddim_timesteps
from lesson_lib.schedules import NoiseSchedule

# Largest |DDIM - Euler| measured over every case of test_ddim_is_euler_in_flow_coordinates:
# 3.6e-15 (float64; 2.7e-15 for the cosine schedule). Euler against diffusers' float32 loop: 5.7e-7.

GM = GaussianMixture.example()
SCHEDULES = {"linear": NoiseSchedule.linear(), "cosine": NoiseSchedule.cosine()}
SPACINGS = ["leading", "trailing", "linspace"]


def _noise(n=16, seed=0, dtype=torch.float64):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_is_euler_in_flow_coordinates(name, spacing):
    """Gao et al. 2025: DDIM (eta = 0) from x_T over any timesteps = Euler on the velocity of the
    same eps-model, from vp_to_flow(x_T) over the corresponding flow times; every step too."""
    schedule = SCHEDULES[name]
    eps_model, x_T = exact_eps_model(GM, schedule), _noise()
    velocity = from_eps_model(eps_model, schedule)
    worst = 0.0
    for steps in range(5, 51):
        ts = ddim_timesteps(schedule.T, steps, spacing)
        ddim = ddim_sample(eps_model, schedule, x_T, steps, spacing=spacing, return_trajectory=True)
        x_s, s0 = vp_to_flow(schedule, x_T, int(ts[0]))
        s = flow_times(schedule, ts)
        assert torch.equal(s0, s[:1].expand(len(x_T)))
        euler = euler_sample(velocity, x_s, s, return_trajectory=True)
        assert torch.equal(euler.timesteps, s[:-1])
        as_flow = torch.stack(
            [vp_to_flow(schedule, x, int(t))[0] for x, t in zip(ddim.x_t, ts, strict=True)]
        )
        worst = max(
            worst,
            (euler.x - ddim.x).abs().max().item(),
            (euler.x_t - as_flow).abs().max().item(),
            (euler.x0_pred - ddim.x0_pred).abs().max().item(),
        )
    assert worst < 1e-10


def _generalized_ddim(velocity, x_1, s, scale):
    """DDIM in the coordinates z = scale(s) * x_s, scale(0) = 1: re-noise the predicted (x0, eps)
    to the next level (Song et al. 2021, Eq. 12, with alpha = scale (1 - s), sigma = scale s)."""
    z = scale(s[0]) * x_1
    for a, b in zip(s[:-1], s[1:], strict=True):
        x_s = z / scale(a)
        v = velocity(x_s, torch.full((len(z),), float(a), dtype=z.dtype))
        x0, eps = x_s - a * v, x_s + (1 - a) * v
        z = scale(b) * ((1 - b) * x0 + b * eps)
    return z


def _euler_scaled(velocity, x_1, s, scale, h=1e-6):
    """Euler on the same ODE written for z = scale(s) x_s: dz/ds = scale' / scale z + scale v."""
    z = scale(s[0]) * x_1
    for a, b in zip(s[:-1], s[1:], strict=True):
        c, dc = scale(a), (scale(a + h) - scale(a - h)) / (2 * h)
        v = velocity(z / c, torch.full((len(z),), float(a), dtype=z.dtype))
        z = z + (b - a) * (dc / c * z + c * v)
    return z


def test_ddim_is_unchanged_by_rescaling_euler_is_not():
    """Gao et al. 2025: DDIM depends on the schedule only through the signal-to-noise ratio, so
    rescaling x_t (VP: scale = 1 / sqrt((1-s)^2 + s^2); any positive scale) leaves its samples
    unchanged. Euler's steps depend on the coordinates: in VP coordinates it lands elsewhere."""
    schedule = SCHEDULES["linear"]
    velocity = from_eps_model(exact_eps_model(GM, schedule), schedule)
    ts = ddim_timesteps(schedule.T, 10, "trailing")
    s = flow_times(schedule, ts).tolist()
    x_s, _ = vp_to_flow(schedule, _noise(), int(ts[0]))
    ddim = ddim_sample(exact_eps_model(GM, schedule), schedule, _noise(), 10, spacing="trailing")
    scales = {
        "flow": lambda s: 1.0,
        "VP": lambda s: ((1 - s) ** 2 + s**2) ** -0.5,
        "EDM-like": lambda s: 1 / (1 - s + 1e-3 * s),
        "wiggly": lambda s: 1 + 0.5 * s * (1 - s) * (3 + torch.tensor(7 * s).sin().item()),
    }
    for name, scale in scales.items():
        assert (_generalized_ddim(velocity, x_s, s, scale) - ddim).abs().max() < 1e-10, name
    euler_flow = _euler_scaled(velocity, x_s, s, scales["flow"])
    assert (euler_flow - ddim).abs().max() < 1e-6  # the identity, through a numerical derivative
    euler_vp = _euler_scaled(velocity, x_s, s, scales["VP"])
    assert (euler_vp - ddim).abs().max() > 1e-2


def _diffusers_euler(velocity, x, sigmas, **config):
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(sigmas=sigmas)
    for i, t in enumerate(scheduler.timesteps):
        s = scheduler.sigmas[i].to(torch.float64).expand(len(x))
        x = scheduler.step(velocity(x.to(torch.float64), s), t, x).prev_sample
    return x, scheduler.sigmas


def _velocity(x, s):
    """A smooth nonlinear velocity field, the same for both loops."""
    return torch.tanh(x * (1 + s[:, None])) - 0.5 * x * s[:, None] ** 2


@pytest.mark.parametrize("steps", [1, 7, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_matches_diffusers_flow_match_euler(steps, shift):
    """The same velocity function and the same sigmas (diffusers appends s = 0 and applies SD3's
    shift s' = shift s / (1 + (shift - 1) s)); diffusers steps in float32."""
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float32)[:-1]
    x_1 = _noise(64, seed=3, dtype=torch.float32)
    theirs, sigmas = _diffusers_euler(_velocity, x_1, s.tolist(), shift=shift)
    ours = euler_sample(_velocity, x_1.to(torch.float64), sigmas.to(torch.float64))
    assert (ours - theirs).abs().max() < 1e-6
    if shift == 1.0:
        assert torch.equal(sigmas[:-1], s)


def test_euler_is_exact_on_straight_paths():
    """All data at one point x0: the velocity (x - x0) / s is constant along each path, so any
    number of Euler steps, even one, lands exactly on x0 (Liu et al. 2023, Sec. 2.3)."""
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    x_1 = _noise(8)
    for steps in (1, 2, 9):
        out = euler_sample(lambda x, s: (x - x0) / s[:, None], x_1, torch.linspace(1, 0, steps + 1))
        assert torch.allclose(out, x0.expand_as(out), atol=1e-14)


def test_euler_trajectory_and_clip():
    s = torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=torch.float64)
    x_1 = 3 * _noise(5)
    traj = euler_sample(_velocity, x_1, s, return_trajectory=True, progress=True)
    assert isinstance(traj, Trajectory)
    assert (
        traj.x_t.shape == traj.x0_pred.shape == (3, 5, 2) and traj.timesteps.dtype == torch.float64
    )
    assert torch.equal(traj.x_t[0], x_1) and torch.equal(traj.x, euler_sample(_velocity, x_1, s))
    for i in range(3):
        v = _velocity(traj.x_t[i], s[i].expand(5))
        assert torch.allclose(traj.x0_pred[i], traj.x_t[i] - s[i] * v)
        nxt = traj.x_t[i + 1] if i < 2 else traj.x
        assert torch.allclose(nxt, traj.x_t[i] + (s[i + 1] - s[i]) * v)
    clipped = euler_sample(_velocity, x_1, s, clip_x0=True, return_trajectory=True)
    assert clipped.x0_pred.abs().max() <= 1 and not torch.allclose(clipped.x, traj.x)
    for i in range(3):  # each step takes the velocity the clipped x0 implies: (x - x0) / s
        x, x0 = clipped.x_t[i], clipped.x0_pred[i]
        v = _velocity(x, s[i].expand(5))
        assert torch.equal(x0, (x - s[i] * v).clamp(-1, 1))
        nxt = clipped.x_t[i + 1] if i < 2 else clipped.x
        assert torch.allclose(nxt, x + (s[i + 1] - s[i]) * (x - x0) / s[i])


def test_euler_passes_cond_and_batches_s():
    seen = {}

    def model(x, s, y=None):
        seen["s"], seen["y"] = s, y
        return torch.zeros_like(x)

    y = torch.arange(4)
    euler_sample(model, torch.zeros(4, 1, 2, 2), torch.tensor([0.5, 0.0]), y=y)
    assert seen["y"] is y and seen["s"].shape == (4,) and seen["s"].dtype == torch.float32
    assert torch.all(seen["s"] == 0.5)


def test_vp_to_flow():
    schedule = SCHEDULES["cosine"]
    t = torch.tensor([-1, 0, 500, 999])
    x0, eps = _noise(4, 1), _noise(4, 2)
    ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bar])[t + 1][:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    x_s, s = vp_to_flow(schedule, x_t, t)
    assert torch.allclose(x_s, flow_path(x0, eps, s), atol=1e-12)  # the same point, rescaled
    assert s[0] == 0 and torch.equal(x_s[0], x_t[0])
    assert bool((s[1:].diff() > 0).all()) and s[-1] < 1
    assert torch.equal(vp_to_flow(schedule, x_t, 500)[1], s[2].expand(4))


def test_from_eps_model_passes_cond_and_the_matching_timestep():
    schedule = SCHEDULES["linear"]
    seen = {}

    def eps_model(x_t, t, y=None):
        seen["t"], seen["y"], seen["x_t"] = t, y, x_t
        return torch.ones_like(x_t)

    velocity = from_eps_model(eps_model, schedule)
    x_s = _noise(3).float()
    s = at_step(schedule, torch.tensor([7, 300, 999])).s.float()  # rounded to float32
    y = torch.tensor([1, 2, NULL_LABEL])
    v = velocity(x_s, s, y=y)
    assert seen["t"].tolist() == [7, 300, 999] and seen["y"] is y and v.dtype == torch.float32
    x_t, _ = vp_to_flow(schedule, seen["x_t"].double(), torch.tensor([7, 300, 999]))
    assert torch.allclose(x_t.float(), x_s)
    with pytest.raises(ValueError, match="not the flow time"):
        velocity(x_s, torch.tensor([0.5, 0.5, 0.5]))


def test_flow_loss_is_the_conditional_flow_matching_loss():
    """Same seed, same draws in the same order: s, then eps, then the dropped labels."""
    x0, y = _noise(32).reshape(32, 1, 1, 2), torch.arange(32) % 10
    seen = {}

    def model(x_s, s, y=None):
        seen["x_s"], seen["s"], seen["y"] = x_s, s, y
        return x_s * 0.5

    loss = flow_loss(model, x0, y, 0.5, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    s = torch.rand(32, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_s = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * eps
    assert torch.equal(seen["s"], s) and torch.allclose(seen["x_s"], x_s)
    assert torch.allclose(loss, ((0.5 * x_s - (eps - x0)) ** 2).mean())
    dropped = seen["y"] == NULL_LABEL
    assert 0 < int(dropped.sum()) < 32 and torch.equal(seen["y"][~dropped], y[~dropped])
    flow_loss(model, x0, None, 0.5)
    assert seen["y"] is None


def test_logit_normal_flow_times_follow_their_distribution():
    """s = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024): P(s <= q) = Phi(logit q), the closed form
    the empirical CDF of 20,000 draws must match (uniform times would give q)."""
    x0, seen = torch.zeros(20_000, 1), {}

    def model(x_s, s):
        seen["s"], seen["x_s"] = s, x_s
        return torch.zeros_like(x_s)

    loss = flow_loss(model, x0, generator=torch.Generator().manual_seed(0), times="logit_normal")
    s = seen["s"]
    assert float(s.min()) > 0 and float(s.max()) < 1
    for q in (0.05, 0.2, 0.5, 0.8, 0.95):
        closed = 0.5 * (1 + math.erf(math.log(q / (1 - q)) / math.sqrt(2)))
        assert abs(float((s <= q).double().mean()) - closed) < 0.012, q
    # the path at those times, and the loss of v = 0 against eps - x0 = eps
    eps = seen["x_s"] / s[:, None]
    assert torch.allclose(loss, (eps**2).mean())


def test_flow_loss_with_paired_noise_and_gradients():
    x0, eps = _noise(16, 4), _noise(16, 5)
    lin = torch.nn.Linear(2, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    loss = flow_loss(lambda x, s: lin(x), x0, eps=eps, generator=g)
    s = torch.rand(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expect = ((lin(flow_path(x0, eps, s)) - (eps - x0)) ** 2).mean()
    assert torch.allclose(loss, expect)
    loss.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_argument_errors():
    x = torch.zeros(2, 3)
    zero = lambda x, s: torch.zeros_like(x)  # noqa: E731
    schedule = SCHEDULES["linear"]
    with pytest.raises(ValueError, match="decreasing"):
        euler_sample(zero, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="decreasing"):
        euler_sample(zero, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="decreasing"):
        euler_sample(zero, x, torch.ones(2, 2))
    with pytest.raises(ValueError, match="allowed 0 <= s <= 1"):
        euler_sample(zero, x, torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="allowed 0 <= s <= 1"):
        euler_sample(zero, x, torch.tensor([1.0, -0.1]))
    with pytest.raises(TypeError, match="x_1 must be a torch.Tensor"):
        euler_sample(zero, [[0.0]], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="batch dimension"):
        euler_sample(zero, torch.tensor(0.0), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="velocity shaped like x"):
        euler_sample(lambda x, s: x[:1], x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="allowed -1 <= t <= 999"):
        vp_to_flow(schedule, x, 1000)
    with pytest.raises(ValueError, match="allowed -1 <= t <= 999"):
        vp_to_flow(schedule, x, torch.tensor([-2, 0]))
    with pytest.raises(TypeError, match="integer"):
        vp_to_flow(schedule, x, torch.tensor([0.5, 0.5]))
    velocity = from_eps_model(lambda x, t: x, schedule)
    with pytest.raises(ValueError, match="allowed 0 <= s <= 1"):
        velocity(x, torch.tensor([1.5, 0.5]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        velocity(x, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="eps has shape"):
        flow_loss(zero, x, eps=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="p_uncond"):
        flow_loss(zero, x, torch.zeros(2, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match="times='normal' is not known: allowed 'uniform'"):
        flow_loss(zero, x, times="normal")
    with pytest.raises(TypeError, match="timesteps must be a torch.Tensor"):
        flow_times(schedule, [999, 0])
