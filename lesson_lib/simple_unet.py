"""The lesson's ``SimpleUNet``, kept with its two bugs, and the smallest repair that makes it run
(``repaired=True``); notebook 03 shows both. The course's own U-Net is ``lesson_lib.unet``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SinusoidalPositionEmbeddings

__all__ = ["Block", "SimpleUNet"]


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
