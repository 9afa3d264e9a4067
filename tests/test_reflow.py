"""Tests for lesson_lib.reflow: the exact velocity of a mixture, straightness, the energy distance,
and one round of reflow straightening a learned flow."""

import pytest
import torch

from lesson_lib.conventions import at_step
from lesson_lib.flow import euler_sample, flow_loss, from_eps_model
from lesson_lib.loop import TrainConfig, train
from lesson_lib.mixture import GaussianMixture, exact_eps_model
from lesson_lib.reflow import (
    VelocityMLP,
    energy_distance,
    exact_velocity,
    reflow_pairs,
    straightness,
)
from lesson_lib.schedules import NoiseSchedule

GM = GaussianMixture.example()


def _points(n, seed, dtype=torch.float64):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_exact_velocity_is_the_diffusion_models_velocity():
    """Two roads to E[eps - x0 | x_s]: Tweedie in flow coordinates, and the VP score of the noised
    mixture turned into a velocity by from_eps_model."""
    schedule = NoiseSchedule.linear()
    via_vp = from_eps_model(exact_eps_model(GM, schedule), schedule)
    t = torch.tensor([0, 3, 100, 400, 700, 999])
    s = at_step(schedule, t).s
    x_s = 2 * _points(6, 0)
    assert torch.allclose(exact_velocity(GM)(x_s, s), via_vp(x_s, s), atol=1e-9)


def test_exact_velocity_at_pure_noise_and_minimises_the_loss():
    off_centre = GaussianMixture.create(GM.means + torch.tensor([1.0, -0.5]), 0.3, range(1, 9))
    x = _points(5, 1)
    mean = off_centre.weights @ off_centre.means  # E[x0], away from 0
    one = torch.ones(5, dtype=torch.float64)
    assert torch.allclose(exact_velocity(off_centre)(x, one), x - mean)  # x_1 is pure noise
    v = exact_velocity(GM)
    x0 = GM.sample(1000, torch.Generator().manual_seed(2), dtype=torch.float64)
    losses = {}  # E[v | x_s] minimises the flow-matching loss: any change adds to it
    for name, model in [("exact", v), ("scaled", lambda x, s: 1.3 * v(x, s))]:
        gen = torch.Generator().manual_seed(3)  # the same draws of s and eps for both
        losses[name] = flow_loss(lambda x, s, m=model: m(x, s.clamp(min=1e-6)), x0, generator=gen)
    assert losses["exact"] < losses["scaled"] - 0.05


def test_straightness():
    s = torch.linspace(1, 0, 11, dtype=torch.float64)
    start, end = _points(4, 3), _points(4, 4)
    line = (1 - s)[:, None, None] * end + s[:, None, None] * start  # path[0] = start at s = 1
    assert straightness(line, s) < 1e-24
    # a detour: x(s) = line + a sin(pi s) e, dx/ds - chord = a pi cos(pi s) e, so the
    # integral of |.|^2 over [0, 1] is a^2 pi^2 / 2 (sampled here by 2,000 uneven segments).
    fine = torch.linspace(1, 0, 2001, dtype=torch.float64) ** 2
    bump = 0.3 * torch.sin(torch.pi * fine)[:, None, None] * torch.tensor([1.0, 0.0])
    curve = (1 - fine)[:, None, None] * end + fine[:, None, None] * start + bump
    assert straightness(curve, fine).item() == pytest.approx(0.09 * torch.pi**2 / 2, rel=1e-5)


def test_energy_distance():
    a, b = _points(500, 5), _points(500, 6)
    assert energy_distance(a, a) == pytest.approx(0, abs=1e-12)
    same, shifted = energy_distance(a, b), energy_distance(a, b + torch.tensor([1.0, 0.0]))
    assert 0 <= same < 0.02 < 0.3 < shifted
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a))


@pytest.mark.slow
def test_one_round_of_reflow_straightens_paths_and_helps_one_step():
    """Liu et al. 2023: a flow trained on reflow pairs of the exact flow has straighter paths, and
    its 1-step samples are far closer to the data than the exact flow's."""
    torch.manual_seed(0)
    x_1 = _points(4000, 7, torch.float32)
    x0, x1 = reflow_pairs(exact_velocity(GM), x_1.double(), steps=100)
    cfg = TrainConfig(steps=300, batch_size=256, lr=2e-3, warmup=50, checkpoint_every=0)
    result = train(
        VelocityMLP(hidden=64),
        lambda m, batch, g: flow_loss(m, batch[0], generator=g, eps=batch[1]),
        [x0.float(), x1.float()],
        cfg,
        progress=False,
    )
    s = torch.linspace(1, 0, 51, dtype=torch.float64)
    test_noise = _points(1000, 8, torch.float32)
    before = euler_sample(exact_velocity(GM), test_noise.double(), s, return_trajectory=True)
    after = euler_sample(result.model, test_noise, s, return_trajectory=True)
    bend = [straightness(torch.cat([r.x_t, r.x[None]]), s).item() for r in (before, after)]
    assert bend[1] < 0.1 * bend[0]
    true = GM.sample(1000, torch.Generator().manual_seed(9))
    one = torch.tensor([1.0, 0.0], dtype=torch.float64)
    d_before = energy_distance(euler_sample(exact_velocity(GM), test_noise.double(), one), true)
    d_after = energy_distance(euler_sample(result.model, test_noise, one), true)
    assert d_after < 0.2 * d_before


def test_velocity_mlp_and_argument_errors():
    net = VelocityMLP(dim=3, hidden=16, depth=2)
    assert net(torch.zeros(4, 3), torch.rand(4)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        net(torch.zeros(4, 2), torch.rand(4))
    with pytest.raises(ValueError, match=r"s must have shape \(4,\)"):
        net(torch.zeros(4, 3), torch.rand(3))
    with pytest.raises(ValueError, match="0 < s <= 1"):
        exact_velocity(GM)(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"x_s must be \(B, 2\)"):
        exact_velocity(GM)(torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="steps"):
        reflow_pairs(exact_velocity(GM), torch.zeros(2, 2), steps=0)
    with pytest.raises(ValueError, match="path must be"):
        straightness(torch.zeros(3, 2, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="same dimension"):
        energy_distance(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="N >= 2"):
        energy_distance(torch.zeros(1, 2), torch.zeros(3, 2))
