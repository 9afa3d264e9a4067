"""A Gaussian mixture with exact density and score at every noise level (notebooks 06, 09, 10).

Noising a mixture keeps it a mixture. With ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``
(Ho et al. 2020, Eq. 4) and ``x0 ~ sum_k w_k N(mu_k, diag(sigma_k^2))``, the marginal of ``x_t`` is

    sum_k w_k N(sqrt(alpha_bar) mu_k, diag(alpha_bar sigma_k^2 + 1 - alpha_bar)),

so its score ``grad_x log p_t(x)`` is exact, and ``eps = -sqrt(1 - alpha_bar) * score``
(``lesson_lib.param.eps_from_score``) is the noise a perfect model would predict:
``exact_eps_model(gm, schedule)``, which any course sampler accepts.
``alpha_bar`` is a float (or a one-element tensor such as ``schedule.alpha_bar[t]``); 1 means clean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checks import check_int, check_number, check_real, check_tensor, check_timesteps
from .param import eps_from_score
from .schedules import NoiseSchedule

__all__ = ["GaussianMixture", "exact_eps_model"]


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
        ab = check_number("alpha_bar", alpha_bar, low=0.0, high=1.0)
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
