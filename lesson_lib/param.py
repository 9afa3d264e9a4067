"""Conversions between the things a network can predict: noise eps, clean image x0, score.

All follow from x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, Eq. 4).
Tensors are (B, ...); t is a LongTensor (B,) or an int for the whole batch.
"""

from __future__ import annotations

import torch

from .checks import check_shape, check_tensor
from .schedules import NoiseSchedule

__all__ = ["x0_from_eps", "eps_from_x0", "score_from_eps", "eps_from_score"]


def x0_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """Predicted x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (Ho et al. 2020, Eq. 15)."""
    check_tensor("x_t", x_t)
    check_shape("eps", eps, x_t.shape)
    ab = schedule.alpha_bar
    sqrt_recip_ab = schedule.at((1 / ab).sqrt(), t, x_t)
    sqrt_recip_ab_m1 = schedule.at((1 / ab - 1).sqrt(), t, x_t)
    return sqrt_recip_ab * x_t - sqrt_recip_ab_m1 * eps


def eps_from_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """The eps that takes x0 to x_t: (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)."""
    check_tensor("x_t", x_t)
    check_shape("x0", x0, x_t.shape)
    ab = schedule.alpha_bar
    return (x_t - schedule.at(ab.sqrt(), t, x_t) * x0) / schedule.at((1 - ab).sqrt(), t, x_t)


def score_from_eps(schedule: NoiseSchedule, eps: torch.Tensor, t) -> torch.Tensor:
    """Score grad log q(x_t) = -eps / sqrt(1 - alpha_bar) (Vincent 2011; Song et al. 2021b)."""
    check_tensor("eps", eps)
    return -eps / schedule.at((1 - schedule.alpha_bar).sqrt(), t, eps)


def eps_from_score(schedule: NoiseSchedule, score: torch.Tensor, t) -> torch.Tensor:
    """eps = -sqrt(1 - alpha_bar) * score, the inverse of `score_from_eps`."""
    check_tensor("score", score)
    return -schedule.at((1 - schedule.alpha_bar).sqrt(), t, score) * score
