"""Latent diffusion (Rombach et al. 2022): diffuse in a small autoencoder's latent space, with
prompts read through cross-attention.

Stable Diffusion in three parts, at MNIST scale:

1. ``AutoEncoder``: a VAE (Kingma & Welling 2014) with a light KL term, as Stable Diffusion's first
   stage: an image (B, 1, 28, 28) in [-1, 1] <-> a latent z (B, 4, 7, 7). ``encode`` returns the
   posterior *mean* times ``scale_factor`` (1 / std of the latents over the training data, the
   role of Stable Diffusion's 0.18215), so diffusion sees latents of std about 1.
2. ``lesson_lib.text.TextEncoder``: the prompt "a handwritten seven" -> tokens -> context vectors.
3. ``LatentDiffusion``: the text encoder and the course U-Net, trained together; the U-Net
   predicts the noise in z_t and reads the prompt with cross-attention at every attention level.

Notation: ``z0`` a clean scaled latent, ``z_t`` its noised version (``x_t`` of the pixel models),
``eps`` the noise, ``w`` the guidance weight (w = 1 conditional, w = 0 unconditional).
Shapes: B batch, c latent channels, h x w latent size (7 x 7), L tokens, D context width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_int, check_real, check_tensor
from .guidance import guide
from .loop import TrainConfig
from .losses import diffusion_loss
from .metrics import check_images
from .samplers import ddim_sample
from .schedules import NoiseSchedule, as_timesteps
from .text import TextEncoder, TextEncoderConfig, random_prompts, tokenize
from .unet import UNet, UNetConfig

__all__ = [
    "AutoEncoderConfig",
    "AutoEncoder",
    "kl_divergence",
    "KL_WEIGHT",
    "autoencoder_loss",
    "LATENT_SCHEDULE",
    "LATENT_UNET",
    "LatentDiffusion",
    "latent_diffusion_loss",
    "prompt_cfg",
    "sample",
    "attention_maps",
    "encoded_mnist",
    "AUTOENCODER_TRAIN",
    "LATENT_TRAIN",
]

# ----------------------------------------------------------------------------- the autoencoder


@dataclass(frozen=True)
class AutoEncoderConfig:
    z_channels: int = 4  # c: latent channels (Stable Diffusion's VAE also has 4)
    channels: tuple[int, int, int] = (16, 32, 64)  # conv widths at 28x28, 14x14 and 7x7
    groups: int = 8  # GroupNorm groups; must divide channels[1] and channels[2]
    scale_momentum: float = 0.01  # how fast the running scale_factor follows each batch

    def __post_init__(self):
        check_int("z_channels", self.z_channels, low=1)
        if len(self.channels) != 3:
            raise ValueError(f"channels={self.channels} must have 3 widths (28, 14, 7 pixels)")
        for ch in self.channels:
            check_int("channels[i]", ch, low=1)
        for ch in self.channels[1:]:
            if ch % self.groups:
                raise ValueError(f"channels={self.channels}: {ch} is not divisible by groups")
        check_real("scale_momentum", self.scale_momentum, 0.0, 1.0, low_open=True)


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> Conv, twice, plus the input: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(groups, ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AutoEncoder(nn.Module):
    """A small VAE: (B, 1, 28, 28) in [-1, 1] <-> latents (B, c, 7, 7).

    The encoder gives the posterior q(z|x) = N(mean, exp(logvar)) (Kingma & Welling 2014); the
    decoder maps z back to pixels. ``scale_factor`` (a buffer, so it ships with the weights) is
    1 / std of the posterior means over the training data: Rombach et al. 2022 (Sec. 4.3.2 and
    Appendix G) rescale their latents to unit variance the same way. While training, every
    forward pass moves it towards 1 / std of the batch, as BatchNorm keeps its running
    statistics; ``fit_scale_factor`` computes it exactly from a set of images.
    """

    def __init__(self, config: AutoEncoderConfig | None = None):
        super().__init__()
        c = self.config = config if config is not None else AutoEncoderConfig()
        c1, c2, c3 = c.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),  # (B, c1, 28, 28)
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),  # (B, c2, 14, 14)
            _ResBlock(c2, c.groups),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),  # (B, c3, 7, 7)
            _ResBlock(c3, c.groups),
            nn.GroupNorm(c.groups, c3),
            nn.SiLU(),
            nn.Conv2d(c3, 2 * c.z_channels, 3, padding=1),  # (B, 2c, 7, 7): mean, logvar
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(c.z_channels, c3, 3, padding=1),  # (B, c3, 7, 7)
            _ResBlock(c3, c.groups),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c3, c2, 3, padding=1),  # (B, c2, 14, 14)
            _ResBlock(c2, c.groups),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c2, c1, 3, padding=1),  # (B, c1, 28, 28)
            nn.SiLU(),
            nn.Conv2d(c1, 1, 3, padding=1),  # (B, 1, 28, 28)
        )
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of one latent: (4, 7, 7)."""
        return (self.config.z_channels, 7, 7)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior q(z|x): images (B, 1, 28, 28) -> mean, logvar, each (B, c, 7, 7)."""
        check_images("x", x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # as Rombach et al.'s code, for stability

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training pass: x (B, 1, 28, 28) -> (x_hat, mean, logvar).

        z = mean + exp(logvar / 2) * noise (the reparameterisation trick, Kingma & Welling 2014,
        Sec. 2.4), decoded to x_hat (B, 1, 28, 28). In training mode also updates scale_factor.
        """
        mean, logvar = self.posterior(x)
        if self.training:
            with torch.no_grad():
                target = 1.0 / mean.float().std().clamp(min=1e-8)
                self.scale_factor.lerp_(target, self.config.scale_momentum)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * noise
        return self.decoder(z), mean, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) -> scaled latents z0 = scale_factor * mean, (B, c, 7, 7).

        The posterior mean, not a sample: with a light KL the posterior's std is small next to
        the spread of the means, so a sample would add only a little noise, and the mean makes
        encoding deterministic (the same digit always gives the same latent).
        """
        return self.posterior(x)[0] * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, 7, 7) -> images (B, 1, 28, 28), roughly in [-1, 1] (not clipped)."""
        check_tensor("z", z)
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"z must have shape (B, {', '.join(map(str, self.latent_shape))}), "
                f"got shape {tuple(z.shape)}"
            )
        return self.decoder(z / self.scale_factor)

    @torch.no_grad()
    def fit_scale_factor(self, images: torch.Tensor, batch_size: int = 500) -> float:
        """Set scale_factor to 1 / std of the posterior means of ``images`` (N, 1, 28, 28);
        return it. Afterwards ``encode(images)`` has std 1."""
        check_images("images", images)
        batch_size = check_int("batch_size", batch_size, low=1)
        if images.shape[0] * 49 < 2:
            raise ValueError("images must hold at least one image to measure a std")
        device = self.scale_factor.device
        means = torch.cat(
            [self.posterior(chunk.to(device))[0] for chunk in images.split(batch_size)]
        )
        self.scale_factor.fill_(1.0 / means.double().std().item())
        return self.scale_factor.item()


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mean, exp(logvar)) || N(0, I) ) per example, summed over the latent: (B, ...) -> (B,).

    Kingma & Welling 2014, Appendix B: -1/2 sum(1 + logvar - mean^2 - exp(logvar)).
    """
    check_tensor("mean", mean)
    check_tensor("logvar", logvar)
    if mean.shape != logvar.shape or mean.ndim < 1:
        raise ValueError(
            f"mean and logvar must have the same shape (B, ...), got {tuple(mean.shape)} "
            f"and {tuple(logvar.shape)}"
        )
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1)


# Light, as in Stable Diffusion's first stage (1e-6 there, for 512x512x3 pixels): enough to keep
# the latents near the origin and their scale in check, far too little to blur the digits.
KL_WEIGHT = 1e-4


def autoencoder_loss(
    model: Callable,
    batch: Sequence[torch.Tensor],
    generator: torch.Generator | None = None,
    kl_weight: float = KL_WEIGHT,
) -> torch.Tensor:
    """The VAE loss, per image summed over pixels, averaged over the batch:
    ``||x - x_hat||^2 + kl_weight * KL(q(z|x) || N(0, I))``. ``batch = (images, ...)``.

    Squared error is the Gaussian decoder's negative log-likelihood up to constants (Kingma &
    Welling 2014, Appendix C.2); the small ``kl_weight`` makes it a "light KL" autoencoder as
    in Rombach et al. 2022, Sec. 3.1. The signature ``training.train`` expects as ``loss_fn``.
    """
    images = check_images("images", batch[0])
    kl_weight = check_real("kl_weight", kl_weight, low=0.0)
    x_hat, mean, logvar = model(images, generator)
    reconstruction = (x_hat - images).pow(2).flatten(1).sum(dim=1)  # (B,)
    return (reconstruction + kl_weight * kl_divergence(mean, logvar)).mean()


# The recipe "mnist_autoencoder" (lesson_lib.recipes).
AUTOENCODER_TRAIN = TrainConfig(
    steps=3000, batch_size=64, lr=2e-3, warmup=100, ema_decay=0.999, log_every=50
)


# ----------------------------------------------------------------------------- latent diffusion

LATENT_SCHEDULE = NoiseSchedule.linear(1000)  # the pixel model's schedule, T = 1000

# 7x7 -> 4x4, self- and cross-attention at both levels, so the prompt is read at 7x7 too.
# 2.0M parameters but a fifth of the pixel U-Net's (lesson_lib.recipes.MNIST_UNET) FLOPs per call.
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


class LatentDiffusion(nn.Module):
    """The text encoder and the U-Net as one model: ``model(z_t, t, tokens=ids) -> eps``.

    z_t (B, c, h, w), t (B,) long, tokens (B, L) long ids from ``lesson_lib.text.tokenize``;
    padding is masked out of cross-attention. ``tokens=None`` is the empty prompt (unconditional).
    Any course sampler takes it: ``ddim_sample(model, schedule, z_T, 50, tokens=ids)``.
    """

    def __init__(self, unet: UNetConfig | None = None, text: TextEncoderConfig | None = None):
        super().__init__()
        unet = unet if unet is not None else LATENT_UNET
        text = text if text is not None else TextEncoderConfig(width=unet.context_dim or 64)
        if unet.context_dim != text.width:
            raise ValueError(
                f"unet.context_dim={unet.context_dim} must equal text.width={text.width}: "
                "the U-Net attends to the text encoder's vectors"
            )
        if unet.num_classes is not None:
            raise ValueError(f"unet.num_classes={unet.num_classes}: allowed None (prompts only)")
        self.text_encoder = TextEncoder(text)
        self.unet = UNet(unet)

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        tokens: torch.Tensor | None = None,
        return_attn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Predict the noise: z_t (B, c, h, w), t (B,), tokens (B, L) -> eps (B, c, h, w).

        With ``return_attn=True`` also the cross-attention maps of every layer, a list of
        (B, heads, h_i, w_i, L) tensors, each summing to 1 over the real tokens.
        """
        check_tensor("z_t", z_t)
        if tokens is None:
            tokens = tokenize([""] * z_t.shape[0]).to(z_t.device)
        check_tensor("tokens", tokens)
        if tokens.ndim != 2 or (z_t.ndim >= 1 and tokens.shape[0] != z_t.shape[0]):
            raise ValueError(
                f"tokens must have shape (B, L) with B={z_t.shape[0] if z_t.ndim else '?'} "
                f"like z_t, got shape {tuple(tokens.shape)}"
            )
        context, mask = self.text_encoder(tokens)  # (B, L, D), (B, L)
        return self.unet(z_t, t, context=context, context_mask=mask, return_attn=return_attn)


def latent_diffusion_loss(
    model: Callable,
    batch: Sequence[torch.Tensor],
    generator: torch.Generator | None = None,
    schedule: NoiseSchedule = LATENT_SCHEDULE,
    p_empty: float = 0.1,
) -> torch.Tensor:
    """The simple eps loss on latents, each with a random prompt for its digit.

    ``batch = (z0, labels)``: scaled latents (B, c, h, w) and digits (B,). Each label becomes a
    random template prompt, or the empty prompt with probability ``p_empty`` (prompt dropout,
    so the one model also learns the unconditional eps); then ``training.diffusion_loss``.
    """
    z0, labels = batch[0], batch[1]
    check_tensor("z0", z0)
    tokens = tokenize(random_prompts(labels, generator, p_empty)).to(z0.device)  # (B, L)
    return diffusion_loss(model, schedule, z0, generator=generator, tokens=tokens)


def prompt_cfg(model: Callable, w: float) -> Callable:
    """Wrap a prompt-conditioned model into a guided one: ``guided(z_t, t, tokens) -> eps``.

    ``lesson_lib.guidance.guide`` with the empty prompt (all padding) as the unconditional
    branch: eps = eps_uncond + w * (eps_cond - eps_uncond), both halves in one call of batch 2B.
    w = 1 is the conditional model, w = 0 the unconditional one.
    """
    guided = guide(model, w, "tokens", torch.zeros_like, lambda c, _: check_tensor("tokens", c))

    def prompted(z_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor | None = None):
        return guided(z_t, t, tokens)

    return prompted


@torch.no_grad()
def sample(
    model: nn.Module,
    autoencoder: AutoEncoder,
    schedule: NoiseSchedule,
    prompts: Sequence[str],
    w: float = 3.0,
    steps: int = 50,
    *,
    generator: torch.Generator | None = None,
    z_T: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Images for prompts: DDIM (``steps``, eta = 0) in latent space with prompt guidance ``w``,
    then the decoder. B prompts -> (B, 1, 28, 28), roughly in [-1, 1].

    ``z_T`` (B, c, h, w): the starting noise; drawn from ``generator`` (on the model's device)
    if not given.
    """
    tokens = tokenize(list(prompts) if not isinstance(prompts, str) else [prompts])
    device = next(model.parameters()).device
    if z_T is None:
        shape = (tokens.shape[0], *autoencoder.latent_shape)
        z_T = torch.randn(shape, generator=generator, device=device)
    check_tensor("z_T", z_T)
    if z_T.ndim != 4 or z_T.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"z_T must have shape (B, c, h, w) with B={tokens.shape[0]} (one per prompt), "
            f"got shape {tuple(z_T.shape)}"
        )
    guided = prompt_cfg(model, w)
    z0 = ddim_sample(guided, schedule, z_T, steps, progress=progress, tokens=tokens.to(device))
    return autoencoder.decode(z0)


@torch.no_grad()
def attention_maps(
    model: LatentDiffusion,
    z_t: torch.Tensor,
    t: int | torch.Tensor,
    tokens: torch.Tensor,
    size: int = 28,
) -> torch.Tensor:
    """Where each token is read: cross-attention at one model call, averaged over the heads and
    every cross-attention layer, upsampled (bilinear) to size x size: (B, L, size, size).

    z_t (B, c, h, w); t an int or (B,) long; tokens (B, L). At each pixel
    the maps sum to 1 over the real tokens (and are 0 at padding and for the empty prompt).
    """
    check_tensor("z_t", z_t)
    size = check_int("size", size, low=1)
    if z_t.ndim != 4:
        raise ValueError(f"z_t must have shape (B, c, h, w), got shape {tuple(z_t.shape)}")
    t = as_timesteps("t", t, model.unet.config.num_timesteps, z_t.shape[0]).to(z_t.device)
    _, maps = model(z_t, t, tokens=tokens.to(z_t.device), return_attn=True)
    per_layer = [
        F.interpolate(m.mean(dim=1).permute(0, 3, 1, 2), size=(size, size), mode="bilinear")
        for m in maps
    ]  # each (B, L, size, size)
    return torch.stack(per_layer).mean(dim=0)


# The recipe "mnist_latent" (lesson_lib.recipes).
LATENT_TRAIN = TrainConfig(
    steps=3000, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, log_every=50
)


@torch.no_grad()
def encoded_mnist(batch_size: int = 500) -> list[torch.Tensor]:
    """The bundled 4,500 training digits encoded once by the shipped ``"mnist_autoencoder"``:
    [scaled latents (4500, c, 7, 7), labels (4500,)], the data of the recipe ``"mnist_latent"``."""
    from .pretrained import load  # here, not at the top: pretrained imports the recipes
    from .recipes import bundled_train

    autoencoder = load("mnist_autoencoder").model
    images, labels = bundled_train()
    latents = torch.cat([autoencoder.encode(chunk) for chunk in images.split(batch_size)])
    return [latents, labels]
