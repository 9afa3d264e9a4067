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


def check_batched(name: str, value) -> torch.Tensor:
    """Raise unless ``value`` is a tensor with a batch dimension, (B, ...); return it."""
    check_tensor(name, value)
    if value.ndim == 0:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a 0-d tensor")
    return value


def check_shape(name: str, value: torch.Tensor, shape) -> None:
    """Raise unless ``value`` has exactly ``shape``."""
    check_tensor(name, value)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {tuple(shape)}")


def is_integer(t: torch.Tensor) -> bool:
    """True for integer dtypes (uint8 ... int64); False for float, complex and bool."""
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def check_integer(name: str, value, what: str = "") -> torch.Tensor:
    """Raise a TypeError unless ``value`` is a tensor of an integer dtype; return it."""
    check_tensor(name, value)
    if not is_integer(value):
        raise TypeError(
            f"{name} must be an integer tensor (torch.long){' ' + what if what else ''}, "
            f"got dtype {value.dtype}"
        )
    return value


def check_labels(name: str, y, high: int, batch: int | None = None, note: str = "") -> torch.Tensor:
    """Check integer labels ``y`` of shape ``(B,)`` with ``0 <= y <= high``; return them.

    ``note`` says what the values mean, e.g. "(10 = NULL_LABEL, no label)".
    """
    check_integer(name, y, "of labels")
    if y.ndim != 1 or (batch is not None and y.shape[0] != batch):
        want = "(B,)" if batch is None else f"(B,)=({batch},)"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > high):
        raise ValueError(
            f"{name} has values in [{int(y.min())}, {int(y.max())}]: allowed 0 <= {name} <= "
            f"{high}{' ' + note if note else ''}"
        )
    return y


def check_mask(name: str, mask, shape) -> torch.Tensor:
    """Raise unless ``mask`` is a bool tensor of ``shape`` (True = keep, a real token)."""
    check_tensor(name, mask)
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must be a bool tensor of shape (B, L)={tuple(shape)} (True = real token), "
            f"got dtype {mask.dtype} and shape {tuple(mask.shape)}"
        )
    return mask


def check_images(name: str, images, shape=(1, 28, 28)) -> torch.Tensor:
    """Raise unless ``images`` is a floating tensor of shape ``(B, *shape)``; return it."""
    check_tensor(name, images)
    if images.ndim != 1 + len(shape) or tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(
            f"{name} must have shape (B, {', '.join(map(str, shape))})"
            f"{' (MNIST images in [-1, 1])' if tuple(shape) == (1, 28, 28) else ''}, "
            f"got shape {tuple(images.shape)}"
        )
    if not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor in [-1, 1], got dtype {images.dtype}")
    return images


def check_timesteps(name: str, t, T: int, batch: int | None = None) -> torch.Tensor:
    """Check integer timesteps ``t`` of shape ``(B,)`` with ``0 <= t < T``; return them."""
    check_integer(name, t, "of timestep indices")
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


def check_number(name: str, value, **bounds) -> float:
    """``value`` (a number or a one-element tensor such as ``schedule.alpha_bar[t]``) as a float,
    checked with ``check_real(name, value, **bounds)``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be one number, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    return check_real(name, value, **bounds)


def check_points(name: str, x, dim: int) -> torch.Tensor:
    """Raise unless ``x`` is a floating tensor of points, shape ``(B, dim)``; return it."""
    check_tensor(name, x)
    if x.ndim != 2 or x.shape[1] != dim or not x.dtype.is_floating_point:
        raise ValueError(
            f"{name} must be a float tensor of shape (B, {dim}), "
            f"got shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    return x
