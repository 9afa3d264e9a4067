"""Noise schedules: the betas, and everything precomputed from them in float64.

Notation (Ho et al. 2020), with the names diffusers and the lesson use:

| here             | paper                          | diffusers / lesson       |
|------------------|--------------------------------|--------------------------|
| `betas[t]`       | beta_t                         | `betas`                  |
| `alphas[t]`      | alpha_t = 1 - beta_t           | `alphas`                 |
| `alpha_bar[t]`   | prod_{s<=t} alpha_s            | `alphas_cumprod`         |
| `alpha_bar_prev` | alpha_bar_{t-1} (1 at t = 0)   | `alphas_cumprod_prev`    |

Timesteps are indices `t = 0 … T-1`; index `t` is the paper's step `t + 1`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .checks import check_batched, check_int, check_real, check_tensor, check_timesteps, is_integer

__all__ = ["NoiseSchedule", "linear_betas", "cosine_betas", "broadcast_like", "as_timesteps"]


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Betas rising linearly from beta_start to beta_end (Ho et al. 2020, Sec. 4): (T,) float64."""
    T = check_int("T", T, low=1)
    beta_start = check_real("beta_start", beta_start, 0.0, 1.0, low_open=True, high_open=True)
    beta_end = check_real("beta_end", beta_end, 0.0, 1.0, low_open=True, high_open=True)
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(
    T: int, s: float = 0.008, max_beta: float = 0.999, min_beta: float = 0.0
) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17), betas clipped to [min_beta, max_beta].

    Same numbers as diffusers' `beta_schedule="squaredcos_cap_v2"`. The lesson clipped to
    `min_beta=1e-4, max_beta=0.9999`; the default here follows the paper (no lower clip, 0.999).
    Shape (T,), float64.
    """
    T = check_int("T", T, low=1)
    s = check_real("s", s, low=0.0)
    max_beta = check_real("max_beta", max_beta, 0.0, 1.0, low_open=True, high_open=True)
    min_beta = check_real("min_beta", min_beta, 0.0, max_beta, high_open=True)
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2  # Eq. 17: alpha_bar = f(t) / f(0)
    betas = 1 - f[1:] / f[:-1]  # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    return betas.clamp(min_beta, max_beta)


def broadcast_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values (B,) -> (B, 1, ..., 1), in x's dtype and on x's device.

    The cast happens on the CPU first, so float64 schedules work on devices without float64 (mps).
    """
    values = values.to(dtype=x.dtype).to(x.device)
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def as_timesteps(name: str, t, T: int, batch: int, low: int = 0) -> torch.Tensor:
    """Timesteps as a LongTensor (B,) on the CPU; a Python int means the same step for every sample.

    `low=-1` also allows -1 ("done", alpha_bar = 1), as for DDIM's `t_prev`.
    """
    if not isinstance(t, torch.Tensor):
        return torch.full((batch,), check_int(name, t, low, T - 1), dtype=torch.long)
    if low == 0:
        return check_timesteps(name, t, T, batch).cpu()
    # check_timesteps checks dtype, shape, batch and the upper bound; the lower bound is ours.
    check_timesteps(name, t.clamp(min=0) if is_integer(t) else t, T, batch)
    if t.numel() and int(t.min()) < low:
        raise ValueError(
            f"{name} has values in [{int(t.min())}, {int(t.max())}]: "
            f"allowed {low} <= {name} <= {T - 1}"
        )
    return t.cpu()


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A diffusion schedule: `betas` and the 1-D float64 tensors (T,) derived from them.

    Build one with `.linear(...)`, `.cosine(...)`, `.from_betas(betas)` or `NoiseSchedule(betas)`.
    """

    betas: torch.Tensor  # beta_t, (T,) float64
    alphas: torch.Tensor = field(init=False)  # alpha_t = 1 - beta_t
    alpha_bar: torch.Tensor = field(init=False)  # prod_{s<=t} alpha_s ("alphas_cumprod")
    alpha_bar_prev: torch.Tensor = field(init=False)  # alpha_bar_{t-1}, with 1 at t = 0

    def __post_init__(self):
        betas = check_tensor("betas", self.betas)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor (T,), got {tuple(betas.shape)}")
        if not betas.dtype.is_floating_point:
            raise TypeError(f"betas must be a floating-point tensor, got dtype {betas.dtype}")
        betas = betas.detach().to("cpu", torch.float64).clone()
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"betas has values in [{betas.min().item():.4g}, {betas.max().item():.4g}]: "
                "allowed 0 < betas < 1"
            )
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, dim=0)  # Ho et al. 2020, alpha_bar_t below Eq. 3
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        for name, value in [("betas", betas), ("alphas", alphas), ("alpha_bar", alpha_bar)]:
            object.__setattr__(self, name, value)
        object.__setattr__(self, "alpha_bar_prev", alpha_bar_prev)

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        """Schedule from any betas (T,) in (0, 1); stored as float64 on the CPU."""
        return cls(betas)

    @classmethod
    def linear(
        cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """Ho et al. 2020's linear schedule."""
        return cls(linear_betas(T, beta_start, beta_end))

    @classmethod
    def cosine(
        cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999, min_beta: float = 0.0
    ) -> NoiseSchedule:
        """Nichol & Dhariwal 2021's cosine schedule (Eq. 17), betas clipped at `max_beta`."""
        return cls(cosine_betas(T, s, max_beta, min_beta))

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.shape[0]

    def _index(self, table: torch.Tensor, t) -> torch.Tensor:
        """table (T,) at t: all of it for None, (B,) for a LongTensor (B,), 0-d for an int."""
        if t is None:
            return table
        if isinstance(t, torch.Tensor):
            return table[check_timesteps("t", t, self.T).cpu()]
        return table[check_int("t", t, 0, self.T - 1)]

    def snr(self, t=None) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at t (all T of them for None)."""
        return self._index(self.alpha_bar / (1 - self.alpha_bar), t)

    def log_snr(self, t=None) -> torch.Tensor:
        """log(alpha_bar / (1 - alpha_bar)) (Kingma et al. 2021's lambda), float64."""
        return self._index(torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar), t)

    def at(self, values: str | torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """`values[t]` shaped to broadcast against x: (B, 1, ..., 1), in x's dtype, on x's device.

        values: an attribute name ("alpha_bar", ...) or any float64 table (T,), e.g.
        `schedule.alpha_bar.sqrt()`; t: LongTensor (B,) or an int for the whole batch.
        """
        check_batched("x", x)
        table = getattr(self, values) if isinstance(values, str) else values
        t = as_timesteps("t", t, self.T, x.shape[0])
        return broadcast_like(table[t], x)
