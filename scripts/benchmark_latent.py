"""Measure the shipped latent diffusion models against their targets.

    python scripts/benchmark_latent.py                    # the full run (a few minutes on a CPU)
    python scripts/benchmark_latent.py --per-digit 1 --repeats 2 --out /tmp/smoke.json

1. Prompt fidelity: for every template in ``lesson_lib.text.TEMPLATES``, ``--per-digit`` samples
   of each digit (DDIM 50, eta 0, guidance w = 3, fixed seed, the same starting noise for every
   template), decoded and read by the shipped classifier: the fraction read as the prompted
   digit, per template and per digit. Target: >= 90% for every template.
2. Cost per sampling step: seconds of one guided model call (both halves of classifier-free
   guidance in one doubled batch) in latent space (``mnist_latent`` on (B, 4, 7, 7),
   ``prompt_cfg``) and in pixel space (``mnist`` on (B, 1, 28, 28), ``cfg``), at the same batch,
   median of ``--repeats`` calls after a warm-up; on a CPU with torch.set_num_threads(2)
   (``--threads``). Target: latent < half of pixel.
3. Reconstruction: pixel MSE of decode(encode(x)) and the classifier's accuracy on those
   reconstructions (and on the originals), over the 500 bundled held-out digits.

Results are printed and written to docs/benchmarks_latent.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from benchmark_models import timed  # scripts/ is on sys.path when run as a script

from lesson_lib.atomic import save_json_atomic
from lesson_lib.data import load_mnist
from lesson_lib.guidance import cfg
from lesson_lib.latent import generate, prompt_cfg
from lesson_lib.manifest import read_manifest
from lesson_lib.metrics import accuracy, predict
from lesson_lib.pretrained import load
from lesson_lib.text import TEMPLATES, make_prompt, tokenize

ROOT = Path(__file__).resolve().parents[1]
W = 3.0  # guidance weight for the fidelity test
STEPS = 50  # DDIM steps for the fidelity test
TARGET_ACCURACY = 0.90
TARGET_COST_RATIO = 0.5
MODELS = ("mnist_autoencoder", "mnist_latent", "mnist", "mnist_classifier")


@torch.no_grad()
def prompt_fidelity(model, autoencoder, schedule, classifier, per_digit, device, seed) -> dict:
    """Per template: the fraction of samples the classifier reads as the prompted digit."""
    digits = torch.arange(10).repeat_interleave(per_digit)  # (10 * per_digit,)
    shape = (len(digits), *autoencoder.latent_shape)
    z_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    out = {}
    for template in TEMPLATES:
        prompts = [make_prompt(template, d) for d in digits.tolist()]
        start = time.perf_counter()
        x = generate(model, autoencoder, schedule, prompts, W, STEPS, z_T=z_T).clamp(-1, 1)
        seconds = time.perf_counter() - start
        read = predict(classifier, x).cpu()
        hits = read == digits
        per = {str(d): hits[digits == d].double().mean().item() for d in range(10)}
        out[template] = {
            "accuracy": hits.double().mean().item(),
            "per_digit": per,
            "samples": len(digits),
            "seconds": seconds,
        }
        worst = min(per, key=per.get)
        print(
            f"  {template!r:>24}: {out[template]['accuracy']:6.1%} read as the prompted digit "
            f"(worst digit {worst}: {per[worst]:.0%}; {seconds:.1f} s)"
        )
    return out


@torch.no_grad()
def step_cost(model, pixel, batch, repeats, device) -> dict:
    """Seconds per guided model call in latent and pixel space, at the same batch."""
    t = torch.full((batch,), 500, device=device)
    digits = torch.arange(batch, device=device) % 10
    tokens = tokenize([make_prompt(TEMPLATES[0], d) for d in digits.tolist()]).to(device)
    z_t = torch.randn(batch, 4, 7, 7, device=device)
    x_t = torch.randn(batch, 1, 28, 28, device=device)
    latent_guided, pixel_guided = prompt_cfg(model, W), cfg(pixel, W)
    s_latent = timed(lambda: latent_guided(z_t, t, tokens), repeats)
    s_pixel = timed(lambda: pixel_guided(x_t, t, digits), repeats)
    return {
        "batch": batch,
        "guided": True,
        "s_per_step_latent": s_latent,
        "s_per_step_pixel": s_pixel,
        "latent_over_pixel": s_latent / s_pixel,
    }


@torch.no_grad()
def reconstruction(autoencoder, classifier, device) -> dict:
    """Pixel MSE and classifier accuracy of decode(encode(x)) on the 500 held-out digits."""
    images, labels = load_mnist("heldout", source="bundled")
    images = images.to(device)
    recon = torch.cat([autoencoder.decode(autoencoder.encode(c)) for c in images.split(250)])
    return {
        "digits": len(images),
        "mse": (recon - images).pow(2).mean().item(),
        "accuracy_reconstructions": accuracy(classifier, recon.clamp(-1, 1), labels),
        "accuracy_originals": accuracy(classifier, images, labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--per-digit", type=int, default=10, help="samples per digit and template")
    parser.add_argument("--batch", type=int, default=64, help="batch for the step-cost timing")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks_latent.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    autoencoder = load("mnist_autoencoder", device).model
    latent = load("mnist_latent", device)
    pixel = load("mnist", device).model
    classifier = load("mnist_classifier", device).model
    entries = read_manifest()
    results: dict = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "weights_sha256": {name: entries[name].file_sha256 for name in MODELS},
    }

    print("3. reconstruction of the 500 held-out digits")
    rec = results["reconstruction"] = reconstruction(autoencoder, classifier, device)
    print(
        f"  pixel MSE {rec['mse']:.4f}; classifier accuracy {rec['accuracy_reconstructions']:.1%} "
        f"on reconstructions, {rec['accuracy_originals']:.1%} on the originals"
    )

    print(f"2. seconds per guided sampling step, batch {args.batch}")
    cost = results["step_cost"] = step_cost(latent.model, pixel, args.batch, args.repeats, device)
    ok_cost = cost["latent_over_pixel"] < TARGET_COST_RATIO
    print(
        f"  latent {1000 * cost['s_per_step_latent']:.1f} ms, pixel "
        f"{1000 * cost['s_per_step_pixel']:.1f} ms: latent/pixel = "
        f"{cost['latent_over_pixel']:.2f} (target < {TARGET_COST_RATIO}: "
        f"{'met' if ok_cost else 'NOT met'})"
    )

    print(f"1. prompted samples: DDIM {STEPS}, w = {W:g}, {args.per_digit} per digit and template")
    fid = results["prompt_fidelity"] = prompt_fidelity(
        latent.model, autoencoder, latent.schedule, classifier, args.per_digit, device, args.seed
    )
    ok_fid = all(v["accuracy"] >= TARGET_ACCURACY for v in fid.values())
    worst = min(fid, key=lambda k: fid[k]["accuracy"])
    print(
        f"  worst template {worst!r}: {fid[worst]['accuracy']:.1%} "
        f"(target >= {TARGET_ACCURACY:.0%} for every template: {'met' if ok_fid else 'NOT met'})"
    )

    results["settings"] = {
        "guidance_w": W,
        "ddim_steps": STEPS,
        "per_digit": args.per_digit,
        "seed": args.seed,
        "timing_repeats": args.repeats,
    }
    results["targets"] = {
        "prompt_accuracy_every_template": {"target": TARGET_ACCURACY, "met": ok_fid},
        "latent_over_pixel_step_cost": {"target": TARGET_COST_RATIO, "met": ok_cost},
    }
    results["seconds_total"] = time.perf_counter() - start
    save_json_atomic(results, args.out)
    print(f"wrote {args.out} ({results['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
