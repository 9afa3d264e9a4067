"""Tests for lesson_lib.device: cuda first, then mps, then cpu; what a CPU has for bf16."""

import pytest
import torch

from lesson_lib.device import cpu_bf16_units, cpu_description, pick_device


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


@pytest.mark.parametrize(
    "flags, said",
    [
        ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "avx512_bf16, amx_bf16"),
        ("fpu avx512f avx512_bf16", "avx512_bf16, no AMX"),
        ("fpu avx2 fma", "no bf16 units"),
    ],
)
def test_cpu_bf16_units_reads_the_cpus_flags(tmp_path, flags, said):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    assert cpu_bf16_units(cpuinfo) == said
    assert cpu_bf16_units(tmp_path / "none") == "bf16 units unknown"  # not Linux


def test_cpu_description_names_the_bf16_units_and_threads():
    said = cpu_description(3)
    assert said.endswith(f" CPU ({cpu_bf16_units()}), 3 threads") and not said.startswith(" ")
