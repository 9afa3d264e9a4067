"""Tests for lesson_lib.latent: the VAE, the scale factor, latent diffusion with prompts."""

import pytest
import torch
from torch import nn

from lesson_lib.autoencoder import AutoEncoder, AutoEncoderConfig, autoencoder_loss, kl_divergence
from lesson_lib.latent import (
    LatentDiffusion,
    attention_maps,
    generate,
    latent_diffusion_loss,
    prompt_cfg,
)
from lesson_lib.recipes import LATENT_SCHEDULE, RECIPES
from lesson_lib.samplers import ddim_sample
from lesson_lib.schedules import NoiseSchedule
from lesson_lib.text import MAX_TOKENS, TextEncoderConfig, tokenize
from lesson_lib.unet import UNetConfig

SMALL_UNET = UNetConfig(
    in_channels=4,
    base_channels=16,
    channel_mults=(1, 2),
    attn_levels=(0, 1),
    heads=2,
    num_classes=None,
    context_dim=16,
    dropout=0.0,
)
SMALL_TEXT = TextEncoderConfig(width=16, heads=2)


def images(n=8, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def small_model(seed=0) -> LatentDiffusion:
    """A small model whose output depends on the prompt: the zero-initialised output layers
    (which make a fresh U-Net predict eps = 0) are given random weights."""
    torch.manual_seed(seed)
    model = LatentDiffusion(SMALL_UNET, SMALL_TEXT).eval()
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and module.weight.abs().sum() == 0:
            nn.init.normal_(module.weight, std=0.2)
    return model


# ----------------------------------------------------------------------------- the autoencoder


def test_encode_decode_shapes():
    ae = AutoEncoder().eval()
    x = images()
    z = ae.encode(x)
    assert z.shape == (8, 4, 7, 7) and ae.latent_shape == (4, 7, 7)
    assert ae.decode(z).shape == (8, 1, 28, 28)
    x_hat, mean, logvar = ae(x, torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape and mean.shape == logvar.shape == (8, 4, 7, 7)
    assert torch.equal(ae.encode(x), z)  # the posterior mean: deterministic
    assert "scale_factor" in ae.state_dict()  # ships with the weights


def test_scale_factor_from_data_gives_unit_std():
    torch.manual_seed(0)
    ae = AutoEncoder().eval()
    x = images(32)
    assert abs(ae.encode(x).std().item() - 1) > 0.1  # not unit std before fitting
    s = ae.fit_scale_factor(x, batch_size=10)
    assert s == pytest.approx(ae.scale_factor.item()) and s != 1.0
    assert ae.encode(x).std().item() == pytest.approx(1.0, abs=1e-4)
    z = ae.encode(x)  # decode undoes the scale: decoder(mean)
    assert torch.allclose(ae.decode(z), ae.decoder(ae.posterior(x)[0]), atol=1e-5)


def test_running_scale_factor_moves_towards_the_batch_std():
    torch.manual_seed(0)
    ae = AutoEncoder(AutoEncoderConfig(scale_momentum=0.5))
    x = images(4)
    target = 1 / ae.posterior(x)[0].std().item()
    ae.train()
    for _ in range(20):
        ae(x)
    assert ae.scale_factor.item() == pytest.approx(target, rel=1e-4)
    before = ae.scale_factor.clone()
    ae.eval()(x)
    assert torch.equal(ae.scale_factor, before)  # eval mode leaves it alone


def test_kl_matches_float64_closed_form():
    gen = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 7, 7, generator=gen), torch.randn(3, 4, 7, 7, generator=gen)
    p = torch.distributions.Normal(mean.double(), (0.5 * logvar.double()).exp())
    q = torch.distributions.Normal(torch.zeros(()).double(), torch.ones(()).double())
    expected = torch.distributions.kl_divergence(p, q).flatten(1).sum(1)
    assert torch.allclose(kl_divergence(mean, logvar).double(), expected, rtol=1e-5)
    assert torch.allclose(kl_divergence(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


def test_autoencoder_loss_is_reconstruction_plus_light_kl():
    torch.manual_seed(0)
    ae = AutoEncoder()
    x = images()
    loss = autoencoder_loss(ae, (x, None), torch.Generator().manual_seed(1), kl_weight=0.5)
    x_hat, mean, logvar = ae(x, torch.Generator().manual_seed(1))
    expected = ((x_hat - x) ** 2).sum((1, 2, 3)) + 0.5 * kl_divergence(mean, logvar)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in ae.parameters())


# ----------------------------------------------------------------------------- latent diffusion


def test_model_signature_and_empty_prompt():
    model = small_model()
    z, t = torch.randn(3, 4, 7, 7), torch.tensor([0, 500, 999])
    ids = tokenize(["a handwritten seven", "the digit 3", ""])
    eps = model(z, t, tokens=ids)
    assert eps.shape == z.shape
    assert torch.allclose(model(z, t), model(z, t, tokens=tokenize([""] * 3)))  # None = ""
    assert torch.allclose(eps[2], model(z, t)[2], atol=1e-5)  # "" is unconditional
    assert not torch.allclose(eps[0], model(z, t)[0], atol=1e-3)  # a prompt changes eps


def test_ddim_sample_two_steps_and_sample_helper():
    model = small_model()
    schedule = NoiseSchedule.linear(1000)
    z_T = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    z0 = ddim_sample(model, schedule, z_T, 2, tokens=tokenize(["nine", "the number one"]))
    assert z0.shape == z_T.shape and torch.isfinite(z0).all()
    ae = AutoEncoder().eval()
    gen = torch.Generator().manual_seed(0)
    x = generate(model, ae, schedule, ["nine", "the number one"], w=3.0, steps=2, generator=gen)
    assert x.shape == (2, 1, 28, 28)
    again = generate(model, ae, schedule, ["nine", "the number one"], 3.0, 2, z_T=z_T)
    assert torch.allclose(x, again)  # generator seed 0 drew this z_T


class Counting:
    def __init__(self, model):
        self.model, self.batches = model, []

    def __call__(self, z_t, t, tokens=None):
        self.batches.append(z_t.shape[0])
        return self.model(z_t, t, tokens=tokens)


def test_prompt_guidance_limits_formula_and_one_call():
    model = small_model()
    z, t = torch.randn(2, 4, 7, 7), torch.tensor([10, 700])
    ids = tokenize(["seven", "the digit 2"])
    cond, uncond = model(z, t, tokens=ids), model(z, t, tokens=tokenize(["", ""]))
    assert not torch.allclose(cond, uncond, atol=1e-3)
    assert torch.allclose(prompt_cfg(model, 1.0)(z, t, ids), cond, atol=1e-5)
    assert torch.allclose(prompt_cfg(model, 0.0)(z, t, ids), uncond, atol=1e-5)
    counting = Counting(model)
    out = prompt_cfg(counting, 3.0)(z, t, ids)
    assert counting.batches == [4]  # cond and empty prompt in one batched call
    assert torch.allclose(out, uncond + 3.0 * (cond - uncond), atol=1e-4)


def test_attention_maps_sum_to_one_over_tokens():
    model = small_model()
    z, t = torch.randn(3, 4, 7, 7), torch.tensor([100, 100, 100])
    ids = tokenize(["a handwritten seven", "nine", ""])
    _, maps = model(z, t, tokens=ids, return_attn=True)
    assert len(maps) >= 3
    for m in maps:  # (B, heads, h, w, L), before any averaging
        assert m.shape[0] == 3 and m.shape[1] == 2 and m.shape[-1] == MAX_TOKENS
        assert torch.allclose(m[:2].sum(-1), torch.ones_like(m[:2].sum(-1)), atol=1e-5)
        assert torch.all(m[0, ..., 3:] == 0) and torch.all(m[1, ..., 1:] == 0)  # padding
        assert torch.all(m[2] == 0)  # the empty prompt attends to nothing
    shown = attention_maps(model, z, 100, ids)
    assert shown.shape == (3, MAX_TOKENS, 28, 28)
    assert torch.allclose(shown[:2].sum(1), torch.ones(2, 28, 28), atol=1e-5)
    assert torch.allclose(shown[1, 0], torch.ones(28, 28))  # one real token takes it all
    assert shown[0, :3].std(dim=(-1, -2)).max() > 0  # maps vary over the image


def test_latent_diffusion_loss_trains_text_encoder_and_unet():
    model = small_model().train()
    z0, labels = torch.randn(8, 4, 7, 7), torch.arange(8)
    loss = latent_diffusion_loss(
        model, LATENT_SCHEDULE, (z0, labels), torch.Generator().manual_seed(0)
    )
    again = latent_diffusion_loss(
        model.eval(), LATENT_SCHEDULE, (z0, labels), torch.Generator().manual_seed(0)
    )
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(again.item(), rel=1e-4)  # seeded (dropout 0)
    loss.backward()
    assert model.text_encoder.token_embed.weight.grad.abs().sum() > 0  # trained jointly
    assert model.unet.conv_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: AutoEncoder().encode(torch.zeros(2, 1, 32, 32)), ValueError, "x"),
        (lambda: AutoEncoder().decode(torch.zeros(2, 3, 7, 7)), ValueError, "z"),
        (lambda: AutoEncoder().fit_scale_factor([1]), TypeError, "images"),
        (lambda: kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, "logvar"),
        (lambda: prompt_cfg(small_model(), float("nan")), ValueError, "w"),
        (lambda: prompt_cfg(3, 1.0), TypeError, "model"),
        (
            lambda: small_model()(torch.zeros(2, 4, 7, 7), torch.tensor([1, 2]), tokenize("one")),
            ValueError,
            "tokens",
        ),
        (
            lambda: small_model()(torch.zeros(1, 4, 7, 7), torch.tensor([1000]), tokenize("one")),
            ValueError,
            "t",
        ),
        (
            lambda: generate(
                small_model(), AutoEncoder(), LATENT_SCHEDULE, ["one"], z_T=torch.zeros(2)
            ),
            ValueError,
            "z_T",
        ),
        (
            lambda: LatentDiffusion(SMALL_UNET, TextEncoderConfig(width=32)),
            ValueError,
            "context_dim",
        ),
        (
            lambda: attention_maps(small_model(), torch.zeros(1, 4, 7, 7), 1000, tokenize("one")),
            ValueError,
            "t",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


def test_recipes_are_registered():
    ae, latent = RECIPES["mnist_autoencoder"], RECIPES["mnist_latent"]
    assert ae.schedule is None and latent.schedule.T == 1000
    assert torch.equal(latent.schedule.alpha_bar, LATENT_SCHEDULE.alpha_bar)
    assert latent.model_config["unet"]["context_dim"] == latent.model_config["text"]["width"]
