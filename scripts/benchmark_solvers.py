"""Fast samplers on the shipped MNIST model: quality against the number of network calls.

    OMP_NUM_THREADS=1 python scripts/benchmark_solvers.py   # measure: JSON and plot in docs/
    python scripts/benchmark_solvers.py --markdown          # the table for docs/benchmarks.md

DDIM (the course's `ddim_sample`, "leading" spacing), Euler (DDIM's update on the solvers'
default "linspace" grid), Heun on EDM's rho = 7 grid ("karras") and DPM-Solver++(2M) (diffusers'
defaults, "linspace") at each number of network calls in --calls (Heun takes the most steps that
fit: 2 * steps - 1 calls), plus
DDIM-50, the reference the target is measured against. Each run: the 200 noises and labels of
`scripts/benchmark_models.py` (seed 0, 20 per digit), guided with w = 3 and unguided, scored by
the shipped classifier with its scoring (Fréchet distance beside the real-digit floor, accuracy
of the asked digit), and timed. Results are written after every run to
docs/benchmarks_solvers.json (--out), so an interrupted run keeps what it measured; the plot goes
to docs/images/solvers_calls.png (--png).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lesson_lib.atomic import save_json_atomic
from lesson_lib.data import load_mnist
from lesson_lib.guidance import cfg
from lesson_lib.pretrained import load
from lesson_lib.quality import FrechetReference, quality_report
from lesson_lib.samplers import ddim_sample
from lesson_lib.solvers import (
    dpmpp_2m_sample,
    euler_sample,
    heun_sample,
    network_calls,
    steps_for_calls,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_models import fixed_noise  # noqa: E402 (the same noises and labels)

SAMPLERS = {  # name: (sampler, spacing)
    "DDIM": (ddim_sample, "leading"),  # the course's default
    "Euler": (euler_sample, "linspace"),
    "Heun, EDM grid": (heun_sample, "karras"),  # Karras et al. 2022: Algorithm 1 with Eq. 5
    "DPM-Solver++(2M)": (dpmpp_2m_sample, "linspace"),  # diffusers' defaults
}
CALLS = (4, 6, 10, 15, 30)
REFERENCE = ("DDIM", 50)  # the target: one sampler at <= 15 calls within 1.1x of its distance
JSON = ROOT / "docs" / "benchmarks_solvers.json"
PLOT = ROOT / "docs" / "images" / "solvers_calls.png"


def measure(args) -> None:
    threads = int(os.environ.get("OMP_NUM_THREADS", 2))
    torch.set_num_threads(threads)
    train, _ = load_mnist("train", source="bundled")
    heldout, _ = load_mnist("heldout", source="bundled")
    classifier = load("mnist_classifier").model
    reference = FrechetReference(classifier, train, heldout)
    shipped = load("mnist")
    model, schedule = shipped.model, shipped.schedule
    noise, labels = fixed_noise(args.samples, "cpu")  # the noises benchmark_models scores
    kinds = {"guided_w3": (cfg(model, 3.0), {"y": labels}), "unguided": (model, {})}
    runs = [REFERENCE] + [(name, calls) for calls in args.calls for name in SAMPLERS]
    results = {
        "device": f"cpu ({threads} thread{'s' if threads > 1 else ''})",
        "load_average_at_start": os.getloadavg()[0],  # other work on the same cores
        "samples": args.samples,
        "runs": [],
    }
    for name, calls in runs:
        sampler, spacing = SAMPLERS[name]
        steps = steps_for_calls(sampler, calls)
        row = {"sampler": name, "spacing": spacing, "steps": steps}
        row["calls"] = network_calls(sampler, steps)
        for kind, (fn, cond) in kinds.items():
            start = time.perf_counter()
            x = sampler(fn, schedule, noise, steps, spacing=spacing, **cond).clamp(-1, 1)
            seconds = time.perf_counter() - start
            rep = quality_report(classifier, x, train, heldout, cond.get("y"), reference)
            row[kind] = {**rep.as_dict(), "seconds": seconds, "s_per_sample": seconds / len(x)}
        results["runs"].append(row)
        save_json_atomic(results, args.out)
        g, u = row["guided_w3"], row["unguided"]
        print(
            f"{name:>17} {row['calls']:>3} calls: guided {g['accuracy']:.1%} {g['fd_ratio']:.2f}x"
            f" ({g['seconds']:.0f} s), unguided {u['fd_ratio']:.2f}x ({u['seconds']:.0f} s)",
            flush=True,
        )
    results["load_average_at_end"] = os.getloadavg()[0]
    save_json_atomic(results, args.out)
    plot(results, args.png)
    print(f"wrote {args.out} and {args.png}")


def reference_run(results: dict) -> dict:
    """The DDIM-50 run."""
    return next(r for r in results["runs"] if (r["sampler"], r["calls"]) == REFERENCE)


def markdown(results: dict) -> str:
    """The table for docs/benchmarks.md: one row per run, distances also relative to DDIM-50."""
    ref = {kind: reference_run(results)[kind]["fd"] for kind in ("guided_w3", "unguided")}
    load = [results.get(f"load_average_at_{when}") for when in ("start", "end")]
    lines = [
        f"Measured on {results['device']}, {results['samples']} samples per run; load average "
        + (f"{load[0]:.1f} at the start, {load[1]:.1f} at the end" if None not in load else "-")
        + " (2 cores, shared with other work: the times are upper bounds); sampling took "
        + f"{sum(r[k]['seconds'] for r in results['runs'] for k in ref) / 60:.0f} minutes in all.",
        "",
        "| sampler | network calls | guided w = 3: asked digit | guided: Fréchet / floor "
        "| guided: / DDIM-50 | unguided: Fréchet / floor | unguided: / DDIM-50 "
        "| s per sample (guided, unguided) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        results["runs"], key=lambda r: (list(SAMPLERS).index(r["sampler"]), r["calls"])
    ):
        g, u = r["guided_w3"], r["unguided"]
        lines.append(
            f"| {r['sampler']} ({r['spacing']}) | {r['calls']} | {g['accuracy']:.1%} "
            f"| {g['fd']:.2f} / {g['fd_floor']:.2f} = {g['fd_ratio']:.2f}x "
            f"| {g['fd'] / ref['guided_w3']:.2f} "
            f"| {u['fd']:.2f} / {u['fd_floor']:.2f} = {u['fd_ratio']:.2f}x "
            f"| {u['fd'] / ref['unguided']:.2f} "
            f"| {g['s_per_sample']:.3f}, {u['s_per_sample']:.3f} |"
        )
    hits = [
        f"{r['sampler']} at {r['calls']} calls ({r[kind]['fd'] / ref[kind]:.2f}x, {label})"
        for r in results["runs"]
        for kind, label in (("guided_w3", "guided"), ("unguided", "unguided"))
        if r["calls"] <= 15 and r[kind]["fd"] <= 1.1 * ref[kind]
    ]
    verdict = "; ".join(hits) if hits else "none"
    lines += ["", f"Within 1.1x of DDIM-50's Fréchet distance at 15 calls or fewer: {verdict}."]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Fréchet ratio (guided, unguided) and guided accuracy against network calls."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("guided_w3", "fd_ratio", "guided w = 3: Fréchet / floor"),
        ("unguided", "fd_ratio", "unguided: Fréchet / floor"),
        ("guided_w3", "accuracy", "guided w = 3: asked digit"),
    ]
    for ax, (kind, key, title) in zip(axes, panels, strict=True):
        for i, name in enumerate(SAMPLERS):
            runs = sorted(
                (r for r in results["runs"] if r["sampler"] == name), key=lambda r: r["calls"]
            )
            calls = [r["calls"] for r in runs]
            ax.plot(calls, [r[kind][key] for r in runs], "o-", color=f"C{i}", label=name)
        if key == "fd_ratio":
            ref = reference_run(results)[kind]["fd_ratio"]
            ax.axhline(ref, color="gray", ls=":")
            ax.set_yscale("log")
            ax.set_ylim(0.8, 4 * ref)  # runs far above (Heun with few steps): see the table
            title += " (cut at 4x DDIM-50)"
        ax.set_xscale("log")
        ax.set_xticks([4, 6, 10, 15, 30, 50], ["4", "6", "10", "15", "30", "50"])
        ax.minorticks_off()
        ax.set_xlabel("network calls")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Shipped mnist, {results['samples']} samples, same noise; dotted: DDIM-50; "
        f"{results['device']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--calls", type=int, nargs="+", default=list(CALLS))
    parser.add_argument("--out", type=Path, default=JSON)
    parser.add_argument("--png", type=Path, default=PLOT)
    parser.add_argument("--markdown", action="store_true", help="print the table from --out")
    parser.add_argument("--plot", action="store_true", help="redraw the plot from --out")
    args = parser.parse_args()
    if args.markdown or args.plot:
        results = json.loads(args.out.read_text())
        if args.plot:
            plot(results, args.png)
        if args.markdown:
            print(markdown(results))
        return
    measure(args)


if __name__ == "__main__":
    main()
