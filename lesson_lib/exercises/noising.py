"""Exercises of notebooks 01 (forward noising) and 02 (noise schedules)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from ..forward import q_sample as lib_q_sample
from ..forward import q_step as lib_q_step
from ..schedules import NoiseSchedule
from .core import SCHEDULES, Case, Exercise, Mistake, at, batches, broadcast_tip, describe

ONE_BASED = (
    "index t is already the paper's step t + 1 (t = 0 ... T-1): use alpha_bar[t], not "
    "alpha_bar[t - 1] (which at t = 0 is alpha_bar[-1], the last entry)."
)


def q_sample(x0, t, eps, alpha_bar):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, Eq. 4)."""
    ab = alpha_bar[t].view(-1, *[1] * (x0.ndim - 1))  # (B, 1, ..., 1), float64
    return (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).to(x0.dtype)


def q_step(x_prev, t, eps, betas):
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (Ho et al. 2020, Eq. 2)."""
    beta = betas[t].view(-1, *[1] * (x_prev.ndim - 1))  # (B, 1, ..., 1), float64
    return ((1 - beta).sqrt() * x_prev + beta.sqrt() * eps).to(x_prev.dtype)


def cosine_alpha_bar(T, s=0.008):
    """alpha_bar_t = f(t + 1) / f(0), f(u) = cos^2((u / T + s) / (1 + s) * pi / 2), with the betas
    clipped at 0.999 (Nichol & Dhariwal 2021, Eq. 17). (T,) float64."""
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    return torch.cumprod(1 - betas, dim=0)


def log_snr(alpha_bar):
    """lambda_t = log(alpha_bar_t / (1 - alpha_bar_t)) (Kingma et al. 2021). (T,) float64."""
    return torch.log(alpha_bar / (1 - alpha_bar))


def _forward_cases(library, table: str, name: str) -> list[Case]:
    cases = []
    for x, eps, t, sched in batches(seed=1):
        schedule = SCHEDULES[sched]
        args = (x, t, eps, getattr(schedule, table))
        cases.append(
            Case(
                args,
                library(schedule, x, t, eps),
                describe(name, x, t, f"{sched} schedule (T = 1000)"),
                t,
            )
        )
    return cases


def _forward_exercise(
    reference: Callable, library: Callable, statement: str, hint: str, mistakes: tuple[Mistake, ...]
) -> Exercise:
    """A notebook-01 exercise: the formula `reference(x, t, eps, table)` against
    `library(schedule, x, t, eps)` of lesson_lib.forward; the reference's first and last
    parameters name the input ("x0", "x_prev") and the schedule's table ("alpha_bar", "betas")."""
    params = list(inspect.signature(reference).parameters)
    x, table = params[0], params[-1]
    return Exercise(
        name=reference.__name__,
        notebook="01",
        statement=statement,
        reference=reference,
        cases=lambda: _forward_cases(library, table, x),
        mistakes=mistakes,
        hint=hint,
        library=f"{library.__module__}.{library.__name__}",
        tip=broadcast_tip(x, table),
    )


def _f(T: int, s: float) -> torch.Tensor:
    """f(0 ... T) of Eq. 17, float64."""
    return (
        torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    )


def _alpha_bar(f: torch.Tensor, low: float = 0.0, high: float = 0.999) -> torch.Tensor:
    """alpha_bar from f(0 ... T), through betas clipped to [low, high]."""
    return torch.cumprod(1 - (1 - f[1:] / f[:-1]).clamp(low, high), dim=0)


def _cosine_cases() -> list[Case]:
    out = []
    for T, s in [(1000, 0.008), (50, 0.008), (7, 0.02), (1000, 0.0)]:
        want = NoiseSchedule.cosine(T, s).alpha_bar
        out.append(Case((T, s), want, f"T = {T}, s = {s}", torch.arange(T)))
    return out


def _log_snr_cases() -> list[Case]:
    schedules = [("linear", SCHEDULES["linear"]), ("cosine", SCHEDULES["cosine"])]
    schedules.append(("cosine, T = 30,", NoiseSchedule.cosine(30)))
    return [
        Case((s.alpha_bar,), s.log_snr(), f"alpha_bar of the {name} schedule", torch.arange(s.T))
        for name, s in schedules
    ]


EXERCISES = (
    _forward_exercise(
        q_sample,
        lib_q_sample,
        statement="q_sample(x0, t, eps, alpha_bar) -> x_t, the closed form (Ho et al. 2020, Eq. 4)",
        hint="Take alpha_bar[t] for each sample, shape it (B, 1, ..., 1), then "
        "sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps.",
        mistakes=(
            Mistake(
                "The square roots are missing: alpha_bar_t and 1 - alpha_bar_t are variances; "
                "x0 and eps are scaled by their square roots.",
                lambda x0, t, eps, ab: at(ab, t, x0) * x0 + (1 - at(ab, t, x0)) * eps,
            ),
            Mistake(
                "The noise term lacks its square root: it is sqrt(1 - alpha_bar_t) * eps.",
                lambda x0, t, eps, ab: at(ab, t, x0).sqrt() * x0 + (1 - at(ab, t, x0)) * eps,
            ),
            Mistake(
                ONE_BASED,
                lambda x0, t, eps, ab: (
                    at(ab, t - 1, x0).sqrt() * x0 + (1 - at(ab, t - 1, x0)).sqrt() * eps
                ),
            ),
            Mistake(
                "x0 and eps are swapped: sqrt(alpha_bar_t) multiplies the clean image x0 and "
                "sqrt(1 - alpha_bar_t) the noise.",
                lambda x0, t, eps, ab: at(ab, t, x0).sqrt() * eps + (1 - at(ab, t, x0)).sqrt() * x0,
            ),
            Mistake(
                "x0 is not shrunk: it is sqrt(alpha_bar_t) * x0, which keeps the variance at 1 "
                "while noise is added.",
                lambda x0, t, eps, ab: x0 + (1 - at(ab, t, x0)).sqrt() * eps,
            ),
        ),
    ),
    _forward_exercise(
        q_step,
        lib_q_step,
        statement="q_step(x_prev, t, eps, betas) -> x_t, one noising step (Ho et al. 2020, Eq. 2)",
        hint="Like q_sample, but one step: the per-sample beta_t in place of 1 - alpha_bar_t.",
        mistakes=(
            Mistake(
                "The square roots are missing: beta_t is the variance of the added noise; the "
                "step is sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps.",
                lambda x, t, eps, b: (1 - at(b, t, x)) * x + at(b, t, x) * eps,
            ),
            Mistake(
                "x_prev is not shrunk by sqrt(1 - beta_t): without it the variance grows by "
                "beta_t at every step.",
                lambda x, t, eps, b: x + at(b, t, x).sqrt() * eps,
            ),
            Mistake(
                ONE_BASED.replace("alpha_bar", "betas"),
                lambda x, t, eps, b: (
                    (1 - at(b, t - 1, x)).sqrt() * x + at(b, t - 1, x).sqrt() * eps
                ),
            ),
            Mistake(
                "x_prev and eps are swapped: sqrt(1 - beta_t) multiplies x_prev and sqrt(beta_t) "
                "the noise.",
                lambda x, t, eps, b: at(b, t, x).sqrt() * x + (1 - at(b, t, x)).sqrt() * eps,
            ),
        ),
    ),
    Exercise(
        name="cosine_alpha_bar",
        notebook="02",
        statement="cosine_alpha_bar(T, s=0.008) -> alpha_bar (T,) float64, betas clipped at "
        "0.999 (Nichol & Dhariwal 2021, Eq. 17)",
        reference=cosine_alpha_bar,
        cases=_cosine_cases,
        mistakes=(
            Mistake(
                "The betas are not clipped: clip beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} at "
                "0.999, then alpha_bar = cumprod(1 - betas); the last step changes.",
                lambda T, s: _f(T, s)[1:] / _f(T, s)[0],
            ),
            Mistake(
                "Off by one: index t is the paper's step t + 1, so alpha_bar_t = f(t + 1) / f(0) "
                "(alpha_bar[0] is just below 1, and alpha_bar[T-1] near 0).",
                lambda T, s: torch.cat([torch.ones(1, dtype=torch.float64), _alpha_bar(_f(T, s))])[
                    :T
                ],
            ),
            Mistake(
                "The cosine is not squared: f(u) = cos^2((u / T + s) / (1 + s) * pi / 2).",
                lambda T, s: _alpha_bar(_f(T, s).sqrt()),
            ),
            Mistake(
                "The lesson's clip: it clipped the betas to [1e-4, 0.9999]; the paper (and "
                "NoiseSchedule.cosine) only clips at 0.999.",
                lambda T, s: _alpha_bar(_f(T, s), 1e-4, 0.9999),
            ),
        ),
        hint="f = cos((arange(T + 1) / T + s) / (1 + s) * pi / 2) ** 2 in float64; betas = "
        "1 - f[1:] / f[:-1], clipped at 0.999; alpha_bar is the cumulative product of 1 - betas.",
        library="lesson_lib.schedules.NoiseSchedule.cosine",
    ),
    Exercise(
        name="log_snr",
        notebook="02",
        statement="log_snr(alpha_bar) -> lambda (T,) float64, the log signal-to-noise ratio",
        reference=log_snr,
        cases=_log_snr_cases,
        mistakes=(
            Mistake(
                "The sign is flipped: SNR is signal over noise, alpha_bar / (1 - alpha_bar), so "
                "lambda is positive while the image dominates.",
                lambda ab: torch.log((1 - ab) / ab),
            ),
            Mistake(
                "That is the SNR itself; the exercise asks for its (natural) log.",
                lambda ab: ab / (1 - ab),
            ),
            Mistake(
                "Use the natural log (torch.log), not log10.", lambda ab: torch.log10(ab / (1 - ab))
            ),
            Mistake(
                "That is the ratio of amplitudes; SNR is the ratio of powers (variances), "
                "alpha_bar / (1 - alpha_bar), without square roots.",
                lambda ab: torch.log(ab.sqrt() / (1 - ab).sqrt()),
            ),
            Mistake(
                "Only the signal power: SNR divides alpha_bar by the noise power 1 - alpha_bar.",
                lambda ab: torch.log(ab),
            ),
        ),
        hint="Signal power alpha_bar, noise power 1 - alpha_bar: the log of their ratio.",
        library="lesson_lib.schedules.NoiseSchedule.log_snr",
    ),
)
