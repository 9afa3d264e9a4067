"""The autoencoder of latent diffusion: a VAE (Kingma & Welling 2014) with a light KL term, as
Stable Diffusion's first stage (Rombach et al. 2022, Sec. 3.1).

An image (B, 1, 28, 28) in [-1, 1] <-> a latent z (B, 4, 7, 7). ``encode`` returns the posterior
*mean* times ``scale_factor`` (1 / std of the latents over the training data, the role of Stable
Diffusion's 0.18215), so diffusion sees latents of std about 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .checks import check_images, check_int, check_real, check_tensor

__all__ = ["AutoEncoderConfig", "AutoEncoder", "kl_divergence", "KL_WEIGHT", "autoencoder_loss"]


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
    in Rombach et al. 2022, Sec. 3.1. The signature ``lesson_lib.loop.train`` expects as ``loss_fn``.
    """
    images = check_images("images", batch[0])
    kl_weight = check_real("kl_weight", kl_weight, low=0.0)
    x_hat, mean, logvar = model(images, generator)
    reconstruction = (x_hat - images).pow(2).flatten(1).sum(dim=1)  # (B,)
    return (reconstruction + kl_weight * kl_divergence(mean, logvar)).mean()
