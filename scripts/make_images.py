"""Regenerate the README's pictures in docs/images/ from the shipped models and lesson_lib.

    python scripts/make_images.py            # about a minute or two on a laptop CPU

No notebook is executed: every picture is computed here, seeded, with the library's functions.
Rerun it whenever a shipped model changes (lesson_lib/weights/). Files written:

    forward_noising.png     one digit noised at t = 0 ... 999 (linear schedule)
    schedules.png           linear vs cosine: alpha_bar curves and the same digit under both
    denoising.gif           DDIM, 50 steps, guided (w = 3): x_t above, predicted x0 below
    ddim_steps.png          the same noise sampled with DDIM in 5, 10, 20 and 50 steps
    score_field.png         the exact score of a 2-D mixture over its noised density at 3 t
    guidance.png            all ten digits at guidance w = 0, 1, 3, 7.5 from the same noise
    latent_prompts.png      latent diffusion from text prompts (only if "mnist_latent" ships)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from lesson_lib.data import load_mnist  # noqa: E402
from lesson_lib.forward import q_sample  # noqa: E402
from lesson_lib.guidance import cfg  # noqa: E402
from lesson_lib.manifest import read_manifest  # noqa: E402
from lesson_lib.mixture import GaussianMixture  # noqa: E402
from lesson_lib.pretrained import load  # noqa: E402
from lesson_lib.samplers import ddim_sample  # noqa: E402
from lesson_lib.schedules import NoiseSchedule  # noqa: E402
from lesson_lib.viz import grid, show_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
DIGITS = torch.arange(10)  # one sample of each digit, 0-9, left to right
STEPS = 50  # DDIM steps for the animation and the guidance grid
W = 3.0  # the guidance weight of the animation and the step-count figure
DPI = 80
LEVELS = 16  # grey levels in the GIF: 0, 17, 34, ..., 255 (a smaller file)


def save_fig(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KB)")


def a_digit(index: int = 0) -> torch.Tensor:
    """A fixed real digit (1, 1, 28, 28) from the bundled subset (the same on every machine)."""
    images, _ = load_mnist("train", source="bundled")
    return images[index : index + 1]


# ----------------------------------------------------------------------------- (a) forward noising


def forward_strip(out: Path, x0: torch.Tensor) -> None:
    schedule = NoiseSchedule.linear(1000)
    ts = [0, 50, 100, 200, 400, 600, 800, 999]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(SEED))
    x_t = torch.cat([q_sample(schedule, x0, torch.tensor([t]), noise) for t in ts])
    fig, ax = plt.subplots(figsize=(8, 1.5))
    show_grid(x_t, nrow=len(ts), ax=ax)
    ax.set_xticks([2 + 30 * i + 14 for i in range(len(ts))], [f"t = {t}" for t in ts])
    ax.set_title("forward noising q(x_t | x_0), linear schedule (same noise at every t)")
    save_fig(fig, out / "forward_noising.png")


# ----------------------------------------------------------------------------- (b) schedules


def schedules_figure(out: Path, x0: torch.Tensor) -> None:
    lin, cos = NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000)
    ts = [0, 100, 250, 500, 750, 900, 999]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(SEED))
    rows = [torch.cat([q_sample(s, x0, torch.tensor([t]), noise) for t in ts]) for s in (lin, cos)]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 2.5), gridspec_kw={"width_ratios": [1, 2.4]})
    steps = np.arange(1000)
    ax0.plot(steps, lin.alpha_bar.numpy(), label="linear")
    ax0.plot(steps, cos.alpha_bar.numpy(), label="cosine")
    ax0.set_xlabel("t")
    ax0.set_ylabel("alpha_bar (signal kept)")
    ax0.set_title("alpha_bar_t")
    ax0.legend()
    ax0.grid(alpha=0.3)
    show_grid(torch.cat(rows), nrow=len(ts), ax=ax1, labels=["linear", "cosine"])
    ax1.set_xticks([2 + 30 * i + 14 for i in range(len(ts))], [f"t = {t}" for t in ts])
    ax1.set_title("the same digit and noise under each schedule")
    fig.tight_layout()
    save_fig(fig, out / "schedules.png")


# ----------------------------------------------------------------------------- (c) animation


def labelled_frame(image: np.ndarray, text: str, scale: int) -> Image.Image:
    """A uint8 grid in ``LEVELS`` grey levels (a smaller GIF), enlarged ``scale`` times (nearest),
    under a white caption band."""
    image = (np.round(image / 255 * (LEVELS - 1)) * (255 // (LEVELS - 1))).astype(np.uint8)
    img = Image.fromarray(image).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
    )
    frame = Image.new("L", (img.width, img.height + 16), 255)
    frame.paste(img, (0, 16))
    ImageDraw.Draw(frame).text((4, 2), text, fill=0)
    return frame


def denoising_gif(out: Path, traj, scale: int = 2) -> None:
    """Each DDIM step: x_t (top row) above the model's predicted x0 (bottom row)."""
    n = traj.x_t.shape[0]
    frames = []
    for i in range(n):
        both = torch.cat([traj.x_t[i], traj.x0_pred[i]])  # (20, 1, 28, 28)
        text = (
            f"DDIM step {i + 1}/{n}, t = {int(traj.timesteps[i])}: x_t (top), predicted x0 (bottom)"
        )
        frames.append(labelled_frame(grid(both, nrow=10), text, scale))
    final = torch.cat([traj.x, traj.x])
    frames.append(
        labelled_frame(grid(final, nrow=10), f"done: x0 after {n} steps (w = {W})", scale)
    )
    durations = [80] * n + [2000]
    path = out / "denoising.gif"
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True
    )
    print(
        f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KB, {len(frames)} frames)"
    )


# ----------------------------------------------------------------------------- (d) step counts


def steps_figure(out: Path, guided, schedule, x_T, last: torch.Tensor) -> None:
    rows, labels = [], []
    for steps in (5, 10, 20):
        start = time.perf_counter()
        rows.append(ddim_sample(guided, schedule, x_T, steps, y=DIGITS))
        labels.append(f"DDIM {steps}")
        print(f"  DDIM {steps} steps: {time.perf_counter() - start:.1f} s")
    rows.append(last)
    labels.append(f"DDIM {STEPS}")
    print("  DDPM 1000 steps skipped (over a minute on a CPU)")
    fig, ax = plt.subplots(figsize=(6, 2.8))
    show_grid(torch.cat(rows), nrow=10, ax=ax, labels=labels)
    ax.set_title(f"the same noise, DDIM (eta = 0) with fewer steps; guidance w = {W}")
    save_fig(fig, out / "ddim_steps.png")


# ----------------------------------------------------------------------------- (e) score field


def score_figure(out: Path) -> None:
    gm = GaussianMixture.example()
    schedule = NoiseSchedule.linear(1000)
    ts = [10, 150, 400]
    lim = 3.2
    fine = torch.linspace(-lim, lim, 121, dtype=torch.float64)
    coarse = torch.linspace(-lim, lim, 17, dtype=torch.float64)
    fx, fy = torch.meshgrid(fine, fine, indexing="xy")
    cx, cy = torch.meshgrid(coarse, coarse, indexing="xy")
    fig, axes = plt.subplots(1, len(ts), figsize=(10, 3.5))
    for ax, t in zip(axes, ts, strict=True):
        ab = float(schedule.alpha_bar[t])
        density = gm.log_prob(torch.stack([fx, fy], -1), ab).exp()
        score = gm.score(torch.stack([cx, cy], -1), ab)
        direction = score / score.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        ax.contourf(fx.numpy(), fy.numpy(), density.numpy(), levels=12, cmap="viridis")
        ax.quiver(
            cx.numpy(),
            cy.numpy(),
            direction[..., 0].numpy(),
            direction[..., 1].numpy(),
            color="white",
            scale=24,
            width=0.004,
        )
        ax.set_title(f"t = {t}, alpha_bar = {ab:.3f}")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("exact score of a noised 8-Gaussian mixture (arrows: its direction) over p_t")
    fig.tight_layout()
    save_fig(fig, out / "score_field.png")


# ----------------------------------------------------------------------------- (f) guidance


def guidance_figure(out: Path, model, schedule, x_T, at_w: torch.Tensor) -> None:
    rows, labels = [], []
    for w in (0.0, 1.0, W, 7.5):
        start = time.perf_counter()
        x = at_w if w == W else ddim_sample(cfg(model, w), schedule, x_T, STEPS, y=DIGITS)
        if w != W:
            print(f"  w = {w}: {time.perf_counter() - start:.1f} s")
        rows.append(x)
        labels.append(f"w = {w:g}")
    fig, ax = plt.subplots(figsize=(6, 2.8))
    show_grid(torch.cat(rows), nrow=10, ax=ax, labels=labels)
    ax.set_xticks([2 + 30 * i + 14 for i in range(10)], [str(d) for d in range(10)])
    ax.set_title(f"classifier-free guidance, DDIM {STEPS}, same noise (w = 0: unconditional)")
    save_fig(fig, out / "guidance.png")


# ----------------------------------------------------------------------------- (g) latent


def latent_figure(out: Path) -> None:
    if "mnist_latent" not in read_manifest():
        print("  skipped latent_prompts.png: 'mnist_latent' is not in the shipped manifest")
        return
    from lesson_lib.latent import generate
    from lesson_lib.text import make_prompt

    latent, autoencoder = load("mnist_latent"), load("mnist_autoencoder").model
    templates = ["a handwritten {word}", "the digit {numeral}", "the number {word}"]
    z_T = torch.randn(
        (10, *autoencoder.latent_shape), generator=torch.Generator().manual_seed(SEED)
    )
    rows = []
    for template in templates:
        prompts = [make_prompt(template, d) for d in range(10)]
        rows.append(
            generate(latent.model, autoencoder, latent.schedule, prompts, W, STEPS, z_T=z_T)
        )
    fig, ax = plt.subplots(figsize=(6, 2.3))
    show_grid(
        torch.cat(rows),
        nrow=10,
        ax=ax,
        labels=[t.replace("{", "<").replace("}", ">") for t in templates],
    )
    ax.set_xticks([2 + 30 * i + 14 for i in range(10)], [str(d) for d in range(10)])
    ax.set_title(f"latent diffusion from text prompts (DDIM {STEPS}, w = {W:g}, same noise)")
    save_fig(fig, out / "latent_prompts.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    torch.manual_seed(SEED)

    x0 = a_digit()
    forward_strip(out, x0)
    schedules_figure(out, x0)
    score_figure(out)

    pretrained = load("mnist")
    model, schedule = pretrained.model, pretrained.schedule
    x_T = torch.randn((10, 1, 28, 28), generator=torch.Generator().manual_seed(SEED))
    start = time.perf_counter()
    guided = cfg(model, W)
    traj = ddim_sample(guided, schedule, x_T, STEPS, return_trajectory=True, y=DIGITS)
    print(f"  DDIM {STEPS} steps with trajectory: {time.perf_counter() - start:.1f} s")
    denoising_gif(out, traj)
    steps_figure(out, guided, schedule, x_T, traj.x)
    guidance_figure(out, model, schedule, x_T, traj.x)
    latent_figure(out)
    print(f"done in {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
