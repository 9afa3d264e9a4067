"""The U-Net's building blocks: the sinusoidal time embedding, the embedding-conditioned residual
block, attention at one resolution, and the down- and up-sampling steps.

Shapes: B batch, C channels, H x W image, E embedding width, L context tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttention, SpatialCrossAttention
from .checks import check_int

__all__ = [
    "SinusoidalTimeEmbedding",
    "SinusoidalPositionEmbeddings",
    "ResBlock",
    "UNetBlock",
    "Downsample",
    "Upsample",
]


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal embedding of integer timesteps, (B,) -> (B, dim).

    Vaswani et al. 2017, Sec. 3.5, as used for t by Ho et al. 2020: the first half is
    ``sin(t * f_i)``, the second ``cos(t * f_i)``, with ``f_i = 10000 ** (-i / (dim/2 - 1))``,
    i = 0 ... dim/2 - 1 (the ``- 1`` as in Ho et al.'s code and the lesson, so the frequencies run
    exactly from 1 down to 1/10000; improved-diffusion divides by dim/2 instead).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = check_int("dim", dim, low=4)
        if dim % 2:
            raise ValueError(f"dim={dim} must be even (half sines, half cosines)")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1)
        )  # (dim/2,)
        args = t.float()[:, None] * freqs[None, :]  # (B, dim/2)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


# The lesson's name for the same embedding (identical formula, identical numbers).
SinusoidalPositionEmbeddings = SinusoidalTimeEmbedding


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding (time + class), Ho et al. 2020 style.

    GroupNorm -> SiLU -> Conv, then GroupNorm scaled and shifted by the embedding
    (Dhariwal & Nichol 2021, Sec. 3, "AdaGN") -> SiLU -> Dropout -> Conv, plus a 1x1 conv skip when the
    channel count changes. The last conv starts at zero, so the block starts as the identity.
    """

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, groups: int = 8, dropout: float = 0.1
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)  # -> (scale, shift)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W), emb: (B, emb_dim) -> (B, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        emb = self.emb(F.silu(emb))[:, :, None, None]  # (B, 2 * out_ch, 1, 1)
        scale, shift = emb.chunk(2, dim=1)  # 2 x (B, out_ch, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class UNetBlock(nn.Module):
    """One step of the U-Net at one resolution: a ResBlock, then optional self- and
    cross-attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        groups: int,
        dropout: float,
        heads: int,
        attention: bool,
        context_dim: int | None,
    ):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, groups, dropout)
        self.attn = SelfAttention(out_ch, heads, groups) if attention else None
        self.cross = (
            SpatialCrossAttention(out_ch, context_dim, heads, groups)
            if attention and context_dim is not None
            else None
        )

    def forward(self, x, emb, context=None, context_mask=None, attn_maps=None):
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None and context is not None:
            if attn_maps is None:
                x = self.cross(x, context, context_mask)
            else:
                x, maps = self.cross(x, context, context_mask, return_attn=True)
                attn_maps.append(maps)
        return x


class Downsample(nn.Module):
    """Halve H and W (rounding up) with a stride-2 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, ceil(H/2), ceil(W/2))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the skip connection's size, then a 3x3 conv.

    Upsampling to the skip's size rather than by 2 is what lets odd sizes (7 -> 4 -> 7) work.
    """

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))  # (B, C, *size)


# ----------------------------------------------------------------------------- the course U-Net
