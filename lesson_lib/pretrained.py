"""The shipped models: ``load(name)`` rebuilds a recipe's architecture and loads verified weights.

Weights live in ``lesson_lib/weights/`` beside ``manifest.json``, which records for each model its
recipe, data, training command, steps, hardware, the file's sha256 and the measured quality.
A file whose sha256 does not match is refused before it is read; weights are read with
``torch.load(weights_only=True)``, which cannot run code from the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .recipes import get_recipe
from .schedules import NoiseSchedule

WEIGHTS = Path(__file__).with_name("weights")
MANIFEST = WEIGHTS / "manifest.json"


@dataclass
class Pretrained:
    model: nn.Module  # in eval mode, on the requested device
    schedule: NoiseSchedule | None  # the schedule it was trained with (None for the classifier)
    info: dict  # the manifest entry: recipe, data, command, steps, hardware, sha256, quality


def manifest() -> dict:
    """All manifest entries, by name."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verified_file(name: str, key: str = "file") -> tuple[Path, dict]:
    """The path of a shipped file after checking its sha256 against the manifest."""
    entries = manifest()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none (lesson_lib/weights/manifest.json is missing)"
        raise ValueError(f"name={name!r} is not a shipped model: known {known}")
    info = entries[name]
    if key not in info:
        raise ValueError(f"the shipped model {name!r} has no {key} file (manifest: {MANIFEST})")
    path = WEIGHTS / info[key]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; restore it with `git checkout -- {path}`")
    digest, expected = sha256(path), info[f"{key}_sha256"]
    if digest != expected:
        raise ValueError(
            f"{path} is damaged or was changed: its sha256 is {digest}, the manifest expects "
            f"{expected}. Restore it with `git checkout -- {path}` or retrain: {info['command']}"
        )
    return path, info


def load(name: str, device: torch.device | str = "cpu") -> Pretrained:
    """Load the shipped model ``name`` ("mnist", "mnist_classifier", ...), verified by sha256."""
    path, info = verified_file(name)
    recipe = get_recipe(info["recipe"])
    model = recipe.make_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Pretrained(model.to(device).eval(), recipe.schedule, info)


def history(name: str) -> dict[str, torch.Tensor]:
    """Sample grids saved while ``name`` trained: ``{"steps": (K,), "images": (K, N, 1, 28, 28)}``
    (uint8), the same starting noise at every snapshot."""
    path, _ = verified_file(name, "history")
    return torch.load(path, map_location="cpu", weights_only=True)
