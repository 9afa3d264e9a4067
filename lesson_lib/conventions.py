"""One noise level, five names for it, and the five things a network can predict.

Every Gaussian path writes a noisy sample as ``x = alpha x0 + sigma eps``; the papers differ only
in how they scale ``x`` and how they name the noise level (Kingma et al. 2021; Karras et al. 2022;
Gao et al. 2025, "Diffusion Models and Gaussian Flow Matching: Two Sides of the Same Coin"):

| name        | formula                         | where                                          |
|-------------|---------------------------------|------------------------------------------------|
| `alpha`     | sqrt(alpha_bar_t)               | the course's VP schedule (Ho et al. 2020)      |
| `sigma`     | sqrt(1 - alpha_bar_t)           | alpha^2 + sigma^2 = 1                          |
| `log_snr`   | log(alpha^2 / sigma^2)          | Kingma et al. 2021's lambda                    |
| `s`         | sigma / (alpha + sigma)         | flow time (SD3, diffusers' FlowMatchEuler)     |
| `edm_sigma` | sigma / alpha                   | EDM (Karras et al. 2022): x / alpha = x0 + edm_sigma eps |

Any one of them fixes all the others (``from_log_snr``, ``from_flow_time``, ``from_edm_sigma``).
``x_t`` (VP), ``x_t / alpha`` (EDM) and ``x_t / (alpha + sigma)`` (flow) are the same point,
scaled. The predictions, in VP coordinates ``x_t``: the noise ``eps``, the clean ``x0``, the
score ``-eps / sigma`` (``lesson_lib.param``), Salimans & Ho 2022's ``v = alpha eps - sigma x0``
and the flow velocity ``u = eps - x0`` (Lipman et al. 2023; Liu et al. 2023). Each here converts
from and to ``eps``, so any one goes to any other through it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .checks import check_batched, check_shape
from .param import x0_from_eps
from .schedules import NoiseSchedule, as_timesteps, broadcast_like

__all__ = [
    "Step",
    "at_step",
    "from_log_snr",
    "from_flow_time",
    "from_edm_sigma",
    "v_from_eps",
    "eps_from_v",
    "x0_from_v",
    "velocity_from_eps",
    "eps_from_velocity",
]


class Step(NamedTuple):
    """One noise level in every convention: float64 tensors of one shape, (N,) or ()."""

    alpha: torch.Tensor  # signal scale sqrt(alpha_bar)
    sigma: torch.Tensor  # noise scale sqrt(1 - alpha_bar)
    log_snr: torch.Tensor  # lambda = log(alpha^2 / sigma^2); +inf at the data
    s: torch.Tensor  # flow time sigma / (alpha + sigma): 0 data, 1 noise
    edm_sigma: torch.Tensor  # sigma / alpha: EDM's noise level; 0 at the data


def _from_alpha_sigma(alpha: torch.Tensor, sigma: torch.Tensor) -> Step:
    log_snr = 2 * (alpha.log() - sigma.log())
    return Step(alpha, sigma, log_snr, sigma / (alpha + sigma), sigma / alpha)


def at_step(schedule: NoiseSchedule, t) -> Step:
    """Every convention at timesteps ``t`` (an int, or a LongTensor (N,)); -1 is the data
    (alpha = 1, sigma = 0, s = 0). Float64 on the CPU."""
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        t_ = as_timesteps("t", t, schedule.T, t.shape[0], low=-1)
    else:
        t_ = as_timesteps("t", t, schedule.T, 1, low=-1)[0]
    ab = torch.cat([schedule.alpha_bar.new_ones(1), schedule.alpha_bar])[t_ + 1]  # -1 -> 1
    return _from_alpha_sigma(ab.sqrt(), (1 - ab).sqrt())


def _float64(name: str, value) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=torch.float64)
    if bool(value.isnan().any()):
        raise ValueError(f"{name} has NaN values: {value.tolist()}")
    return value


def from_log_snr(log_snr) -> Step:
    """The noise level with log-SNR lambda: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""
    lam = _float64("log_snr", log_snr)
    return _from_alpha_sigma(torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt())


def from_flow_time(s) -> Step:
    """The noise level at flow time s in [0, 1]: alpha, sigma = (1 - s, s) / sqrt((1-s)^2 + s^2)."""
    s = _float64("s", s)
    if bool(((s < 0) | (s > 1)).any()):
        raise ValueError(
            f"s has values in [{s.min().item()}, {s.max().item()}]: allowed 0 <= s <= 1"
        )
    norm = ((1 - s) ** 2 + s**2).sqrt()  # alpha^2 + sigma^2 = 1
    return _from_alpha_sigma((1 - s) / norm, s / norm)


def from_edm_sigma(edm_sigma) -> Step:
    """The noise level with EDM's sigma >= 0: alpha = 1 / sqrt(1 + sigma^2)."""
    e = _float64("edm_sigma", edm_sigma)
    if bool((e < 0).any()):
        raise ValueError(f"edm_sigma has values down to {e.min().item()}: allowed edm_sigma >= 0")
    alpha = (1 + e**2).rsqrt()
    return _from_alpha_sigma(alpha, e * alpha)


def _scales(schedule: NoiseSchedule, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha and sigma at t, shaped (B, 1, ..., 1) like x."""
    check_batched("x_t", x)
    t = as_timesteps("t", t, schedule.T, x.shape[0])
    step = at_step(schedule, t)
    return broadcast_like(step.alpha, x), broadcast_like(step.sigma, x)


def v_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """v = alpha eps - sigma x0 = (eps - sigma x_t) / alpha (Salimans & Ho 2022, Sec. 4)."""
    check_shape("eps", eps, x_t.shape)
    alpha, sigma = _scales(schedule, x_t, t)
    return (eps - sigma * x_t) / alpha


def eps_from_v(schedule: NoiseSchedule, x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
    """eps = sigma x_t + alpha v (Salimans & Ho 2022, Sec. 4)."""
    check_shape("v", v, x_t.shape)
    alpha, sigma = _scales(schedule, x_t, t)
    return sigma * x_t + alpha * v


def x0_from_v(schedule: NoiseSchedule, x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
    """x0 = alpha x_t - sigma v (Salimans & Ho 2022, Sec. 4)."""
    check_shape("v", v, x_t.shape)
    alpha, sigma = _scales(schedule, x_t, t)
    return alpha * x_t - sigma * v


def velocity_from_eps(
    schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor
) -> torch.Tensor:
    """The flow velocity u = eps - x0 of a noise prediction at x_t (Gao et al. 2025)."""
    return eps - x0_from_eps(schedule, x_t, t, eps)


def eps_from_velocity(
    schedule: NoiseSchedule, x_t: torch.Tensor, t, u: torch.Tensor
) -> torch.Tensor:
    """eps = (x_t + alpha u) / (alpha + sigma), the inverse of ``velocity_from_eps``."""
    check_shape("u", u, x_t.shape)
    alpha, sigma = _scales(schedule, x_t, t)
    return (x_t + alpha * u) / (alpha + sigma)
