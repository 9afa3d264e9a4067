"""Where a CPU training step of the course U-Net spends its time, and what each speed lever buys.

    OMP_NUM_THREADS=2 python scripts/profile_training.py      # on an otherwise idle machine
    python scripts/profile_training.py --report              # the tables, from the results
    OMP_NUM_THREADS=2 python scripts/profile_training.py --out docs/benchmarks_training_speed_noamx.json

1. torch.profiler over training steps of the shipped ``mnist`` recipe (batch 64, float32):
   the share of the step in the convolutions (forward and backward) against everything around
   them: normalisation and activations, attention, the optimiser, the EMA, gradient clipping,
   data indexing and the loss, and Python (the step's wall-clock minus the operators' time:
   argument checks, module calls).
2. Seconds per training step (median over 10 steps after 3 warm-up steps) for each speed
   lever alone: bf16 autocast, ``channels_last``, ``torch.compile``, threads, batch size,
   network width, and notebook 04's live U-Net in both precisions. Whether bf16 pays depends on
   the CPU's matrix units (AMX, listed under "device" with the other bf16 flags). The levers
   that change the arithmetic (bf16, width, batch) are scored for quality by
   scripts/benchmark_training.py.
Results: docs/benchmarks_training_speed.json, and the tables printed for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lesson_lib.atomic import save_json_atomic
from lesson_lib.device import cpu_description
from lesson_lib.loop import train_step
from lesson_lib.recipes import MNIST_UNET, RECIPES, unet_recipe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks_training_speed.json"

# Operator name -> category (the first substring that matches; the rest is "other operators").
CATEGORIES = [
    ("convolutions", ("convolution", "conv2d", "mkldnn_conv")),
    ("attention", ("bmm", "softmax", "baddbmm", "scaled_dot_product")),
    ("EMA of the weights", ("_foreach_lerp",)),
    ("optimiser (AdamW)", ("_foreach_add", "_foreach_mul", "_foreach_div", "_foreach_sqrt",
                           "_foreach_addcmul", "_foreach_addcdiv", "adamw")),
    ("normalisation and activations", ("group_norm", "silu", "layer_norm")),
    ("gradient clipping", ("_foreach_norm", "clip_grad")),
    ("data indexing and noise", ("index", "randint", "randn", "normal_")),
]  # fmt: skip


class Stepper:
    """Training steps of a recipe on the bundled digits, as lesson_lib.loop.train takes them."""

    def __init__(self, recipe, batch_size=64, channels_last=False, compiled=False):
        torch.manual_seed(0)
        self.recipe, self.batch_size = recipe, batch_size
        self.model = recipe.make_model()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if compiled else self.model
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=recipe.train.lr)
        self.data = recipe.load_data()
        if channels_last:
            self.data[0] = self.data[0].contiguous(memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(0)
        self.step = 0

    def __call__(self):
        idx = torch.randint(0, len(self.data[0]), (self.batch_size,), generator=self.generator)
        batch = [d[idx] for d in self.data]
        train_step(self.net, self.model, self.ema, self.opt, self.recipe.loss, batch,
                   self.generator, self.recipe.train, self.step).item()  # fmt: skip
        self.step += 1


def seconds_per_step(stepper, warmup=3, steps=10) -> float:
    for _ in range(warmup):
        stepper()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        stepper()
        times.append(time.perf_counter() - start)
    return sorted(times)[steps // 2]


def breakdown(recipe, steps=5) -> dict:
    stepper = Stepper(recipe)
    for _ in range(3):
        stepper()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            stepper()
    wall = (time.perf_counter() - start) / steps
    shares = {name: 0.0 for name, _ in CATEGORIES} | {"other operators": 0.0}
    for event in prof.key_averages():
        name = event.key.lower()
        category = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), None)
        shares[category or "other operators"] += event.self_cpu_time_total / 1e6 / steps
    operators = sum(shares.values())
    shares["Python (checks, module calls)"] = max(0.0, wall - operators)
    return {"seconds_per_step_profiled": wall, "seconds": shares}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="print the tables of --out, only")
    parser.add_argument("--out", type=Path, default=OUT, help="the results file")
    args = parser.parse_args()
    if args.report:
        print(markdown(json.loads(args.out.read_text())))
        return
    threads = int(os.environ.get("OMP_NUM_THREADS", 2))
    torch.set_num_threads(threads)
    mnist = RECIPES["mnist"]
    bf16 = replace(mnist, train=replace(mnist.train, bf16=True))
    min_snr = unet_recipe("min-SNR", "", MNIST_UNET, bf16.train, p_uncond=0.5, min_snr_gamma=5.0)

    live = RECIPES["mnist_live"]
    live32 = replace(live, train=replace(live.train, bf16=False))

    def width(base):
        config = replace(MNIST_UNET, base_channels=base)
        return unet_recipe(f"width {base}", "", config, mnist.train, p_uncond=0.5)

    results = {
        "device": cpu_description(threads),
        "torch": torch.__version__,
        "breakdown_float32": breakdown(mnist),
        "breakdown_bf16": breakdown(bf16),
    }
    levers = {
        "float32 (the shipped recipe)": lambda: Stepper(mnist),
        "bf16 autocast": lambda: Stepper(bf16),
        "bf16 + min-SNR-5 loss weighting": lambda: Stepper(min_snr),
        "channels_last": lambda: Stepper(mnist, channels_last=True),
        "channels_last + bf16": lambda: Stepper(bf16, channels_last=True),
        "torch.compile": lambda: Stepper(mnist, compiled=True),
        "torch.compile + bf16": lambda: Stepper(bf16, compiled=True),
        "batch 32 (per 64 samples)": lambda: Stepper(mnist, batch_size=32),
        "batch 128 (per 64 samples)": lambda: Stepper(mnist, batch_size=128),
        "width 24 (base channels)": lambda: Stepper(width(24)),
        "width 16 (base channels)": lambda: Stepper(width(16)),
        "live U-Net, batch 32, float32 (per 64 samples)": lambda: Stepper(live32, batch_size=32),
        "live U-Net, batch 32, bf16 (per 64 samples)": lambda: Stepper(live, batch_size=32),
    }
    speed = {}
    for name, make in levers.items():
        start = time.perf_counter()
        stepper = make()
        s = seconds_per_step(stepper)
        if "batch" in name:
            s *= 64 / stepper.batch_size
        speed[name] = {"seconds_per_step": s, "seconds_to_measure": time.perf_counter() - start}
        print(f"{name}: {s:.3f} s per step of 64", flush=True)
    if threads > 1:
        torch.set_num_threads(1)
        speed["1 thread"] = {"seconds_per_step": seconds_per_step(Stepper(mnist))}
        torch.set_num_threads(threads)
    results["seconds_per_step_b64"] = speed
    save_json_atomic(results, args.out)
    print(f"wrote {args.out}\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"Measured on {results['device']}, torch {results['torch']}.", ""]
    lines += ["| where a step's time goes | float32 | share | bf16 autocast | share |",
              "|---|---|---|---|---|"]  # fmt: skip
    f32, b16 = (results[k]["seconds"] for k in ("breakdown_float32", "breakdown_bf16"))
    t32, t16 = sum(f32.values()), sum(b16.values())
    for name in f32:
        lines.append(f"| {name} | {f32[name]:.3f} s | {f32[name] / t32:.0%} | {b16[name]:.3f} s "
                     f"| {b16[name] / t16:.0%} |")  # fmt: skip
    lines.append(f"| **the step** | **{t32:.3f} s** | | **{t16:.3f} s** | |")
    base = results["seconds_per_step_b64"]["float32 (the shipped recipe)"]["seconds_per_step"]
    lines += ["", "| lever, alone | s per step of 64 | speed-up |", "|---|---|---|"]
    for name, r in results["seconds_per_step_b64"].items():
        lines.append(
            f"| {name} | {r['seconds_per_step']:.3f} | {base / r['seconds_per_step']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
