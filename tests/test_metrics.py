"""Tests for lesson_lib.metrics: the Fréchet distance against independent references, novelty on
real digits, the counting measures with a stub classifier, and argument errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lesson_lib.classifier import FEATURES, Classifier, augment, classifier_loss
from lesson_lib.data import load_mnist
from lesson_lib.metrics import accuracy, digit_histogram, nn_distances, novelty, predict
from lesson_lib.quality import (
    FrechetReference,
    fd_with_floor,
    frechet_distance,
    quality_report,
    report_table,
)


@pytest.fixture(scope="module")
def mnist():
    """The bundled split: (train images, train labels, held-out images, held-out labels)."""
    return (*load_mnist("train", source="bundled"), *load_mnist("heldout", source="bundled"))


class Stub(nn.Module):
    """Reads the digit written into pixel (0, 0) as value d / 10; features: 4x4 average pooling."""

    def forward(self, x):
        code = x[:, 0, 0, 0:1] * 10  # (B, 1)
        return -(torch.arange(10, dtype=x.dtype) - code).square()  # (B, 10) logits

    def features(self, x):
        return F.adaptive_avg_pool2d(x, 4).flatten(1)  # (B, 16)


def coded(digits):
    """Images whose pixel (0, 0) tells Stub which digit they are: (N, 1, 28, 28)."""
    x = torch.zeros(len(digits), 1, 28, 28)
    x[:, 0, 0, 0] = torch.as_tensor(digits, dtype=torch.float32) / 10
    return x


# ----------------------------------------------------------------------------- Fréchet distance


def fd_numpy(a, b):
    """Independent reference: the trace of sqrt(S_a S_b) from the eigenvalues of the
    non-symmetric product S_a S_b (they equal those of S_a^1/2 S_b S_a^1/2)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s_a @ s_b)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    mu = a.mean(0) - b.mean(0)
    return mu @ mu + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt


def test_frechet_matches_numpy_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g)
    b = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g) + 0.5
    assert frechet_distance(a, b) == pytest.approx(fd_numpy(a, b), rel=1e-9)


def test_frechet_closed_form_for_diagonal_gaussians():
    """Sets whose sample mean and covariance are exactly mu and diag(var):
    FD = ||mu_a - mu_b||^2 + sum (sqrt(var_a) - sqrt(var_b))^2."""
    g = torch.Generator().manual_seed(1)

    def exact(mu, var):
        z = torch.randn(50, len(mu), generator=g, dtype=torch.float64)
        z = z - z.mean(0)
        z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # sample cov = I
        return z * var.sqrt() + mu

    mu_a, var_a = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 4.0, 0.25])
    mu_b, var_b = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([9.0, 1.0, 0.25])
    expected = (mu_a - mu_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum()
    fd = frechet_distance(exact(mu_a, var_a), exact(mu_b, var_b))
    assert fd == pytest.approx(expected.item(), rel=1e-9)  # 5 + 4 + 1 + 0 = 10
    assert fd == pytest.approx(10.0, rel=1e-9)


def test_frechet_zero_on_itself_symmetric_and_rotation_invariant():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(100, 8, generator=g), 2 * torch.randn(120, 8, generator=g) + 1
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))  # rotate both sets the same way
    assert frechet_distance(a @ q + 3, b @ q + 3) == pytest.approx(frechet_distance(a, b), rel=1e-6)
    assert frechet_distance(a, b) > 1.0


def test_frechet_rank_deficient_covariance_is_finite():
    """Fewer points than dimensions: singular covariances with tiny negative eigenvalues."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 40, generator=g), torch.randn(7, 40, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(fd_numpy(a, b), rel=1e-6)


def test_fd_with_floor_uses_the_same_count():
    g = torch.Generator().manual_seed(4)
    ref, floor = torch.rand(300, 1, 28, 28, generator=g), torch.rand(80, 1, 28, 28, generator=g)
    same = fd_with_floor(Stub(), floor, ref, floor)
    assert same.n == 80 and same.fd == same.floor and same.ratio == 1.0
    blurry = torch.full((200, 1, 28, 28), 0.5) + 0.01 * torch.randn(200, 1, 28, 28, generator=g)
    result = fd_with_floor(Stub(), blurry, ref, floor)
    assert result.n == 80
    assert result.floor == pytest.approx(same.floor)
    assert result.ratio > 1.5


def test_frechet_reference_featurises_the_real_digits_once():
    """Scoring several sample sets featurises only the samples; the figures match the
    numpy reference computed from scratch for each set."""
    g = torch.Generator().manual_seed(5)
    ref, floor = torch.rand(120, 1, 28, 28, generator=g), torch.rand(60, 1, 28, 28, generator=g)
    seen = []

    class Counting(Stub):
        def features(self, x):
            seen.append(x.shape[0])
            return super().features(x)

    reference = FrechetReference(Counting(), ref, floor)
    assert seen == [120, 60]
    pool = Stub().features
    for n in (40, 90):
        samples = torch.rand(n, 1, 28, 28, generator=g)
        result = reference.score(samples)
        m = min(n, 60)
        assert result.n == m and seen[-1] == m
        assert result.fd == pytest.approx(fd_numpy(pool(samples[:m]), pool(ref)), rel=1e-6)
        assert result.floor == pytest.approx(fd_numpy(pool(floor[:m]), pool(ref)), rel=1e-6)
    assert len(seen) == 4


# ----------------------------------------------------------------------------- novelty


def test_nn_distances_match_brute_force():
    g = torch.Generator().manual_seed(5)
    q, p = torch.randn(37, 1, 5, 5, generator=g), torch.randn(90, 1, 5, 5, generator=g)
    expected = torch.cdist(q.flatten(1).double(), p.flatten(1).double()).min(1).values
    torch.testing.assert_close(nn_distances(q, p, chunk=8), expected)


def test_novelty_flags_copies_of_training_digits(mnist):
    train, _, heldout, _ = mnist
    copies = novelty(train[:200], train, heldout)
    assert copies.ratio < 1e-3
    assert copies.copy_fraction == 1.0
    real = novelty(heldout, train, heldout)  # new digits by construction
    assert real.ratio == 1.0
    assert real.copy_fraction <= 0.02


def test_novelty_does_not_flag_noise(mnist):
    train, _, heldout, _ = mnist
    noise = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(6)) * 2 - 1
    result = novelty(noise, train, heldout)
    assert result.ratio > 1.5
    assert result.copy_fraction == 0.0


# ----------------------------------------------------------------------------- counting


def test_predict_accuracy_and_histogram_with_a_stub():
    digits = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 3])
    images = coded(digits)
    torch.testing.assert_close(predict(Stub(), images, batch_size=5), digits)
    asked = digits.clone()
    asked[:3] = 9  # three of twelve asked for something else
    assert accuracy(Stub(), images, asked) == pytest.approx(9 / 12)
    hist = digit_histogram(Stub(), images)
    assert hist.dtype == torch.float64 and hist.shape == (10,)
    assert hist.sum().item() == pytest.approx(1.0)
    assert hist[3].item() == pytest.approx(3 / 12)


def test_quality_report_runs_and_prints(mnist):
    train, _, heldout, _ = mnist
    samples = heldout[:100].clone()
    samples[:, 0, 0, 0] = torch.arange(100) % 10 / 10  # Stub reads these as digits 0..9
    labels = torch.arange(100) % 10
    report = quality_report(Stub(), samples, train, heldout, labels=labels)
    assert report.accuracy == 1.0 and report.n == 100
    assert report.histogram == pytest.approx((0.1,) * 10)
    assert report.frechet.n == 100 and report.frechet.ratio > 0
    assert 0.5 < report.novelty.ratio < 2
    assert set(report.as_dict()) >= {"accuracy", "fd", "fd_floor", "nn_ratio", "copy_fraction"}
    text = report_table(
        {"conditional": report, "unconditional": quality_report(Stub(), samples, train, heldout)}
    )
    assert "Fréchet" in text and "100.0%" in text and "copies" in text
    assert "Fréchet" in str(report)


# ----------------------------------------------------------------------------- the classifier


def test_classifier_shapes_and_eval_mode_restored():
    model = Classifier().train()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, FEATURES)
    assert predict(model, x).shape == (3,)
    assert model.training  # predict switched to eval mode and back


def test_augment_is_seeded_and_identity_when_turned_off(mnist):
    x = mnist[0][:8]
    torch.testing.assert_close(augment(x, shift=0.0, degrees=0.0, scale=0.0), x)
    a = augment(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.allclose(a, x)
    assert a.min() >= -1 - 1e-6 and a.max() <= 1 + 1e-6


def test_classifier_loss_trains_a_few_steps(mnist):
    from lesson_lib.loop import TrainConfig, train

    images, labels = mnist[0][:512], mnist[1][:512]
    torch.manual_seed(0)
    config = TrainConfig(steps=16, batch_size=32, lr=3e-3, warmup=0, log_every=8)
    result = train(Classifier(), classifier_loss, [images, labels], config, progress=False)
    (_, first), (_, last) = result.losses
    assert last < first < 3.0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: Classifier()(torch.zeros(2, 28, 28)), "x"),
        (lambda: frechet_distance(torch.zeros(5), torch.zeros(5, 1)), "feats_a"),
        (lambda: frechet_distance(torch.zeros(5, 2), torch.zeros(1, 2)), "feats_b"),
        (lambda: frechet_distance(torch.zeros(5, 2), torch.zeros(5, 3)), "same width"),
        (lambda: accuracy(Stub(), coded([1, 2]), torch.tensor([1])), "labels"),
        (lambda: accuracy(Stub(), coded([1, 2]), torch.tensor([1, 12])), "labels"),
        (lambda: predict(Stub(), torch.zeros(2, 3, 28, 28)), "images"),
        (lambda: predict(Stub(), coded([1]), batch_size=0), "batch_size"),
        (lambda: digit_histogram(Stub(), coded([])), "images"),
        (lambda: novelty(coded([1]), coded([2]), coded([3]), copy_quantile=2.0), "copy_quantile"),
        (lambda: novelty(coded([1]), torch.zeros(3, 1, 14, 14), coded([3])), "train_images"),
        (lambda: fd_with_floor(Stub(), coded([1]), coded([1, 2]), coded([1, 2])), "samples"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match="labels"):
        accuracy(Stub(), coded([1]), torch.tensor([1.0]))
    with pytest.raises(TypeError, match="classifier"):
        fd_with_floor(lambda x: x, coded([1, 2]), coded([1, 2]), coded([1, 2]))
