"""Sample-quality measures read off the MNIST classifier (``lesson_lib.classifier``).

- Class-conditional samples: ``accuracy`` (does the classifier read the digit we asked for?).
- Any samples: ``digit_histogram`` (are all digits there?), ``features`` (the classifier's
  penultimate activations, for the Fréchet distance in ``lesson_lib.quality``), ``novelty`` (are
  the samples new, or copies of training digits?).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .checks import check_images, check_int, check_labels, check_real, check_tensor
from .classifier import Classifier

# ----------------------------------------------------------------------------- predictions


@torch.no_grad()
def _batched(fn: Callable, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``fn`` over ``images`` in chunks of ``batch_size``, in eval mode, on the model's device."""
    batch_size = check_int("batch_size", batch_size, low=1)
    model = getattr(fn, "__self__", fn)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else images.device
    else:
        device = images.device
    try:
        outs = [fn(chunk.to(device)) for chunk in images.split(batch_size)]
    finally:
        if was_training:
            model.train()
    return torch.cat(outs) if outs else fn(images[:0].to(device))


def predict(classifier: Callable, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The digit the classifier reads in each image: (N, 1, 28, 28) -> (N,) long."""
    check_images("images", images)
    return _batched(classifier, images, batch_size).argmax(-1).to(images.device)


def accuracy(classifier: Callable, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` (N, 1, 28, 28) that the classifier reads as ``labels`` (N,)."""
    check_images("images", images)
    check_labels("labels", labels, 9, batch=images.shape[0], note="(digits)")
    if images.shape[0] == 0:
        raise ValueError("images is empty: accuracy needs at least one image")
    return (predict(classifier, images) == labels.to(images.device)).double().mean().item()


def digit_histogram(classifier: Callable, images: torch.Tensor) -> torch.Tensor:
    """Fraction of ``images`` (N, 1, 28, 28) read as each digit: (10,) float64, sums to 1."""
    check_images("images", images)
    if images.shape[0] == 0:
        raise ValueError("images is empty: a histogram needs at least one image")
    counts = torch.bincount(predict(classifier, images).cpu(), minlength=10)
    return counts.double() / counts.sum()


def features(classifier: Classifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The classifier's penultimate features of ``images`` (N, 1, 28, 28): (N, 128)."""
    check_images("images", images)
    if not callable(getattr(classifier, "features", None)):
        raise TypeError(
            f"classifier must have a .features(x) method (e.g. a Classifier), "
            f"got {type(classifier).__name__}"
        )
    return _batched(classifier.features, images, batch_size)


# ----------------------------------------------------------------------------- novelty


def nn_distances(queries: torch.Tensor, pool: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Pixel-space L2 distance from each of ``queries`` (N, ...) to its nearest neighbour in
    ``pool`` (M, ...): (N,) float64. Computed ``chunk`` queries at a time to keep memory small."""
    check_tensor("queries", queries)
    check_tensor("pool", pool)
    chunk = check_int("chunk", chunk, low=1)
    q, p = queries.flatten(1).double(), pool.flatten(1).double().to(queries.device)
    if q.shape[1] != p.shape[1] or p.shape[0] == 0:
        raise ValueError(
            f"queries {tuple(queries.shape)} and pool {tuple(pool.shape)} must hold images of the "
            "same size, and pool at least one"
        )
    p_sq = p.square().sum(1)  # (M,)
    out = []
    for c in q.split(chunk):
        d2 = c.square().sum(1, keepdim=True) + p_sq - 2 * c @ p.T  # (chunk, M)
        out.append(d2.min(1).values.clamp(min=0).sqrt())
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class Novelty:
    median_sample: float  # median distance of a sample to its nearest training digit
    median_heldout: float  # the same for held-out real digits (new by construction)
    copy_threshold: float  # the `copy_quantile` quantile of held-out nearest-neighbour distances
    copy_fraction: float  # fraction of samples nearer to a training digit than that threshold

    @property
    def ratio(self) -> float:
        """``median_sample / median_heldout``: about 1 for new digits, near 0 for copies."""
        return self.median_sample / self.median_heldout if self.median_heldout > 0 else math.inf


def novelty(
    samples: torch.Tensor,
    train_images: torch.Tensor,
    heldout_images: torch.Tensor,
    copy_quantile: float = 0.01,
) -> Novelty:
    """Are the samples new digits or copies of training digits?

    Compares the nearest-training-digit distance (pixel L2) of each sample with that of held-out
    real digits. A sample is counted as a copy when it is nearer to a training digit than all but
    ``copy_quantile`` of the held-out digits are. Images: (N, 1, 28, 28).
    """
    for name, x in (
        ("samples", samples),
        ("train_images", train_images),
        ("heldout_images", heldout_images),
    ):
        check_images(name, x)
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty: novelty needs at least one image")
    check_real("copy_quantile", copy_quantile, low=0.0, high=1.0)
    d_sample = nn_distances(samples, train_images)
    d_heldout = nn_distances(heldout_images, train_images)
    threshold = torch.quantile(d_heldout, copy_quantile).item()
    return Novelty(
        median_sample=d_sample.median().item(),
        median_heldout=d_heldout.median().item(),
        copy_threshold=threshold,
        copy_fraction=(d_sample < threshold).double().mean().item(),
    )
