"""The diffusion loss: the noise it regresses, the timesteps it draws, and label dropout."""

import torch

from lesson_lib.guidance import NULL_LABEL
from lesson_lib.losses import diffusion_loss
from lesson_lib.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(100)


def test_diffusion_loss_is_the_mse_between_true_and_predicted_noise():
    x0 = torch.randn(4, 1, 8, 8)
    seen = {}

    def model(x_t, t, y=None):
        seen.update(x_t=x_t, t=t, y=y)
        return torch.zeros_like(x_t)

    g = torch.Generator().manual_seed(3)
    loss = diffusion_loss(model, SCHEDULE, x0, torch.arange(4), p_uncond=0.0, generator=g)
    # Recover the noise from x_t by inverting q_sample in float64: the loss is its mean square.
    ab = SCHEDULE.alpha_bar[seen["t"]].view(-1, 1, 1, 1)
    eps = (seen["x_t"].double() - ab.sqrt() * x0.double()) / (1 - ab).sqrt()
    assert torch.allclose(loss.double(), eps.square().mean(), rtol=1e-4)
    assert torch.equal(seen["y"], torch.arange(4))


def test_label_dropout_reaches_the_model():
    got = []

    def model(x_t, t, y=None):
        got.append(y)
        return torch.zeros_like(x_t)

    diffusion_loss(
        model, SCHEDULE, torch.zeros(1000, 1, 2, 2), torch.zeros(1000, dtype=torch.long), 0.3
    )
    frac = (got[0] == NULL_LABEL).double().mean().item()
    assert 0.25 < frac < 0.35


def test_diffusion_loss_draws_every_timestep_from_0_to_T_minus_1():
    seen = []

    def model(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    g = torch.Generator().manual_seed(0)
    diffusion_loss(model, NoiseSchedule.linear(10), torch.zeros(1000, 1, 1, 1), generator=g)
    assert torch.equal(seen[0].unique(), torch.arange(10))
