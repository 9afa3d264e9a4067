"""Latent diffusion (Rombach et al. 2022): diffuse in a small autoencoder's latent space, with
prompts read through cross-attention.

Stable Diffusion in three parts, at MNIST scale:

1. ``lesson_lib.autoencoder.AutoEncoder``: an image (B, 1, 28, 28) in [-1, 1] <-> a latent z
   (B, 4, 7, 7), scaled so that diffusion sees latents of std about 1.
2. ``lesson_lib.text.TextEncoder``: the prompt "a handwritten seven" -> tokens -> context vectors.
3. ``LatentDiffusion``: the text encoder and the course U-Net, trained together; the U-Net
   predicts the noise in z_t and reads the prompt with cross-attention at every attention level.

Notation: ``z0`` a clean scaled latent, ``z_t`` its noised version (``x_t`` of the pixel models),
``eps`` the noise, ``w`` the guidance weight (w = 1 conditional, w = 0 unconditional).
Shapes: B batch, c latent channels, h x w latent size (7 x 7), L tokens, D context width.
The recipe ``mnist_latent`` (``lesson_lib.recipes``) holds the shipped settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import AutoEncoder
from .checks import check_int, check_real, check_tensor
from .guidance import cfg_eps
from .losses import diffusion_loss
from .samplers import ddim_sample
from .schedules import NoiseSchedule, as_timesteps
from .text import TextEncoder, TextEncoderConfig, random_prompts, tokenize
from .unet import UNet, UNetConfig

__all__ = ["LatentDiffusion", "latent_diffusion_loss", "prompt_cfg", "generate", "attention_maps"]


class LatentDiffusion(nn.Module):
    """The text encoder and the U-Net as one model: ``model(z_t, t, tokens=ids) -> eps``.

    z_t (B, c, h, w), t (B,) long, tokens (B, L) long ids from ``lesson_lib.text.tokenize``;
    padding is masked out of cross-attention. ``tokens=None`` is the empty prompt (unconditional).
    Any course sampler takes it: ``ddim_sample(model, schedule, z_T, 50, tokens=ids)``.
    """

    def __init__(self, unet: UNetConfig, text: TextEncoderConfig | None = None):
        super().__init__()
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
    schedule: NoiseSchedule,
    batch: Sequence[torch.Tensor],
    generator: torch.Generator | None = None,
    p_empty: float = 0.1,
) -> torch.Tensor:
    """The simple eps loss on latents, each with a random prompt for its digit.

    ``batch = (z0, labels)``: scaled latents (B, c, h, w) and digits (B,). Each label becomes a
    random template prompt, or the empty prompt with probability ``p_empty`` (prompt dropout,
    so the one model also learns the unconditional eps); then ``losses.diffusion_loss``.
    """
    z0, labels = batch[0], batch[1]
    check_tensor("z0", z0)
    tokens = tokenize(random_prompts(labels, generator, p_empty)).to(z0.device)  # (B, L)
    return diffusion_loss(model, schedule, z0, generator=generator, tokens=tokens)


def prompt_cfg(model: Callable, w: float) -> Callable:
    """Wrap a prompt-conditioned model into a guided one: ``guided(z_t, t, tokens) -> eps``.

    The empty prompt (all padding) is the unconditional branch: eps = eps_uncond + w * (eps_cond
    - eps_uncond), both halves in one call of batch 2B (``lesson_lib.guidance.cfg_eps``).
    w = 1 is the conditional model, w = 0 the unconditional one.
    """
    w = check_real("w", w)
    if not callable(model):
        raise TypeError(f"model must be callable as model(z_t, t, tokens=...), got {model!r}")

    def prompted(z_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor | None = None):
        check_tensor("z_t", z_t)
        if tokens is None:
            return model(z_t, t, tokens=None)
        check_tensor("tokens", tokens)
        return cfg_eps(model, z_t, t, w, {"tokens": tokens}, {"tokens": torch.zeros_like(tokens)})

    return prompted


@torch.no_grad()
def generate(
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
