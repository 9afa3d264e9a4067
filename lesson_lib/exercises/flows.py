"""Exercises of notebooks 09 (flow matching) and 10 (fast samplers)."""

from __future__ import annotations

import math

import torch

from ..flow import flow_path as lib_flow_path
from ..flow import vp_to_flow as lib_vp_to_flow
from ..samplers import ddim_step as lib_ddim_step
from ..solvers import karras_sigmas as lib_karras_sigmas
from .core import SCHEDULES, Case, Exercise, Mistake, at, batches, broadcast_tip, describe


def flow_path(x0, eps, s):
    """x_s = (1 - s) x0 + s eps, the straight path from data (s = 0) to noise (s = 1)."""
    s = s.view(-1, *[1] * (x0.ndim - 1))  # (B, 1, ..., 1)
    return (1 - s) * x0 + s * eps


def flow_from_vp(x_t, t, alpha_bar):
    """The flow point of x_t: x_s = x_t / (alpha + sigma), alpha = sqrt(alpha_bar_t),
    sigma = sqrt(1 - alpha_bar_t) (Gao et al. 2025)."""
    ab = alpha_bar[t].view(-1, *[1] * (x_t.ndim - 1))  # (B, 1, ..., 1), float64
    return (x_t / (ab.sqrt() + (1 - ab).sqrt())).to(x_t.dtype)


def karras_sigmas(n, sigma_min, sigma_max, rho=7.0):
    """EDM's n noise levels from sigma_max down to sigma_min, uniform in sigma^(1/rho)
    (Karras et al. 2022, Eq. 5): (n,) float64."""
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    root_max, root_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (root_max + i * (root_min - root_max)) ** rho


def euler_sigma_step(x_t, t, t_prev, eps, alpha_bar):
    """One Euler step of d(x / alpha) / d sigma = eps in EDM's sigma = sqrt((1 - ab) / ab)
    (Karras et al. 2022, Eq. 3), back in the course's x_t: alpha_bar = 1 at t_prev = -1."""
    ab = alpha_bar[t].item()
    ab_prev = alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    sigma, sigma_prev = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)
    x_bar = x_t / math.sqrt(ab) + (sigma_prev - sigma) * eps  # Euler in x / alpha
    return math.sqrt(ab_prev) * x_bar


def _flow_path_cases() -> list[Case]:
    out = []
    for x0, eps, t, _ in batches(seed=21):
        s = (t.double() / 999).to(x0.dtype)  # includes s = 0 and s = 1
        out.append(
            Case(
                (x0, eps, s),
                lib_flow_path(x0, eps, s),
                describe("x0", x0, extra=f"s = {s.tolist()}"),
            )
        )
    return out


def _flow_from_vp_cases() -> list[Case]:
    out = []
    for x, _, t, sched in batches(seed=22):
        schedule = SCHEDULES[sched]
        want = lib_vp_to_flow(schedule, x, t)[0]
        out.append(Case((x, t, schedule.alpha_bar), want, describe("x_t", x, t, sched), t))
    return out


def _karras_cases() -> list[Case]:
    specs = [
        (10, 0.002, 80.0, 7.0),
        (5, 0.1, 10.0, 7.0),
        (18, 0.0064, 157.4, 3.0),
        (2, 1.0, 2.0, 7.0),
    ]
    label = "n = {}, sigma_min = {}, sigma_max = {}, rho = {}"
    return [Case(args, lib_karras_sigmas(*args), label.format(*args)) for args in specs]


def _euler_cases() -> list[Case]:
    out = []
    steps = [(999, 979), (20, -1), (500, 333), (0, -1), (999, 949)]
    for (x, _, _, sched), (t, t_prev) in zip(batches(seed=23) * 2, steps, strict=False):
        schedule = SCHEDULES[sched]
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=x.dtype)
        want = lib_ddim_step(schedule, x, t, t_prev, eps, 0.0)  # Euler in sigma is DDIM, eta 0
        extra = f"t_prev = {t_prev}, {sched} schedule (T = 1000)"
        out.append(
            Case((x, t, t_prev, eps, schedule.alpha_bar), want, describe("x_t", x, t, extra), t)
        )
    return out


def _edm_sigma(ab: float) -> float:
    return math.sqrt((1 - ab) / ab)


def _euler(x, t, tp, e, ab, sigma=_edm_sigma, rescale=True, sign=1.0, done=True):
    """euler_sigma_step with one classic mistake switched on: another sigma, no rescaling by
    alpha, the step's sign flipped, or t_prev = -1 read as alpha_bar[-1] (``done=False``)."""
    a, a_prev = ab[t].item(), ab[tp].item() if tp >= 0 or not done else 1.0
    step = sign * (sigma(a_prev) - sigma(a)) * e
    return x + step if not rescale else math.sqrt(a_prev) * (x / math.sqrt(a) + step)


EXERCISES = (
    Exercise(
        name="flow_path",
        notebook="09",
        statement="flow_path(x0, eps, s) -> x_s, the straight path (Liu et al. 2023, Eq. 1)",
        reference=flow_path,
        cases=_flow_path_cases,
        mistakes=(
            Mistake(
                "Time runs the other way: here s = 0 is the data and s = 1 the noise (Stable "
                "Diffusion 3, diffusers), so x0 gets (1 - s) and eps gets s. Code where t = 1 is "
                "the data (Lipman et al., Meta's flow_matching) writes t x0 + (1 - t) eps.",
                lambda x0, eps, s: (
                    s.view(-1, *[1] * (x0.ndim - 1)) * x0
                    + (1 - s.view(-1, *[1] * (x0.ndim - 1))) * eps
                ),
            ),
            Mistake(
                "These are the diffusion path's square roots: the flow path is straight, with "
                "weights (1 - s) and s that add up to 1, not variances that add up to 1.",
                lambda x0, eps, s: (
                    (1 - s.view(-1, *[1] * (x0.ndim - 1))).sqrt() * x0
                    + s.view(-1, *[1] * (x0.ndim - 1)).sqrt() * eps
                ),
            ),
            Mistake(
                "x0 is not shrunk: at s = 1 the path must be pure noise, so x0 is scaled by 1 - s.",
                lambda x0, eps, s: x0 + s.view(-1, *[1] * (x0.ndim - 1)) * eps,
            ),
        ),
        hint="Shape s (B,) to (B, 1, ..., 1), then (1 - s) * x0 + s * eps.",
        library="lesson_lib.flow.flow_path",
        tip="s has shape (B,): reshape it with s.view(-1, *[1] * (x0.ndim - 1)).",
    ),
    Exercise(
        name="flow_from_vp",
        notebook="09",
        statement="flow_from_vp(x_t, t, alpha_bar) -> x_s, the flow point of a diffusion x_t",
        reference=flow_from_vp,
        cases=_flow_from_vp_cases,
        mistakes=(
            Mistake(
                "Dividing by alpha alone is EDM's rescaling (x / alpha = x0 + sigma/alpha eps); "
                "the flow path needs weights that add up to 1: divide by alpha + sigma.",
                lambda x, t, ab: (x / at(ab, t, x).sqrt()).to(x.dtype),
            ),
            Mistake(
                "alpha and sigma are square roots: sqrt(alpha_bar) and sqrt(1 - alpha_bar), "
                "whose sum is not 1 (alpha_bar + (1 - alpha_bar) is).",
                lambda x, t, ab: (x / (at(ab, t, x) + (1 - at(ab, t, x)))).to(x.dtype),
            ),
            Mistake(
                "Multiplied where it divides: x_t = (alpha + sigma) x_s, so x_s = x_t / (alpha + "
                "sigma).",
                lambda x, t, ab: (x * (at(ab, t, x).sqrt() + (1 - at(ab, t, x)).sqrt())).to(
                    x.dtype
                ),
            ),
        ),
        hint="x_t = alpha x0 + sigma eps = (alpha + sigma) ((1 - s) x0 + s eps) with "
        "s = sigma / (alpha + sigma).",
        library="lesson_lib.flow.vp_to_flow",
        tip=broadcast_tip("x_t"),
    ),
    Exercise(
        name="karras_sigmas",
        notebook="10",
        statement="karras_sigmas(n, sigma_min, sigma_max, rho=7.0) -> (n,) float64, EDM's "
        "step schedule (Karras et al. 2022, Eq. 5)",
        reference=karras_sigmas,
        cases=_karras_cases,
        mistakes=(
            Mistake(
                "The order is reversed: a sampler starts at the largest noise, so the list runs "
                "from sigma_max down to sigma_min.",
                lambda n, lo, hi, rho=7.0: karras_sigmas(n, hi, lo, rho),
            ),
            Mistake(
                "rho and 1/rho are swapped: interpolate between sigma^(1/rho) at the ends, then "
                "raise to the power rho.",
                lambda n, lo, hi, rho=7.0: karras_sigmas(n, lo, hi, 1 / rho),
            ),
            Mistake(
                "This is uniform in sigma (rho = 1): interpolate sigma^(1/rho), not sigma, so "
                "most steps sit at low noise.",
                lambda n, lo, hi, rho=7.0: karras_sigmas(n, lo, hi, 1.0),
            ),
            Mistake(
                "The last point falls short of sigma_min: i runs from 0 to n - 1, so divide by "
                "n - 1, not n.",
                lambda n, lo, hi, rho=7.0: (
                    (
                        hi ** (1 / rho)
                        + torch.arange(n, dtype=torch.float64)
                        / n
                        * (lo ** (1 / rho) - hi ** (1 / rho))
                    )
                    ** rho
                ),
            ),
        ),
        hint="i = torch.arange(n, dtype=torch.float64) / (n - 1); then (sigma_max^(1/rho) + i "
        "(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.",
        library="lesson_lib.solvers.karras_sigmas",
        tip="Return a float64 tensor of shape (n,).",
    ),
    Exercise(
        name="euler_sigma_step",
        notebook="10",
        statement="euler_sigma_step(x_t, t, t_prev, eps, alpha_bar) -> x_prev, Euler on the "
        "probability-flow ODE in EDM's sigma (it is DDIM with eta = 0)",
        reference=euler_sigma_step,
        cases=_euler_cases,
        mistakes=(
            Mistake(
                "The step was taken in x_t itself: EDM's ODE is in x / alpha, so divide by "
                "sqrt(alpha_bar_t) first and multiply by sqrt(alpha_bar_prev) after.",
                lambda x, t, tp, e, ab: _euler(x, t, tp, e, ab, rescale=False),
            ),
            Mistake(
                "The sign is flipped: sigma falls from t to t_prev, so the step is "
                "(sigma_prev - sigma) * eps, a negative multiple of eps.",
                lambda x, t, tp, e, ab: _euler(x, t, tp, e, ab, sign=-1.0),
            ),
            Mistake(
                "This sigma is the VP one, sqrt(1 - alpha_bar); EDM's is sqrt((1 - alpha_bar) / "
                "alpha_bar), the noise level of x / alpha.",
                lambda x, t, tp, e, ab: _euler(x, t, tp, e, ab, sigma=lambda a: math.sqrt(1 - a)),
            ),
            Mistake(
                "t_prev = -1 means done, where alpha_bar = 1; alpha_bar[-1] is the last entry "
                "of the table, the noisiest step.",
                lambda x, t, tp, e, ab: _euler(x, t, tp, e, ab, done=False),
            ),
        ),
        hint="sigma = sqrt((1 - alpha_bar) / alpha_bar) at t and at t_prev (0 at t_prev = -1); "
        "x / alpha moves by (sigma_prev - sigma) * eps.",
        library="lesson_lib.samplers.ddim_step (eta = 0)",
        tip="t and t_prev are ints: read alpha_bar[t].item(), and use 1.0 at t_prev = -1.",
    ),
)
