"""Exercises of notebooks 03 (the U-Net's time embedding) and 04 (training)."""

from __future__ import annotations

import math

import torch

from ..guidance import NULL_LABEL
from ..guidance import drop_labels as lib_drop_labels
from ..losses import diffusion_loss
from ..schedules import NoiseSchedule
from ..unet import SinusoidalTimeEmbedding
from .core import SCHEDULES, Case, Exercise, Mistake, at, broadcast_tip, describe


def timestep_embedding(t, dim):
    """[sin(t f_i) | cos(t f_i)] with f_i = 10000 ** (-i / (dim/2 - 1)), i = 0 ... dim/2 - 1
    (Vaswani et al. 2017, Sec. 3.5, as the course U-Net uses it). t (B,) -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))  # (dim/2,): 1 ... 1e-4
    args = t.float()[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([args.sin(), args.cos()], dim=-1)


def eps_loss(model, x0, t, eps, alpha_bar):
    """mean of (eps - model(x_t, t))^2 with x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t)
    eps (Ho et al. 2020, Eq. 14 and Eq. 4). A 0-d tensor."""
    ab = alpha_bar[t].view(-1, *[1] * (x0.ndim - 1))  # (B, 1, ..., 1), float64
    x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).to(x0.dtype)
    return ((model(x_t, t) - eps) ** 2).mean()


def drop_labels(y, u, p_uncond):
    """Each label y (B,) becomes the null label 10 where the uniform draw u < p_uncond
    (Ho & Salimans 2022, Algorithm 1)."""
    return torch.where(u < p_uncond, torch.full_like(y, 10), y)


def _args(t: torch.Tensor, dim: int, half: int | None = None, sign: float = -1.0) -> torch.Tensor:
    """t * f_i, with the frequencies' denominator `half` (dim/2 - 1 by default) and sign."""
    half_dim = dim // 2
    freqs = torch.exp(sign * math.log(10000) * torch.arange(half_dim) / (half or half_dim - 1))
    return t.float()[:, None] * freqs


def _embedding_cases() -> list[Case]:
    out = []
    for ts, dim in [([0, 999, 3, 500], 32), ([0], 8), ([999, 1, 250, 0, 42, 998], 128)]:
        t = torch.tensor(ts)
        out.append(Case((t, dim), SinusoidalTimeEmbedding(dim)(t), f"t = {ts}, dim = {dim}", t))
    return out


def toy_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in eps-model: any callable model(x_t, t) does."""
    return 0.5 * torch.tanh(x_t) + (t.to(x_t.dtype) / 1000).view(-1, *[1] * (x_t.ndim - 1))


def _loss_cases() -> list[Case]:
    out = []
    specs = [((16, 1, 5, 5), torch.float32, "linear, T = 10", NoiseSchedule.linear(10))]
    specs += [((8, 1, 6, 6), torch.float32, "cosine, T = 1000", SCHEDULES["cosine"])]
    specs += [((6, 2), torch.float64, "linear, T = 1000", SCHEDULES["linear"])]
    for seed, (shape, dtype, name, schedule) in enumerate(specs):
        x0 = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed), dtype=dtype)
        g = torch.Generator().manual_seed(seed)  # the draws diffusion_loss makes, in its order
        t = torch.randint(0, schedule.T, (shape[0],), generator=g)
        eps = torch.randn(shape, generator=g, dtype=dtype)
        want = diffusion_loss(
            toy_model, schedule, x0, generator=torch.Generator().manual_seed(seed)
        )
        label = describe("x0", x0, t, f"{name} schedule, model = toy_model")
        out.append(Case((toy_model, x0, t, eps, schedule.alpha_bar), want, label))
    return out


def _x_t(x0, t, eps, ab, shift=0):
    return at(ab, t - shift, x0).sqrt() * x0 + (1 - at(ab, t - shift, x0)).sqrt() * eps


def _label_cases() -> list[Case]:
    out = []
    for seed, (batch, p) in enumerate([(20, 0.1), (50, 0.5), (1, 0.9), (30, 0.3)]):
        y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(50 + seed))
        u = torch.rand(y.shape, generator=torch.Generator().manual_seed(seed))
        want = lib_drop_labels(y, p, generator=torch.Generator().manual_seed(seed))
        out.append(Case((y, u, p), want, f"y of {batch} labels, p_uncond = {p}"))
    return out


EXERCISES = (
    Exercise(
        name="timestep_embedding",
        notebook="03",
        statement="timestep_embedding(t, dim) -> (B, dim), the course U-Net's sinusoidal embedding",
        reference=timestep_embedding,
        cases=_embedding_cases,
        mistakes=(
            Mistake(
                "The sin and cos halves are swapped: the first dim/2 columns are sin(t f_i), the "
                "last dim/2 cos(t f_i).",
                lambda t, dim: torch.cat([_args(t, dim).cos(), _args(t, dim).sin()], dim=-1),
            ),
            Mistake(
                "Sines and cosines are interleaved (sin, cos, sin, ...), as in Vaswani et al.'s "
                "positional encoding; the course U-Net puts all sines first, then all cosines.",
                lambda t, dim: torch.stack([_args(t, dim).sin(), _args(t, dim).cos()], -1).flatten(
                    1
                ),
            ),
            Mistake(
                "The exponent is divided by dim/2 (improved-diffusion's choice); the course "
                "divides by dim/2 - 1, so the frequencies run exactly from 1 down to 1/10000.",
                lambda t, dim: torch.cat(
                    [_args(t, dim, half=dim // 2).sin(), _args(t, dim, half=dim // 2).cos()], -1
                ),
            ),
            Mistake(
                "The frequencies grow: f_i = 10000 ** (-i / (dim/2 - 1)) has a minus sign, so they "
                "fall from 1 to 1/10000.",
                lambda t, dim: torch.cat(
                    [_args(t, dim, sign=1.0).sin(), _args(t, dim, sign=1.0).cos()], -1
                ),
            ),
            Mistake(
                "t + 1 is embedded: the U-Net embeds the 0-based index t itself.",
                lambda t, dim: torch.cat([_args(t + 1, dim).sin(), _args(t + 1, dim).cos()], -1),
            ),
        ),
        hint="freqs = exp(-log(10000) * arange(dim/2) / (dim/2 - 1)); args = t[:, None] * "
        "freqs[None, :]; then concatenate sin(args) and cos(args) along the last axis.",
        library="lesson_lib.unet.SinusoidalTimeEmbedding",
        tip="t is a LongTensor (B,): use t.float()[:, None] * freqs[None, :], giving (B, dim/2) "
        "in float32.",
        tolerance=(0.0, 2e-3),  # float32 sin of t * f with t up to 999
    ),
    Exercise(
        name="eps_loss",
        notebook="04",
        statement="eps_loss(model, x0, t, eps, alpha_bar) -> scalar, the simple loss on the given "
        "draws (Ho et al. 2020, Eq. 14)",
        reference=eps_loss,
        cases=_loss_cases,
        mistakes=(
            Mistake(
                "The model is given x0; it sees the noised x_t = sqrt(alpha_bar_t) x0 + "
                "sqrt(1 - alpha_bar_t) eps.",
                lambda m, x0, t, eps, ab: ((m(x0, t) - eps) ** 2).mean(),
            ),
            Mistake(
                "The target is x0; an eps-model is trained to predict the noise eps.",
                lambda m, x0, t, eps, ab: ((m(_x_t(x0, t, eps, ab), t) - x0) ** 2).mean(),
            ),
            Mistake(
                "x_t lacks its square roots: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.",
                lambda m, x0, t, eps, ab: (
                    (m(at(ab, t, x0) * x0 + (1 - at(ab, t, x0)) * eps, t) - eps) ** 2
                ).mean(),
            ),
            Mistake(
                "The squared errors are summed; the simple loss is their mean (F.mse_loss).",
                lambda m, x0, t, eps, ab: ((m(_x_t(x0, t, eps, ab), t) - eps) ** 2).sum(),
            ),
            Mistake(
                "That is the absolute error; Eq. 14 squares it.",
                lambda m, x0, t, eps, ab: (m(_x_t(x0, t, eps, ab), t) - eps).abs().mean(),
            ),
            Mistake(
                "index t is already the paper's step t + 1: noise with alpha_bar[t], not "
                "alpha_bar[t - 1].",
                lambda m, x0, t, eps, ab: ((m(_x_t(x0, t, eps, ab, 1), t) - eps) ** 2).mean(),
            ),
        ),
        hint="Noise x0 to x_t with q_sample's formula, call model(x_t, t), and take the mean "
        "squared difference from eps.",
        library="lesson_lib.losses.diffusion_loss",
        tip=broadcast_tip("x0") + " The loss is one number, a 0-d tensor.",
    ),
    Exercise(
        name="drop_labels",
        notebook="04",
        statement="drop_labels(y, u, p_uncond) -> y with the null label 10 where u < p_uncond",
        reference=drop_labels,
        cases=_label_cases,
        mistakes=(
            Mistake(
                "The condition is inverted: a label is dropped (becomes 10) where u < p_uncond, "
                "so a fraction p_uncond of them is dropped.",
                lambda y, u, p: torch.where(u < p, y, torch.full_like(y, NULL_LABEL)),
            ),
            Mistake(
                "0 is the digit zero: the null label (no label) is NULL_LABEL = 10.",
                lambda y, u, p: torch.where(u < p, torch.zeros_like(y), y),
            ),
        ),
        hint="torch.where(condition, value where true, value where false), with torch.full_like "
        "for a tensor of 10s.",
        library="lesson_lib.guidance.drop_labels",
        tip="the result holds labels: a LongTensor (B,) like y (torch.full_like(y, 10) keeps it).",
    ),
)
