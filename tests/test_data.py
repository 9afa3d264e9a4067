"""Tests for lesson_lib.data: the bundled MNIST subset, the offline fallback, batches, toy data."""

import hashlib
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lesson_lib import data
from lesson_lib.data import batches, load_mnist, spiral, two_moons


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """Each test starts as a new process would: nothing announced, no cached arrays, and no
    LESSON_LIB_OFFLINE from the environment."""
    monkeypatch.setattr(data, "_said", set())
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    data._bundled_uint8.cache_clear()


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve a name or open a socket raises, as on a machine with no network."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def write_fake_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> None:
    """Tiny MNIST files in torchvision's raw idx format under root/MNIST/raw."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        images = (np.arange(n * 28 * 28) % 256).astype(">u1").reshape(n, 28, 28)
        labels = (np.arange(n) % 10).astype(">u1")
        header = np.array([2051, n, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        header = np.array([2049, n], dtype=">i4").tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())


# ----------------------------------------------------------------------------- bundled subset


def test_bundled_file_matches_the_sha256_in_its_readme():
    readme = (data.BUNDLED.parent / "README.md").read_text()
    recorded = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", readme).group(1)
    assert hashlib.sha256(data.BUNDLED.read_bytes()).hexdigest() == recorded


@pytest.mark.parametrize("split, n", [("train", 4500), ("heldout", 500)])
def test_bundled_split_shapes_range_and_classes(split, n):
    images, labels = load_mnist(split, source="bundled")
    assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.long
    assert images.min() == -1 and images.max() == 1
    assert torch.equal(labels.bincount(), torch.full((10,), n // 10))  # stratified: 450 / 50 each
    assert torch.equal(labels[:10], torch.arange(10))  # interleaved, so a slice shows every digit
    assert (images > -1).float().mean().item() == pytest.approx(0.19, abs=0.02)  # MNIST's ink


def test_bundled_split_is_fixed_and_ignores_the_random_state():
    torch.manual_seed(0)
    np.random.seed(0)
    a = load_mnist("heldout", source="bundled")
    data._bundled_uint8.cache_clear()
    torch.manual_seed(1)
    np.random.seed(1)
    torch.rand(100)
    b = load_mnist("heldout", source="bundled")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bundled_train_and_heldout_are_disjoint_and_cover_the_file():
    def keys(images):
        pixels = ((images + 1) * 127.5).round().to(torch.uint8).flatten(1).numpy()
        return {row.tobytes() for row in pixels}

    train = keys(load_mnist("train", source="bundled")[0])
    heldout = keys(load_mnist("heldout", source="bundled")[0])
    with np.load(data.BUNDLED) as f:
        everything = {row.tobytes() for row in f["images"].reshape(5000, -1)}
    assert not train & heldout
    assert train | heldout == everything


def test_returned_tensors_are_fresh_copies():
    images, labels = load_mnist(source="bundled")
    images.fill_(0)
    labels.fill_(0)
    again, labels_again = load_mnist(source="bundled")
    assert again.min() == -1 and labels_again.max() == 9


# ----------------------------------------------------------------------------- source choice


def test_auto_offline_falls_back_to_the_bundled_subset_at_once(tmp_path, no_network, capsys):
    """After one refused connection: no retries, no download tried."""
    images, labels = load_mnist("train", root=tmp_path)
    assert images.shape == (4500, 1, 28, 28)
    assert len(no_network) == 1, "the fallback should follow one refused connection"
    out = capsys.readouterr().out
    assert "bundled MNIST subset" in out and "cannot be reached" in out


def test_auto_does_not_hang_when_the_network_hangs(tmp_path, monkeypatch):
    """The connection hangs until the test releases it, after load_mnist has returned: a
    load_mnist that waited for it would return only once the hang had ended."""
    release, ended = threading.Event(), threading.Event()

    def hang(*args, **kwargs):
        release.wait(60)
        ended.set()
        raise OSError("released by the test")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        images, _ = load_mnist("heldout", root=tmp_path, timeout=0.3)
        assert not ended.is_set(), "load_mnist waited for the hung connection"
        assert images.shape == (500, 1, 28, 28)
    finally:
        release.set()


def test_auto_skips_the_network_when_told(tmp_path, no_network, monkeypatch):
    load_mnist(root=tmp_path, download=False)
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    load_mnist(root=tmp_path)
    assert not no_network


def test_auto_uses_mnist_found_on_disk(tmp_path, no_network, capsys):
    write_fake_mnist(tmp_path)
    images, labels = load_mnist("train", root=tmp_path)
    assert images.shape == (20, 1, 28, 28) and labels.shape == (20,)
    assert images.min() == -1 and images.max() == 1
    assert load_mnist("heldout", root=tmp_path)[0].shape == (10, 1, 28, 28)
    assert "full MNIST from torchvision" in capsys.readouterr().out
    assert not no_network


def test_auto_downloads_when_it_can(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda address, timeout: True)
    monkeypatch.setattr(data, "_download", lambda root, timeout: write_fake_mnist(root))
    assert load_mnist(root=tmp_path)[0].shape == (20, 1, 28, 28)


def test_auto_falls_back_when_a_download_fails(tmp_path, monkeypatch, capsys):
    def broken(root, timeout):
        raise RuntimeError("connection reset")

    monkeypatch.setattr(data, "_reachable", lambda address, timeout: True)
    monkeypatch.setattr(data, "_download", broken)
    assert load_mnist(root=tmp_path)[0].shape == (4500, 1, 28, 28)
    assert "failed" in capsys.readouterr().out


def test_the_source_is_announced_once_per_process(tmp_path, no_network, capsys):
    for split in ["train", "heldout", "train"]:
        load_mnist(split, root=tmp_path)
    assert capsys.readouterr().out.count("lesson_lib: using") == 1


def test_torchvision_source_without_data_says_what_to_do(tmp_path, no_network):
    with pytest.raises(RuntimeError, match="source='bundled'"):
        load_mnist(source="torchvision", root=tmp_path, download=False)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"split": "test"}, "split"),
        ({"source": "internet"}, "source"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "5"}, "timeout"),
    ],
)
def test_load_mnist_bad_input_names_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        load_mnist(**kwargs)


# ----------------------------------------------------------------------------- batches


def test_batches_cover_each_pass_and_repeat_with_the_generator():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    it = batches(x, y, batch_size=5, generator=torch.Generator().manual_seed(0))
    first = [next(it) for _ in range(2)]
    assert all(bx.shape == (5, 1) and by.shape == (5,) for bx, by in first)
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in first)  # rows stay paired
    assert sorted(torch.cat([by for _, by in first]).tolist()) == list(range(10))
    again = batches(x, y, batch_size=5, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a[1], next(again)[1]) for a in first)


def test_batches_drop_the_incomplete_last_batch():
    it = batches(torch.arange(7), batch_size=3, generator=torch.Generator().manual_seed(0))
    assert all(next(it)[0].shape == (3,) for _ in range(10))


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((torch.zeros(4), torch.zeros(5)), {"batch_size": 2}, "tensors"),
        ((torch.zeros(4),), {"batch_size": 5}, "batch_size"),
        ((torch.zeros(4),), {"batch_size": 0}, "batch_size"),
        (([1, 2, 3],), {"batch_size": 1}, "tensors"),
    ],
)
def test_batches_bad_input_names_the_argument(args, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        next(batches(*args, **kwargs))


# ----------------------------------------------------------------------------- 2-D toy data


@pytest.mark.parametrize("make", [two_moons, spiral])
def test_toy_data_shape_scale_and_reproducibility(make):
    x = make(20_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    assert x.mean(0).abs().max() < 0.05
    assert x.var(0).mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(
        make(5, generator=torch.Generator().manual_seed(3)),
        make(5, generator=torch.Generator().manual_seed(3)),
    )


def test_two_moons_has_two_equal_moons_on_half_circles():
    x = two_moons(20_000, noise=0.0, generator=torch.Generator().manual_seed(0)).double()
    # undo the scaling with the exact moments of the noise-free moons: mean (1/2, 1/4),
    # variances 3/4 and 1/2 - 4/pi^2 + (4/pi - 1/2)^2 / 4
    var = (0.75 + 0.5 - 4 / np.pi**2 + (4 / np.pi - 0.5) ** 2 / 4) / 2
    p = x * var**0.5 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    # the upper moon lies on the unit circle around (0, 0), the lower one around (1, 1/2)
    r_upper = p.norm(dim=1)
    r_lower = (p - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1)
    on_upper = (r_upper - 1).abs() < 1e-4
    on_lower = (r_lower - 1).abs() < 1e-4
    assert bool((on_upper | on_lower).all())
    assert on_upper.double().mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: two_moons(0), "n"),
        (lambda: two_moons(10, noise=-1.0), "noise"),
        (lambda: spiral(10, turns=0), "turns"),
        (lambda: spiral(2.5), "n"),
    ],
)
def test_toy_data_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()
