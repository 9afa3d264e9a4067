"""The shipped models: ``load(name)`` rebuilds a recipe's architecture and loads verified weights;
``load_run(DIR)`` does the same for any training run's folder.

Where the weights come from, how they were trained and how good they are is in the manifest
(``lesson_lib.manifest``); every file is checked against its sha256 before it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .manifest import RUN_INFO, ModelEntry, load_state, read_entry, read_run_entry
from .recipes import get_recipe
from .schedules import NoiseSchedule

__all__ = ["Pretrained", "load", "load_run", "history"]


@dataclass(frozen=True)
class Pretrained:
    model: nn.Module  # in eval mode, on the requested device
    schedule: NoiseSchedule | None  # the schedule it was trained with (None: classifier, flow)
    info: ModelEntry  # recipe, data, command, steps, hardware, sha256, quality


def _build(entry: ModelEntry, state: dict, device) -> Pretrained:
    recipe = get_recipe(entry.recipe)
    model = recipe.make_model()
    model.load_state_dict(state)
    # A copy of the recipe's schedule: changing its tensors cannot change what load() builds.
    schedule = None if recipe.schedule is None else NoiseSchedule(recipe.schedule.betas)
    return Pretrained(model.to(device).eval(), schedule, entry)


def load(name: str, device: torch.device | str = "cpu") -> Pretrained:
    """Load the shipped model ``name`` ("mnist", "mnist_classifier", ...), verified by sha256."""
    entry = read_entry(name)
    return _build(entry, load_state(entry), device)


def load_run(run: str | Path, device: torch.device | str = "cpu") -> Pretrained:
    """Load a training run's folder (``python -m lesson_lib.train --out DIR``) like a shipped
    model: its ``model.pt`` (the EMA weights) with the recipe named in its ``info.json``."""
    run = Path(run)
    for needed in (RUN_INFO, "model.pt"):
        if not (run / needed).exists():
            raise FileNotFoundError(
                f"run={str(run)!r} has no {needed}: give the --out folder of a finished run"
            )
    entry = read_run_entry(run)
    return _build(
        entry, torch.load(run / "model.pt", map_location="cpu", weights_only=True), device
    )


def history(name: str) -> dict[str, torch.Tensor]:
    """Sample grids saved while ``name`` trained: ``{"steps": (K,), "images": (K, N, 1, 28, 28)}``
    (uint8), the same starting noise at every snapshot."""
    return load_state(read_entry(name), "history")
