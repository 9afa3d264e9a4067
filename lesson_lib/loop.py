"""The training loop for every course model (the losses live beside their models).

The loop keeps an EMA copy of the weights (the copy that samples), clips gradients, shows a tqdm
bar with the loss, writes checkpoints atomically (temporary file, then rename) every
``checkpoint_every`` steps and on Ctrl-C, and resumes exactly where a checkpoint stopped: the
weights, the optimiser, the step and every random generator are restored. Under ``torchrun`` it
trains data-parallel with PyTorch DDP; only rank 0 writes. A wall-clock budget: ``plan_steps``
times a few steps to say how many fit, ``train(..., time_limit=, fit_to_time=)`` re-plans them
on the way and stops on time with a checkpoint.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .atomic import save_atomic
from .checks import check_int, check_real, check_tensor

CHECKPOINT = "checkpoint.pt"
PLAN_STEPS = 12  # steps plan_steps times (the first two, slower, are not counted)
PLAN_MARGIN = 0.97  # the share of the time left that steps are planned for: checkpoints, slowdowns


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # optimiser steps in total; a resumed run continues up to this number
    batch_size: int = 64  # global batch, split evenly over DDP ranks
    lr: float = 2e-4  # peak AdamW learning rate (Loshchilov & Hutter 2019)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup: int = 100  # linear learning-rate warm-up, then cosine decay to 0 at `steps`
    ema_decay: float = 0.999  # EMA of the weights; warmed up as min(decay, (1+n)/(10+n))
    grad_clip: float = 1.0  # largest global gradient norm
    checkpoint_every: int = 500  # steps between atomic checkpoints (0: only at the end)
    log_every: int = 25  # steps between logged (averaged) losses
    seed: int = 0  # seeds batches and loss draws; the command seeds torch's global RNG with it too
    bf16: bool = False  # the forward pass under bf16 autocast (weights and optimiser stay float32)

    def __post_init__(self):
        check_int("steps", self.steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_real("lr", self.lr, low=0.0, low_open=True)
        check_real("weight_decay", self.weight_decay, low=0.0)
        check_int("warmup", self.warmup, low=0)
        check_real("ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        check_real("grad_clip", self.grad_clip, low=0.0, low_open=True)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_int("log_every", self.log_every, low=1)
        check_int("seed", self.seed, low=0)


@dataclass
class TrainResult:
    model: nn.Module  # the EMA weights, in eval mode
    losses: list[tuple[int, float]]  # (step, mean loss over the last log_every steps)
    step: int  # the step the run ended at
    seconds: float  # wall-clock seconds of training, over every session of a resumed run
    config: TrainConfig  # the settings it ended with (``steps`` as re-planned by fit_to_time)


def _lr_at(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 0 (Loshchilov & Hutter 2017)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights, for every parameter at once; buffers copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def _random_states(generator: torch.Generator, device: torch.device) -> dict:
    """Every random state a step draws from: the loop's generator and torch's global generators
    (dropout's masks), CPU and, when training on CUDA, every CUDA device's."""
    states = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict, generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(states["generator"].cpu())
    torch.set_rng_state(states["torch"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def train_step(net, model, ema, opt, loss_fn, batch, generator, config, step) -> torch.Tensor:
    """One optimiser step at the scheduled learning rate, clipped, then the warmed-up EMA."""
    for group in opt.param_groups:
        group["lr"] = _lr_at(config, step)
    with torch.autocast(batch[0].device.type, dtype=torch.bfloat16, enabled=config.bf16):
        loss = loss_fn(net, batch, generator)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    opt.step()
    _ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
    return loss.detach()


def plan_steps(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Sequence[torch.Tensor], torch.Generator], torch.Tensor],
    data: Sequence[torch.Tensor],
    config: TrainConfig,
    seconds: float,
    device: torch.device | str | None = None,
) -> tuple[int, float]:
    """How many steps of ``config`` fit in ``seconds``: ``PLAN_STEPS`` steps of a copy of
    ``model`` are timed (the model and torch's global random state are left as they were).
    Returns the steps and the measured seconds per step."""
    check_real("seconds", seconds, low=0.0, low_open=True)
    device = torch.device(device) if device is not None else data[0].device
    trial = copy.deepcopy(model).to(device).train()
    ema = copy.deepcopy(trial).requires_grad_(False)
    opt = torch.optim.AdamW(trial.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    data, n = [d.to(device) for d in data], len(data[0])
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # dropout's draws leave the global state alone
        for step in range(PLAN_STEPS):
            if step == 2:
                start = time.perf_counter()
            idx = torch.randint(0, n, (config.batch_size,), generator=generator, device=device)
            batch = [d[idx] for d in data]
            loss = train_step(trial, trial, ema, opt, loss_fn, batch, generator, config, step)
            loss.item()  # waits for the device
    per_step = (time.perf_counter() - start) / (PLAN_STEPS - 2)
    return max(1, int(seconds / per_step)), per_step


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _agreed(value: int, device: torch.device, world: int) -> int:
    """``value`` on rank 0, the same on every rank (DDP ranks must stop at the same step)."""
    if world == 1:
        return value
    out = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(out, 0)
    return int(out.item())


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Sequence[torch.Tensor], torch.Generator], torch.Tensor],
    data: Sequence[torch.Tensor],
    config: TrainConfig,
    out_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    callback: Callable[[int, float, nn.Module], None] | None = None,
    time_limit: float | None = None,
    fit_to_time: bool = False,
) -> TrainResult:
    """Train ``model`` by minimising ``loss_fn(model, batch, generator)`` over random batches of ``data``.

    ``data``: tensors with the same first dimension (e.g. images and labels), kept whole on the
    device. Each step draws ``batch_size`` rows with replacement from a seeded generator.
    ``out_dir``: where ``checkpoint.pt`` is written; a run finding one there resumes from it.
    Dropout draws from torch's global generator, which the caller seeds (the command seeds it with
    ``config.seed`` before building the model); checkpoints save and restore it.
    ``callback(step, loss, ema_model)`` runs on rank 0 every ``log_every`` steps.
    ``time_limit``: seconds of training (counted over every session of a resumed run); the run
    stops at the first step past it, with a checkpoint, even if ``config.steps`` is not reached.
    ``fit_to_time``: re-plan ``config.steps`` (the schedule's end) at every logged step for the
    time left at this session's pace, so the schedule ends on time; a resume keeps the last.
    """
    if time_limit is not None:
        check_real("time_limit", time_limit, low=0.0, low_open=True)
    elif fit_to_time:
        raise ValueError("fit_to_time=True re-plans the steps for a time_limit: give one")
    rank, world = _distributed()
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the {world} ranks")
    data = [check_tensor(f"data[{i}]", d) for i, d in enumerate(data)]
    n = data[0].shape[0]
    if any(d.shape[0] != n for d in data):
        raise ValueError(f"data tensors differ in length: {[d.shape[0] for d in data]}")
    device = torch.device(device) if device is not None else data[0].device
    data = [d.to(device) for d in data]
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank)
    step, losses, spent = 0, [], 0.0
    path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if path is not None and path.exists():
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if ckpt["world"] != world:
            raise ValueError(f"{path} was written by {ckpt['world']} ranks; this run has {world}")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step, losses = ckpt["step"], [tuple(x) for x in ckpt["losses"]]
        spent = ckpt.get("seconds", 0.0)
        if fit_to_time:  # the schedule's end as last re-planned, not the caller's first plan
            config = replace(config, steps=ckpt["config"]["steps"])
        if rank == 0:
            print(f"resumed from {path} at step {step} of {config.steps}", file=sys.stderr)
        if "random_states" in ckpt:
            _set_random_states(ckpt["random_states"][rank], generator, device)
        else:  # a checkpoint written before the global states were saved
            generator.set_state(ckpt["generators"][rank].cpu())
            if rank == 0:
                print(
                    f"note: {path} does not hold torch's global random states, so the resume "
                    "is exact only for a model without dropout",
                    file=sys.stderr,
                )

    started, begun = time.perf_counter(), step  # this session's: fit_to_time's pace

    def seconds() -> float:
        return spent + time.perf_counter() - started

    def checkpoint() -> None:
        here = _random_states(generator, device)
        states = [here] if world == 1 else [None] * world
        if world > 1:
            dist.all_gather_object(states, here)  # each rank's own, in rank order
        if rank == 0 and path is not None:
            save_atomic(
                {
                    "step": step,
                    "world": world,
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                    "random_states": states,
                    "losses": losses,
                    "seconds": seconds(),
                    "config": asdict(config),
                },
                path,
            )

    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc="training")
    running, counted = 0.0, 0
    try:
        while step < config.steps:
            if time_limit is not None and _agreed(seconds() >= time_limit, device, world):
                if counted:
                    losses.append((step, running / counted))
                if rank == 0:
                    print(
                        f"stopped at the time limit ({time_limit:.0f} s of training) at step "
                        f"{step} of {config.steps}",
                        file=sys.stderr,
                    )
                break
            idx = torch.randint(
                0, n, (config.batch_size // world,), generator=generator, device=device
            )
            batch = [d[idx] for d in data]
            loss = train_step(net, model, ema, opt, loss_fn, batch, generator, config, step)
            step += 1
            running, counted = running + loss.item(), counted + 1
            if step % config.log_every == 0 or step == config.steps:
                losses.append((step, running / counted))
                bar.set_postfix(loss=f"{running / counted:.4f}")
                if callback is not None and rank == 0:
                    callback(step, running / counted, ema)
                running, counted = 0.0, 0
                if fit_to_time:  # the steps that fit in the time left at this pace, less a margin
                    per_step = (time.perf_counter() - started) / (step - begun)
                    left = int(PLAN_MARGIN * max(0.0, time_limit - seconds()) / per_step)
                    config = replace(config, steps=_agreed(step + left, device, world))
                    bar.total = config.steps
            bar.update(1)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        if world == 1:
            checkpoint()  # an interrupted run resumes from here
        raise
    finally:
        bar.close()
    checkpoint()
    return TrainResult(model=ema, losses=losses, step=step, seconds=seconds(), config=config)
