"""The Fréchet distance beside its floor, and the quality report that gathers every measure.

The Fréchet distance here is FID's formula (Heusel et al. 2017) on the small MNIST classifier's
features, not on Inception's: its numbers are comparable only with each other, and at a fixed
sample count (the estimate is biased upward for small sets; Chong & Forsyth 2020). That is why it
is always reported beside its floor: the same distance for held-out real digits, at the same count.
``quality_report`` computes accuracy, digit shares, Fréchet distance and novelty at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import check_images, check_tensor
from .classifier import Classifier
from .metrics import Novelty, accuracy, digit_histogram, features, novelty

__all__ = [
    "frechet_distance",
    "FrechetResult",
    "FrechetReference",
    "fd_with_floor",
    "QualityReport",
    "report_table",
    "quality_report",
]


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
