"""Train a named recipe: ``python -m lesson_lib.train --config NAME --steps N --out DIR``.

Resumes from ``DIR/checkpoint.pt`` when it exists. Under ``torchrun --nproc_per_node K`` it trains
data-parallel (PyTorch DDP: gloo on CPU, nccl on GPU); only rank 0 writes. At the end ``DIR``
holds ``model.pt`` (the EMA weights), ``info.json`` and, for diffusion models, ``history.pt``
(sample grids from fixed noise during training); ``--ship`` copies them into
``lesson_lib/weights`` and records them in its manifest.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from .atomic import save_atomic, save_json_atomic
from .device import pick_device
from .loop import train
from .manifest import RUN_INFO, ModelEntry, ship
from .recipes import RECIPES, get_recipe
from .snapshots import History, every_for


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = (
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        )
    return f"{world} x {what}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lesson_lib.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, choices=sorted(RECIPES), help="recipe name")
    parser.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    parser.add_argument("--out", required=True, type=Path, help="run folder (resumed if present)")
    parser.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--ship", action="store_true", help="copy the result into lesson_lib/weights"
    )
    args = parser.parse_args(argv)
    recipe = get_recipe(args.config, args.steps)
    # `kill` (SIGTERM) or Ctrl-C stops a run with a checkpoint it resumes from, also when a
    # background shell started it with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(args.device) if args.device else pick_device()
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0

    torch.manual_seed(recipe.train.seed)  # the same initial weights on every rank
    model = recipe.make_model()
    history = None
    if recipe.sample_grid is not None and rank == 0:
        history = History(recipe, args.out / "history.pt", every_for(recipe), device)
    start = time.perf_counter()
    result = train(
        model,
        recipe.loss,
        recipe.load_data(),
        recipe.train,
        out_dir=args.out,
        device=device,
        progress=not args.no_progress,
        callback=history,
    )
    if rank == 0:
        save_atomic(result.model.state_dict(), args.out / "model.pt")
        info = ModelEntry(
            recipe=recipe.name,
            about=recipe.about,
            model_config=recipe.model_config,
            schedule=None if recipe.schedule is None else f"linear, T={recipe.schedule.T}",
            data=recipe.data,
            command=f"python -m lesson_lib.train --config {recipe.name} "
            f"--steps {recipe.train.steps} --out {shlex.quote(str(args.out))}",
            steps=result.step,
            train_config=asdict(recipe.train),
            hardware=_hardware(device, world),
            seconds_last_session=round(time.perf_counter() - start, 1),
            final_loss=result.losses[-1][1] if result.losses else None,
            parameters=sum(p.numel() for p in result.model.parameters()),
        )
        save_json_atomic(info.to_json(), args.out / RUN_INFO)
        print(f"wrote {args.out / 'model.pt'} ({result.step} steps)", file=sys.stderr)
        if args.ship:
            ship(args.out)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
