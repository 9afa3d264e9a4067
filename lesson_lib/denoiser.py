"""A small noise-prediction network for 2-D points, trained in seconds (notebook 06)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SinusoidalTimeEmbedding
from .checks import check_int, check_points, check_real, check_timesteps

__all__ = ["MLPDenoiser"]


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
        check_points("x_t", x_t, self.dim)
        t = check_timesteps("t", t, self.T, x_t.shape[0])
        angle = 2 * math.pi * x_t @ self.freqs.to(x_t.dtype)  # (B, fourier)
        h = self.inp(torch.cat([x_t, angle.sin(), angle.cos()], dim=-1))  # (B, hidden)
        emb = self.time(t)  # (B, hidden)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(F.silu(h))  # (B, dim)
