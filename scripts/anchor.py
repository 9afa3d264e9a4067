"""The comparison anchor: what a learner would build with diffusers instead of the course U-Net.

diffusers' UNet2DModel with block widths 32/64/64, one layer per block, attention at the two
lowest resolutions (1.1M parameters), class labels through `num_class_embeds` (10 digits + the
null label), batch 64, lr 1e-3, EMA. Trained by the same loop, on the same data, for a given
wall-clock budget, or for a step count (e.g. the one that costs what a course run cost, from
the per-step costs ``scripts/benchmark_models.py`` measures in turns):

    python scripts/anchor.py --seconds 600 --out runs/anchor
    python scripts/anchor.py --steps 2736 --out runs/anchor_3k

``--model course`` trains the course U-Net (the `mnist` recipe's architecture) the same way, so
both can be compared at the same budget; ``--dropout`` overrides its dropout (an ablation).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from lesson_lib.atomic import save_atomic, save_json_atomic
from lesson_lib.device import pick_device
from lesson_lib.loop import TrainConfig, train
from lesson_lib.losses import diffusion_loss
from lesson_lib.recipes import MNIST_UNET, get_recipe
from lesson_lib.unet import UNet


class Anchor(nn.Module):
    """UNet2DModel behind the course's model signature `model(x_t, t, y=None)`."""

    def __init__(self):
        super().__init__()
        self.net = UNet2DModel(
            sample_size=28,
            in_channels=1,
            out_channels=1,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            num_class_embeds=11,
        )

    def forward(self, x, t, y=None):
        if y is None:
            y = torch.full((x.shape[0],), 10, dtype=torch.long, device=x.device)
        return self.net(x, t, class_labels=y).sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="wall-clock budget")
    budget.add_argument("--steps", type=int, help="training steps")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", choices=["anchor", "course"], default="anchor")
    parser.add_argument("--dropout", type=float, help="course U-Net dropout (default: recipe's)")
    args = parser.parse_args()
    unet = MNIST_UNET if args.dropout is None else replace(MNIST_UNET, dropout=args.dropout)
    make = Anchor if args.model == "anchor" else lambda: UNet(unet)
    device = torch.device(args.device) if args.device else pick_device()
    schedule = get_recipe("mnist").schedule
    data = get_recipe("mnist").load_data()

    def loss(model, batch, generator):
        return diffusion_loss(model, schedule, batch[0], batch[1], 0.1, generator)

    steps = args.steps
    if steps is None:  # time 10 steps to turn the wall-clock budget into a step count
        torch.manual_seed(0)
        probe = TrainConfig(steps=10, batch_size=64, lr=1e-3, checkpoint_every=0)
        start = time.perf_counter()
        train(make(), loss, data, probe, device=device, progress=False)
        steps = max(1, int(args.seconds / ((time.perf_counter() - start) / 10)))
    torch.manual_seed(0)
    config = TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup=100, ema_decay=0.999)
    start = time.perf_counter()
    result = train(make(), loss, data, config, out_dir=args.out, device=device)
    save_atomic(result.model.state_dict(), args.out / "model.pt")
    info = {
        "model": args.model,
        "dropout": args.dropout,
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(device),
    }
    save_json_atomic(info, args.out / "info.json")
    print(info)


if __name__ == "__main__":
    main()
