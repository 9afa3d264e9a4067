"""Sampling from a score alone: Langevin dynamics and its annealed form (notebook 06).

The exact scores to try them on are in ``lesson_lib.mixture``; a network that learns one is
``lesson_lib.denoiser.MLPDenoiser``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .checks import check_int, check_number, check_tensor

__all__ = ["langevin", "annealed_langevin"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def langevin(
    score_fn: ScoreFn,
    x: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> torch.Tensor:
    """Unadjusted Langevin dynamics (Welling & Teh 2011; Song & Ermon 2019, Eq. 4):
    ``x <- x + step_size / 2 * score_fn(x) + sqrt(step_size) * z``, ``z ~ N(0, I)``.

    x: starting points ``(B, ...)``. Returns the final points (same shape), or with
    ``return_trajectory`` all of them, ``(n_steps + 1, B, ...)`` starting with ``x``.
    """
    check_tensor("x", x)
    step_size = check_number("step_size", step_size, low=0.0, low_open=True)
    n_steps = check_int("n_steps", n_steps, low=0)
    path = [x]
    for _ in range(n_steps):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + 0.5 * step_size * score_fn(x) + math.sqrt(step_size) * z
        if return_trajectory:
            path.append(x)
    return torch.stack(path) if return_trajectory else x


def annealed_langevin(
    score_fn: Callable[[torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    alpha_bars: Sequence[float] | torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over noise levels.

    alpha_bars: noise levels from noisiest to cleanest, each in ``(0, 1)``; ``score_fn(x, ab)``
    is the score at level ``ab``. At level ``i`` it runs ``n_steps`` Langevin steps of size
    ``step_size * (1 - ab_i) / (1 - ab_last)`` (the paper's ``eps * sigma_i^2 / sigma_L^2`` with
    the noise variance ``sigma_i^2 = 1 - ab_i``), so ``step_size`` is the step at the cleanest
    level. The paper's geometric noise levels ``sigma_i`` (10 down to 0.01) are
    ``ab_i = 1 / (1 + sigma_i^2)``, since ``x_t / sqrt(ab) = x0 + sqrt((1 - ab) / ab) eps``.
    Returns the final ``x``, or with ``return_trajectory`` ``(L * n_steps + 1, B, ...)``.
    """
    check_tensor("x", x)
    step_size = check_number("step_size", step_size, low=0.0, low_open=True)
    n_steps = check_int("n_steps", n_steps, low=0)
    bounds = dict(low=0.0, high=1.0, low_open=True, high_open=True)
    levels = [check_number(f"alpha_bars[{i}]", a, **bounds) for i, a in enumerate(alpha_bars)]
    if not levels:
        raise ValueError("alpha_bars must hold at least one noise level, got none")
    path = [x[None]]
    for ab in levels:
        step = step_size * (1 - ab) / (1 - levels[-1])
        out = langevin(
            lambda y, ab=ab: score_fn(y, ab), x, step, n_steps, generator, return_trajectory
        )
        x = out[-1] if return_trajectory else out
        if return_trajectory:
            path.append(out[1:])
    return torch.cat(path) if return_trajectory else x
