"""Pictures: image grids and PNG encoding for the notebooks and scripts. No maths lives here."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .checks import check_int, check_tensor


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (..., H, W) -> uint8 numpy in [0, 255], same shape (values clipped)."""
    check_tensor("images", images)
    return (
        ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    )


def grid(images: torch.Tensor | np.ndarray, nrow: int = 10, pad: int = 2) -> np.ndarray:
    """(N, 1, H, W) images ([-1, 1] floats or uint8) -> one (rows*(H+pad)+pad, ...) uint8 array,
    ``nrow`` images per row, on a light grey background."""
    if isinstance(images, torch.Tensor):
        images = images if images.dtype == torch.uint8 else torch.from_numpy(to_uint8(images))
        images = images.cpu().numpy()
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    nrow = check_int("nrow", nrow, low=1)
    n, _, h, w = images.shape
    rows = -(-n // nrow)
    out = np.full((rows * (h + pad) + pad, min(n, nrow) * (w + pad) + pad), 200, np.uint8)
    for i, img in enumerate(images[:, 0]):
        r, c = divmod(i, nrow)
        out[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = img
    return out


def png(array: np.ndarray, scale: int = 3) -> bytes:
    """A uint8 (H, W) or (H, W, 3) array -> PNG bytes, enlarged ``scale`` times (nearest)."""
    img = Image.fromarray(np.ascontiguousarray(array))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig, dpi: int = 80) -> bytes:
    """A matplotlib figure -> PNG bytes (then closed), for precomputed widget frames."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def show_grid(
    images, nrow: int = 10, title: str | None = None, ax=None, labels: Sequence | None = None
):
    """Draw ``grid(images, nrow)`` with matplotlib; ``labels`` annotate the rows on the left."""
    import matplotlib.pyplot as plt

    g = grid(images, nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(g.shape[1] / 40, g.shape[0] / 40))
    ax.imshow(g, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    if labels is not None:
        h = (g.shape[0] - 2) / len(labels)
        ax.set_yticks([2 + h * (i + 0.5) for i in range(len(labels))], [str(s) for s in labels])
    if title:
        ax.set_title(title)
    return ax
