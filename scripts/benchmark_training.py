"""Quality against wall-clock minutes: train candidate recipes under the same budget, side by side.

    OMP_NUM_THREADS=2 python scripts/benchmark_training.py --minutes 10 --marks 5,10
    OMP_NUM_THREADS=2 python scripts/benchmark_training.py --minutes 30 --marks 10,20,30 \\
        --candidates mnist_fast
    python scripts/benchmark_training.py --report        # the tables and curves, from the results

Each candidate is trained in turn by ``lesson_lib.train.run`` (the code of ``python -m
lesson_lib.train --minutes M``: the steps that fit are planned, in bf16 where the recipe has it
and it times faster, and the run stops on time) into
``runs/bench_<budget>/<candidate>``; the EMA weights are kept at each mark (minutes of
training) and scored afterwards as ``scripts/benchmark_models.py`` scores the shipped model: DDIM
50 (a flow model: Euler, 50 calls), the same 200 noises, guided (w = 3) and unguided, Fréchet
distance beside the real floor. A budget run on a CPU without AMX is kept apart from the others.
Training a candidate is skipped when its run folder is complete, so an interrupted benchmark
resumes. Results: docs/benchmarks_training.json, the curves: docs/images/training_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lesson_lib.atomic import save_atomic, save_json_atomic
from lesson_lib.data import load_mnist
from lesson_lib.device import cpu_bf16_units
from lesson_lib.loop import TrainConfig
from lesson_lib.pretrained import load
from lesson_lib.quality import FrechetReference
from lesson_lib.recipes import MNIST_FAST, MNIST_UNET, RECIPES, unet_recipe
from lesson_lib.train import run
from lesson_lib.unet import UNetConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_models import evaluate, evaluate_flow  # noqa: E402

RESULTS = ROOT / "docs" / "benchmarks_training.json"
NO_AMX = " on a CPU without AMX"  # in the key of a budget run on such a CPU
FIGURE = ROOT / "docs" / "images" / "training_curves.png"


def _variant(name: str, about: str, config=MNIST_UNET, p_uncond=0.5, **changes):
    """The shipped ``mnist`` recipe (or, given ``config`` and ``p_uncond``, another U-Net) with
    ``changes``: training settings (TrainConfig fields), ``min_snr_gamma`` and ``flow_times``."""
    loss = {k: changes.pop(k) for k in ("min_snr_gamma", "flow_times") if k in changes}
    train = replace(RECIPES["mnist"].train, **changes)
    return unet_recipe(name, about, config, train, p_uncond=p_uncond, **loss)


def _fast(name: str, about: str, p_uncond=0.5, config=MNIST_UNET, **changes):
    """``bf16+minsnr5+lr2e-3`` (bf16, min-SNR-5, peak lr 2e-3: mnist_fast as it was first)
    with ``changes`` (TrainConfig fields), label dropout ``p_uncond`` and the U-Net ``config``."""
    levers = {"bf16": True, "min_snr_gamma": 5.0, "lr": 2e-3} | changes
    return _variant(name, about, config, p_uncond, **levers)


def _best(name: str, about: str, config=MNIST_UNET, p_uncond=0.7, **changes):
    """``fast+uncond0.7+ema0.998+lr3e-3`` (``_fast`` with label dropout 0.7, EMA 0.998, peak lr
    3e-3) with the U-Net ``config``, label dropout ``p_uncond`` and ``changes``."""
    return _fast(name, about, p_uncond, config, **({"ema_decay": 0.998, "lr": 3e-3} | changes))


def _flow(name: str, about: str, p_uncond=0.5, **changes):
    """The ``mnist`` U-Net trained by flow matching (as ``mnist_flow``) with bf16, ``changes``
    (TrainConfig fields) and label dropout ``p_uncond``: scored by Euler over 50 flow times."""
    flow = replace(MNIST_UNET, continuous_time=True)
    return _variant(name, about, flow, p_uncond, bf16=True, **changes)


# mnist_live before it moved to flow matching, the base of the live candidates: the eps loss with
# min-SNR-5, attention at 14x14, peak lr 2e-3 ("live_eps").
LIVE_EPS_UNET = UNetConfig(
    base_channels=16, channel_mults=(1, 2), num_res_blocks=1, heads=2, dropout=0.0
)
LIVE_EPS_TRAIN = TrainConfig(1_000, batch_size=32, lr=2e-3, warmup=50, ema_decay=0.995, bf16=True)


def _live(name: str, about: str, flow=False, **changes):
    """``live_eps`` with ``changes`` to its training settings or to its network's
    ``base_channels`` (width) and ``attn_levels``; ``flow``: trained by flow matching instead."""
    network = {k: changes.pop(k) for k in ("base_channels", "attn_levels") if k in changes}
    config = replace(LIVE_EPS_UNET, continuous_time=flow, **network)
    gamma = None if flow else 5.0  # min-SNR weights the eps loss
    train = replace(LIVE_EPS_TRAIN, **changes)
    return unet_recipe(name, about, config, train, min_snr_gamma=gamma)


# Each lever alone, then together; `mnist` is the shipped recipe (float32, lr 1e-3, batch 64).
CANDIDATES = {
    "mnist": lambda: RECIPES["mnist"],
    "bf16": lambda: _variant("bf16", "mnist, forward under bf16 autocast", bf16=True),
    "bf16+minsnr5": lambda: _variant(
        "bf16+minsnr5", "bf16, loss weighted by min-SNR-5", bf16=True, min_snr_gamma=5.0
    ),
    "bf16+minsnr5+lr2e-3": lambda: _variant(
        "bf16+minsnr5+lr2e-3",
        "bf16, min-SNR-5, peak lr 2e-3",
        bf16=True,
        min_snr_gamma=5.0,
        lr=2e-3,
    ),
    # mnist_fast as it was first (the three levers above, 30 minutes and 120), and its neighbours,
    # for the 30-minute target's unguided side.
    "fast+uncond0.7": lambda: _fast(
        "fast+uncond0.7", "bf16+minsnr5+lr2e-3, label dropout 0.7", 0.7
    ),
    "fast+uncond0.7+ema0.998+lr3e-3": lambda: _best(
        "fast+uncond0.7+ema0.998+lr3e-3",
        "bf16+minsnr5+lr2e-3, label dropout 0.7, EMA 0.998, peak lr 3e-3",
    ),
    # The same, trained after --minutes runs began to re-plan their steps (loop.train's
    # fit_to_time): the one above stopped on time at 77% of its plan, its schedule unfinished.
    "fast+uncond0.7+ema0.998+lr3e-3+replanned": lambda: _best(
        "fast+uncond0.7+ema0.998+lr3e-3+replanned",
        "bf16+minsnr5+lr2e-3, label dropout 0.7, EMA 0.998, peak lr 3e-3; steps re-planned on the way",
    ),
    # The network, on top of the best eps recipe: without the 7x7 attention (a fifth cheaper a
    # step in bf16 on the AMX machine), and half the width (a quarter of the parameters).
    "fast+uncond0.7+ema0.998+lr3e-3+noattn": lambda: _best(
        "fast+uncond0.7+ema0.998+lr3e-3+noattn",
        "fast+uncond0.7+ema0.998+lr3e-3 without attention",
        replace(MNIST_UNET, attn_levels=()),
    ),
    "fast+uncond0.7+ema0.998+lr3e-3+width16": lambda: _best(
        "fast+uncond0.7+ema0.998+lr3e-3+width16",
        "fast+uncond0.7+ema0.998+lr3e-3 with 16 base channels (0.30M parameters)",
        MNIST_FAST,
    ),
    # mnist_fast as lesson_lib.recipes has it (fast+uncond0.7+ema0.998+lr3e-3+width16), and its
    # neighbours: a higher peak lr (a smaller network takes more), more label dropout (guided
    # samples were the asked digit at every mark, so the unguided side can have more batches).
    "mnist_fast": lambda: RECIPES["mnist_fast"],
    "mnist_fast+lr5e-3": lambda: _best(
        "mnist_fast+lr5e-3", "mnist_fast, peak lr 5e-3", MNIST_FAST, lr=5e-3
    ),
    "mnist_fast+uncond0.85": lambda: _best(
        "mnist_fast+uncond0.85", "mnist_fast, label dropout 0.85", MNIST_FAST, 0.85
    ),
    # The prediction target: flow matching (notebook 09) with the levers above but min-SNR,
    # which weights the eps loss.
    "flow+uncond0.7+ema0.998+lr3e-3": lambda: _flow(
        "flow+uncond0.7+ema0.998+lr3e-3",
        "mnist_flow (flow matching), bf16, label dropout 0.7, EMA 0.998, peak lr 3e-3",
        0.7,
        ema_decay=0.998,
        lr=3e-3,
    ),
    # Flow times drawn logit-normal (Esser et al. 2024): the middle times trained most.
    "flow+uncond0.7+ema0.998+lr3e-3+logitnormal": lambda: _flow(
        "flow+uncond0.7+ema0.998+lr3e-3+logitnormal",
        "flow+uncond0.7+ema0.998+lr3e-3 with logit-normal flow times (SD3's lognorm(0, 1))",
        0.7,
        ema_decay=0.998,
        lr=3e-3,
        flow_times="logit_normal",
    ),
    # Notebook 04's live run (--minutes 1.5): the recipe it had, its neighbours, and the winner,
    # mnist_live as lesson_lib.recipes has it (live+flow+noattn+lr4e-3).
    "live_eps": lambda: _live("live_eps", "mnist_live before flow matching: eps, min-SNR-5"),
    "mnist_live": lambda: RECIPES["mnist_live"],
    "live+lr4e-3+batch64": lambda: _live(
        "live+lr4e-3+batch64", "live_eps, peak lr 4e-3, batch 64", lr=4e-3, batch_size=64
    ),
    "live+width24": lambda: _live("live+width24", "live_eps, 24 channels", base_channels=24),
    "live+float32": lambda: _live("live+float32", "live_eps without bf16", bf16=False),
    "live+noattn": lambda: _live("live+noattn", "live_eps without attention", attn_levels=()),
    "live+noattn+lr4e-3": lambda: _live(
        "live+noattn+lr4e-3", "live_eps without attention, peak lr 4e-3", attn_levels=(), lr=4e-3
    ),
    "live+flow": lambda: _live("live+flow", "live_eps trained by flow matching", flow=True),
    "live+flow+lr4e-3": lambda: _live(
        "live+flow+lr4e-3", "live_eps by flow matching, peak lr 4e-3", flow=True, lr=4e-3
    ),
    "live+flow+noattn+lr4e-3": lambda: _live(
        "live+flow+noattn+lr4e-3",
        "live_eps by flow matching, without attention, peak lr 4e-3",
        flow=True,
        attn_levels=(),
        lr=4e-3,
    ),
}


class Keeper:
    """Keeps the EMA weights at each mark, as the callback. Its clock starts before the plan is
    timed, so a mark's minutes include the planning (seconds); the end of the run is kept by
    train_candidate with the loop's own count, training seconds only."""

    def __init__(self, out: Path, marks: list[float]):
        self.out, self.marks, self.start = out, sorted(marks), time.perf_counter()

    def __call__(self, step: int, loss: float, ema) -> None:
        minutes = (time.perf_counter() - self.start) / 60
        while self.marks and minutes >= self.marks[0]:
            mark = self.marks.pop(0)
            state = {k: v.clone() for k, v in ema.state_dict().items()}
            save_atomic(
                {"step": step, "minutes": minutes, "state": state}, self.out / f"at_{mark:g}min.pt"
            )


def train_candidate(name: str, minutes: float, marks: list[float], out: Path, device) -> None:
    recipe = CANDIDATES[name]()
    if (out / "model.pt").exists():
        print(f"{name}: {out} is complete, not retrained", file=sys.stderr)
        return
    if (out / "checkpoint.pt").exists():
        raise SystemExit(
            f"{out} holds a half-finished run; the marks' clock restarts, so delete it"
        )
    # The last mark is the end of the run: model.pt, the EMA weights when the budget ran out.
    keeper = Keeper(out, [m for m in marks if m < minutes])
    result = run(recipe, out, device, minutes, progress=False, callback=keeper)
    save_atomic(
        {"step": result.step, "minutes": result.seconds / 60, "state": result.model.state_dict()},
        out / f"at_{minutes:g}min.pt",
    )


def score_candidate(name, minutes, marks, out, reference, train, heldout, device) -> dict:
    recipe = CANDIDATES[name]()
    model = recipe.make_model().to(device).eval()
    info = json.loads((out / "info.json").read_text())
    points = []
    for mark in marks:
        kept = torch.load(out / f"at_{mark:g}min.pt", map_location=device, weights_only=True)
        model.load_state_dict(kept["state"])
        print(f"\n== {name} at {mark:g} minutes (step {kept['step']})", file=sys.stderr)
        if recipe.schedule is None:  # a flow model: Euler, 50 calls on the same noises as DDIM 50
            sampler = "euler50"
            scores = evaluate_flow(
                {"mnist_flow": model}, None, reference, train, heldout, device, 200, (50,)
            )["mnist_flow"]
        else:
            sampler = "ddim50"
            scores = evaluate(
                model, recipe.schedule, reference, train, heldout, device, 200, None, False
            )
        guided, unguided = scores[f"{sampler}_guided_w3"], scores[f"{sampler}_unguided"]
        points.append(
            {
                "mark_minutes": mark,
                "minutes": kept["minutes"],
                "step": kept["step"],
                "sampler": sampler,
                "guided_accuracy": guided["accuracy"],
                "guided_fd_ratio": guided["fd_ratio"],
                "unguided_fd_ratio": unguided["fd_ratio"],
                "unguided_histogram": unguided["histogram"],
            }
        )
    plan = json.loads((out / "plan.json").read_text())
    return {
        "about": recipe.about,
        "train_config": info["train_config"],
        "planned_steps": plan["steps"],
        "seconds_per_step": plan["seconds_per_step"],
        "steps": info["steps"],
        "hardware": info["hardware"],
        "points": points,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per candidate")
    parser.add_argument("--marks", default="5,10", help="minutes at which the weights are scored")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated")
    parser.add_argument(
        "--label",
        help="added to the budget's results key, to keep one session's side-by-side apart "
        "(machines of the same kind differ in speed from one day to the next)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--report", action="store_true", help="plot and print tables of --out, only"
    )
    args = parser.parse_args()
    if args.report:
        report(json.loads(args.out.read_text()))
        return
    marks = sorted(float(m) for m in args.marks.split(","))
    if marks[-1] != args.minutes:
        parser.error(f"--marks must end at the budget --minutes={args.minutes:g}, got {args.marks}")
    names = args.candidates.split(",")
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"--candidates {unknown} unknown: allowed {', '.join(CANDIDATES)}")
    device = torch.device(args.device)
    if device.type == "cpu":  # the reference machine's 2 cores, unless OMP_NUM_THREADS says
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    key = budget_name(args.minutes, device) + (f", {args.label}" if args.label else "")
    folder = ROOT / "runs" / f"bench_{key.replace(' ', '_').replace(',', '')}"
    for name in names:  # every candidate trains before any is scored: the same quiet machine
        train_candidate(name, args.minutes, marks, folder / name, device)

    train, _ = load_mnist("train", source="bundled")
    heldout, _ = load_mnist("heldout", source="bundled")
    classifier = load("mnist_classifier", device).model
    reference = FrechetReference(classifier, train.to(device), heldout.to(device))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    budget = results.setdefault(key, {})
    for name in names:
        budget[name] = score_candidate(
            name, args.minutes, marks, folder / name, reference, train, heldout, device
        )
        save_json_atomic(results, args.out)
    print(f"wrote {args.out}")
    report(results)


def budget_name(minutes: float, device: torch.device) -> str:
    """The results' key for a budget: its minutes, and whether the CPU lacks AMX, whose bf16 is
    slower than float32 (docs/benchmarks.md), so that two kinds of CPU are not mixed."""
    amx = device.type != "cpu" or "amx_bf16" in cpu_bf16_units()
    return f"{minutes:g} minutes" + ("" if amx else NO_AMX)


def report(results: dict) -> None:
    print(tables(results))
    plot(results)
    print(f"\nwrote {FIGURE}")


def tables(results: dict) -> str:
    """One table per budget, as docs/benchmarks.md shows them (tests/test_project.py checks)."""
    lines = []
    for budget, runs in results.items():
        lines += [
            f"Training for {budget}, per candidate: {_hardware(runs)}:",
            "",
            "| candidate | s / step (timed) | step of planned | minutes | guided w = 3: asked digit "
            "| guided: Fréchet / floor | unguided: Fréchet / floor |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in runs.items():
            for p in r["points"]:
                lines.append(
                    f"| {name} | {r['seconds_per_step']:.3f} | {p['step']:,} of "
                    f"{r['planned_steps']:,} | "
                    f"{p['minutes']:.1f} | {p['guided_accuracy']:.1%} | "
                    f"{p['guided_fd_ratio']:.2f}x | {p['unguided_fd_ratio']:.2f}x |"
                )
        lines.append("")
    return "\n".join(lines)


def _hardware(runs: dict) -> str:
    return next(iter(runs.values()))["hardware"]


def plot(results: dict) -> None:
    """Fréchet distance against minutes of training, one curve per candidate and budget (dashed:
    a CPU without AMX), the legend beside the two panels."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 5), sharey=True)
    curves = [(budget, name, r) for budget, runs in results.items() for name, r in runs.items()]
    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]
    for i, (budget, name, r) in enumerate(curves):
        minutes = [p["minutes"] for p in r["points"]]
        style = "o--" if NO_AMX in budget else "o-"
        for ax, key in zip(axes, ("unguided_fd_ratio", "guided_fd_ratio"), strict=True):
            ax.plot(minutes, [p[key] for p in r["points"]], style, color=colours[i % len(colours)],
                    label=f"{name} ({budget})")  # fmt: skip
    for ax, kind in zip(axes, ("unguided", "guided, w = 3"), strict=True):
        ax.axhline(2.0, color="gray", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("minutes of training")
        ax.set_title(f"{kind}: DDIM 50 (flow models: Euler 50), 200 samples", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("Fréchet distance / real floor")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.suptitle(
        "quality against wall-clock: the 2-core CPU, 2 threads, nothing else running", fontsize=10
    )
    fig.tight_layout(rect=(0, 0, 0.7, 1))
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=100)


if __name__ == "__main__":
    main()
