"""The noise-predicting U-Net: eps_theta(x_t, t, y, context).

The course U-Net follows Ho et al. 2020 (Appendix B: a PixelCNN++-style U-Net of residual blocks
with GroupNorm, self-attention at the lowest resolution, a sinusoidal time embedding) with the
improvement of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis", Sec. 3:
the time and class embedding scale and shift the normalised features, "adaptive group norm"),
class labels through a learned embedding with a null class for classifier-free guidance (Ho &
Salimans 2022), and optional cross-attention to a context sequence as in latent diffusion
(Rombach et al. 2022). Its building blocks are in ``lesson_lib.blocks``; the lesson's
``SimpleUNet`` (broken and repaired) is in ``lesson_lib.simple_unet``.

Shapes: B batch, C channels, H x W image, E embedding width, L context tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample, SinusoidalTimeEmbedding, UNetBlock, Upsample
from .checks import (
    check_flow_times,
    check_int,
    check_labels,
    check_mask,
    check_real,
    check_tensor,
    check_timesteps,
)


@dataclass(frozen=True)
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
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))  # frozen
        if not self.channel_mults:
            raise ValueError("channel_mults=() is empty: give at least one level, e.g. (1,)")
        for m in self.channel_mults:
            check_int("channel_mults[i]", m, low=1)
        check_int("num_res_blocks", self.num_res_blocks, low=1)
        n = len(self.channel_mults)
        levels = (n - 1,) if self.attn_levels is None else tuple(self.attn_levels)
        object.__setattr__(self, "attn_levels", levels)
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
            note = f"({c.num_classes} = null, no label)"
            check_labels("y", y, c.num_classes, batch=B, note=note)
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
            check_mask("context_mask", context_mask, context.shape[:2])
        return B
