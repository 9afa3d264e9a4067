"""Argument checks shared by every module: each error names the argument, the value and what is allowed."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int after checking it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f"{'-inf' if low is None else low} <= {name} <= {'inf' if high is None else high}"
        raise ValueError(f"{name}={value} is out of range: allowed {allowed}")
    return value


def check_real(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite float after checking it lies in the given interval."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} must be finite")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low} {'<' if low_open else '<='}"
        hi = "inf" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{name}={value} is out of range: allowed {lo} {name} {hi}")
    return value


def check_choice(name: str, value, allowed) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not known: allowed {', '.join(map(repr, allowed))}")


def check_tensor(name: str, value) -> torch.Tensor:
    """Raise a TypeError unless ``value`` is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_shape(name: str, value: torch.Tensor, shape) -> None:
    """Raise unless ``value`` has exactly ``shape``."""
    check_tensor(name, value)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {tuple(shape)}")


def check_timesteps(name: str, t, T: int, batch: int | None = None) -> torch.Tensor:
    """Check integer timesteps ``t`` of shape ``(B,)`` with ``0 <= t < T``; return them."""
    check_tensor(name, t)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an integer tensor (torch.long) of timestep indices, got dtype {t.dtype}"
        )
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (B,), got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(
            f"{name} has batch size {t.shape[0]} but the images have batch size {batch}"
        )
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(
            f"{name} has values in [{int(t.min())}, {int(t.max())}]: allowed 0 <= {name} <= {T - 1}"
        )
    return t


def check_flow_times(name: str, s, batch: int | None = None) -> torch.Tensor:
    """Check float flow times ``s`` of shape ``(B,)`` with ``0 <= s <= 1``; return them."""
    check_tensor(name, s)
    if not s.dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a floating-point tensor of flow times, got dtype {s.dtype}"
        )
    if s.ndim != 1 or (batch is not None and s.shape[0] != batch):
        want = "(B,)" if batch is None else f"({batch},)"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(s.shape)}")
    if s.numel() and not (float(s.min()) >= 0 and float(s.max()) <= 1):
        raise ValueError(
            f"{name} has values in [{float(s.min())}, {float(s.max())}]: allowed 0 <= {name} <= 1"
        )
    return s
