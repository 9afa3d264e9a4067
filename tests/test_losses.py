"""The diffusion loss: the noise it regresses, the timesteps it draws, label dropout, min-SNR;
a recipe's loss options (min-SNR for eps, flow times for flow)."""

from dataclasses import replace

import pytest
import torch

from lesson_lib.flow import flow_loss
from lesson_lib.guidance import NULL_LABEL
from lesson_lib.loop import TrainConfig
from lesson_lib.losses import diffusion_loss
from lesson_lib.recipes import MNIST_UNET, unet_recipe
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


def _recovered_noise(seen, x0):
    ab = SCHEDULE.alpha_bar[seen["t"]].view(-1, 1, 1, 1)
    return (seen["x_t"].double() - ab.sqrt() * x0.double()) / (1 - ab).sqrt()


def test_min_snr_gamma_weights_each_sample_by_min_snr_gamma_over_snr():
    """Hang et al. 2023, Eq. 7 for eps-prediction, with the SNR from the betas in float64."""
    x0 = torch.randn(256, 1, 4, 4)
    seen = {}

    def model(x_t, t, y=None):
        seen.update(x_t=x_t, t=t)
        return torch.zeros_like(x_t)

    g = torch.Generator().manual_seed(5)
    loss = diffusion_loss(model, SCHEDULE, x0, None, generator=g, min_snr_gamma=5.0)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)
    snr = alpha_bar[seen["t"]] / (1 - alpha_bar[seen["t"]])
    weight = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr
    assert weight.min() < 0.01 and (weight == 1).any()  # both regimes are in the batch
    per_sample = _recovered_noise(seen, x0).square().flatten(1).mean(1)
    assert torch.allclose(loss.double(), (weight * per_sample).mean(), rtol=1e-4)


def test_a_min_snr_gamma_above_every_snr_is_the_plain_loss():
    x0 = torch.randn(64, 1, 4, 4)
    model = lambda x_t, t, y=None: 0.5 * x_t  # noqa: E731
    plain = diffusion_loss(model, SCHEDULE, x0, generator=torch.Generator().manual_seed(1))
    wide = diffusion_loss(
        model, SCHEDULE, x0, generator=torch.Generator().manual_seed(1), min_snr_gamma=1e9
    )
    assert torch.allclose(plain, wide, rtol=1e-6)


def test_min_snr_gamma_is_checked_and_refused_for_flow():
    with pytest.raises(ValueError, match="min_snr_gamma"):
        diffusion_loss(lambda x, t: x, SCHEDULE, torch.zeros(2, 1, 2, 2), min_snr_gamma=0.0)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        unet_recipe("x", "x", replace(MNIST_UNET, continuous_time=True), TrainConfig(steps=1),
                    min_snr_gamma=5.0)  # fmt: skip


def test_a_flow_recipe_draws_the_flow_times_it_names():
    """unet_recipe(flow_times=...) trains with those times: its loss is flow_loss's with them."""
    config = replace(MNIST_UNET, continuous_time=True)
    recipe = unet_recipe("x", "x", config, TrainConfig(steps=1), flow_times="logit_normal")
    model = lambda x, s, y=None: x * s[:, None, None, None]  # noqa: E731
    x0, y = (
        torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0)),
        torch.arange(64) % 10,
    )
    got = recipe.loss(model, [x0, y], torch.Generator().manual_seed(1))
    for times, same in (("logit_normal", True), ("uniform", False)):
        g = torch.Generator().manual_seed(1)
        assert torch.equal(got, flow_loss(model, x0, y, 0.1, g, times=times)) is same
    with pytest.raises(ValueError, match="flow_times='logit_normal' draws flow times"):
        unet_recipe("x", "x", MNIST_UNET, TrainConfig(steps=1), flow_times="logit_normal")
