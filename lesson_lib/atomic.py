"""Atomic file writes: a temporary file beside the target, then a rename, never a half-written file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["save_atomic", "save_json_atomic"]


def _write_atomic(path: str | Path, write: Callable, mode: str) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    _write_atomic(path, lambda f: torch.save(obj, f), "wb")


def save_json_atomic(obj, path: str | Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (manifests, run records)."""
    _write_atomic(path, lambda f: (json.dump(obj, f, indent=2), f.write("\n")), "w")
