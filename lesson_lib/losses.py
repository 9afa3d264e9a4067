"""The simple noise-prediction loss of Ho et al. 2020, with label dropout for guidance and,
optionally, the min-SNR-gamma weighting of Hang et al. 2023."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .checks import check_real, check_tensor
from .forward import q_sample
from .guidance import drop_labels
from .schedules import NoiseSchedule

__all__ = ["diffusion_loss"]


def diffusion_loss(
    model: Callable,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    y: torch.Tensor | None = None,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
    min_snr_gamma: float | None = None,
    **cond,
) -> torch.Tensor:
    """The simple loss ``|| eps - eps_theta(x_t, t) ||^2`` (Ho et al. 2020, Eq. 14; Algorithm 1).

    ``x0``: (B, ...) clean data; ``y``: (B,) labels or None. A fraction ``p_uncond`` of labels is
    replaced by the null label (Ho & Salimans 2022), so one model learns both conditional and
    unconditional noise prediction. Extra ``cond`` (e.g. ``context``) goes to the model as is.
    ``min_snr_gamma``: weight each sample's error by ``min(SNR(t), gamma) / SNR(t)`` (Hang et
    al. 2023, Eq. 7 for eps-prediction): the nearly clean steps, whose tasks conflict with the
    noisy ones, count less. None: every timestep alike, Ho et al.'s loss.
    """
    check_tensor("x0", x0)
    check_real("p_uncond", p_uncond, low=0.0, high=1.0)
    if min_snr_gamma is not None:
        check_real("min_snr_gamma", min_snr_gamma, low=0.0, low_open=True)
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)  # Eq. 4
    if y is not None:
        cond["y"] = drop_labels(y, p_uncond, generator=generator)
    if min_snr_gamma is None:
        return F.mse_loss(model(x_t, t, **cond), noise)
    snr = schedule.snr(t).to(x0.device)
    weight = (snr.clamp(max=min_snr_gamma) / snr).float()
    error = (model(x_t, t, **cond).float() - noise).square().flatten(1).mean(1)
    return (weight * error).mean()
