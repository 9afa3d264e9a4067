import math
from dataclasses import asdict

import pytest
import torch

from lesson_lib.blocks import ResBlock, SinusoidalPositionEmbeddings, SinusoidalTimeEmbedding
from lesson_lib.simple_unet import SimpleUNet
from lesson_lib.unet import UNet, UNetConfig

SMALL = dict(base_channels=16, groups=4, heads=2)  # a fast model for the shape tests


def perturb(module: torch.nn.Module, scale: float = 0.1) -> None:
    """Move every weight away from its init, as training would (the output conv starts at 0)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def ts(*values):
    return torch.tensor(values, dtype=torch.long)


# ----------------------------------------------------------------------------- the lesson's U-Net


def test_lesson_unet_fails_with_the_lessons_errors():
    torch.manual_seed(0)
    model = SimpleUNet(in_channels=1, out_channels=1, repaired=False)
    with pytest.raises(RuntimeError, match=r"expected input\[2, 384, 8, 8\] to have 256 channels"):
        model(torch.randn(2, 1, 32, 32), ts(1, 2))
    with pytest.raises(RuntimeError, match="Expected size 6 but got size 7"):
        model(torch.randn(2, 1, 28, 28), ts(1, 2))


@pytest.mark.parametrize("size", [28, 32])
def test_lesson_unet_repaired_runs(size):
    torch.manual_seed(0)
    model = SimpleUNet(in_channels=1, out_channels=1, repaired=True)
    x = torch.randn(2, 1, size, size)
    assert model(x, ts(0, 999)).shape == x.shape


# ----------------------------------------------------------------------------- building blocks


def test_time_embedding():
    emb = SinusoidalTimeEmbedding(32)(torch.arange(1000))
    assert emb.shape == (1000, 32)
    assert torch.cdist(emb, emb).add(torch.eye(1000)).min() > 1e-3  # every t distinct
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(16), torch.ones(16)]))
    # the lesson's formula, with (half_dim - 1) in the denominator: last frequency is 1/10000
    t = 500.0
    assert emb[500, 15].item() == pytest.approx(math.sin(t / 10000), abs=1e-6)
    assert emb[500, 1].item() == pytest.approx(math.sin(t * 10000 ** (-1 / 15)), abs=1e-4)
    assert SinusoidalPositionEmbeddings is SinusoidalTimeEmbedding
    with pytest.raises(ValueError, match="dim=31"):
        SinusoidalTimeEmbedding(31)


def test_resblock_shapes_and_embedding_effect():
    torch.manual_seed(0)
    block = ResBlock(8, 16, emb_dim=12, groups=4).eval()
    x = torch.randn(2, 8, 5, 5)
    assert block(x, torch.randn(2, 12)).shape == (2, 16, 5, 5)
    perturb(block)
    e = torch.randn(1, 12).expand(2, 12)
    out1, out2 = block(x, e), block(x, e + 1)
    assert not torch.allclose(out1, out2)


# ----------------------------------------------------------------------------- the course U-Net


@pytest.mark.parametrize("batch", [1, 3])
def test_unet_shapes_with_and_without_labels(batch):
    torch.manual_seed(0)
    model = UNet(UNetConfig(**SMALL)).eval()
    x, t = torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,))
    digits = torch.randint(0, 10, (batch,))
    with_null = digits.clone()
    with_null[0] = 10
    for y in (None, digits, with_null):
        assert model(x, t, y).shape == x.shape


def test_default_config_size():
    model = UNet()
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 2_000_000, n
    assert torch.all(model(torch.randn(2, 1, 28, 28), ts(0, 5)) == 0)  # zero-init output conv


def test_unconditional_is_the_null_label_and_labels_matter():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**SMALL)).eval()
    perturb(model)
    x, t = torch.randn(1, 1, 28, 28).expand(2, 1, 28, 28), ts(500, 500)
    torch.testing.assert_close(model(x, t), model(x, t, torch.full((2,), 10)))
    eps = model(x, t, ts(3, 5))
    assert (eps[0] - eps[1]).abs().max() > 1e-3
    assert (model(x, t, ts(3, 3)) - eps).abs().max() > 1e-3


def test_time_matters():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**SMALL)).eval()
    perturb(model)
    x = torch.randn(1, 1, 28, 28).expand(2, 1, 28, 28)
    eps = model(x, ts(10, 900))
    assert (eps[0] - eps[1]).abs().max() > 1e-3


@pytest.mark.parametrize("mults", [(1,), (1, 2)])
def test_cross_attention_on_latents(mults):
    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=4, channel_mults=mults, num_classes=None, context_dim=6, **SMALL
    )
    model = UNet(config).eval()
    perturb(model)
    z, t = torch.randn(3, 4, 7, 7), torch.randint(0, 1000, (3,))
    context = torch.randn(3, 5, 6)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 2:] = False
    eps, maps = model(z, t, context=context, context_mask=mask, return_attn=True)
    assert eps.shape == z.shape
    assert len(maps) == 2 * config.num_res_blocks + 2  # lowest level down + mid + up
    for m in maps:
        assert m.shape[:2] == (3, 2) and m.shape[-1] == 5
        assert torch.all(m[0, ..., 2:] == 0)
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m[..., 0]))
    torch.testing.assert_close(model(z, t, context=context, context_mask=mask), eps)
    assert not torch.allclose(model(z, t, context=context + 1, context_mask=mask), eps)
    assert model(z, t).shape == z.shape  # no context: cross-attention skipped


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    config = UNetConfig(context_dim=6, **SMALL)
    model = UNet(config)
    perturb(model)
    x, t = torch.randn(4, 1, 28, 28), torch.randint(0, 1000, (4,))
    model(x, t, ts(1, 2, 10, 4), context=torch.randn(4, 3, 6)).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert dead == []


def test_config_round_trip_and_checks():
    config = UNetConfig(channel_mults=[1, 2], attn_levels=[0, 1])
    assert UNetConfig(**asdict(config)) == config
    assert config.channel_mults == (1, 2) and UNetConfig().attn_levels == (2,)
    with pytest.raises(ValueError, match="32 channels: not divisible by groups=12"):
        UNetConfig(groups=12)
    with pytest.raises(ValueError, match="attn_levels"):
        UNetConfig(attn_levels=(3,))
    with pytest.raises(ValueError, match="dropout"):
        UNetConfig(dropout=1.5)


def test_bad_input_names_the_argument():
    model = UNet(UNetConfig(**SMALL))
    x, t = torch.randn(2, 1, 28, 28), ts(1, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\).*\(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28), t)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(1, 28, 28), t)
    for bad in (11, -2):
        with pytest.raises(ValueError, match=rf"y has values in .*{bad}.*0 <= y <= 10 \(10 = null"):
            model(x, t, ts(1, bad))
    with pytest.raises(TypeError, match="y must be an integer"):
        model(x, t, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="t must be an integer tensor"):
        model(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="t has batch size 3"):
        model(x, ts(1, 2, 3))
    with pytest.raises(ValueError, match="t has values in .*1000"):
        model(x, ts(1, 1000))
    with pytest.raises(ValueError, match="context_dim=None"):
        model(x, t, context=torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.long), t)
    crossed = UNet(UNetConfig(context_dim=4, **SMALL))
    with pytest.raises(ValueError, match=r"context must have shape \(B, L, context_dim\)"):
        crossed(x, t, context=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="context_mask must be a bool"):
        crossed(x, t, context=torch.randn(2, 3, 4), context_mask=torch.ones(2, 3))
    unconditional = UNet(UNetConfig(num_classes=None, **SMALL))
    with pytest.raises(ValueError, match="num_classes=None"):
        unconditional(x, t, ts(1, 2))
