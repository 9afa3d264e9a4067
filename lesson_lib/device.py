"""Pick where tensors live (cuda, then mps, then cpu), and say what a CPU has for bf16."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

__all__ = ["pick_device", "cpu_bf16_units", "cpu_description"]


def pick_device() -> torch.device:
    """The best available device: cuda if present, then Apple's mps, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This CPU's bf16 instructions, from Linux's ``cpuinfo`` flags: AVX-512 BF16 converts and
    takes dot products; AMX's tile units multiply bf16 matrices, which oneDNN's bf16 convolutions
    need to beat float32's (docs/benchmarks.md)."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return "bf16 units unknown"
    found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    if not found:
        return "no bf16 units"
    return ", ".join(found) + ("" if "amx_bf16" in flags else ", no AMX")


def cpu_description(threads: int) -> str:
    """What a CPU figure was measured on, e.g. "x86_64 CPU (avx512_bf16, no AMX), 2 threads"."""
    return (
        f"{platform.processor() or platform.machine()} CPU ({cpu_bf16_units()}), {threads} threads"
    )
