"""Sample grids saved while a model trains, for notebook 04's slider over training steps."""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import save_atomic
from .recipes import Recipe
from .viz import to_uint8

__all__ = ["HISTORY_SNAPSHOTS", "History", "every_for"]

HISTORY_SNAPSHOTS = 24  # sample grids kept over a run, for notebook 04's slider


class History:
    """Every ``every`` steps, sample one of each digit from the same noise (the recipe's
    ``sample_grid``: DDIM 25 steps or Euler 25 steps, guidance w = 3)."""

    def __init__(self, recipe: Recipe, path: Path, every: int, device):
        self.recipe, self.path, self.every = recipe, path, every
        self.noise, self.labels = self.inputs(device)
        saved = torch.load(path, weights_only=True) if path.exists() else None
        self.steps = saved["steps"].tolist() if saved else []
        self.images = list(saved["images"]) if saved else []

    @staticmethod
    def inputs(device) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed noise (10, 1, 28, 28) and the digits 0-9 every snapshot starts from."""
        noise = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(1234))
        return noise.to(device), torch.arange(10, device=device)

    def __call__(self, step: int, loss: float, ema) -> None:
        if step % self.every or step in self.steps:
            return
        x = self.recipe.sample_grid(ema, self.noise, self.labels)
        self.steps.append(step)
        self.images.append(torch.from_numpy(to_uint8(x)))
        save_atomic(
            {"steps": torch.tensor(self.steps), "images": torch.stack(self.images)}, self.path
        )


def every_for(recipe: Recipe) -> int:
    """Steps between snapshots: about HISTORY_SNAPSHOTS over the run, on logging steps."""
    every = max(recipe.train.log_every, recipe.train.steps // HISTORY_SNAPSHOTS)
    return every - every % recipe.train.log_every  # the callback runs on logging steps
