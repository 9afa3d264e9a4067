"""Reverse-process samplers: DDPM (Ho et al. 2020) and DDIM (Song et al. 2021).

A model is any callable `model(x_t, t, **cond) -> eps` with t a LongTensor (B,). Samplers are
plain functions: nothing is stored between calls, randomness comes from `generator` or `noise`,
and nothing is clipped unless asked for. Put a network in eval mode before sampling.

Timesteps: each `t` (and DDIM's `t_prev`) is a Python int (the same step for the whole batch) or
a LongTensor (B,) (one step per sample). `t_prev = -1` means "done", where alpha_bar = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .checks import check_batched, check_choice, check_int, check_real, check_shape, check_tensor
from .forward import noise_like, q_posterior
from .param import eps_from_x0, x0_from_eps
from .schedules import NoiseSchedule, as_timesteps, broadcast_like

__all__ = [
    "ddpm_step",
    "ddim_step",
    "ddim_update",
    "ddim_timesteps",
    "ddpm_sample",
    "ddim_sample",
    "predict",
    "Recorder",
    "Trajectory",
]

SPACINGS = ("leading", "trailing", "linspace")


class Trajectory(NamedTuple):
    """A whole sampling run, for scrubbing through step by step (stacked on the CPU)."""

    x: torch.Tensor  # the final sample x_0, (B, ...), on the input's device
    timesteps: torch.Tensor  # the N timesteps visited, (N,) long, first to last
    x_t: torch.Tensor  # the input to each step, (N, B, ...); x_t[0] is x_T
    x0_pred: torch.Tensor  # each step's predicted x0, (N, B, ...)


def _ddpm_update(schedule, x_t, t, x0, noise, generator) -> torch.Tensor:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0) at the predicted x0 (Ho et al. 2020, Eqs. 6-7 and 11)."""
    mean, variance = q_posterior(schedule, x0, x_t, t)  # variance beta_tilde, 0 at t = 0
    if noise is None and not bool((variance > 0).any()):
        return mean  # nothing to add: don't draw from the generator
    return mean + variance.sqrt() * noise_like(x_t, noise, generator)


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t,
    eps: torch.Tensor,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2), variance beta_tilde.

    x_t, eps: (B, ...); t: int or LongTensor (B,). No noise is added where t = 0. The mean of
    Eq. 11 is the posterior mean of Eq. 7 at the predicted x0, which is how it is computed here.
    """
    check_tensor("x_t", x_t)
    check_shape("eps", eps, x_t.shape)
    t = as_timesteps("t", t, schedule.T, x_t.shape[0])
    return _ddpm_update(schedule, x_t, t, x0_from_eps(schedule, x_t, t, eps), noise, generator)


def ddim_update(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t,
    t_prev,
    x0: torch.Tensor,
    eps: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_{t_prev} from an already predicted x0 and eps (Song et al. 2021, Eq. 12), unchecked:
    the loops' step. t, t_prev: ints or LongTensors (B,) on the CPU, t_prev = -1 for "done"."""
    # float64 (B,) coefficients; alpha_bar at t_prev = -1 is 1 (index 0 of the padded table).
    ab_t = schedule.alpha_bar[t]
    ab_prev = torch.cat([schedule.alpha_bar.new_ones(1), schedule.alpha_bar])[t_prev + 1]
    sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()  # Eq. 16
    dir_xt = (1 - ab_prev - sigma**2).clamp(min=0).sqrt()  # "direction pointing to x_t", Eq. 12
    x_prev = broadcast_like(ab_prev.sqrt(), x_t) * x0 + broadcast_like(dir_xt, x_t) * eps
    if eta == 0 and noise is None:
        return x_prev
    return x_prev + broadcast_like(sigma, x_t) * noise_like(x_t, noise, generator)  # Eq. 12


def ddim_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t,
    t_prev,
    eps: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, Eq. 12); eta = 0 is deterministic.

    x_t, eps: (B, ...); t: int or LongTensor (B,); t_prev < t, with -1 meaning "done".
    eta = 1 with t_prev = t - 1 is the DDPM step.
    """
    check_tensor("x_t", x_t)
    check_shape("eps", eps, x_t.shape)
    eta = check_real("eta", eta, low=0.0)
    B = x_t.shape[0]
    t = as_timesteps("t", t, schedule.T, B)
    t_prev = as_timesteps("t_prev", t_prev, schedule.T, B, low=-1)
    if bool((t_prev >= t).any()):
        raise ValueError(f"t_prev={t_prev.tolist()} must be smaller than t={t.tolist()}")
    x0 = x0_from_eps(schedule, x_t, t, eps)  # "predicted x0", Eq. 12
    return ddim_update(schedule, x_t, t, t_prev, x0, eps, eta, noise, generator)


def ddim_timesteps(T: int, steps: int, spacing: str = "leading") -> torch.Tensor:
    """The `steps` timesteps a DDIM run visits, largest first: LongTensor (steps,).

    Matches diffusers' `DDIMScheduler.set_timesteps` (steps_offset=0) for each `timestep_spacing`:
    - "leading": the lesson's `range(0, T, T // steps)` reversed, cut to `steps` entries; never
      visits T-1 (for T=1000, steps=50 it starts at 980);
    - "trailing": starts at T-1, spaced T/steps apart (Lin et al. 2024, "Common Diffusion Noise
      Schedules and Sample Steps Are Flawed", Table 2; diffusers can add a stray -1 entry for
      some `steps`, e.g. T=1000, steps=61; this gives exactly `steps`);
    - "linspace": `steps` points from T-1 down to 0, rounded.
    """
    T = check_int("T", T, low=1)
    steps = check_int("steps", steps, low=1, high=T)
    check_choice("spacing", spacing, SPACINGS)
    i = torch.arange(steps, dtype=torch.float64)
    if spacing == "leading":
        ts = i * (T // steps)
    elif spacing == "trailing":
        delta = (T - T / steps) - T  # the float step as numpy.arange (diffusers) takes it, so
        ts = torch.round(T + i * delta) - 1  # ties (x.5) round to even just as in diffusers
    else:
        ts = torch.round(i * ((T - 1) / (steps - 1))) if steps > 1 else i
        ts[-1] = T - 1 if steps > 1 else 0
    ts = ts.long()
    return ts.flip(0) if spacing != "trailing" else ts


def predict(
    model: Callable, schedule: NoiseSchedule, x: torch.Tensor, t: int, cond: dict, clip_x0: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One network call at timestep ``t`` for the whole batch: (eps, predicted x0), each (B, ...).

    With ``clip_x0`` the predicted x0 is clamped to [-1, 1] and eps recomputed to match.
    """
    eps = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), **cond)
    if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
        got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(f"model output must be eps shaped like x_t {tuple(x.shape)}, got {got}")
    x0 = x0_from_eps(schedule, x, t, eps)  # Ho et al. 2020, Eq. 15
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(schedule, x, t, x0)
    return eps, x0


class Recorder:
    """Collects each step's time (an int timestep, or a flow time as a 0-d tensor), input and
    predicted x0 when ``keep``; ``result(x)`` is then a `Trajectory`, otherwise just x."""

    def __init__(self, keep: bool):
        self.keep, self.times, self.xs, self.x0s = keep, [], [], []

    def __call__(self, t, x: torch.Tensor, x0: torch.Tensor) -> None:
        if self.keep:
            self.times.append(t)
            self.xs.append(x.cpu())
            self.x0s.append(x0.cpu())

    def result(self, x: torch.Tensor) -> torch.Tensor | Trajectory:
        if not self.keep:
            return x
        times = torch.stack([torch.as_tensor(t) for t in self.times])  # long, or float64 s
        return Trajectory(x, times, torch.stack(self.xs), torch.stack(self.x0s))


@torch.no_grad()
def ddpm_sample(
    model: Callable,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    progress: bool = False,
    return_trajectory: bool = False,
    **cond,
) -> torch.Tensor | Trajectory:
    """Ancestral sampling through all T steps (Ho et al. 2020, Algorithm 2). x_T: (B, ...).

    `cond` goes to the model (e.g. `y=labels`); `clip_x0` clamps each predicted x0 to [-1, 1].
    Returns x_0 (B, ...), or a `Trajectory` when `return_trajectory`.
    """
    x, record = check_batched("x_T", x_T), Recorder(return_trajectory)
    for t in tqdm(range(schedule.T - 1, -1, -1), disable=not progress, desc="sampling"):
        _, x0 = predict(model, schedule, x, t, cond, clip_x0)
        record(t, x, x0)
        x = _ddpm_update(
            schedule, x, as_timesteps("t", t, schedule.T, x.shape[0]), x0, None, generator
        )
    return record.result(x)


@torch.no_grad()
def ddim_sample(
    model: Callable,
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "leading",
    *,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    progress: bool = False,
    return_trajectory: bool = False,
    **cond,
) -> torch.Tensor | Trajectory:
    """DDIM sampling in `steps` steps (Song et al. 2021, Eq. 12). x_T: (B, ...).

    Timesteps come from `ddim_timesteps(T, steps, spacing)`; each step goes to the next one
    listed, the last to -1. (diffusers steps to t - T // steps instead, which differs for
    "linspace".) Returns x_0 (B, ...), or a `Trajectory` when `return_trajectory`.
    """
    eta = check_real("eta", eta, low=0.0)
    ts = ddim_timesteps(schedule.T, steps, spacing).tolist()
    x, record = check_batched("x_T", x_T), Recorder(return_trajectory)
    B = x.shape[0]
    for t, t_prev in tqdm(
        list(zip(ts, ts[1:] + [-1], strict=True)), disable=not progress, desc="sampling"
    ):
        eps, x0 = predict(model, schedule, x, t, cond, clip_x0)
        record(t, x, x0)
        t_b, t_prev_b = torch.full((B,), t), torch.full((B,), t_prev)
        x = ddim_update(schedule, x, t_b, t_prev_b, x0, eps, eta, None, generator)
    return record.result(x)
