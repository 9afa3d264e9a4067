"""Measure the shipped MNIST models: sample quality, sampler speed, cost per call and per step.

    python scripts/benchmark_models.py                     # quality + speed on this machine
    python scripts/benchmark_models.py --anchor runs/anchor --ddpm --write-manifest

Quality: DDIM 50 steps, eta 0, fixed seed, 200 samples (20 per digit) guided with w = 3, and 200
unguided samples, each scored by the shipped classifier (accuracy, digit histogram, Fréchet
distance beside the real-vs-real floor, nearest-neighbour novelty). ``--ddpm`` adds DDPM-1000 on
the same noise. ``--anchor DIR`` scores the diffusers anchor (scripts/anchor.py) the same way;
``--course DIR`` scores a course U-Net from a run folder (``python -m lesson_lib.train --out DIR``,
any recipe's network, or ``anchor.py --model course``, for a comparison at the same wall-clock
budget) in place of the shipped one. ``--clip-x0`` clamps
each predicted x0 to [-1, 1] while sampling (diffusers' schedulers do by default).
Noise-prediction error: the MSE of eps on 200 held-out digits at a few timesteps, with labels
and without (where in the reverse process a model's samples go wrong).
Speed: seconds per network call and per training step at batch 64 on this machine, for the
course U-Net and the anchor (the anchor's cost is measured even without its weights).
Results are printed and written to docs/benchmarks_models.json.

``--flow`` scores the flow-matching model ``mnist_flow`` beside ``mnist`` instead: Euler over
uniform flow times with 10, 20 and 50 steps against DDIM (eta 0, default spacing) with the same
number of network calls, on the same noise and labels, guided (w = 3) and unguided, written to
docs/benchmarks_flow.json (``--write-manifest`` records mnist_flow's figures; ``--flow-run DIR``
scores a training run's folder in its place; ``--flow-only mnist`` or ``mnist_flow`` scores one
side and keeps the other's figures from the results file). ``--markdown``
prints the table of an existing results file for docs/benchmarks.md, without sampling;
``--compare LABEL=FILE ...`` prints one table of several (``--ddpm``) results files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from lesson_lib.atomic import save_json_atomic
from lesson_lib.data import load_mnist
from lesson_lib.flow import euler_sample
from lesson_lib.forward import q_sample
from lesson_lib.guidance import cfg
from lesson_lib.manifest import record_quality
from lesson_lib.metrics import accuracy
from lesson_lib.pretrained import load, load_run
from lesson_lib.quality import FrechetReference, quality_report, report_table
from lesson_lib.samplers import ddim_sample, ddpm_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def timed(fn, repeats: int = 5) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def costs(models: dict, device, schedule, rounds: int = 6) -> dict:
    """Seconds per network call (eval, no grad) and per training step (fwd + bwd) at batch 64,
    median over ``rounds``, the models taking turns so a busy moment hits them alike."""
    x = torch.randn(64, 1, 28, 28, device=device)
    t = torch.randint(0, schedule.T, (64,), device=device)
    y = torch.randint(0, 10, (64,), device=device)

    def call(model):
        model.eval()
        with torch.no_grad():
            model(x, t, y=y)

    def step(model):
        model.train()
        model.zero_grad()
        model(x, t, y=y).square().mean().backward()
        model.eval()

    out = {name: {"s_per_call_b64": [], "s_per_train_step_b64": []} for name in models}
    for model in models.values():
        call(model)  # warm-up
    for _ in range(rounds):
        for name, model in models.items():
            for key, fn in (("s_per_call_b64", call), ("s_per_train_step_b64", step)):
                out[name][key].append(timed(lambda fn=fn, model=model: fn(model), repeats=1))
    return {n: {k: sorted(v)[len(v) // 2] for k, v in d.items()} for n, d in out.items()}


ERROR_TIMESTEPS = (10, 100, 300, 500, 700, 900, 980)


@torch.no_grad()
def eps_error_by_t(model, schedule, images, labels) -> dict:
    """Mean squared error of the predicted noise on real digits noised to each of
    ERROR_TIMESTEPS (the same noise for every model), with their labels and with none. DDIM's
    first steps turn an error in eps into one in x0 that is 1 / sqrt(alpha_bar_t) times larger
    (Song et al. 2021, Eq. 12): about 145x at t = 980 for the linear schedule."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(2)).to(images)
    out = {}
    for t in ERROR_TIMESTEPS:
        ts = torch.full((images.shape[0],), t, device=images.device)
        x_t = q_sample(schedule, images, ts, noise)
        out[t] = {
            kind: (model(x_t, ts, y=y) - noise).square().mean().item()
            for kind, y in (("labelled", labels), ("unlabelled", None))
        }
    return out


KINDS = ("guided_w3", "unguided")
FLOW_STEPS = (10, 20, 50)


def fixed_noise(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting noise (n, 1, 28, 28) of seed 0 and the asked digits (n // 10 of each)."""
    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    return noise, torch.arange(10, device=device).repeat_interleave(n // 10)


def score_samplers(model, samplers, labels, reference, train, heldout) -> dict:
    """Sample with each ``(name, sample, kinds)`` of ``samplers`` (``sample(model, **cond)``
    returns images; kinds among KINDS: guided w = 3 asking for ``labels``, or unguided) and score
    each batch against ``reference`` (a FrechetReference: the real digits, featurised once)."""
    runs = {"guided_w3": (cfg(model, 3.0), {"y": labels}), "unguided": (model, {})}
    out, reports = {}, {}
    for name, sample, kinds in samplers:
        for kind in kinds:
            fn, cond = runs[kind]
            start = time.perf_counter()
            x = sample(fn, **cond).clamp(-1, 1).cpu()
            seconds = time.perf_counter() - start
            rep = quality_report(
                reference.classifier, x, train, heldout, labels.cpu() if cond else None, reference
            )
            reports[f"{name} {kind}"] = rep
            out[f"{name}_{kind}"] = {**rep.as_dict(), "seconds": seconds}
    print(report_table(reports))
    return out


def evaluate(
    model, schedule, reference, train, heldout, device, n, ddpm: str | None, clip_x0: bool
) -> dict:
    """Quality of guided (w = 3) and unguided samples, DDIM-50 (and DDPM-1000) on fixed noise."""
    noise, labels = fixed_noise(n, device)
    samplers = [
        ("ddim50", lambda m, **c: ddim_sample(m, schedule, noise, 50, clip_x0=clip_x0, **c), KINDS)
    ]
    if ddpm:
        g = torch.Generator(device=device)
        samplers.append(
            (
                "ddpm1000",
                lambda m, **c: ddpm_sample(
                    m, schedule, noise, generator=g.manual_seed(1), clip_x0=clip_x0, **c
                ),
                KINDS if ddpm == "both" else ("unguided",),
            )
        )
    return score_samplers(model, samplers, labels, reference, train, heldout)


def evaluate_flow(
    models: dict, schedule, reference, train, heldout, device, n, calls=FLOW_STEPS
) -> dict:
    """Score ``models`` ("mnist_flow": Euler over uniform flow times; "mnist": DDIM, eta 0, on
    ``schedule``) at each number of network ``calls``, on the same noise and labels."""
    noise, labels = fixed_noise(n, device)

    def euler(steps):
        s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        return lambda m, **c: euler_sample(m, noise, s, **c)

    def ddim(steps):
        return lambda m, **c: ddim_sample(m, schedule, noise, steps, **c)

    samplers = {"mnist_flow": ("euler", euler), "mnist": ("ddim", ddim)}
    out = {}
    for name, model in models.items():
        prefix, make = samplers[name]
        runs = [(f"{prefix}{k}", make(k), KINDS) for k in calls]
        out[name] = score_samplers(model, runs, labels, reference, train, heldout)
    return out


def flow_markdown(results: dict) -> str:
    """The docs/benchmarks.md table of a ``--flow`` results file."""
    lines = [
        "| model, sampler | network calls | guided w = 3: asked digit | guided: Fréchet / floor "
        "| unguided: Fréchet / floor | unguided digits 0-9 (%) | NN ratio unguided "
        "| copies guided / unguided | seconds, guided + unguided |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in FLOW_STEPS:
        for name, sampler in (("mnist_flow", "Euler"), ("mnist", "DDIM")):
            g, u = (results[name][f"{sampler.lower()}{k}_{kind}"] for kind in KINDS)
            digits = " ".join(f"{100 * h:.0f}" for h in u["histogram"])
            lines.append(
                f"| `{name}`, {sampler} | {k} | {g['accuracy']:.1%} "
                f"| {g['fd']:.2f} / {g['fd_floor']:.2f} = {g['fd_ratio']:.2f}x "
                f"| {u['fd']:.2f} / {u['fd_floor']:.2f} = {u['fd_ratio']:.2f}x | {digits} "
                f"| {u['nn_ratio']:.2f} | {g['copy_fraction']:.1%} / {u['copy_fraction']:.1%} "
                f"| {g['seconds'] + u['seconds']:.0f} |"
            )
    flow, eps = results["mnist_flow"]["euler50_unguided"], results["mnist"]["ddim50_unguided"]
    lines.append(
        f"\nAt 50 calls: guided asked digit {results['mnist_flow']['euler50_guided_w3']['accuracy']:.1%}"
        f" (target >= 97%); unguided Fréchet distance {flow['fd']:.2f} against {eps['fd']:.2f}, "
        f"{flow['fd'] / eps['fd']:.2f}x `mnist`'s (target <= 1.25x)."
    )
    return "\n".join(lines)


def comparison_markdown(results: dict[str, dict]) -> str:
    """A docs/benchmarks.md table of course U-Nets, one row per results file of this script run
    with ``--ddpm``: ``results`` maps each row's label to its file's contents. The cost per call
    is also given as a share of the anchor's, timed in the same run: machines of one kind differ
    from day to day, the share much less."""
    lines = [
        "| model | parameters | s per call, batch 64 (/ the anchor's, timed in turns) "
        "| guided w = 3: asked digit "
        "| guided: Fréchet / floor | unguided: Fréchet / floor "
        "| DDPM-1000 unguided: Fréchet / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        c, call = r["course"], r["course"]["s_per_call_b64"]
        g, u, d = (c[k] for k in ("ddim50_guided_w3", "ddim50_unguided", "ddpm1000_unguided"))
        lines.append(
            f"| {label} | {c['parameters']:,} "
            f"| {call:.3f} ({call / r['anchor']['s_per_call_b64']:.2f}) | {g['accuracy']:.1%} "
            f"| {g['fd']:.2f} / {g['fd_floor']:.2f} = {g['fd_ratio']:.2f}x "
            f"| {u['fd']:.2f} / {u['fd_floor']:.2f} = {u['fd_ratio']:.2f}x | {d['fd_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def flow_benchmark(args, results, eps, reference, train, heldout, device) -> None:
    """``--flow``: score mnist_flow (or ``--flow-run``) beside mnist, write, record. With
    ``--flow-only`` one side is scored and the other kept from ``--out``."""
    sides = [args.flow_only] if args.flow_only else ["mnist_flow", "mnist"]
    kept = json.loads(args.out.read_text()) if args.flow_only and args.out.exists() else {}
    if kept.get("samples", args.samples) != args.samples:
        raise SystemExit(f"{args.out} holds {kept['samples']} samples a run, not {args.samples}")
    models = {"mnist": eps.model} if "mnist" in sides else {}
    if "mnist_flow" in sides:
        flow = load_run(args.flow_run, device) if args.flow_run else load("mnist_flow", device)
        models = {"mnist_flow": flow.model} | models
        keys = ("steps", "hardware", "seconds_last_session")
        results["mnist_flow_training"] = {k: getattr(flow.info, k) for k in keys}
    scores = evaluate_flow(models, eps.schedule, reference, train, heldout, device, args.samples)
    results = kept | results | {"samples": args.samples} | scores
    save_json_atomic(results, args.out)
    print(f"\nwrote {args.out}")
    if "mnist_flow" in results and "mnist" in results:
        print(f"\n{flow_markdown(results)}")
    if args.write_manifest:
        by = {"measured_on": results["device"], "by": "scripts/benchmark_models.py --flow"}
        record_quality("mnist_flow", results["mnist_flow"] | by)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--ddpm",
        nargs="?",
        const="both",
        choices=["both", "unguided"],
        help="also sample DDPM-1000 (guided and unguided, or unguided only: 3x cheaper on a CPU)",
    )
    parser.add_argument("--anchor", type=Path, help="run folder of scripts/anchor.py")
    parser.add_argument(
        "--course",
        type=Path,
        help="score this run folder's course U-Net (model.pt) instead of the shipped one",
    )
    parser.add_argument("--clip-x0", action="store_true", help="clamp predicted x0 to [-1, 1]")
    parser.add_argument("--write-manifest", action="store_true")
    parser.add_argument(
        "--flow", action="store_true", help="score mnist_flow (Euler) beside mnist (DDIM) only"
    )
    parser.add_argument(
        "--flow-run",
        type=Path,
        help="with --flow: score this run folder's flow model instead of the shipped mnist_flow",
    )
    parser.add_argument(
        "--flow-only",
        choices=["mnist_flow", "mnist"],
        help="with --flow: score one side only, keeping the other's figures from --out",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the table of --out (with --flow) and stop"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=FILE",
        help="print a table of these results files (each row labelled) and stop",
    )
    parser.add_argument("--out", type=Path, help="results file (default docs/benchmarks_*.json)")
    args = parser.parse_args()
    if args.write_manifest and (args.course or args.clip_x0):
        parser.error("--write-manifest records the shipped model: not with --course or --clip-x0")
    if args.flow and (args.course or args.clip_x0 or args.anchor or args.ddpm):
        parser.error("--flow compares the two shipped models: not with --course, --clip-x0, ...")
    if args.flow_run and (args.write_manifest or not args.flow):
        parser.error("--flow-run goes with --flow, and not with --write-manifest")
    if args.flow_only and not args.flow:
        parser.error("--flow-only goes with --flow")
    if args.write_manifest and args.flow_only == "mnist":
        parser.error("--write-manifest records mnist_flow: not with --flow-only mnist")
    if args.markdown and not args.flow:
        parser.error("--markdown prints the --flow table: give --flow too")
    if args.compare:
        pairs = [item.partition("=") for item in args.compare]
        bad = [item for item, (_, eq, _) in zip(args.compare, pairs, strict=True) if not eq]
        if bad:
            parser.error(f"--compare takes LABEL=FILE, got {bad}")
        files = {label: json.loads(Path(f).read_text()) for label, _, f in pairs}
        print(comparison_markdown(files))
        return
    default = "benchmarks_flow.json" if args.flow else "benchmarks_models.json"
    args.out = args.out or ROOT / "docs" / default
    if args.markdown:
        print(flow_markdown(json.loads(args.out.read_text())))
        return
    device = torch.device(args.device)
    if device.type == "cpu":  # the reference machine's 2 cores, unless OMP_NUM_THREADS says
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))

    train, _ = load_mnist("train", source="bundled")
    heldout, heldout_labels = load_mnist("heldout", source="bundled")
    classifier = load("mnist_classifier", device).model
    reference = FrechetReference(classifier, train.to(device), heldout.to(device))
    results = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "clip_x0": args.clip_x0,
        "classifier_heldout_accuracy": accuracy(classifier, heldout.to(device), heldout_labels),
    }
    print(
        f"classifier accuracy on the 500 held-out digits: {results['classifier_heldout_accuracy']:.1%}"
    )
    shipped = load("mnist", device)
    if args.flow:
        flow_benchmark(args, results, shipped, reference, train, heldout, device)
        return
    if args.course:
        info = json.loads((args.course / "info.json").read_text())
        if "recipe" in info:  # a lesson_lib.train run: its recipe's network, which may be another
            shipped = load_run(args.course, device)
        else:  # scripts/anchor.py --model course: the mnist network
            state = torch.load(args.course / "model.pt", map_location=device, weights_only=True)
            shipped.model.load_state_dict(state)
        results["course_training"] = info
    from anchor import Anchor

    anchor = Anchor().to(device).eval()  # its cost does not depend on its weights
    if args.anchor:
        anchor.load_state_dict(torch.load(args.anchor / "model.pt", weights_only=True))
        results["anchor_training"] = json.loads((args.anchor / "info.json").read_text())
    models = {"course": shipped.model, "anchor": anchor}
    measured = costs(models, device, shipped.schedule)
    for name, model in models.items():
        print(f"\n== {name}")
        results[name] = {"parameters": sum(p.numel() for p in model.parameters()), **measured[name]}
        print(results[name])
        if name == "course" or args.anchor:
            errors = eps_error_by_t(
                model, shipped.schedule, heldout[:200].to(device), heldout_labels[:200].to(device)
            )
            results[name]["eps_mse_by_t"] = errors
            print("eps MSE on 200 held-out digits, labelled / unlabelled:")
            for t, e in errors.items():
                print(f"  t = {t:3d}: {e['labelled']:.5f} / {e['unlabelled']:.5f}")
            results[name] |= evaluate(
                model,
                shipped.schedule,
                reference,
                train,
                heldout,
                device,
                args.samples,
                args.ddpm if name == "course" else None,
                args.clip_x0,
            )
    save_json_atomic(results, args.out)
    print(f"\nwrote {args.out}")
    if args.write_manifest:
        course = results["course"]
        record_quality(
            "mnist",
            {k: course[k] for k in course if k.startswith(("ddim50", "ddpm1000"))}
            | {"measured_on": results["device"], "by": "scripts/benchmark_models.py"},
        )
        record_quality(
            "mnist_classifier",
            {
                "heldout_accuracy": results["classifier_heldout_accuracy"],
                "heldout": "500 bundled held-out digits",
            },
        )


if __name__ == "__main__":
    main()
