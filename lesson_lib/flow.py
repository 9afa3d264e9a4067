"""Flow matching (Lipman et al. 2023; Liu et al. 2023, rectified flow) in the convention of
Stable Diffusion 3 and diffusers' ``FlowMatchEulerDiscreteScheduler``.

| here  | meaning                                                          |
|-------|------------------------------------------------------------------|
| `s`   | flow time in [0, 1]; s = 0 is data, s = 1 pure noise             |
| `x_s` | (1 - s) * x0 + s * eps, the straight path from data to noise     |
| `v`   | d x_s / d s = eps - x0, the velocity a flow model predicts       |

A flow model is any callable ``model(x_s, s, **cond) -> v`` with ``s`` a float tensor (B,).
Other code (Lipman et al.'s, Meta's ``flow_matching``) runs time the other way, t = 1 at the
data: there t = 1 - s and the velocity is -v.

The bridge to the course's diffusion models (Gao et al. 2025, "Diffusion Models and Gaussian
Flow Matching: Two Sides of the Same Coin"): with alpha = sqrt(alpha_bar_t), sigma =
sqrt(1 - alpha_bar_t), the VP sample x_t = alpha x0 + sigma eps divided by (alpha + sigma) is
x_s at s = sigma / (alpha + sigma) (``vp_to_flow``), and ``from_eps_model`` turns a noise
predictor into a velocity model. DDIM with eta = 0 is then exactly Euler's method here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checks import (
    check_batched,
    check_choice,
    check_flow_times,
    check_real,
    check_shape,
    check_tensor,
)
from .conventions import at_step, velocity_from_eps
from .forward import noise_like
from .guidance import drop_labels
from .samplers import Recorder, Trajectory
from .schedules import NoiseSchedule, as_timesteps, broadcast_like

__all__ = ["flow_path", "flow_loss", "euler_sample", "vp_to_flow", "flow_times", "from_eps_model"]

MATCH_TOL = 1e-6  # how near a flow time must be to a timestep's (float32 rounds s by ~6e-8)
# How flow_loss draws s: uniform (Lipman et al. 2023), or logit-normal, s = sigmoid(n) with
# n ~ N(0, 1), which trains the middle times most (Esser et al. 2024, SD3, Sec. 3.1 "lognorm(0, 1)").
TIME_DRAWS = ("uniform", "logit_normal")


def flow_path(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps, the straight path (Liu et al. 2023, Eq. 1). s: (B,) in [0, 1]."""
    check_tensor("x0", x0)
    check_shape("eps", eps, x0.shape)
    s = broadcast_like(check_tensor("s", s), x0)
    return (1 - s) * x0 + s * eps


def flow_loss(
    model: Callable,
    x0: torch.Tensor,
    y: torch.Tensor | None = None,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
    *,
    eps: torch.Tensor | None = None,
    times: str = "uniform",
) -> torch.Tensor:
    """The conditional flow-matching loss ``|| v_theta(x_s, s) - (eps - x0) ||^2``, s ~ U(0, 1)
    (Lipman et al. 2023, Eq. 23 with sigma_min = 0), or s logit-normal for ``times="logit_normal"``
    (``TIME_DRAWS``). ``y``: (B,) labels, dropped to the null label with probability ``p_uncond``
    (Ho & Salimans 2022), or None. ``eps`` (like x0): the noise end of each path, drawn fresh when
    None; reflow passes the noise its pair came from (Liu et al. 2023, Algorithm 1)."""
    check_tensor("x0", x0)
    check_real("p_uncond", p_uncond, low=0.0, high=1.0)
    check_choice("times", times, TIME_DRAWS)
    like = {"generator": generator, "device": x0.device, "dtype": x0.dtype}
    if times == "uniform":
        s = torch.rand(x0.shape[0], **like)
    else:  # logit-normal: s = sigmoid(n), n ~ N(0, 1)
        s = torch.sigmoid(torch.randn(x0.shape[0], **like))
    if eps is None:
        eps = noise_like(x0, generator=generator)
    cond = {} if y is None else {"y": drop_labels(y, p_uncond, generator=generator)}
    return F.mse_loss(model(flow_path(x0, eps, s), s, **cond), eps - x0)


def _check_times(s: torch.Tensor) -> torch.Tensor:
    s = check_tensor("s", s).detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.numel() < 2 or not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"s must be a decreasing 1-D tensor of at least 2 times, got {s.tolist()}")
    if float(s[0]) > 1 or float(s[-1]) < 0:
        raise ValueError(f"s has values in [{float(s[-1])}, {float(s[0])}]: allowed 0 <= s <= 1")
    return s


@torch.no_grad()
def euler_sample(
    model: Callable,
    x_1: torch.Tensor,
    s: torch.Tensor,
    *,
    clip_x0: bool = False,
    progress: bool = False,
    return_trajectory: bool = False,
    **cond,
) -> torch.Tensor | Trajectory:
    """Euler's method on dx/ds = v(x, s) from ``s[0]`` down to ``s[-1]``: x_1 (B, ...) -> x (B, ...).

    ``s``: decreasing float times (N + 1,), usually from 1 to 0; N model calls. Deterministic, so
    there is no generator. ``clip_x0`` clamps each predicted x0 = x - s v to [-1, 1] (and steps
    with the velocity that x0 implies). The trajectory's ``timesteps`` holds the N flow times
    visited (float64), ``x_t`` each step's input and ``x0_pred`` each x - s v.
    """
    check_batched("x_1", x_1)
    s = _check_times(s)
    x, record = x_1, Recorder(return_trajectory)
    for s_now, s_next in tqdm(
        list(zip(s[:-1], s[1:], strict=True)), disable=not progress, desc="sampling"
    ):
        s_batch = torch.full((x.shape[0],), float(s_now), device=x.device, dtype=x.dtype)
        v = model(x, s_batch, **cond)
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(
                f"model output must be a velocity shaped like x {tuple(x.shape)}, got {got}"
            )
        x0 = x - float(s_now) * v  # x0 = x_s - s v on the straight path
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            v = (x - x0) / float(s_now)
        record(s_now, x, x0)
        x = x + float(s_next - s_now) * v  # Euler step
    return record.result(x)


def vp_to_flow(schedule: NoiseSchedule, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """The VP sample x_t (B, ...) at timesteps t (int or LongTensor (B,); -1 = data) in flow
    coordinates: x_s = x_t / (alpha + sigma) at s = sigma / (alpha + sigma), s (B,) float64
    (Gao et al. 2025)."""
    check_batched("x_t", x_t)
    step = at_step(schedule, as_timesteps("t", t, schedule.T, x_t.shape[0], low=-1))
    return x_t / broadcast_like(step.alpha + step.sigma, x_t), step.s


def flow_times(schedule: NoiseSchedule, timesteps: torch.Tensor) -> torch.Tensor:
    """The flow times of a diffusion run over ``timesteps`` (N,) (e.g. ``ddim_timesteps``), with
    the end (t = -1, s = 0) appended: (N + 1,) float64, for ``euler_sample``."""
    check_tensor("timesteps", timesteps)
    return at_step(schedule, torch.cat([timesteps.cpu(), timesteps.new_full((1,), -1).cpu()])).s


def from_eps_model(eps_model: Callable, schedule: NoiseSchedule) -> Callable:
    """The velocity model ``model(x_s, s, **cond) -> v`` of a noise predictor
    ``eps_model(x_t, t, **cond)`` trained on ``schedule``: x_t = (alpha + sigma) x_s, v = eps - x0.

    Defined at the flow times of the schedule's timesteps (``flow_times``); any other s raises.
    """
    table = at_step(schedule, torch.arange(schedule.T)).s  # (T,) increasing in t

    def model(x_s: torch.Tensor, s: torch.Tensor, **cond) -> torch.Tensor:
        check_tensor("x_s", x_s)
        s = check_flow_times("s", s, batch=x_s.shape[0]).detach().to("cpu", torch.float64)
        gap, t = (s[:, None] - table).abs().min(1)  # the nearest timestep of each sample
        if bool((gap > MATCH_TOL).any()):
            bad = s[gap > MATCH_TOL].tolist()
            raise ValueError(
                f"s={bad} is not the flow time of any of the schedule's {schedule.T} timesteps "
                "(see flow_times)"
            )
        step = at_step(schedule, t)
        x_t = x_s * broadcast_like(step.alpha + step.sigma, x_s)
        t_dev = t.to(x_s.device)
        return velocity_from_eps(schedule, x_t, t_dev, eps_model(x_t, t_dev, **cond))

    return model
