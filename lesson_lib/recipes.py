"""Named training recipes: the exact model, data, loss and settings behind each shipped model.

``python -m lesson_lib.train --config NAME`` trains a recipe and ``lesson_lib.pretrained.load``
rebuilds its architecture from the same recipe, so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .autoencoder import AutoEncoder, AutoEncoderConfig, autoencoder_loss
from .classifier import Classifier, classifier_loss
from .data import load_mnist
from .flow import euler_sample, flow_loss
from .guidance import cfg
from .latent import LatentDiffusion, latent_diffusion_loss
from .loop import TrainConfig
from .losses import diffusion_loss
from .manifest import load_state, read_entry
from .samplers import ddim_sample
from .schedules import NoiseSchedule
from .text import TextEncoderConfig
from .unet import UNet, UNetConfig

__all__ = [
    "Recipe",
    "RECIPES",
    "unet_recipe",
    "get_recipe",
    "bundled_train",
    "encoded_mnist",
    "MNIST_UNET",
    "MNIST_TRAIN",
    "MNIST_LIVE",
]


def bundled_train() -> list[torch.Tensor]:
    """The bundled subset's 4,500 training digits and labels, so every run sees the same data."""
    return list(load_mnist("train", source="bundled"))


@torch.no_grad()
def encoded_mnist(batch_size: int = 500) -> list[torch.Tensor]:
    """The bundled 4,500 training digits encoded once by the shipped ``"mnist_autoencoder"``:
    [scaled latents (4500, c, 7, 7), labels (4500,)], the data of the recipe ``"mnist_latent"``."""
    autoencoder = AutoEncoder(AUTOENCODER)
    autoencoder.load_state_dict(load_state(read_entry("mnist_autoencoder")))
    images, labels = bundled_train()
    latents = torch.cat([autoencoder.eval().encode(chunk) for chunk in images.split(batch_size)])
    return [latents, labels]


@dataclass(frozen=True)
class Recipe:
    name: str
    about: str  # one line for the manifest and --help
    make_model: Callable[[], nn.Module]  # the architecture, freshly initialised
    train: TrainConfig  # optimiser, batch, steps, EMA, seed
    loss: Callable[[nn.Module, Sequence[torch.Tensor], torch.Generator], torch.Tensor]
    load_data: Callable[[], list[torch.Tensor]] = bundled_train  # the tensors batches come from
    data: str = "bundled MNIST subset, train split (4,500 digits)"  # for the manifest
    schedule: NoiseSchedule | None = None  # the noise schedule (diffusion models only)
    model_config: dict = field(default_factory=dict)  # recorded in the manifest
    # sample_grid(model, noise, labels) -> images: the training history's snapshots (None: none)
    sample_grid: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def unet_recipe(
    name: str,
    about: str,
    config: UNetConfig,
    train: TrainConfig,
    p_uncond: float = 0.1,
    min_snr_gamma: float | None = None,
    flow_times: str = "uniform",
) -> Recipe:
    """A class-conditional U-Net on the bundled digits: a diffusion model (eps loss, linear
    schedule, DDIM snapshots; ``min_snr_gamma`` weights the loss, losses.diffusion_loss), or for
    a ``continuous_time`` config a flow model (velocity loss with flow times drawn as
    ``flow_times`` says, flow.TIME_DRAWS; Euler snapshots). Snapshots take 25 steps with
    guidance w = 3."""
    if config.continuous_time:
        if min_snr_gamma is not None:
            raise ValueError(f"min_snr_gamma={min_snr_gamma} weights the eps loss: not for flow")
        schedule = None

        def loss(model, batch, generator):
            return flow_loss(model, batch[0], batch[1], p_uncond, generator, times=flow_times)

        def sample_grid(model, noise, labels):
            s = torch.linspace(1, 0, 26, dtype=torch.float64)
            return euler_sample(cfg(model, 3.0), noise, s, y=labels)
    else:
        if flow_times != "uniform":
            raise ValueError(f"flow_times={flow_times!r} draws flow times: not for the eps loss")
        schedule = NoiseSchedule.linear(config.num_timesteps)

        def loss(model, batch, generator):
            return diffusion_loss(
                model, schedule, batch[0], batch[1], p_uncond, generator, min_snr_gamma
            )

        def sample_grid(model, noise, labels):
            return ddim_sample(cfg(model, 3.0), schedule, noise, 25, y=labels)

    return Recipe(
        name=name,
        about=about,
        make_model=lambda: UNet(config),
        train=train,
        loss=loss,
        schedule=schedule,
        model_config=asdict(config),
        sample_grid=sample_grid,
    )


# The shipped pixel-space model: 1.2M parameters, attention at 7x7 only (cheaper per call than
# diffusers' UNet2DModel with 32/64/64 channels and attention at 14x14 and 7x7). No dropout: in
# 15,000 steps the model underfits rather than copies (docs/benchmarks.md, novelty), and drawing
# dropout's masks took a tenth of a CPU training step (torch.profiler).
MNIST_UNET = UNetConfig(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, dropout=0.0)

MNIST_TRAIN = TrainConfig(steps=15_000, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999)

# The 30-minute recipe's network: half the width, a quarter of the parameters, about half the
# cost of a step; in 30 minutes of the 2-core CPU it beats the full width (docs/benchmarks.md).
MNIST_FAST = replace(MNIST_UNET, base_channels=16)

# Notebook 04's live run: half the shipped width, two levels (28 -> 14), attention only in the
# middle block, trained by flow matching: in 1.5 minutes of the 2-core CPU it draws digits, where
# the eps loss of the same U-Net (with 14x14 attention) still drew blobs (docs/benchmarks.md).
MNIST_LIVE = UNetConfig(
    base_channels=16,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attn_levels=(),  # the middle's attention stays (unet.py), in two heads as benchmarked
    heads=2,
    dropout=0.0,
    continuous_time=True,
)

# The classifier behind the quality measures, with the default ``Classifier()`` (0.43 M
# parameters), on the bundled 4,500 training digits (34 passes over them). Measured on the 500
# held-out digits: 99.2% to 99.6% over three runs; about 65 s of CPU time (one core).
CLASSIFIER_TRAIN = TrainConfig(
    steps=1200,
    batch_size=128,
    lr=3e-3,
    weight_decay=1e-4,
    warmup=100,
    ema_decay=0.995,
    checkpoint_every=400,
    log_every=50,
)

AUTOENCODER = AutoEncoderConfig()
AUTOENCODER_TRAIN = TrainConfig(
    steps=3000, batch_size=64, lr=2e-3, warmup=100, ema_decay=0.999, log_every=50
)

LATENT_SCHEDULE = NoiseSchedule.linear(1000)  # the pixel model's schedule, T = 1000
# 7x7 -> 4x4, self- and cross-attention at both levels, so the prompt is read at 7x7 too.
# 2.0M parameters but a fifth of the pixel U-Net's (MNIST_UNET) FLOPs per call.
LATENT_UNET = UNetConfig(
    in_channels=4,
    base_channels=48,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attn_levels=(0, 1),
    heads=4,
    num_classes=None,
    context_dim=64,
)
LATENT_TEXT = TextEncoderConfig(width=64)
LATENT_TRAIN = TrainConfig(
    steps=3000, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, log_every=50
)


def _latent_loss(model, batch, generator):
    return latent_diffusion_loss(model, LATENT_SCHEDULE, batch, generator)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        unet_recipe(
            "mnist",
            "class-conditional U-Net (label dropout 0.5) on MNIST digits, linear schedule T=1000",
            MNIST_UNET,
            MNIST_TRAIN,
            # With the usual 0.1 the unconditional branch trains on a tenth of the batches and
            # its samples lag far behind the guided ones (docs/benchmarks.md).
            p_uncond=0.5,
        ),
        unet_recipe(
            "mnist_flow",
            "class-conditional U-Net (label dropout 0.5) trained by flow matching on MNIST "
            "digits: x_s = (1 - s) x0 + s eps, v = eps - x0",
            replace(MNIST_UNET, continuous_time=True),
            TrainConfig(steps=3_000, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999),
            p_uncond=0.5,
        ),
        unet_recipe(
            "mnist_fast",
            "the 'mnist' U-Net at half the width (16 base channels) trained fast on a CPU: bf16 "
            "autocast, min-SNR-5 loss weighting, peak lr 3e-3, EMA 0.998, label dropout 0.7; "
            "planned for 30 minutes (--minutes 30)",
            MNIST_FAST,
            # steps: what --minutes 30 planned in its benchmark run (docs/benchmarks.md)
            replace(MNIST_TRAIN, steps=11_423, lr=3e-3, ema_decay=0.998, bf16=True),
            p_uncond=0.7,
            min_snr_gamma=5.0,
        ),
        unet_recipe(
            "mnist_live",
            "a small U-Net for notebook 04's live run (--minutes 1.5), trained by flow matching: "
            "attention only in the middle, peak lr 4e-3, bf16 autocast where faster, "
            "label dropout 0.1",
            MNIST_LIVE,
            TrainConfig(1_000, batch_size=32, lr=4e-3, warmup=50, ema_decay=0.995, bf16=True),
        ),
        unet_recipe(
            "mnist_tiny",
            "a tiny class-conditional U-Net for smoke tests and live demos (not shipped)",
            UNetConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, heads=2),
            TrainConfig(steps=300, batch_size=32, lr=2e-3, warmup=50, ema_decay=0.99),
        ),
        Recipe(
            name="mnist_classifier",
            about="small CNN classifier of MNIST digits, for sample-quality metrics",
            make_model=Classifier,
            train=CLASSIFIER_TRAIN,
            loss=classifier_loss,
        ),
        Recipe(
            name="mnist_autoencoder",
            about="light-KL VAE: 28x28 digits <-> 4x7x7 latents, for latent diffusion",
            make_model=lambda: AutoEncoder(AUTOENCODER),
            train=AUTOENCODER_TRAIN,
            loss=autoencoder_loss,
            model_config=asdict(AUTOENCODER),
        ),
        Recipe(
            name="mnist_latent",
            about="prompt-conditioned latent diffusion (text encoder + U-Net with "
            "cross-attention, prompt dropout 0.1) on mnist_autoencoder latents, linear T=1000",
            make_model=lambda: LatentDiffusion(LATENT_UNET, LATENT_TEXT),
            train=LATENT_TRAIN,
            loss=_latent_loss,
            load_data=encoded_mnist,
            data="bundled MNIST subset, train split (4,500 digits), encoded once by the shipped "
            "mnist_autoencoder",
            schedule=LATENT_SCHEDULE,
            model_config={"unet": asdict(LATENT_UNET), "text": asdict(LATENT_TEXT)},
        ),
    ]
}


def get_recipe(name: str, steps: int | None = None) -> Recipe:
    """The recipe called ``name``; ``steps`` overrides its number of training steps."""
    if name not in RECIPES:
        raise ValueError(f"config={name!r} is not a known recipe: allowed {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    if steps is not None:
        recipe = replace(recipe, train=replace(recipe.train, steps=steps))
    return recipe
