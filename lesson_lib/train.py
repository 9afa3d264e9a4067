"""Train a named recipe: ``python -m lesson_lib.train --config NAME --steps N --out DIR``.

``--minutes M`` in place of ``--steps`` gives the run a wall-clock budget: a few steps are timed
(a ``bf16`` recipe's in both precisions, and the faster is kept: ``faster_precision``), the
learning-rate schedule is planned for the steps that fit (written to ``DIR/plan.json``, so a
resumed run keeps the plan) and re-planned as the run goes, at the pace it measures (the machine
can run slower or faster than the timed steps said: loop.train's ``fit_to_time``), and the run
stops on time with a checkpoint. The run's recorded command is then the ``--minutes`` one: the
steps taken depend on the machine's speed, and ``train_config.steps`` is the last re-plan.

Resumes from ``DIR/checkpoint.pt`` when it exists. Under ``torchrun --nproc_per_node K`` it trains
data-parallel (PyTorch DDP: gloo on CPU, nccl on GPU); only rank 0 writes. At the end ``DIR``
holds ``model.pt`` (the EMA weights), ``info.json`` and, for diffusion models, ``history.pt``
(sample grids from fixed noise during training); ``--ship`` copies them into
``lesson_lib/weights`` and records them in its manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from .atomic import save_atomic, save_json_atomic
from .device import cpu_description, pick_device
from .loop import PLAN_MARGIN, TrainConfig, TrainResult, plan_steps, train
from .manifest import RUN_INFO, ModelEntry, ship
from .recipes import RECIPES, Recipe, get_recipe
from .snapshots import HISTORY_SNAPSHOTS, History, every_for


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = cpu_description(torch.get_num_threads())
    return f"{world} x {what}, torch {torch.__version__}"


PLAN = "plan.json"


def faster_precision(model, loss_fn, data, config, device) -> tuple[TrainConfig, float, dict]:
    """``config`` as it trains fastest here, and its seconds per step (loop.plan_steps): a bf16
    ``config`` is timed in float32 too and keeps bf16 autocast only where that is faster (a CPU
    without AMX runs bf16 convolutions slower than float32: docs/benchmarks.md). The dict holds
    the seconds per step of each precision timed."""
    timed = {}
    for bf16 in (True, False) if config.bf16 else (False,):
        trial = replace(config, bf16=bf16)
        timed["bf16" if bf16 else "float32"] = plan_steps(model, loss_fn, data, trial, 1, device)[1]
    fastest = min(timed, key=timed.get)
    return replace(config, bf16=fastest == "bf16"), timed[fastest], timed


def _plan(recipe, model, data, minutes: float, out: Path, device, world: int, rank: int) -> dict:
    """The run's plan for a budget of ``minutes``: read from ``out/plan.json`` when a run there
    made one, else timed now on a copy of ``model`` (every rank times; rank 0's plan is used)."""
    if (out / PLAN).exists():
        plan = json.loads((out / PLAN).read_text())
        if plan["minutes"] != minutes:
            raise ValueError(
                f"minutes={minutes} but {out / PLAN} planned this run for {plan['minutes']} "
                "minutes: give the same budget, or a new --out"
            )
        return plan
    start = time.perf_counter()
    config, per_step, timed = faster_precision(model, recipe.loss, data, recipe.train, device)
    snapshots = 0.0  # the history's snapshots come out of the budget too
    if recipe.sample_grid is not None:
        tick = time.perf_counter()
        with torch.no_grad():  # deterministic sampling: the model and random state are unchanged
            recipe.sample_grid(model.to(device).eval(), *History.inputs(device))
        snapshots = HISTORY_SNAPSHOTS * (time.perf_counter() - tick)
    timing = time.perf_counter() - start  # and so does the timing
    seconds = 60 * minutes - timing  # the loop's clock, which the snapshots run on too
    if seconds - snapshots < 10 * per_step:
        raise ValueError(
            f"minutes={minutes:g} is too short for {recipe.name!r}: timing it took {timing:.0f} s, "
            f"a step takes {per_step:.2f} s and the sample history's snapshots {snapshots:.0f} s; "
            "give more minutes"
        )
    plan = {
        "minutes": minutes,
        # a margin is left for what the timing did not see; the run re-plans its steps as it
        # goes (loop.train's fit_to_time)
        "steps": max(1, int(PLAN_MARGIN * (seconds - snapshots) / per_step)),
        "seconds_per_step": per_step,
        "seconds": seconds,
        "bf16": config.bf16,
        "seconds_per_step_timed": timed,  # of each precision timed
    }
    if world > 1:
        shared = [plan]
        dist.broadcast_object_list(shared, 0)
        plan = shared[0]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_json_atomic(plan, out / PLAN)
        print(
            f"planned {plan['steps']} steps for {minutes:g} minutes in "
            f"{'bf16' if config.bf16 else 'float32'} (per step, timed on {device}: "
            + ", ".join(f"{k} {v:.3f} s" for k, v in timed.items())
            + ")",
            file=sys.stderr,
        )
    return plan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lesson_lib.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, choices=sorted(RECIPES), help="recipe name")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    budget.add_argument(
        "--minutes", type=float, help="wall-clock budget: train the steps that fit, stop on time"
    )
    parser.add_argument("--out", required=True, type=Path, help="run folder (resumed if present)")
    parser.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--ship", action="store_true", help="copy the result into lesson_lib/weights"
    )
    args = parser.parse_args(argv)
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes must be a positive number of minutes, got {args.minutes}")
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
    run(recipe, args.out, device, args.minutes, progress=not args.no_progress)
    if args.ship and (world == 1 or dist.get_rank() == 0):
        ship(args.out)
    if world > 1:
        # every rank leaves together: a rank that tears gloo down while rank 0 still writes the
        # model can abort ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


def run(
    recipe: Recipe,
    out: Path,
    device: torch.device,
    minutes: float | None = None,
    progress: bool = True,
    callback: Callable[[int, float, torch.nn.Module], None] | None = None,
) -> TrainResult:
    """Train ``recipe`` into the run folder ``out`` (resumed if it holds a checkpoint), for its
    steps or, given ``minutes``, for the steps planned to fit; rank 0 writes ``model.pt``,
    ``info.json`` and the sample history. ``callback`` runs beside the history's."""
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    torch.manual_seed(recipe.train.seed)  # the same initial weights on every rank
    model, data = recipe.make_model(), recipe.load_data()
    plan = None
    if minutes is not None:
        plan = _plan(recipe, model, data, minutes, out, device, world, rank)
        train_config = replace(
            recipe.train, steps=plan["steps"], bf16=plan.get("bf16", recipe.train.bf16)
        )
        recipe = replace(recipe, train=train_config)
    calls = [callback] if callback is not None else []
    if recipe.sample_grid is not None and rank == 0:
        calls.append(History(recipe, out / "history.pt", every_for(recipe), device))
    start = time.perf_counter()
    result = train(
        model,
        recipe.loss,
        data,
        recipe.train,
        out_dir=out,
        device=device,
        progress=progress,
        callback=lambda *logged: [call(*logged) for call in calls],
        time_limit=None if plan is None else plan["seconds"],
        fit_to_time=plan is not None,
    )
    if rank == 0:
        save_atomic(result.model.state_dict(), out / "model.pt")
        info = ModelEntry(
            recipe=recipe.name,
            about=recipe.about,
            model_config=recipe.model_config,
            schedule=None if recipe.schedule is None else f"linear, T={recipe.schedule.T}",
            data=recipe.data,
            command=f"python -m lesson_lib.train --config {recipe.name} "
            + (f"--steps {recipe.train.steps}" if plan is None else f"--minutes {minutes:g}")
            + f" --out {shlex.quote(str(out))}",
            steps=result.step,
            train_config=asdict(result.config),
            hardware=_hardware(device, world),
            minutes=None if plan is None else plan["minutes"],
            seconds=round(result.seconds, 1),
            seconds_last_session=round(time.perf_counter() - start, 1),
            final_loss=result.losses[-1][1] if result.losses else None,
            parameters=sum(p.numel() for p in result.model.parameters()),
        )
        save_json_atomic(info.to_json(), out / RUN_INFO)
        print(f"wrote {out / 'model.pt'} ({result.step} steps)", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
