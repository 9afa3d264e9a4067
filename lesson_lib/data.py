"""Data for the course: MNIST digits (full or a bundled offline subset) and 2-D toy sets.

``load_mnist`` gives images ``(N, 1, 28, 28)`` in ``[-1, 1]`` and labels ``(N,)``. It uses full
MNIST when torchvision's copy is on disk (read straight from its raw files) or can be downloaded
by torchvision, and otherwise the 5,000 real MNIST digits bundled in
``lesson_lib/data/mnist_5k.npz`` (see the README there), so every notebook runs offline. Which
source it used is printed once per process.

The bundled subset has a fixed stratified split, chosen without randomness: within each digit,
in file order, every 10th image is held out, giving 4,500 train / 500 held out (450 / 50 per
digit). Both splits are ordered 0, 1, ..., 9, 0, 1, ... so a slice shows every digit.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lesson_lib.checks import check_choice, check_int, check_real, check_tensor

BUNDLED = Path(__file__).with_name("data") / "mnist_5k.npz"
DEFAULT_ROOT = Path.home() / ".cache" / "lesson_lib"
MIRROR = ("ossci-datasets.s3.amazonaws.com", 443)  # torchvision's first MNIST mirror
OFFLINE_ENV = "LESSON_LIB_OFFLINE"  # set to 1 to make source="auto" never try the network

SPLITS = ("train", "heldout")
SOURCES = ("auto", "bundled", "torchvision")
_said: set[str] = set()  # sources already announced in this process


def _say_once(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        print(message)


# ----------------------------------------------------------------------------- MNIST


@lru_cache(maxsize=2)
def _bundled_uint8(split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(BUNDLED) as f:
        images, labels = f["images"], f["labels"]  # (5000, 28, 28), (5000,) uint8
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each image within its digit
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        rank[idx] = np.arange(len(idx))
    keep = (rank % 10 == 9) if split == "heldout" else (rank % 10 != 9)
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((labels[idx], rank[idx]))]  # interleave digits: 0, 1, ..., 9, 0, ...
    return images[idx], labels[idx]


RAW_FILES = {  # what torchvision's MNIST leaves in root/MNIST/raw once downloaded
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "heldout": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _on_disk(root: Path) -> bool:
    return all((root / "MNIST" / "raw" / f).is_file() for pair in RAW_FILES.values() for f in pair)


def _read_idx(path: Path) -> np.ndarray:
    """An array from an IDX file (LeCun's MNIST format): 0, 0, dtype code, ndim, big-endian int32
    sizes, then the values. Read directly: importing torchvision takes seconds."""
    raw = path.read_bytes()
    if raw[:3] != b"\x00\x00\x08":
        raise RuntimeError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _full_uint8(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = RAW_FILES[split]
    raw = root / "MNIST" / "raw"
    return _read_idx(raw / images), _read_idx(raw / labels)  # (N, 28, 28), (N,) uint8


def _reachable(address: tuple[str, int], timeout: float) -> bool:
    """True if a TCP connection to ``address`` opens within ``timeout`` seconds (DNS included)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # a hung DNS lookup is left behind
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _download(root: Path, timeout: float) -> None:
    """Download full MNIST with torchvision into ``root``; each network wait is capped."""
    from torchvision.datasets import MNIST  # imported late: it is slow and offline use skips it

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision's urlopen has no timeout of its own
    try:
        MNIST(str(root), download=True)
    finally:
        socket.setdefaulttimeout(old)


def _to_float(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.array(images)).float().unsqueeze(1) / 127.5 - 1.0  # (N, 1, 28, 28)
    return images, torch.from_numpy(np.array(labels)).long()


def load_mnist(
    split: str = "train",
    source: str = "auto",
    root: str | os.PathLike | None = None,
    download: bool = True,
    timeout: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST digits: images ``(N, 1, 28, 28)`` float32 in ``[-1, 1]``, labels ``(N,)`` long.

    split: ``"train"`` or ``"heldout"`` (torchvision's test set for full MNIST, or the bundled
        subset's 500 held-out digits).
    source: ``"torchvision"`` = full MNIST (60,000 train / 10,000 test digits) as torchvision
        keeps it in ``root/MNIST/raw``, downloaded there by torchvision if missing and
        ``download`` is true; ``"bundled"`` = the 5,000 digits shipped with
        lesson_lib (4,500 train / 500 held out); ``"auto"`` = torchvision if MNIST is already in
        ``root``, else a download if ``download`` is true, the mirror answers within ``timeout``
        seconds and the environment variable LESSON_LIB_OFFLINE is unset, else bundled.
    root: folder for torchvision's copy (default ``~/.cache/lesson_lib``).
    timeout: seconds to wait for the download server before giving up.
    """
    check_choice("split", split, SPLITS)
    check_choice("source", source, SOURCES)
    timeout = check_real("timeout", timeout, low=0.0, low_open=True)
    root = DEFAULT_ROOT if root is None else Path(root).expanduser()

    if source == "auto":
        if _on_disk(root):
            source, why = "torchvision", f"found in {root}"
        elif not download or os.environ.get(OFFLINE_ENV):
            source, why = "bundled", f"full MNIST is not in {root} and downloading is off"
        elif not _reachable(MIRROR, timeout):
            source, why = "bundled", f"full MNIST is not in {root} and the server cannot be reached"
        else:
            try:
                _download(root, timeout)
                source, why = "torchvision", f"downloaded to {root}"
            except Exception as e:  # any failure mid-download: fall back, say why
                source, why = "bundled", f"downloading full MNIST to {root} failed ({e!r:.200})"
    else:
        why = f"source={source!r}"

    if source == "bundled":
        images, labels = _bundled_uint8(split)
        _say_once(
            "bundled",
            "lesson_lib: using the bundled MNIST subset (5,000 real digits: 4,500 train, "
            f"500 held out): {why}.",
        )
    else:
        if not _on_disk(root):
            try:
                if not download:
                    raise RuntimeError("download=False")
                _download(root, timeout)
            except Exception as e:
                raise RuntimeError(
                    f"full MNIST is not in root={str(root)!r} and could not be downloaded "
                    f"({e!r:.200}); use source='bundled' or source='auto' to work offline"
                ) from e
        images, labels = _full_uint8(split, root)
        _say_once("torchvision", f"lesson_lib: using full MNIST from torchvision ({why}).")
    return _to_float(images, labels)


def batches(
    *tensors: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless shuffled mini-batches of ``tensors`` (each ``(N, ...)``, indexed together).

    Each pass is a fresh permutation drawn from ``generator``; the last incomplete batch of a pass
    is dropped, so every batch has exactly ``batch_size`` rows. Use with ``next(it)``.
    """
    if not tensors:
        raise ValueError("batches needs at least one tensor, got none")
    for i, t in enumerate(tensors):
        check_tensor(f"tensors[{i}]", t)
    n = len(tensors[0])
    for i, t in enumerate(tensors):
        if len(t) != n:
            raise ValueError(f"tensors[{i}] has {len(t)} rows but tensors[0] has {n}")
    batch_size = check_int("batch_size", batch_size, low=1, high=n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = perm[start : start + batch_size]
            yield tuple(t[idx.to(t.device)] for t in tensors)


# ----------------------------------------------------------------------------- 2-D toy data


def _toy(
    curve: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    noise: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Points ``curve(u)`` for ``u ~ U[0, 1)``, centred and scaled so that the noise-free curve has
    mean 0 and average per-coordinate variance 1 (one scale for both axes keeps the shape), plus
    ``noise * N(0, I)``."""
    n = check_int("n", n, low=1)
    noise = check_real("noise", noise, low=0.0)
    grid = curve((torch.arange(4096, dtype=torch.float64) + 0.5) / 4096)  # (4096, 2) for the stats
    mean, scale = grid.mean(0), grid.var(0, unbiased=False).mean().sqrt()
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return ((curve(u) - mean) / scale + noise * z).to(torch.get_default_dtype())  # (n, 2)


def _moons_curve(u: torch.Tensor) -> torch.Tensor:
    upper = u < 0.5  # first half of u: the upper moon, second half: the lower one
    a = math.pi * torch.where(upper, 2 * u, 2 * u - 1)
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    return torch.stack([x, y], dim=-1)


def _spiral_curve(u: torch.Tensor, turns: float) -> torch.Tensor:
    a = 1.5 * math.pi + 2 * math.pi * turns * u  # angle; the radius grows with it
    return torch.stack([a * torch.cos(a), a * torch.sin(a)], dim=-1)


def two_moons(
    n: int, noise: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` points ``(n, 2)`` from two interleaved half circles (as in scikit-learn's
    ``make_moons``), each moon with probability 1/2, scaled to about unit std."""
    return _toy(_moons_curve, n, noise, generator)


def spiral(
    n: int, noise: float = 0.05, turns: float = 1.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` points ``(n, 2)`` on a spiral (the 2-D swiss roll of Sohl-Dickstein et al. 2015) of
    ``turns`` turns, scaled to about unit std."""
    turns = check_real("turns", turns, low=0.0, low_open=True)
    return _toy(lambda u: _spiral_curve(u, turns), n, noise, generator)
