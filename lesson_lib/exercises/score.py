"""Exercises of notebooks 06 (score) and 07 (classifier-free guidance)."""

from __future__ import annotations

import math

import torch

from ..guidance import NULL_LABEL, cfg
from ..param import score_from_eps as lib_score_from_eps
from ..score import langevin
from .core import SCHEDULES, Case, Exercise, Mistake, at, batches, broadcast_tip, describe


def score_from_eps(eps, t, alpha_bar):
    """grad log q(x_t) = -eps / sqrt(1 - alpha_bar_t) (Vincent 2011; Song et al. 2021b)."""
    ab = alpha_bar[t].view(-1, *[1] * (eps.ndim - 1))  # (B, 1, ..., 1), float64
    return (-eps / (1 - ab).sqrt()).to(eps.dtype)


def langevin_step(x, score, step_size, z):
    """x + step_size / 2 * score + sqrt(step_size) * z (Song & Ermon 2019, Eq. 4)."""
    return x + step_size / 2 * score + math.sqrt(step_size) * z


def guided_eps(eps_cond, eps_uncond, w):
    """eps_uncond + w (eps_cond - eps_uncond): the lesson's convention, w = 1 is plain
    conditional (Ho & Salimans 2022, Eq. 6 with their w' = w - 1)."""
    return eps_uncond + w * (eps_cond - eps_uncond)


def _score_cases() -> list[Case]:
    out = []
    for eps, _, t, sched in batches(seed=8):
        schedule = SCHEDULES[sched]
        want = lib_score_from_eps(schedule, eps, t)
        label = describe("eps", eps, t, f"{sched} schedule (T = 1000)")
        out.append(Case((eps, t, schedule.alpha_bar), want, label, t))
    return out


def _langevin_cases() -> list[Case]:
    out = []
    for seed, ((x, score, _, _), step) in enumerate(
        zip(batches(seed=9), [0.1, 0.01, 1e-3, 0.5], strict=True)
    ):
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
        g = torch.Generator().manual_seed(seed)  # langevin draws the same z
        want = langevin(lambda _, score=score: score, x, step, 1, generator=g)
        out.append(Case((x, score, step, z), want, describe("x", x, extra=f"step_size = {step}")))
    return out


def _guidance_cases() -> list[Case]:
    out = []
    for (cond, uncond, _, _), w in zip(batches(seed=10), [3.0, 0.0, 1.0, 7.5], strict=True):

        def model(x_t, t, y, cond=cond, uncond=uncond):  # eps_cond for a digit, else eps_uncond
            null = (y == NULL_LABEL).view(-1, *[1] * (x_t.ndim - 1))
            return torch.where(null, torch.cat([uncond, uncond]), torch.cat([cond, cond]))

        batch = cond.shape[0]
        y = torch.arange(batch) % 10
        want = cfg(model, w)(torch.zeros_like(cond), torch.zeros(batch, dtype=torch.long), y)
        out.append(Case((cond, uncond, w), want, describe("eps_cond", cond, extra=f"w = {w}")))
    return out


ONE_BASED = "index t is already the paper's step t + 1: use alpha_bar[t], not alpha_bar[t - 1]."
EXERCISES = (
    Exercise(
        name="score_from_eps",
        notebook="06",
        statement="score_from_eps(eps, t, alpha_bar) -> the score of q(x_t)",
        reference=score_from_eps,
        cases=_score_cases,
        mistakes=(
            Mistake(
                "The sign is flipped: the score points back towards the data, against the noise: "
                "-eps / sqrt(1 - alpha_bar_t).",
                lambda e, t, ab: e / (1 - at(ab, t, e)).sqrt(),
            ),
            Mistake(
                "The square root is missing: divide by the noise's standard deviation "
                "sqrt(1 - alpha_bar_t).",
                lambda e, t, ab: -e / (1 - at(ab, t, e)),
            ),
            Mistake(
                "That multiplies by sqrt(1 - alpha_bar_t), which is the way back "
                "(eps = -sqrt(1 - alpha_bar_t) * score); the score divides by it.",
                lambda e, t, ab: -e * (1 - at(ab, t, e)).sqrt(),
            ),
            Mistake(
                "alpha_bar where 1 - alpha_bar belongs: the noise's std is sqrt(1 - alpha_bar_t).",
                lambda e, t, ab: -e / at(ab, t, e).sqrt(),
            ),
            Mistake(ONE_BASED, lambda e, t, ab: score_from_eps(e, t - 1, ab)),
            Mistake(
                "1 - alpha_bar_t is computed in eps's float32: near t = 0 alpha_bar is within "
                "1e-5 of 1 and float32 keeps few digits of the difference. Compute the "
                "coefficient in float64 (the table's dtype), then cast the result.",
                lambda e, t, ab: -e / (1 - at(ab, t, e).to(e.dtype)).sqrt(),
            ),
        ),
        hint="x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, so grad log q(x_t | x0) = "
        "-(x_t - sqrt(alpha_bar) x0) / (1 - alpha_bar); write that with eps.",
        library="lesson_lib.param.score_from_eps",
        tip=broadcast_tip("eps"),
    ),
    Exercise(
        name="langevin_step",
        notebook="06",
        statement="langevin_step(x, score, step_size, z) -> x, one step of Langevin dynamics",
        reference=langevin_step,
        cases=_langevin_cases,
        mistakes=(
            Mistake(
                "The drift lacks its 1/2: x + step_size / 2 * score + sqrt(step_size) * z.",
                lambda x, s, h, z: x + h * s + math.sqrt(h) * z,
            ),
            Mistake(
                "The noise lacks its square root: its variance is step_size, its scale "
                "sqrt(step_size).",
                lambda x, s, h, z: x + h / 2 * s + h * z,
            ),
            Mistake(
                "No noise: that is gradient ascent on log p, which runs to a mode; Langevin adds "
                "sqrt(step_size) * z to sample the whole distribution.",
                lambda x, s, h, z: x + h / 2 * s,
            ),
            Mistake(
                "The step goes down the score; it climbs it (+ step_size / 2 * score).",
                lambda x, s, h, z: x - h / 2 * s + math.sqrt(h) * z,
            ),
        ),
        hint="Half a step along the score, plus fresh noise whose variance is the step size.",
        library="lesson_lib.score.langevin",
    ),
    Exercise(
        name="guided_eps",
        notebook="07",
        statement="guided_eps(eps_cond, eps_uncond, w) -> eps, the lesson's convention (w = 1 is "
        "plain conditional)",
        reference=guided_eps,
        cases=_guidance_cases,
        mistakes=(
            Mistake(
                "That is Ho & Salimans' convention, (1 + w') eps_cond - w' eps_uncond with "
                "w' = w - 1; here w = 1 must give eps_cond: eps_uncond + w (eps_cond - eps_uncond).",
                lambda c, u, w: (1 + w) * c - w * u,
            ),
            Mistake(
                "The sign is flipped: guidance moves from eps_uncond towards and past eps_cond, "
                "eps_uncond + w (eps_cond - eps_uncond).",
                lambda c, u, w: u - w * (c - u),
            ),
            Mistake(
                "eps_cond and eps_uncond are swapped: start from eps_uncond and step towards "
                "eps_cond.",
                lambda c, u, w: c + w * (u - c),
            ),
            Mistake(
                "Scaling eps_cond alone is not guidance: it extrapolates the difference "
                "eps_cond - eps_uncond from eps_uncond.",
                lambda c, u, w: w * c,
            ),
        ),
        hint="w = 0 should give eps_uncond, w = 1 eps_cond, w > 1 go beyond eps_cond.",
        library="lesson_lib.guidance.cfg",
    ),
)
