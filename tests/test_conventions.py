"""Tests for lesson_lib.conventions: every time convention names the same noise level, and every
prediction converts to every other and back."""

import math

import pytest
import torch

from lesson_lib.conventions import (
    at_step,
    eps_from_v,
    eps_from_velocity,
    from_edm_sigma,
    from_flow_time,
    from_log_snr,
    v_from_eps,
    velocity_from_eps,
    x0_from_v,
)
from lesson_lib.flow import vp_to_flow
from lesson_lib.param import eps_from_score, eps_from_x0, score_from_eps, x0_from_eps
from lesson_lib.schedules import NoiseSchedule

SCHEDULES = [NoiseSchedule.linear(), NoiseSchedule.cosine()]
T_ALL = torch.arange(-1, 1000)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
def test_at_step_matches_the_definitions(schedule):
    step = at_step(schedule, T_ALL[1:])
    ab = schedule.alpha_bar
    assert torch.equal(step.alpha, ab.sqrt()) and torch.equal(step.sigma, (1 - ab).sqrt())
    assert torch.allclose(step.log_snr, schedule.log_snr(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(step.s, (1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt()), rtol=1e-15)
    assert torch.allclose(step.edm_sigma, ((1 - ab) / ab).sqrt(), rtol=1e-12)
    assert bool((step.s.diff() > 0).all()) and 0 < step.s[0] and step.s[-1] < 1
    data = at_step(schedule, -1)  # "done": the data itself
    assert (data.alpha, data.sigma, data.s, data.edm_sigma) == (1, 0, 0, 0)
    assert data.log_snr == math.inf and data.alpha.ndim == 0
    assert at_step(schedule, 500).s == step.s[500]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
def test_every_convention_round_trips(schedule):
    step = at_step(schedule, T_ALL)
    for name, back in [
        ("log_snr", from_log_snr(step.log_snr)),
        ("s", from_flow_time(step.s)),
        ("edm_sigma", from_edm_sigma(step.edm_sigma)),
    ]:
        for field, ours, theirs in zip(step._fields, step, back, strict=True):
            if field in ("log_snr", "edm_sigma"):  # relative: both grow without bound
                ok = torch.allclose(ours, theirs, rtol=1e-9, atol=0, equal_nan=False)
            else:
                ok = torch.allclose(ours, theirs, rtol=0, atol=1e-12)
            assert ok, (name, field, (ours - theirs).abs().max())


def test_flow_time_end_points_and_relations():
    ends = from_flow_time(torch.tensor([0.0, 0.5, 1.0]))
    assert ends.alpha.tolist() == [1.0, pytest.approx(2**-0.5), 0.0]
    assert ends.log_snr[1] == 0 and ends.edm_sigma[1] == 1
    s = torch.rand(100, dtype=torch.float64)
    step = from_flow_time(s)
    assert torch.allclose(step.log_snr, 2 * torch.log((1 - s) / s))  # lambda = 2 log((1-s)/s)
    assert torch.allclose(step.edm_sigma, s / (1 - s))
    assert torch.allclose(step.alpha**2 + step.sigma**2, torch.ones(100, dtype=torch.float64))


def _sample(schedule, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, eps = (torch.randn(6, 3, 2, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0, 1, 250, 500, 900, 998])
    step = at_step(schedule, t)
    a, s = step.alpha[:, None, None], step.sigma[:, None, None]
    return x0, eps, t, a * x0 + s * eps, a, s  # Ho et al. 2020, Eq. 4, written out


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
def test_predictions_from_a_known_x0_and_eps(schedule):
    """Built from x0 and eps, each conversion must give its definition."""
    x0, eps, t, x_t, a, s = _sample(schedule)
    assert torch.allclose(v_from_eps(schedule, x_t, t, eps), a * eps - s * x0, atol=1e-9)
    v = a * eps - s * x0  # Salimans & Ho 2022, Sec. 4
    assert torch.allclose(eps_from_v(schedule, x_t, t, v), eps, atol=1e-12)
    assert torch.allclose(x0_from_v(schedule, x_t, t, v), x0, atol=1e-12)
    assert torch.allclose(velocity_from_eps(schedule, x_t, t, eps), eps - x0, atol=1e-9)
    assert torch.allclose(eps_from_velocity(schedule, x_t, t, eps - x0), eps, atol=1e-12)
    x_s, fs = vp_to_flow(schedule, x_t, t)  # in flow coordinates: x0 = x_s - s u
    fs = fs[:, None, None]
    assert torch.allclose(x_s - fs * (eps - x0), x0, atol=1e-12)
    assert torch.allclose(x_s + (1 - fs) * (eps - x0), eps, atol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
def test_every_prediction_round_trips_through_eps(schedule):
    _, _, t, x_t, _, _ = _sample(schedule, 1)
    eps = torch.randn_like(x_t)  # any prediction, not only consistent ones
    to_and_from = {
        "x0": (x0_from_eps, eps_from_x0),
        "v": (v_from_eps, eps_from_v),
        "velocity": (velocity_from_eps, eps_from_velocity),
    }
    for there, back in to_and_from.values():
        assert torch.allclose(back(schedule, x_t, t, there(schedule, x_t, t, eps)), eps, atol=1e-9)
    score = score_from_eps(schedule, eps, t)
    assert torch.allclose(eps_from_score(schedule, score, t), eps, atol=1e-12)
    u = velocity_from_eps(schedule, x_t, t, eps)  # velocity -> x0 -> v -> eps, all the way round
    x0 = x0_from_eps(schedule, x_t, t, eps_from_velocity(schedule, x_t, t, u))
    v = v_from_eps(schedule, x_t, t, eps_from_x0(schedule, x_t, t, x0))
    assert torch.allclose(eps_from_v(schedule, x_t, t, v), eps, atol=1e-9)
    assert torch.allclose(x0_from_v(schedule, x_t, t, v), x0, atol=1e-9)


def test_int_t_and_float32():
    schedule = SCHEDULES[0]
    x_t = torch.randn(3, 4)
    v = v_from_eps(schedule, x_t, 10, x_t)
    assert v.dtype == torch.float32
    assert torch.allclose(v, v_from_eps(schedule, x_t, torch.full((3,), 10), x_t))


def test_argument_errors():
    schedule = SCHEDULES[0]
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="allowed -1 <= t <= 999"):
        at_step(schedule, 1000)
    with pytest.raises(ValueError, match="allowed -1 <= t <= 999"):
        at_step(schedule, torch.tensor([0, -2]))
    with pytest.raises(TypeError, match="integer"):
        at_step(schedule, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="allowed 0 <= s <= 1"):
        from_flow_time([0.5, 1.5])
    with pytest.raises(ValueError, match="edm_sigma >= 0"):
        from_edm_sigma(-0.1)
    with pytest.raises(ValueError, match="log_snr has NaN"):
        from_log_snr(float("nan"))
    with pytest.raises(ValueError, match="eps has shape"):
        v_from_eps(schedule, x, 0, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="allowed 0 <= t <= 999"):
        eps_from_v(schedule, x, -1, x)
    with pytest.raises(ValueError, match="u has shape"):
        eps_from_velocity(schedule, x, 0, torch.zeros(2))
    with pytest.raises(ValueError, match="batch dimension"):
        x0_from_v(schedule, torch.tensor(1.0), 0, torch.tensor(1.0))
