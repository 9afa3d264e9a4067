import math

import pytest
import torch

from lesson_lib.attention import CrossAttention, SelfAttention, SpatialCrossAttention


def perturb(module: torch.nn.Module, scale: float = 0.1) -> None:
    """Move every weight away from its init (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def naive_cross_attention(m: CrossAttention, x, context, mask=None):
    """Loop over batch, head and query with plain Python softmax, in float64."""
    B, N, _ = x.shape
    L, h = context.shape[1], m.heads
    q, k, v = m.to_q(x), m.to_k(context), m.to_v(context)
    d = q.shape[-1] // h
    out = torch.zeros(B, N, h * d, dtype=torch.float64)
    attn = torch.zeros(B, h, N, L, dtype=torch.float64)
    for b in range(B):
        for head in range(h):
            cols = slice(head * d, (head + 1) * d)
            for n in range(N):
                keep = [l for l in range(L) if mask is None or bool(mask[b, l])]
                s = {l: float(q[b, n, cols] @ k[b, l, cols]) / math.sqrt(d) for l in keep}
                top = max(s.values())
                z = sum(math.exp(v_ - top) for v_ in s.values())
                for l in keep:
                    attn[b, head, n, l] = math.exp(s[l] - top) / z
                out[b, n, cols] = attn[b, head, n] @ v[b, :, cols]
    return m.to_out(out), attn


@pytest.mark.parametrize("use_mask", [False, True])
def test_cross_attention_matches_naive_loop(use_mask):
    torch.manual_seed(0)
    m = CrossAttention(query_dim=6, context_dim=5, heads=2, dim_head=3).double()
    x, context = (
        torch.randn(2, 4, 6, dtype=torch.float64),
        torch.randn(2, 3, 5, dtype=torch.float64),
    )
    mask = torch.tensor([[True, True, False], [True, False, True]]) if use_mask else None
    with torch.no_grad():
        out, attn = m(x, context, mask, return_attn=True)
        ref_out, ref_attn = naive_cross_attention(m, x, context, mask)
    assert out.shape == (2, 4, 6) and attn.shape == (2, 2, 4, 3)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m(x, context, mask), out)  # same output without return_attn


def test_cross_attention_mask_and_normalisation():
    torch.manual_seed(0)
    m = CrossAttention(query_dim=8, context_dim=4, heads=4, dim_head=2)
    x, context = torch.randn(3, 5, 8), 10 * torch.randn(3, 6, 4)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, :1] = False
    mask[2, :] = False  # nothing to attend to
    out, attn = m(x, context, mask, return_attn=True)
    assert torch.all(attn[~mask[:, None, None, :].expand_as(attn)] == 0)
    torch.testing.assert_close(attn[:2].sum(-1), torch.ones(2, 4, 5))
    assert torch.all(attn[2] == 0)
    torch.testing.assert_close(out[2], m.to_out.bias.expand(5, 8))
    # padded tokens have no influence on the output
    changed = context.clone()
    changed[0, 4:] = 100.0
    torch.testing.assert_close(m(x, changed, mask)[0], out[0])
    _, attn = m(x, context, return_attn=True)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, 5))


def test_cross_attention_bad_input():
    m = CrossAttention(query_dim=8, context_dim=4, heads=2, dim_head=4)
    x, context = torch.randn(2, 5, 8), torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.randn(2, 5, 7), context)
    with pytest.raises(ValueError, match="context must have shape .*context_dim=4"):
        m(x, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="context has batch size 1"):
        m(x, context[:1])
    with pytest.raises(ValueError, match="mask must be a bool"):
        m(x, context, torch.ones(2, 3))
    with pytest.raises(TypeError, match="heads"):
        CrossAttention(8, 4, heads=2.0)


def test_self_attention_matches_reference_and_starts_as_identity():
    torch.manual_seed(0)
    m = SelfAttention(channels=8, heads=2, groups=4)
    x = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(m(x), x)  # zero-initialised output projection
    perturb(m)
    m = m.double()
    x = x.double()
    with torch.no_grad():
        q, k, v = m.qkv(m.norm(x)).flatten(2).chunk(3, dim=1)  # 3 x (B, C, N)
        heads = []
        for i in range(2):
            qi, ki, vi = (a[:, 4 * i : 4 * (i + 1)] for a in (q, k, v))  # (B, d, N)
            w = torch.softmax(qi.transpose(1, 2) @ ki / 2.0, dim=-1)  # (B, N, N), sqrt(d) = 2
            heads.append(vi @ w.transpose(1, 2))  # (B, d, N)
        ref = x + m.proj(torch.cat(heads, 1).reshape(x.shape))
        torch.testing.assert_close(m(x), ref)


def test_spatial_cross_attention_maps():
    torch.manual_seed(0)
    m = SpatialCrossAttention(channels=8, context_dim=3, heads=2, groups=4)
    x, context = torch.randn(2, 8, 4, 5), torch.randn(2, 6, 3)
    torch.testing.assert_close(m(x, context), x)  # identity at init
    perturb(m)
    out, maps = m(x, context, return_attn=True)
    assert out.shape == x.shape and maps.shape == (2, 2, 4, 5, 6)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 4, 5))
    assert not torch.allclose(out, x)
