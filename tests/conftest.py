"""Set-up shared by the unit tests."""

import shutil

import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use small tensors: one intra-op thread is faster, and immune to a busy machine
    (two threads spin-waiting on a loaded 2-core machine made small ops 10-50x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    """A private copy of lesson_lib/weights that a test may damage or ship into."""
    from lesson_lib import manifest

    copy = tmp_path / "weights"
    shutil.copytree(manifest.WEIGHTS, copy)
    monkeypatch.setattr(manifest, "WEIGHTS", copy)
    monkeypatch.setattr(manifest, "MANIFEST", copy / "manifest.json")
    return copy
