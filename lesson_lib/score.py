"""Scores you can check: a Gaussian mixture with exact density and score at every noise level,
and Langevin dynamics that samples from a score alone (notebook 06).

Noising a mixture keeps it a mixture. With ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``
(Ho et al. 2020, Eq. 4) and ``x0 ~ sum_k w_k N(mu_k, diag(sigma_k^2))``, the marginal of ``x_t`` is

    sum_k w_k N(sqrt(alpha_bar) mu_k, diag(alpha_bar sigma_k^2 + 1 - alpha_bar)),

so its score ``grad_x log p_t(x)`` is exact, and ``eps = -sqrt(1 - alpha_bar) * score``
(``lesson_lib.param.eps_from_score``) is the noise a perfect model would predict.
``alpha_bar`` is a float (or a one-element tensor such as ``schedule.alpha_bar[t]``); 1 means clean.

For sampling with the course samplers: ``exact_eps_model(gm, schedule)`` is the perfect noise
predictor of a mixture, and ``MLPDenoiser`` a small network that learns one from samples in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lesson_lib.checks import check_int, check_real, check_tensor, check_timesteps
from lesson_lib.param import eps_from_score
from lesson_lib.schedules import NoiseSchedule
from lesson_lib.unet import SinusoidalTimeEmbedding

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def _number(name: str, value, **bounds) -> float:
    """``value`` (a number or a one-element tensor such as ``schedule.alpha_bar[t]``) as a float,
    checked with ``check_real(name, value, **bounds)``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be one number, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    return check_real(name, value, **bounds)


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class GaussianMixture:
    """``sum_k weights[k] * N(means[k], diag(stds[k]^2))`` in ``d`` dimensions; ``K`` components.

    Parameters are stored in float64: ``weights (K,)`` summing to 1, ``means (K, d)``,
    ``stds (K, d)``. Build one with ``GaussianMixture.create``; computations run in the dtype and
    on the device of the ``x`` they are given.
    """

    weights: torch.Tensor  # (K,) mixing weights w_k, sum to 1
    means: torch.Tensor  # (K, d) component means mu_k
    stds: torch.Tensor  # (K, d) per-coordinate standard deviations sigma_k

    @classmethod
    def create(cls, means, stds=1.0, weights=None) -> GaussianMixture:
        """Mixture from ``means (K, d)``, ``stds`` (a float, ``(K,)`` for isotropic components or
        ``(K, d)``) and ``weights (K,)`` (any positive numbers, normalised; default equal)."""
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(
                f"means must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}"
            )
        K, d = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1:
            stds = stds[:, None]  # (K, 1): isotropic
        if stds.ndim > 2 or not (stds.ndim == 0 or stds.shape[0] in (1, K)):
            raise ValueError(
                f"stds has shape {tuple(stds.shape)}; allowed: (), ({K},) or ({K}, {d})"
            )
        stds = torch.broadcast_to(stds, (K, d)).clone()
        if not bool((stds > 0).all()) or not bool(stds.isfinite().all()):
            raise ValueError(f"stds must all be positive and finite, got {stds.tolist()}")
        if weights is None:
            weights = torch.ones(K, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,):
            raise ValueError(f"weights has shape {tuple(weights.shape)}; expected ({K},)")
        if not bool((weights > 0).all()) or not bool(weights.isfinite().all()):
            raise ValueError(f"weights must all be positive and finite, got {weights.tolist()}")
        return cls(weights / weights.sum(), means, stds)

    @classmethod
    def example(
        cls, n_modes: int = 8, radius: float = 2.0, std: float = 0.25, weights=None
    ) -> GaussianMixture:
        """The notebook's 2-D example: ``n_modes`` equal round Gaussians evenly spaced on a ring."""
        n_modes = check_int("n_modes", n_modes, low=1)
        radius = check_real("radius", radius, low=0.0)
        std = check_real("std", std, low=0.0, low_open=True)
        angle = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
        means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (K, 2)
        return cls.create(means, std, weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def noised(self, alpha_bar) -> GaussianMixture:
        """The distribution of ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``: a mixture
        with means ``sqrt(alpha_bar) mu_k``, variances ``alpha_bar sigma_k^2 + 1 - alpha_bar``."""
        ab = _number("alpha_bar", alpha_bar, low=0.0, high=1.0)
        stds = (ab * self.stds**2 + (1 - ab)).sqrt()
        return GaussianMixture(self.weights, math.sqrt(ab) * self.means, stds)

    def _check_x(self, x) -> None:
        check_tensor("x", x)
        if x.ndim < 1 or x.shape[-1] != self.dim or not x.dtype.is_floating_point:
            raise ValueError(
                f"x must be a float tensor of shape (..., {self.dim}), "
                f"got shape {tuple(x.shape)} and dtype {x.dtype}"
            )

    def _log_joint(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log w_k + log N_k(x)`` of shape ``(..., K)``, and ``x - mu_k``, ``sigma_k^2``."""
        w, mu, s = (
            p.to(dtype=x.dtype, device=x.device) for p in (self.weights, self.means, self.stds)
        )
        diff = x[..., None, :] - mu  # (..., K, d)
        var = s**2  # (K, d)
        log_n = -0.5 * (diff**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)  # (..., K)
        return w.log() + log_n, diff, var

    def log_prob(self, x: torch.Tensor, alpha_bar=1.0) -> torch.Tensor:
        """``log p_t(x)`` of shape ``(...)`` for ``x`` of shape ``(..., d)`` at noise level
        ``alpha_bar`` (1 = the clean mixture)."""
        self._check_x(x)
        log_joint, _, _ = self.noised(alpha_bar)._log_joint(x)
        return torch.logsumexp(log_joint, dim=-1)

    def score(self, x: torch.Tensor, alpha_bar=1.0) -> torch.Tensor:
        """Exact score ``grad_x log p_t(x)`` of shape ``(..., d)`` at noise level ``alpha_bar``:
        ``sum_k r_k(x) (mu_k - x) / sigma_k^2``, responsibilities ``r_k = softmax_k(log w_k N_k)``.
        """
        self._check_x(x)
        log_joint, diff, var = self.noised(alpha_bar)._log_joint(x)
        resp = torch.softmax(log_joint, dim=-1)  # (..., K)
        return -(resp[..., None] * diff / var).sum(-2)  # (..., d)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        alpha_bar=1.0,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``n`` samples ``(n, d)`` at noise level ``alpha_bar``, on the generator's device."""
        n = check_int("n", n, low=0)
        m = self.noised(alpha_bar)
        device = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(m.weights.to(device), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        x = m.means.to(device)[k] + m.stds.to(device)[k] * z
        return x.to(dtype or torch.get_default_dtype())


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
    step_size = _number("step_size", step_size, low=0.0, low_open=True)
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
    step_size = _number("step_size", step_size, low=0.0, low_open=True)
    n_steps = check_int("n_steps", n_steps, low=0)
    bounds = dict(low=0.0, high=1.0, low_open=True, high_open=True)
    levels = [_number(f"alpha_bars[{i}]", a, **bounds) for i, a in enumerate(alpha_bars)]
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


# ----------------------------------------------------------------------------- noise predictors


def exact_eps_model(gm: GaussianMixture, schedule: NoiseSchedule) -> Callable:
    """The perfect noise predictor for data from ``gm``: ``model(x_t, t) -> eps``, shapes ``(B, d)``
    and ``(B,)``, computing ``eps = -sqrt(1 - alpha_bar_t) * grad log p_t(x_t)``, which is also
    ``E[eps | x_t]``, the minimiser of the training loss. Any course sampler accepts it."""

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gm._check_x(x_t)
        t = check_timesteps("t", t, schedule.T, x_t.shape[0])
        score = torch.empty_like(x_t)
        for step in t.unique().tolist():  # one noise level at a time
            rows = t == step
            score[rows] = gm.score(x_t[rows], schedule.alpha_bar[step])
        return eps_from_score(schedule, score, t)  # -sqrt(1 - alpha_bar_t) * score

    return model


class MLPDenoiser(nn.Module):
    """A small noise-prediction network for points: ``eps_theta(x_t, t)``, ``(B, dim)``, ``(B,)``
    -> ``(B, dim)``.

    ``x_t`` enters with random Fourier features ``[x, sin(2 pi x B), cos(2 pi x B)]``,
    ``B ~ N(0, fourier_scale^2)`` of shape ``(dim, fourier)``, fixed by ``seed`` (Tancik et al.
    2020: a plain MLP on raw coordinates is slow to learn the sharp fields of small noise levels).
    The sinusoidal embedding of ``t`` (as in the course U-Net), through a small MLP, is added to the
    input of every residual block ``h <- h + W_2 silu(W_1 silu(h + emb))``. About 90k parameters
    with the defaults: a few thousand steps fit a 2-D toy distribution on a CPU.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 2,
        T: int = 1000,
        fourier: int = 64,
        fourier_scale: float = 0.5,
        seed: int = 0,
    ):
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        hidden = check_int("hidden", hidden, low=4)
        depth = check_int("depth", depth, low=1)
        self.T = check_int("T", T, low=1)
        fourier = check_int("fourier", fourier, low=0)
        fourier_scale = check_real("fourier_scale", fourier_scale, low=0.0, low_open=True)
        g = torch.Generator().manual_seed(check_int("seed", seed, low=0))
        self.register_buffer("freqs", fourier_scale * torch.randn(dim, fourier, generator=g))
        self.time = nn.Sequential(  # t -> (B, hidden)
            SinusoidalTimeEmbedding(32), nn.Linear(32, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.inp = nn.Linear(dim + 2 * fourier, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(depth)
        )
        self.out = nn.Linear(hidden, dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_tensor("x_t", x_t)
        if x_t.ndim != 2 or x_t.shape[1] != self.dim or not x_t.dtype.is_floating_point:
            raise ValueError(
                f"x_t must be a float tensor of shape (B, {self.dim}), "
                f"got shape {tuple(x_t.shape)} and dtype {x_t.dtype}"
            )
        t = check_timesteps("t", t, self.T, x_t.shape[0])
        angle = 2 * math.pi * x_t @ self.freqs.to(x_t.dtype)  # (B, fourier)
        h = self.inp(torch.cat([x_t, angle.sin(), angle.cos()], dim=-1))  # (B, hidden)
        emb = self.time(t)  # (B, hidden)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(F.silu(h))  # (B, dim)
