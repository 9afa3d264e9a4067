"""Exercises of notebook 05 (DDPM vs DDIM): one reverse step of each, and the predicted x0."""

from __future__ import annotations

import math

import torch

from ..param import x0_from_eps as lib_x0_from_eps
from ..samplers import ddim_step as lib_ddim_step
from ..samplers import ddpm_step as lib_ddpm_step
from .core import SCHEDULES, Case, Exercise, Mistake, at, batches, broadcast_tip, describe


def ddpm_step(x_t, t, eps, betas, alpha_bar, z):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z with
    sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (Ho et al. 2020,
    Eq. 11 and Eq. 7); no noise at t = 0. t is an int."""
    beta, ab = betas[t].item(), alpha_bar[t].item()
    mean = (x_t - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta)  # Eq. 11
    if t == 0:
        return mean
    ab_prev = alpha_bar[t - 1].item()
    return mean + math.sqrt((1 - ab_prev) / (1 - ab) * beta) * z  # sigma_t = sqrt(beta_tilde_t)


def ddim_step(x_t, t, t_prev, eps, alpha_bar, eta, z):
    """x_prev = sqrt(ab_prev) x0_pred + sqrt(1 - ab_prev - sigma^2) eps + sigma z, with
    x0_pred = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) and sigma = eta sqrt((1 - ab_prev) /
    (1 - ab_t) (1 - ab_t / ab_prev)) (Song et al. 2021, Eq. 12 and Eq. 16); ab_prev = 1 at
    t_prev = -1. t and t_prev are ints."""
    ab = alpha_bar[t].item()
    ab_prev = alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)  # the predicted x0
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))  # Eq. 16
    return math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps + sigma * z


def x0_from_eps(x_t, t, eps, alpha_bar):
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (Ho et al. 2020, Eq. 15)."""
    ab = alpha_bar[t].view(-1, *[1] * (x_t.ndim - 1))  # (B, 1, ..., 1), float64
    return ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).to(x_t.dtype)


def _mean(x_t, t, eps, betas, alpha_bar, shrink=None, root=math.sqrt):
    """Eq. 11's mean, with 1 - beta_t replaced by `shrink` or the inner sqrt by `root`."""
    beta, ab = betas[t].item(), alpha_bar[t].item()
    return (x_t - beta / root(1 - ab) * eps) / math.sqrt(1 - beta if shrink is None else shrink)


def _tilde(t, betas, alpha_bar, ab_prev=None):
    """beta_tilde_t, with alpha_bar_{t-1} = 1 at t = 0 unless `ab_prev` is given."""
    ab_prev = (alpha_bar[t - 1].item() if t > 0 else 1.0) if ab_prev is None else ab_prev
    return (1 - ab_prev) / (1 - alpha_bar[t].item()) * betas[t].item()


def _ddpm_cases() -> list[Case]:
    out = []
    for (x, z, _, sched), t in zip(batches(seed=5), [999, 0, 1, 500], strict=True):
        schedule = SCHEDULES[sched]
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=x.dtype)
        args = (x, t, eps, schedule.betas, schedule.alpha_bar, z)
        want = lib_ddpm_step(schedule, x, t, eps, noise=z)
        out.append(Case(args, want, describe("x_t", x, t, f"{sched} schedule (T = 1000)"), t))
    return out


def _ddim(
    x,
    t,
    t_prev,
    eps,
    ab,
    eta,
    z,
    *,
    ab_prev=None,
    sigma=None,
    direction=None,
    noise=None,
    swap=False,
):
    """Eq. 12 with a part replaced: alpha_bar_prev, sigma (from ab, ab_prev), the direction's
    coefficient (from ab_prev, sigma), the noise's weight (sigma), or x_t for the predicted x0."""
    a, a_prev = ab[t].item(), ab[t_prev].item() if t_prev >= 0 else 1.0
    a_prev = a_prev if ab_prev is None else ab_prev
    s = eta * (sigma or (lambda a, p: math.sqrt((1 - p) / (1 - a) * (1 - a / p))))(a, a_prev)
    d = (direction or (lambda p, s: math.sqrt(1 - p - s**2)))(a_prev, s)
    x0 = x if swap else (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return math.sqrt(a_prev) * x0 + d * eps + (s if noise is None else noise) * z


def _ddim_cases() -> list[Case]:
    out = []
    steps = [(999, 979, 0.0), (20, -1, 0.0), (500, 480, 1.0), (0, -1, 0.5), (999, 949, 0.3)]
    for (x, z, _, sched), (t, t_prev, eta) in zip(batches(seed=6) * 2, steps, strict=False):
        schedule = SCHEDULES[sched]
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=x.dtype)
        args = (x, t, t_prev, eps, schedule.alpha_bar, eta, z)
        want = lib_ddim_step(schedule, x, t, t_prev, eps, eta, noise=z)
        extra = f"t_prev = {t_prev}, eta = {eta}, {sched} schedule (T = 1000)"
        out.append(Case(args, want, describe("x_t", x, t, extra), t))
    return out


def _x0_cases() -> list[Case]:
    out = []
    for x, eps, t, sched in batches(seed=7):
        schedule = SCHEDULES[sched]
        args = (x, t, eps, schedule.alpha_bar)
        want = lib_x0_from_eps(schedule, x, t, eps)
        out.append(Case(args, want, describe("x_t", x, t, f"{sched} schedule (T = 1000)"), t))
    return out


ONE_BASED = "index t is already the paper's step t + 1: read the tables at t, not t - 1."
EXERCISES = (
    Exercise(
        name="ddpm_step",
        notebook="05",
        statement="ddpm_step(x_t, t, eps, betas, alpha_bar, z) -> x_{t-1}, variance beta-tilde, "
        "no noise at t = 0 (Ho et al. 2020, Eq. 11)",
        reference=ddpm_step,
        cases=_ddpm_cases,
        mistakes=(
            Mistake(
                "The variance is beta_t: a valid choice (Ho et al. 2020, Sec. 3.2), but the "
                "course uses beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t.",
                lambda x, t, e, b, ab, z: _mean(x, t, e, b, ab) + (t > 0) * math.sqrt(b[t]) * z,
            ),
            Mistake(
                "At t = 0, alpha_bar_{t-1} is 1 (nothing left to remove) and no noise is added; "
                "alpha_bar[t - 1] at t = 0 is alpha_bar[-1], the last entry.",
                lambda x, t, e, b, ab, z: (
                    _mean(x, t, e, b, ab) + math.sqrt(_tilde(t, b, ab, ab[t - 1].item())) * z
                ),
            ),
            Mistake(
                "The noise is not scaled: add sigma_t * z with sigma_t = sqrt(beta_tilde_t).",
                lambda x, t, e, b, ab, z: _mean(x, t, e, b, ab) + (t > 0) * z,
            ),
            Mistake(
                "The noise is scaled by the variance beta_tilde_t; sigma_t is its square root.",
                lambda x, t, e, b, ab, z: _mean(x, t, e, b, ab) + _tilde(t, b, ab) * z,
            ),
            Mistake(
                "alpha_bar_t where alpha_t belongs: the mean divides by sqrt(alpha_t) = "
                "sqrt(1 - beta_t), one step's shrink, not sqrt(alpha_bar_t).",
                lambda x, t, e, b, ab, z: (
                    _mean(x, t, e, b, ab, shrink=ab[t].item()) + math.sqrt(_tilde(t, b, ab)) * z
                ),
            ),
            Mistake(
                "The eps coefficient lacks a square root: beta_t / sqrt(1 - alpha_bar_t).",
                lambda x, t, e, b, ab, z: (
                    _mean(x, t, e, b, ab, root=lambda v: v) + math.sqrt(_tilde(t, b, ab)) * z
                ),
            ),
            Mistake(ONE_BASED, lambda x, t, *rest: ddpm_step(x, t - 1, *rest)),
        ),
        hint="Read beta_t and alpha_bar_t as Python floats (.item()); the mean is Eq. 11; at "
        "t > 0 add sqrt(beta_tilde_t) * z, where beta_tilde_t uses alpha_bar[t - 1].",
        library="lesson_lib.samplers.ddpm_step",
    ),
    Exercise(
        name="ddim_step",
        notebook="05",
        statement="ddim_step(x_t, t, t_prev, eps, alpha_bar, eta, z) -> x_{t_prev}, "
        "t_prev = -1 meaning alpha_bar = 1 (Song et al. 2021, Eq. 12)",
        reference=ddim_step,
        cases=_ddim_cases,
        mistakes=(
            Mistake(
                "t_prev = -1 means done, where alpha_bar = 1; alpha_bar[-1] is the last entry.",
                lambda x, t, tp, e, ab, eta, z: _ddim(
                    x, t, tp, e, ab, eta, z, ab_prev=ab[tp].item()
                ),
            ),
            Mistake(
                "sigma lacks its square root: sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t) * "
                "(1 - ab_t / ab_prev)) (Eq. 16).",
                lambda *a: _ddim(*a, sigma=lambda ab, p: (1 - p) / (1 - ab) * (1 - ab / p)),
            ),
            Mistake(
                "The direction term ignores sigma: its coefficient is sqrt(1 - ab_prev - "
                "sigma^2), so that the total variance stays 1 - ab_prev.",
                lambda *a: _ddim(*a, direction=lambda p, s: math.sqrt(1 - p)),
            ),
            Mistake(
                "With eta > 0, add the fresh noise sigma * z.", lambda *a: _ddim(*a, noise=0.0)
            ),
            Mistake(
                "The noise is not scaled: it is sigma * z, which vanishes at eta = 0.",
                lambda *a: _ddim(*a, noise=1.0),
            ),
            Mistake(
                "That sigma is DDPM's sqrt(beta)-like one; Eq. 16 has the factor "
                "(1 - ab_prev) / (1 - ab_t) too: eta * sqrt((1 - ab_prev) / (1 - ab_t)) * "
                "sqrt(1 - ab_t / ab_prev).",
                lambda *a: _ddim(*a, sigma=lambda ab, p: math.sqrt(1 - ab / p)),
            ),
            Mistake(
                "The predicted x0 is the first term: sqrt(ab_prev) multiplies x0_pred = (x_t - "
                "sqrt(1 - ab_t) eps) / sqrt(ab_t), not x_t.",
                lambda *a: _ddim(*a, swap=True),
            ),
            Mistake(ONE_BASED, lambda x, t, tp, *rest: ddim_step(x, t - 1, tp - 1, *rest)),
        ),
        hint="ab_prev = alpha_bar[t_prev] or 1.0 at t_prev = -1; compute the predicted x0, "
        "sigma (Eq. 16), then Eq. 12's three terms.",
        library="lesson_lib.samplers.ddim_step",
    ),
    Exercise(
        name="x0_from_eps",
        notebook="05",
        statement="x0_from_eps(x_t, t, eps, alpha_bar) -> the predicted x0 (Ho et al. 2020, "
        "Eq. 15)",
        reference=x0_from_eps,
        cases=_x0_cases,
        mistakes=(
            Mistake(
                "The square roots are missing: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / "
                "sqrt(alpha_bar_t).",
                lambda x, t, e, ab: (x - (1 - at(ab, t, x)) * e) / at(ab, t, x),
            ),
            Mistake(
                "The noise is added; undoing x_t = sqrt(ab) x0 + sqrt(1 - ab) eps subtracts it.",
                lambda x, t, e, ab: (x + (1 - at(ab, t, x)).sqrt() * e) / at(ab, t, x).sqrt(),
            ),
            Mistake(
                "alpha_bar and 1 - alpha_bar are swapped: eps carries sqrt(1 - alpha_bar_t), "
                "and x0 is divided by sqrt(alpha_bar_t).",
                lambda x, t, e, ab: (x - at(ab, t, x).sqrt() * e) / (1 - at(ab, t, x)).sqrt(),
            ),
            Mistake(
                "The division by sqrt(alpha_bar_t) is missing: x0 was shrunk by it in x_t.",
                lambda x, t, e, ab: x - (1 - at(ab, t, x)).sqrt() * e,
            ),
            Mistake(ONE_BASED, lambda x, t, e, ab: x0_from_eps(x, t - 1, e, ab)),
        ),
        hint="Solve x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for x0, per sample.",
        library="lesson_lib.param.x0_from_eps",
        tip=broadcast_tip("x_t"),
    ),
)
