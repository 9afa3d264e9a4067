"""The noise-predicting U-Net: eps_theta(x_t, t, y, context).

The course U-Net follows Ho et al. 2020 (Appendix B: a PixelCNN++-style U-Net of residual blocks
with GroupNorm, self-attention at the lowest resolution, a sinusoidal time embedding) with the
improvements of Nichol & Dhariwal 2021 (the time and class embedding scale and shift the
normalised features, "adaptive group norm"), class labels through a learned embedding with a
null class for classifier-free guidance (Ho & Salimans 2022), and optional cross-attention to a
context sequence as in latent diffusion (Rombach et al. 2022).

The bottom of the file keeps the lesson's ``SimpleUNet`` with its two bugs, and the smallest
repair that makes it run (``repaired=True``).

Shapes: B batch, C channels, H x W image, E embedding width, L context tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lesson_lib.attention import SelfAttention, SpatialCrossAttention
from lesson_lib.checks import check_flow_times, check_int, check_real, check_tensor, check_timesteps

# ----------------------------------------------------------------------------- building blocks


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
    (Nichol & Dhariwal 2021, "AdaGN") -> SiLU -> Dropout -> Conv, plus a 1x1 conv skip when the
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


@dataclass
class UNetConfig:
    in_channels: int = 1  # image channels in (and eps channels out): 1 for MNIST, 4 for latents
    base_channels: int = 32  # channels at full resolution; level i has base * channel_mults[i]
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one per resolution level: 28 -> 14 -> 7
    num_res_blocks: int = 1  # ResBlocks per level going down (one more going up); Ho et al. used 2
    attn_levels: tuple[int, ...] | None = None  # levels with attention; None = lowest level only
    heads: int = 4  # attention heads (self- and cross-attention)
    groups: int = 8  # GroupNorm groups; must divide every level's channel count
    dropout: float = 0.1  # dropout inside each ResBlock (Ho et al. 2020 used 0.1 on CIFAR-10)
    num_classes: int | None = 10  # class labels 0..num_classes-1, num_classes = null; None = none
    context_dim: int | None = None  # width of cross-attention context tokens; None = no context
    num_timesteps: int = 1000  # T: the model accepts t = 0 ... T-1
    continuous_time: bool = False  # True: t is a float flow time in [0, 1], embedded as t * T

    def __post_init__(self):
        check_int("in_channels", self.in_channels, low=1)
        check_int("base_channels", self.base_channels, low=4)
        if self.base_channels % 2:
            raise ValueError(f"base_channels={self.base_channels} must be even (time embedding)")
        self.channel_mults = tuple(self.channel_mults)
        if not self.channel_mults:
            raise ValueError("channel_mults=() is empty: give at least one level, e.g. (1,)")
        for m in self.channel_mults:
            check_int("channel_mults[i]", m, low=1)
        check_int("num_res_blocks", self.num_res_blocks, low=1)
        n = len(self.channel_mults)
        if self.attn_levels is None:
            self.attn_levels = (n - 1,)
        self.attn_levels = tuple(self.attn_levels)
        for level in self.attn_levels:
            check_int("attn_levels[i]", level, low=0, high=n - 1)
        check_int("heads", self.heads, low=1)
        check_int("groups", self.groups, low=1)
        for level, m in enumerate(self.channel_mults):
            ch = self.base_channels * m
            if ch % self.groups:
                raise ValueError(
                    f"level {level} has {ch} channels: not divisible by groups={self.groups}"
                )
            if (level in self.attn_levels or level == n - 1) and ch % self.heads:
                raise ValueError(
                    f"level {level} has {ch} channels: not divisible by heads={self.heads}"
                )
        check_real("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, low=1)
        if self.context_dim is not None:
            check_int("context_dim", self.context_dim, low=1)
        check_int("num_timesteps", self.num_timesteps, low=1)

    @property
    def emb_dim(self) -> int:
        """Width of the time (+ class) embedding: 4 x base_channels, as in Ho et al. 2020."""
        return 4 * self.base_channels


class UNet(nn.Module):
    """The course U-Net: predicts eps from (x_t, t), optionally given class labels and context.

    ``model(x, t)`` or ``model(x, t, y=None)`` is unconditional; ``model(x, t, y)`` is
    conditional, where ``y`` may hold the null label ``num_classes`` (10 for MNIST) for some
    entries, so classifier-free guidance can batch conditional and unconditional calls together.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        c = self.config = config if config is not None else UNetConfig()
        C, E = c.base_channels, c.emb_dim
        self.time_embed = nn.Sequential(  # Ho et al. 2020: sinusoid -> MLP
            SinusoidalTimeEmbedding(C), nn.Linear(C, E), nn.SiLU(), nn.Linear(E, E)
        )
        # Labels 0..num_classes-1, and the null label num_classes for "no label".
        self.label_embed = nn.Embedding(c.num_classes + 1, E) if c.num_classes else None
        self.conv_in = nn.Conv2d(c.in_channels, C, 3, padding=1)

        def block(in_ch, out_ch, level):
            attention = level in c.attn_levels
            return UNetBlock(
                in_ch, out_ch, E, c.groups, c.dropout, c.heads, attention, c.context_dim
            )

        last = len(c.channel_mults) - 1
        self.down = nn.ModuleList()
        skip_chs, ch = [C], C  # channel count of every activation kept for a skip connection
        for level, mult in enumerate(c.channel_mults):
            for _ in range(c.num_res_blocks):
                self.down.append(block(ch, C * mult, level))
                ch = C * mult
                skip_chs.append(ch)
            if level < last:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)
        # The middle always has attention (Ho et al. 2020).
        self.mid = nn.ModuleList(
            [
                UNetBlock(ch, ch, E, c.groups, c.dropout, c.heads, True, c.context_dim),
                UNetBlock(ch, ch, E, c.groups, c.dropout, c.heads, False, None),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mults))):
            for _ in range(c.num_res_blocks + 1):
                self.up.append(block(ch + skip_chs.pop(), C * mult, level))
                ch = C * mult
            if level > 0:
                self.up.append(Upsample(ch))
        self.norm_out = nn.GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the model starts by predicting eps = 0
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        return_attn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Predict the noise: x (B, C, H, W), t (B,) long -> eps (B, C, H, W).

        y: optional (B,) long labels in 0..num_classes (num_classes = null); None = all null.
        context: optional (B, L, context_dim) tokens for cross-attention (None = no context);
        context_mask: optional (B, L) bool, True for real tokens. With ``return_attn=True`` also
        returns each cross-attention layer's maps, a list of (B, heads, h, w, L) tensors.
        """
        B = self._check(x, t, y, context, context_mask)
        emb = self.time_embed(t * self.config.num_timesteps if self.config.continuous_time else t)
        if self.label_embed is not None:
            if y is None:
                y = torch.full((B,), self.config.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y)  # (B, E)
        maps = [] if return_attn else None

        h = self.conv_in(x)  # (B, base, H, W)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)
            else:
                h = layer(h, emb, context, context_mask, maps)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb, context, context_mask, maps)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h, size=skips[-1].shape[-2:])
            else:
                h = torch.cat([h, skips.pop()], dim=1)  # (B, ch + skip_ch, h, w)
                h = layer(h, emb, context, context_mask, maps)
        eps = self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)
        return (eps, maps) if return_attn else eps

    def _check(self, x, t, y, context, context_mask) -> int:
        c = self.config
        check_tensor("x", x)
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(
                f"x must have shape (B, {c.in_channels}, H, W) with in_channels={c.in_channels}, "
                f"got shape {tuple(x.shape)}"
            )
        if not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        B = x.shape[0]
        if c.continuous_time:
            check_flow_times("t", t, batch=B)
        else:
            check_timesteps("t", t, c.num_timesteps, batch=B)
        if y is not None:
            if c.num_classes is None:
                raise ValueError("y was given but this model has num_classes=None (no labels)")
            check_tensor("y", y)
            if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
                raise TypeError(f"y must be an integer tensor (torch.long), got dtype {y.dtype}")
            if tuple(y.shape) != (B,):
                raise ValueError(f"y must have shape (B,)=({B},), got shape {tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) > c.num_classes):
                raise ValueError(
                    f"y has values in [{int(y.min())}, {int(y.max())}]: allowed 0 <= y <= "
                    f"{c.num_classes - 1} (classes) or y = {c.num_classes} (null, no label)"
                )
        if context is not None:
            if c.context_dim is None:
                raise ValueError("context was given but this model has context_dim=None")
            check_tensor("context", context)
            if context.ndim != 3 or context.shape[0] != B or context.shape[2] != c.context_dim:
                raise ValueError(
                    f"context must have shape (B, L, context_dim)=({B}, L, {c.context_dim}), "
                    f"got shape {tuple(context.shape)}"
                )
        if context_mask is not None:
            if context is None:
                raise ValueError("context_mask was given without context")
            check_tensor("context_mask", context_mask)
            if context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]:
                raise ValueError(
                    f"context_mask must be a bool tensor of shape (B, L)={tuple(context.shape[:2])}"
                    f" (True = real token), got dtype {context_mask.dtype} and shape "
                    f"{tuple(context_mask.shape)}"
                )
        return B


# ----------------------------------------------------------------------------- the lesson's U-Net


class Block(nn.Module):
    """The lesson's conv block: Conv -> ReLU -> BatchNorm, + time, Conv -> ReLU -> BatchNorm, then
    a stride-2 conv down or a transposed conv up.

    ``skip_ch``: channels of the skip concatenated to an up block's input. The lesson assumes it
    equals ``in_ch`` (``Conv2d(2 * in_ch, ...)``), which is false for two of its three up blocks.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        time_emb_dim: int,
        up: bool = False,
        skip_ch: int | None = None,
    ):
        super().__init__()
        self.time_mlp = nn.Linear(time_emb_dim, out_ch)
        if up:
            skip_ch = in_ch if skip_ch is None else skip_ch
            self.conv1 = nn.Conv2d(in_ch + skip_ch, out_ch, 3, padding=1)
            self.transform = nn.ConvTranspose2d(out_ch, out_ch, 4, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            self.transform = nn.Conv2d(out_ch, out_ch, 4, 2, 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bnorm1 = nn.BatchNorm2d(out_ch)
        self.bnorm2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.bnorm1(self.relu(self.conv1(x)))
        time_emb = self.relu(self.time_mlp(t))[:, :, None, None]  # (B, out_ch, 1, 1)
        h = h + time_emb
        h = self.bnorm2(self.relu(self.conv2(h)))
        return self.transform(h)  # (B, out_ch, H/2, W/2) down, (B, out_ch, 2H, 2W) up


class SimpleUNet(nn.Module):
    """The lesson's simple U-Net; ``repaired=False`` keeps its two bugs, ``True`` fixes them.

    What is broken in the lesson (``repaired=False``):

    1. Channel bookkeeping. Every up block is built as ``Conv2d(2 * in_ch, ...)``, assuming the
       skip has as many channels as the input. The skips have 128, 256, 256 channels (popped
       in reverse), so the second up block gets 128 + 256 = 384 channels where it expects 256,
       and the third gets 64 + 128 = 192 where it expects 128. At 32x32 this fails with
       "expected input[B, 384, 8, 8] to have 256 channels, but got 384 channels instead".
    2. Odd sizes. At 28x28 the down path goes 28 -> 14 -> 7 -> 3 (a stride-2 conv floors), and
       the transposed conv doubles 3 to 6, which cannot be concatenated with the 7x7 skip
       ("Sizes of tensors must match except in dimension 1").

    The repair (``repaired=True``), the smallest change that runs at 28x28 and 32x32:

    1. each up block is told its skip's channel count (``skip_ch`` = 256, 256, 128);
    2. before each concatenation, x is resized (nearest) to the skip's size if it differs, and
       the output to the input's size, so 3 -> 6 -> 7 -> 14 -> 28.

    Left as in the lesson: BatchNorm (its statistics depend on the batch and differ between
    training and sampling; the course U-Net uses GroupNorm), ReLU, and a 64-channel first conv.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        time_dim: int = 256,
        repaired: bool = True,
    ):
        super().__init__()
        self.repaired = repaired
        self.time_mlp = nn.Sequential(
            SinusoidalPositionEmbeddings(time_dim), nn.Linear(time_dim, time_dim), nn.ReLU()
        )
        self.conv0 = nn.Conv2d(in_channels, 64, 3, padding=1)
        self.downs = nn.ModuleList(
            [Block(64, 128, time_dim), Block(128, 256, time_dim), Block(256, 256, time_dim)]
        )
        skips = (256, 256, 128) if repaired else (None, None, None)  # the fix for bug 1
        self.ups = nn.ModuleList(
            [
                Block(256, 128, time_dim, up=True, skip_ch=skips[0]),
                Block(128, 64, time_dim, up=True, skip_ch=skips[1]),
                Block(64, 64, time_dim, up=True, skip_ch=skips[2]),
            ]
        )
        self.output = nn.Conv2d(64, out_channels, 1)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W), timestep: (B,) -> (B, out_channels, H, W)."""
        size = x.shape[-2:]
        t = self.time_mlp(timestep)  # (B, time_dim)
        x = self.conv0(x)  # (B, 64, H, W)
        residuals = []
        for down in self.downs:
            x = down(x, t)
            residuals.append(x)
        for up in self.ups:
            residual = residuals.pop()
            if self.repaired and x.shape[-2:] != residual.shape[-2:]:  # the fix for bug 2
                x = F.interpolate(x, size=residual.shape[-2:], mode="nearest")
            x = torch.cat((x, residual), dim=1)
            x = up(x, t)
        if self.repaired and x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.output(x)
