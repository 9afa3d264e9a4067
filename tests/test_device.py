"""Tests for lesson_lib.device: cuda first, then mps, then cpu."""

import pytest
import torch

from lesson_lib.device import pick_device


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_order(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    device = pick_device()
    assert isinstance(device, torch.device) and device.type == expected


def test_real_machine():
    device = pick_device()
    assert torch.zeros(1, device=device).device.type == device.type
