"""Attention for the U-Net: self-attention over a feature map, cross-attention to a context.

Self-attention lets every pixel of a small feature map (7x7 for MNIST) look at every other one
(Ho et al. 2020 put it at the 16x16 level of their U-Net). Cross-attention is how latent diffusion
conditions on a prompt (Rombach et al. 2022, Sec. 3.3): queries come from the image, keys and
values from the context tokens, so each pixel chooses which tokens to listen to.

Shapes: B batch, C channels, H x W feature map, N = H*W query tokens, L context tokens,
h heads, d channels per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lesson_lib.checks import check_int, check_mask, check_tensor


class SelfAttention(nn.Module):
    """Multi-head self-attention over a (B, C, H, W) feature map, with GroupNorm and a residual.

    The output projection starts at zero, so the block starts as the identity (Ho et al. 2020).
    """

    def __init__(self, channels: int, heads: int = 4, groups: int = 8):
        super().__init__()
        check_int("channels", channels, low=1)
        check_int("heads", heads, low=1)
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        H, W = x.shape[-2:]
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        q, k, v = rearrange(qkv, "b (three h d) x y -> three b h (x y) d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d): softmax(q k^T / sqrt(d)) v
        out = rearrange(out, "b h (x y) d -> b (h d) x y", x=H, y=W)  # (B, C, H, W)
        return x + self.proj(out)


class CrossAttention(nn.Module):
    """The lesson's cross-attention: queries from ``x``, keys and values from ``context``.

    ``softmax(q k^T / sqrt(d)) v`` per head (Vaswani et al. 2017; Rombach et al. 2022, Eq. 3),
    plus an optional key padding ``mask`` and the attention probabilities on request.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        for name, value in [
            ("query_dim", query_dim),
            ("context_dim", context_dim),
            ("heads", heads),
            ("dim_head", dim_head),
        ]:
            check_int(name, value, low=1)
        inner_dim = dim_head * heads
        self.query_dim, self.context_dim = query_dim, context_dim
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, query_dim)

    def forward(
        self, x: Tensor, context: Tensor, mask: Tensor | None = None, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, N, query_dim), context: (B, L, context_dim) -> (B, N, query_dim).

        ``mask``: optional bool (B, L), True for real tokens and False for padding; padded tokens
        get exactly zero attention. A row with no real token attends to nothing (output
        ``to_out`` bias only). With ``return_attn=True`` also returns the attention
        probabilities, (B, heads, N, L), each row summing to 1 over the real tokens.
        """
        self._check(x, context, mask)
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, h, N, d)
        k = rearrange(self.to_k(context), "b l (h d) -> b h l d", h=self.heads)  # (B, h, L, d)
        v = rearrange(self.to_v(context), "b l (h d) -> b h l d", h=self.heads)  # (B, h, L, d)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, N, L)
        if mask is not None:
            keep = mask[:, None, None, :]  # (B, 1, 1, L)
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            attn = scores.softmax(dim=-1) * keep  # exact zeros at padding, all-padding rows too
        else:
            attn = scores.softmax(dim=-1)
        out = rearrange(attn @ v, "b h n d -> b n (h d)")  # (B, N, h*d)
        out = self.to_out(out)
        return (out, attn) if return_attn else out

    def _check(self, x, context, mask) -> None:
        check_tensor("x", x)
        check_tensor("context", context)
        if x.ndim != 3 or x.shape[-1] != self.query_dim:
            raise ValueError(
                f"x must have shape (B, N, query_dim={self.query_dim}), got {tuple(x.shape)}"
            )
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must have shape (B, L, context_dim={self.context_dim}), "
                f"got {tuple(context.shape)}"
            )
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context has batch size {context.shape[0]} but x has batch size {x.shape[0]}"
            )
        if mask is not None:
            check_mask("mask", mask, context.shape[:2])


class SpatialCrossAttention(nn.Module):
    """Cross-attention from a (B, C, H, W) feature map to a context, with GroupNorm and residual.

    The feature map is flattened to H*W query tokens (Rombach et al. 2022, Sec. 3.3); the output
    projection starts at zero, so the block starts as the identity.
    """

    def __init__(self, channels: int, context_dim: int, heads: int = 4, groups: int = 8):
        super().__init__()
        check_int("heads", heads, low=1)
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = CrossAttention(channels, context_dim, heads=heads, dim_head=channels // heads)
        nn.init.zeros_(self.attn.to_out.weight)
        nn.init.zeros_(self.attn.to_out.bias)

    def forward(
        self, x: Tensor, context: Tensor, mask: Tensor | None = None, return_attn: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, C, H, W), context: (B, L, context_dim) -> (B, C, H, W).

        With ``return_attn=True`` also returns the attention maps, (B, heads, H, W, L).
        """
        H, W = x.shape[-2:]
        h = rearrange(self.norm(x), "b c x y -> b (x y) c")  # (B, N, C)
        h, attn = self.attn(h, context, mask, return_attn=True)
        h = rearrange(h, "b (x y) c -> b c x y", x=H, y=W)  # (B, C, H, W)
        if not return_attn:
            return x + h
        return x + h, rearrange(attn, "b h (x y) l -> b h x y l", x=H, y=W)
