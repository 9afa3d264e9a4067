"""Sample a labelled grid from a shipped model: the lesson's complete example as one command.

    python -m lesson_lib.sample --model mnist --sampler ddim --steps 50 --w 3 --out samples.png

One row per digit 0-9 (``--per-digit`` samples each), guided with weight ``--w``
(``--w 1``: plain conditional sampling; ``--unconditional``: no labels at all). Works offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .device import pick_device
from .guidance import cfg
from .pretrained import load
from .samplers import ddim_sample, ddpm_sample
from .viz import show_grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lesson_lib.sample", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="mnist", help="shipped model name")
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM always uses T)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic")
    parser.add_argument("--w", type=float, default=3.0, help="guidance weight (1 = none)")
    parser.add_argument("--per-digit", type=int, default=8)
    parser.add_argument("--unconditional", action="store_true", help="sample without labels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = torch.device(args.device) if args.device else pick_device()
    shipped = load(args.model, device)
    n = 10 * args.per_digit
    x_T = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed)).to(device)
    labels = torch.arange(10, device=device).repeat_interleave(args.per_digit)
    model, cond = (
        (shipped.model, {}) if args.unconditional else (cfg(shipped.model, args.w), {"y": labels})
    )
    if args.sampler == "ddim":
        x = ddim_sample(model, shipped.schedule, x_T, args.steps, args.eta, progress=True, **cond)
        what = f"DDIM {args.steps} steps, eta {args.eta}"
    else:
        gen = torch.Generator(device=device).manual_seed(args.seed)
        x = ddpm_sample(model, shipped.schedule, x_T, generator=gen, progress=True, **cond)
        what = f"DDPM {shipped.schedule.T} steps"
    title = f"{args.model}: {what}, " + ("unconditional" if args.unconditional else f"w = {args.w}")
    fig, ax = plt.subplots(figsize=(args.per_digit * 0.6 + 1, 7))
    show_grid(
        x, nrow=args.per_digit, title=title, ax=ax, labels=None if args.unconditional else range(10)
    )
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
