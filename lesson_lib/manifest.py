"""The manifest of shipped models: one typed entry per model, read and written only here.

``lesson_lib/weights/manifest.json`` records for each model its recipe, data, training command,
steps, hardware, the sha256 of every shipped file and the measured quality. A file whose sha256
does not match is refused before it is read; weights are read with
``torch.load(weights_only=True)``, which cannot run code from the file. A training run writes the
same entry, without the file fields, to ``DIR/info.json``; ``ship(DIR)`` copies the run's files
into the weights folder and records them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from .atomic import save_json_atomic

__all__ = [
    "WEIGHTS",
    "MANIFEST",
    "ModelEntry",
    "read_manifest",
    "write_manifest",
    "read_entry",
    "read_run_entry",
    "verified_file",
    "load_state",
    "record_quality",
    "ship",
    "sha256",
]

WEIGHTS = Path(__file__).with_name("weights")
MANIFEST = WEIGHTS / "manifest.json"
RUN_INFO = "info.json"  # a run folder's entry, written by python -m lesson_lib.train


@dataclass(frozen=True)
class ModelEntry:
    recipe: str  # the recipe that trained it (lesson_lib.recipes)
    about: str  # one line: what the model is
    model_config: dict  # the architecture's settings
    schedule: str | None  # "linear, T=1000", or None for models without one
    data: str  # what it was trained on
    command: str  # the one command that reproduces it
    steps: int  # training steps taken
    train_config: dict  # optimiser, batch, EMA, seed (lesson_lib.loop.TrainConfig)
    hardware: str  # where it trained
    seconds_last_session: float  # wall-clock seconds of the session that finished it
    final_loss: float | None  # the last logged training loss
    parameters: int  # number of weights
    seconds: float | None = None  # wall-clock seconds of training, every session of a resume
    minutes: float | None = None  # the wall-clock budget it was planned for (--minutes), if any
    file: str | None = None  # the weights' file name in lesson_lib/weights (None: not shipped)
    file_sha256: str | None = None
    history: str | None = None  # sample grids saved while training (diffusion models)
    history_sha256: str | None = None
    quality: dict = field(default_factory=dict)  # measured by the scripts/benchmark_*.py

    @classmethod
    def from_json(cls, name: str, data: dict) -> ModelEntry:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"manifest entry {name!r} has unknown fields {unknown}: allowed {known}"
            )
        return cls(**data)

    def to_json(self) -> dict:
        """The entry as JSON, leaving out empty optional fields."""
        optional = ("seconds", "minutes", "file", "file_sha256", "history", "history_sha256")
        optional += ("quality",)
        return {k: v for k, v in asdict(self).items() if not (k in optional and not v)}


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest() -> dict[str, ModelEntry]:
    """All manifest entries, by name (empty if there is no manifest)."""
    if not MANIFEST.exists():
        return {}
    return {k: ModelEntry.from_json(k, v) for k, v in json.loads(MANIFEST.read_text()).items()}


def write_manifest(entries: dict[str, ModelEntry]) -> None:
    """Write every entry, atomically."""
    save_json_atomic({k: e.to_json() for k, e in entries.items()}, MANIFEST)


def read_entry(name: str) -> ModelEntry:
    """The entry of the shipped model ``name``; a ValueError lists the known names."""
    return _lookup(read_manifest(), name)


def _lookup(entries: dict[str, ModelEntry], name: str) -> ModelEntry:
    if name not in entries:
        known = ", ".join(sorted(entries)) or f"none ({MANIFEST} is missing)"
        raise ValueError(f"name={name!r} is not a shipped model: known {known}")
    return entries[name]


def read_run_entry(run: str | Path) -> ModelEntry:
    """The entry a training run wrote to ``DIR/info.json``."""
    run = Path(run)
    return ModelEntry.from_json(str(run), json.loads((run / RUN_INFO).read_text()))


def verified_file(entry: ModelEntry, key: str = "file") -> Path:
    """The path of a shipped file (``key``: "file" or "history") after checking its sha256."""
    if getattr(entry, key) is None:
        raise ValueError(
            f"the shipped model {entry.recipe!r} has no {key} file (manifest: {MANIFEST})"
        )
    path = WEIGHTS / getattr(entry, key)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; restore it with `git checkout -- {path}`")
    digest, expected = sha256(path), getattr(entry, f"{key}_sha256")
    if digest != expected:
        raise ValueError(
            f"{path} is damaged or was changed: its sha256 is {digest}, the manifest expects "
            f"{expected}. Restore it with `git checkout -- {path}` or retrain: {entry.command}"
        )
    return path


def load_state(entry: ModelEntry, key: str = "file") -> dict:
    """A shipped file's contents (a state dict, or the history's tensors), verified by sha256."""
    return torch.load(verified_file(entry, key), map_location="cpu", weights_only=True)


def record_quality(name: str, quality: dict) -> None:
    """Set the measured quality of the shipped model ``name`` in the manifest."""
    entries = read_manifest()
    entries[name] = replace(_lookup(entries, name), quality=quality)
    write_manifest(entries)


def ship(run: str | Path, files: bool = True) -> None:
    """Copy a finished run's files into lesson_lib/weights and record them in the manifest,
    under the name of the recipe that trained them (the quality is measured afterwards).
    ``files=False`` records the run's entry alone: how it was trained, not its weights."""
    run = Path(run)
    entry = read_run_entry(run)
    shipped = {}
    for key, src in [("file", run / "model.pt"), ("history", run / "history.pt")]:
        if files and src.exists():
            dst = WEIGHTS / f"{entry.recipe}{'' if key == 'file' else '_history'}.pt"
            shutil.copyfile(src, dst)
            shipped |= {key: dst.name, f"{key}_sha256": sha256(dst)}
    entries = read_manifest()
    entries[entry.recipe] = replace(entry, **shipped)
    write_manifest(entries)
