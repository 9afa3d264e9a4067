"""Exercises of notebook 08 (latent diffusion): cross-attention, the latent scale, the VAE's KL."""

from __future__ import annotations

import math

import torch

from ..attention import CrossAttention
from ..autoencoder import AutoEncoder
from ..autoencoder import kl_divergence as lib_kl_divergence
from .core import Case, Exercise, Mistake, describe


def cross_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v over the M keys, keys with mask False getting weight 0
    (Vaswani et al. 2017; Rombach et al. 2022, Eq. 3). q (B, N, d), k, v (B, M, d) -> (B, N, d)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))  # mask (B, M) -> (B, 1, M)
    return scores.softmax(dim=-1) @ v


def latent_scale(latents):
    """1 / std of the latents, so that scaled latents have unit variance (Rombach et al. 2022,
    Sec. 4.3.2; Stable Diffusion's 0.18215). A Python float."""
    return 1 / latents.std().item()


def kl_divergence(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar) over each
    latent (Kingma & Welling 2014, Appendix B). (B, ...) -> (B,)."""
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(dim=1)


def _attend(q, k, v, mask=None, scale=None, after=False, keep=True):
    """Attention with a part changed: the scale, the mask applied after the softmax or dropped
    (keep=False) or inverted (keep=None)."""
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None and keep is not False:
        m = (mask if keep else ~mask)[:, None, :]
        return (
            scores.softmax(-1) * m @ v
            if after
            else scores.masked_fill(~m, -math.inf).softmax(-1) @ v
        )
    return scores.softmax(-1) @ v


def _attention_cases() -> list[Case]:
    g = torch.Generator().manual_seed(12)
    masks = {
        (2, 5): [[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]],
        (1, 3): [[0, 1, 1]],
        (3, 4): [[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]],
    }
    out = []
    for B, N, M, d, dtype, with_mask in [
        (2, 3, 5, 4, torch.float32, False),
        (2, 4, 5, 8, torch.float32, True),
        (1, 2, 3, 4, torch.float64, True),
        (3, 6, 4, 16, torch.float64, True),
    ]:
        q, k, v = (torch.randn(B, n, d, generator=g, dtype=dtype) for n in (N, M, M))
        mask = torch.tensor(masks[B, M], dtype=torch.bool) if with_mask else None
        # lesson_lib's layer with one head and identity projections: keys and values are
        # the two halves of its context (B, M, 2d).
        layer = CrossAttention(d, 2 * d, heads=1, dim_head=d).to(dtype)
        eye, zero = torch.eye(d, dtype=dtype), torch.zeros(d, d, dtype=dtype)
        with torch.no_grad():
            for linear, weight in [
                (layer.to_q, eye),
                (layer.to_k, torch.cat([eye, zero], 1)),
                (layer.to_v, torch.cat([zero, eye], 1)),
                (layer.to_out, eye),
            ]:
                linear.weight.copy_(weight)
            layer.to_out.bias.zero_()
            want = layer(q, torch.cat([k, v], -1), mask)
        label = describe(
            "q",
            q,
            extra=f"k and v {tuple(k.shape)}, mask = "
            f"{None if mask is None else mask.int().tolist()}",
        )
        out.append(Case((q, k, v, mask), want, label))
    return out


def _autoencoder() -> AutoEncoder:
    with torch.random.fork_rng():  # seeded weights, and the learner's random state untouched
        torch.manual_seed(0)
        return AutoEncoder().eval()


def _scale_cases() -> list[Case]:
    ae, out = _autoencoder(), []
    for n in (3, 8):
        images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n)) * 2 - 1
        with torch.no_grad():
            latents = ae.posterior(images)[0]
        want = torch.tensor(ae.fit_scale_factor(images), dtype=torch.float64)
        label = describe("latents", latents, extra=f"the posterior means of {n} random images")
        out.append(Case((latents,), want, label))
    return out


def _kl_cases() -> list[Case]:
    g, out = torch.Generator().manual_seed(13), []
    for shape, dtype in [
        ((4, 4, 7, 7), torch.float32),
        ((2, 3), torch.float64),
        ((1, 2, 3, 3), torch.float32),
    ]:
        mean, logvar = (
            torch.randn(shape, generator=g, dtype=dtype),
            torch.randn(shape, generator=g, dtype=dtype),
        )
        out.append(Case((mean, logvar), lib_kl_divergence(mean, logvar), describe("mean", mean)))
    return out


EXERCISES = (
    Exercise(
        name="cross_attention",
        notebook="08",
        statement="cross_attention(q, k, v, mask=None) -> out (B, N, d); mask (B, M) bool, "
        "True = keep",
        reference=cross_attention,
        cases=_attention_cases,
        mistakes=(
            Mistake(
                "The mask is ignored: padded keys (mask False) must get zero attention; set "
                "their scores to -inf before the softmax.",
                lambda q, k, v, mask=None: _attend(q, k, v, mask, keep=False),
            ),
            Mistake(
                "The mask is inverted: True means keep, so fill the scores where mask is False "
                "(masked_fill(~mask, -inf)).",
                lambda q, k, v, mask=None: _attend(q, k, v, mask, keep=None),
            ),
            Mistake(
                "The mask is applied after the softmax: the weights no longer sum to 1. Mask "
                "the scores (with -inf) before the softmax.",
                lambda q, k, v, mask=None: _attend(q, k, v, mask, after=True),
            ),
            Mistake(
                "The scores are not scaled: divide q k^T by sqrt(d), the feature size.",
                lambda q, k, v, mask=None: _attend(q, k, v, mask, scale=1.0),
            ),
            Mistake(
                "The scores are divided by d; Vaswani et al. divide by sqrt(d).",
                lambda q, k, v, mask=None: _attend(q, k, v, mask, scale=1 / q.shape[-1]),
            ),
        ),
        hint="scores = q @ k.transpose(-2, -1) / sqrt(d), shape (B, N, M); the mask (B, M) "
        "becomes (B, 1, M); softmax over the last axis, then @ v.",
        library="lesson_lib.attention.CrossAttention",
        tip="q @ k.transpose(-2, -1) gives (B, N, M) scores; mask[:, None, :] broadcasts over "
        "the N queries.",
    ),
    Exercise(
        name="latent_scale",
        notebook="08",
        statement="latent_scale(latents) -> float, the factor that gives the latents unit variance",
        reference=latent_scale,
        cases=_scale_cases,
        mistakes=(
            Mistake(
                "That is the std; the factor divides by it, 1 / std, so that scale * latents "
                "has std 1.",
                lambda z: z.double().std().item(),
            ),
            Mistake(
                "1 / variance over-corrects: unit variance needs 1 / std, the square root.",
                lambda z: 1 / z.double().var().item(),
            ),
            Mistake(
                "0.18215 is Stable Diffusion's factor, measured on its own VAE's latents; "
                "measure this one on these latents.",
                lambda z: 0.18215,
            ),
        ),
        hint="One number over all the latents' elements: the inverse of their standard deviation.",
        library="lesson_lib.autoencoder.AutoEncoder.fit_scale_factor",
        tip="return a Python float, e.g. 1 / latents.std().item().",
        tolerance=(2e-3, 0.0),  # the biased std is as good
    ),
    Exercise(
        name="kl_divergence",
        notebook="08",
        statement="kl_divergence(mean, logvar) -> (B,), the VAE's KL to N(0, I) per latent",
        reference=kl_divergence,
        cases=_kl_cases,
        mistakes=(
            Mistake(
                "The KL of independent coordinates adds up: sum over each latent's elements, "
                "not the mean.",
                lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).flatten(1).mean(dim=1),
            ),
            Mistake(
                "The factor 1/2 is missing.",
                lambda m, lv: (m**2 + lv.exp() - 1 - lv).flatten(1).sum(1),
            ),
            Mistake(
                "The sign is flipped: a KL divergence is never negative; it is +1/2 sum(mean^2 + "
                "exp(logvar) - 1 - logvar).",
                lambda m, lv: -0.5 * (m**2 + lv.exp() - 1 - lv).flatten(1).sum(1),
            ),
            Mistake(
                "logvar is log sigma^2: the variance is exp(logvar), not logvar itself.",
                lambda m, lv: 0.5 * (m**2 - 1).flatten(1).sum(1),
            ),
            Mistake(
                "exp(logvar / 2) is sigma; the KL has the variance sigma^2 = exp(logvar).",
                lambda m, lv: 0.5 * (m**2 + (lv / 2).exp() - 1 - lv).flatten(1).sum(1),
            ),
        ),
        hint="Per element 1/2 (mean^2 + sigma^2 - 1 - log sigma^2) with sigma^2 = exp(logvar); "
        "sum everything but the batch axis (flatten(1).sum(1)).",
        library="lesson_lib.autoencoder.kl_divergence",
        tip="return one number per sample, shape (B,).",
    ),
)
