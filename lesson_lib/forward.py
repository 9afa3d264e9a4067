"""The forward (noising) process q of Ho et al. 2020: closed form, one step, and the posterior."""

from __future__ import annotations

import torch

from .checks import check_shape, check_tensor
from .schedules import NoiseSchedule

__all__ = ["q_sample", "q_step", "q_posterior", "noise_like"]


def noise_like(
    x: torch.Tensor, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard normal noise shaped like x: `noise` itself if given, else drawn with `generator`.

    The generator must live on x's device.
    """
    if noise is not None:
        if generator is not None:
            raise ValueError(
                "pass noise or generator, not both: got a noise tensor and a generator"
            )
        check_shape("noise", noise, x.shape)
        return noise.to(x.dtype)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def q_sample(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t,
    noise: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x0) in one go. x0: (B, ...), t: LongTensor (B,) -> x_t: (B, ...)."""
    check_tensor("x0", x0)
    eps = noise_like(x0, noise, generator)
    sqrt_ab = schedule.at(schedule.alpha_bar.sqrt(), t, x0)
    sqrt_1m_ab = schedule.at((1 - schedule.alpha_bar).sqrt(), t, x0)
    return sqrt_ab * x0 + sqrt_1m_ab * eps  # Ho et al. 2020, Eq. 4


def q_step(
    schedule: NoiseSchedule,
    x_prev: torch.Tensor,
    t: int | torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One noising step x_t ~ q(x_t | x_{t-1}). x_prev = x_{t-1} (x0 at t = 0): (B, ...);
    t: an int for the whole batch, or a LongTensor (B,) -> x_t: (B, ...)."""
    check_tensor("x_prev", x_prev)
    eps = noise_like(x_prev, noise, generator)
    sqrt_alpha = schedule.at(schedule.alphas.sqrt(), t, x_prev)
    sqrt_beta = schedule.at(schedule.betas.sqrt(), t, x_prev)
    return sqrt_alpha * x_prev + sqrt_beta * eps  # Ho et al. 2020, Eq. 2


def q_posterior(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (B, ...) and variance beta_tilde (B, 1, ..., 1) of q(x_{t-1} | x_t, x0).

    At t = 0 the variance is 0 and the mean is x0.
    """
    check_tensor("x0", x0)
    check_shape("x_t", x_t, x0.shape)
    ab, ab_prev = schedule.alpha_bar, schedule.alpha_bar_prev
    # Ho et al. 2020, Eq. 7
    coef_x0 = schedule.at(ab_prev.sqrt() * schedule.betas / (1 - ab), t, x0)
    coef_xt = schedule.at(schedule.alphas.sqrt() * (1 - ab_prev) / (1 - ab), t, x0)
    variance = schedule.at((1 - ab_prev) / (1 - ab) * schedule.betas, t, x0)  # beta_tilde, Eq. 7
    return coef_x0 * x0 + coef_xt * x_t, variance
