"""The MNIST classifier and the sample-quality measures built on it.

- ``Classifier``: a small CNN; ``forward`` gives logits, ``features`` the 128-d penultimate
  activations used for the Fréchet distance. ``classifier_loss`` trains it with
  ``lesson_lib.loop.train`` (``CLASSIFIER_TRAIN`` is the recipe).
- Class-conditional samples: ``accuracy`` (does the classifier read the digit we asked for?).
- Any samples: ``digit_histogram`` (are all digits there?), ``fd_with_floor`` (Fréchet distance
  to real digits in classifier-feature space, beside the same number for *real* digits),
  ``novelty`` (are the samples new, or copies of training digits?).
- ``quality_report`` computes all of them at once and prints a table.

The Fréchet distance here is FID's formula (Heusel et al. 2017) on this small classifier's
features, not on Inception's: its numbers are comparable only with each other, and at a fixed
sample count (the estimate is biased upward for small sets; Chong & Forsyth 2020). That is why it
is always reported beside its floor: the same distance for held-out real digits, at the same count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_int, check_real, check_tensor
from .loop import TrainConfig

FEATURES = 128  # width of the penultimate layer: the feature space of the Fréchet distance

# The classifier's recipe with the default ``Classifier()`` (0.43 M parameters) and
# ``classifier_loss``, on the bundled 4,500 training digits (34 passes over them). Measured on the
# 500 held-out digits: 99.2% to 99.6% over three runs; about 65 s of CPU time (one core).
CLASSIFIER_TRAIN = TrainConfig(
    steps=1200,
    batch_size=128,
    lr=3e-3,
    weight_decay=1e-4,
    warmup=100,
    ema_decay=0.995,
    grad_clip=1.0,
    checkpoint_every=400,
    log_every=50,
    seed=0,
)


def check_images(name: str, images) -> torch.Tensor:
    """Raise unless ``images`` is a floating tensor of shape ``(B, 1, 28, 28)``; return it."""
    check_tensor(name, images)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(
            f"{name} must have shape (B, 1, 28, 28) (MNIST images in [-1, 1]), "
            f"got shape {tuple(images.shape)}"
        )
    if not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor in [-1, 1], got dtype {images.dtype}")
    return images


def _check_labels(name: str, labels, n: int) -> torch.Tensor:
    check_tensor(name, labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
        raise TypeError(
            f"{name} must be an integer tensor of digits with shape (N,), "
            f"got dtype {labels.dtype} and shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} labels but there are {n} images")
    if n and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError(
            f"{name} has values in [{int(labels.min())}, {int(labels.max())}]: allowed 0 ... 9"
        )
    return labels


# ----------------------------------------------------------------------------- the classifier


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

    The signature ``training.train`` expects as ``loss_fn``.
    """
    images, labels = batch[0], batch[1]
    check_images("images", images)
    return F.cross_entropy(model(augment(images, generator)), labels, label_smoothing=0.1)


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
    _check_labels("labels", labels, images.shape[0])
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


# ----------------------------------------------------------------------------- Fréchet distance


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (float64), by ``eigh``."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to ``feats_a`` (N, D) and ``feats_b`` (M, D).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` (Heusel et al. 2017,
    Eq. 6; Dowson & Landau 1982), in float64. ``(S_a^1/2 S_b S_a^1/2)^1/2`` is symmetric PSD, so
    its trace is the sum of the square roots of its eigenvalues; tiny negative ones from rounding
    are clamped to 0.
    """
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        check_tensor(name, f)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must have shape (N, D) with N >= 2, got {tuple(f.shape)}")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"feats_a and feats_b must have the same width D, got {feats_a.shape[1]} "
            f"and {feats_b.shape[1]}"
        )
    a, b = feats_a.double().cpu(), feats_b.double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(s_a)
    middle = root_a @ s_b @ root_a
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * tr_sqrt
    return max(fd.item(), 0.0)


@dataclass(frozen=True)
class FrechetResult:
    fd: float  # Fréchet distance of the samples to the real reference set
    floor: float  # the same for `n` held-out real digits: what a perfect model would score
    n: int  # the sample count both were measured at

    @property
    def ratio(self) -> float:
        """``fd / floor``: 1 is as good as real data."""
        return self.fd / self.floor if self.floor > 0 else math.inf


class FrechetReference:
    """The real digits a Fréchet distance is measured against, featurised once.

    ``real_ref``: the reference set (e.g. the training split). ``real_floor``: real digits *not*
    in ``real_ref`` (e.g. the held-out split), whose distance to ``real_ref`` is the floor a
    perfect model would score. ``score(samples)`` can then be called many times at the cost of
    featurising the samples alone.
    """

    def __init__(self, classifier: Classifier, real_ref: torch.Tensor, real_floor: torch.Tensor):
        for name, x in (("real_ref", real_ref), ("real_floor", real_floor)):
            _check_two_or_more(name, x)
        self.classifier = classifier
        self.ref = features(classifier, real_ref)
        self.floor_features = features(classifier, real_floor)

    def score(self, samples: torch.Tensor) -> FrechetResult:
        """Fréchet distance of ``samples`` to the reference, beside the floor at the same count
        ``n = min(len(samples), len(real_floor))``: the first ``n`` of each are used, so both
        numbers carry the same small-sample bias."""
        _check_two_or_more("samples", samples)
        n = min(samples.shape[0], self.floor_features.shape[0])
        return FrechetResult(
            fd=frechet_distance(features(self.classifier, samples[:n]), self.ref),
            floor=frechet_distance(self.floor_features[:n], self.ref),
            n=n,
        )


def _check_two_or_more(name: str, images: torch.Tensor) -> None:
    check_images(name, images)
    if images.shape[0] < 2:
        raise ValueError(f"{name} has {images.shape[0]} images; the Fréchet distance needs >= 2")


def fd_with_floor(
    classifier: Classifier,
    samples: torch.Tensor,
    real_ref: torch.Tensor,
    real_floor: torch.Tensor,
) -> FrechetResult:
    """Fréchet distance of ``samples`` to ``real_ref``, beside the real-vs-real floor (see
    ``FrechetReference``; build one instead when scoring several sample sets). All three are
    (N, 1, 28, 28) images."""
    return FrechetReference(classifier, real_ref, real_floor).score(samples)


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


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class QualityReport:
    n: int  # number of samples
    accuracy: float | None  # fraction read as the asked digit (None: unconditional samples)
    histogram: tuple[float, ...]  # fraction read as each digit 0 ... 9
    frechet: FrechetResult
    novelty: Novelty

    def as_dict(self) -> dict:
        """Plain numbers, e.g. for a checkpoint's ``info`` or a JSON file."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "histogram": list(self.histogram),
            "fd": self.frechet.fd,
            "fd_floor": self.frechet.floor,
            "fd_ratio": self.frechet.ratio,
            "fd_n": self.frechet.n,
            "nn_median": self.novelty.median_sample,
            "nn_median_heldout": self.novelty.median_heldout,
            "nn_ratio": self.novelty.ratio,
            "copy_fraction": self.novelty.copy_fraction,
        }

    def rows(self) -> list[tuple[str, str]]:
        """(measure, value) pairs in reading order."""
        acc = "-" if self.accuracy is None else f"{self.accuracy:.1%}"
        f, nv = self.frechet, self.novelty
        return [
            ("samples", f"{self.n}"),
            ("accuracy (asked digit)", acc),
            ("digits 0-9 (%)", " ".join(f"{100 * h:.0f}" for h in self.histogram)),
            (f"Fréchet distance (n={f.n})", f"{f.fd:.2f}"),
            ("  real-data floor", f"{f.floor:.2f}"),
            ("  ratio (1 = real)", f"{f.ratio:.2f}"),
            ("NN distance to train, median", f"{nv.median_sample:.2f}"),
            ("  held-out real digits", f"{nv.median_heldout:.2f}"),
            ("  ratio (1 = as new as real)", f"{nv.ratio:.2f}"),
            ("copies of training digits", f"{nv.copy_fraction:.1%}"),
        ]

    def __str__(self) -> str:
        return report_table({"": self})


def report_table(reports: dict[str, QualityReport]) -> str:
    """Several reports side by side, one column each (keys are the column titles)."""
    rows = [r.rows() for r in reports.values()]
    names = [name for name, _ in rows[0]]
    table = [["measure", *reports]] + [
        [name, *(r[i][1] for r in rows)] for i, name in enumerate(names)
    ]
    widths = [max(len(line[j]) for line in table) for j in range(len(table[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    return "\n".join(lines)


def quality_report(
    classifier: Classifier,
    samples: torch.Tensor,
    train_images: torch.Tensor,
    heldout_images: torch.Tensor,
    labels: torch.Tensor | None = None,
    reference: FrechetReference | None = None,
) -> QualityReport:
    """Every measure for one batch of ``samples`` (N, 1, 28, 28).

    ``labels`` (N,): the digits the samples were asked to be (class-conditional sampling), or
    None for unconditional samples. The Fréchet distance is to ``train_images``, with
    ``heldout_images`` as the floor (``reference``: the same, featurised once, when scoring many
    sample sets); novelty compares against the same two sets.
    """
    check_images("samples", samples)
    acc = None if labels is None else accuracy(classifier, samples, labels)
    return QualityReport(
        n=samples.shape[0],
        accuracy=acc,
        histogram=tuple(digit_histogram(classifier, samples).tolist()),
        frechet=(reference or FrechetReference(classifier, train_images, heldout_images)).score(
            samples
        ),
        novelty=novelty(samples, train_images, heldout_images),
    )
