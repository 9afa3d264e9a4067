"""The MNIST classifier behind the sample-quality measures: a small CNN and its training loss.

``forward`` gives logits, ``features`` the 128-d penultimate activations used for the Fréchet
distance (``lesson_lib.metrics``). ``classifier_loss`` trains it with ``lesson_lib.loop.train``;
the recipe is ``mnist_classifier`` in ``lesson_lib.recipes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_images

__all__ = ["FEATURES", "Classifier", "augment", "classifier_loss"]

FEATURES = 128  # width of the penultimate layer: the feature space of the Fréchet distance


class Classifier(nn.Module):
    """A small MNIST CNN: three 3x3 conv layers (``widths`` channels; the first two max-pooled,
    28 -> 14 -> 7), each with BatchNorm and ReLU, a 128-d feature layer, dropout, 10 logits."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), dropout: float = 0.3):
        super().__init__()
        c1, c2, c3 = widths

        def block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            return [conv, *([nn.MaxPool2d(2)] if pool else []), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, c1, pool=True),  # (B, c1, 14, 14); pooling before the norm is cheaper
            *block(c1, c2, pool=True),  # (B, c2, 7, 7)
            *block(c2, c3, pool=False),  # (B, c3, 7, 7)
            nn.Flatten(),  # (B, c3 * 49)
            nn.Linear(c3 * 7 * 7, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURES, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) images in [-1, 1] -> (B, 128) penultimate activations."""
        check_images("x", x)
        x = x.to(self.head[1].weight.dtype)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) images in [-1, 1] -> (B, 10) logits."""
        return self.head(self.features(x))


def augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    shift: float = 2.0,
    degrees: float = 10.0,
    scale: float = 0.1,
) -> torch.Tensor:
    """Random affine warp of each image: shift up to ``shift`` px, rotation up to ``degrees``,
    zoom by a factor in ``[1 - scale, 1 + scale]``. (B, 1, 28, 28) -> same; background stays -1."""
    b, dev = x.shape[0], x.device
    u = torch.rand(b, 4, generator=generator, device=dev, dtype=x.dtype) * 2 - 1  # U(-1, 1)
    angle = u[:, 0] * math.radians(degrees)
    zoom = 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    move = u[:, 2:] * shift * 2 / x.shape[-1]  # px -> grid units ([-1, 1] spans the image)
    theta = torch.stack(
        [torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1
    )  # (B, 2, 3): output pixel -> where it is read from in the input
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def classifier_loss(
    model: Callable, batch: Sequence[torch.Tensor], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Cross-entropy (label smoothing 0.1) on augmented images; ``batch = (images, labels)``.

    The signature ``lesson_lib.loop.train`` expects as ``loss_fn``.
    """
    images, labels = batch[0], batch[1]
    check_images("images", images)
    return F.cross_entropy(model(augment(images, generator)), labels, label_smoothing=0.1)
