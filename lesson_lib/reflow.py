"""Rectified flow on points (Liu et al. 2023): a small velocity network, the exact velocity of a
Gaussian mixture, reflow's pairs, and the measures that show what one round of reflow buys.

Flow matching (``lesson_lib.flow``) learns the marginal velocity, whose ODE carries noise to data;
its paths never cross but they bend, so a few Euler steps land off the data. Reflow samples pairs
(x_1 noise, x_0 = ODE(x_1)) from that flow and trains again on the straight lines between the
pairs (Liu et al. 2023, Algorithm 1): the new flow keeps the marginals and its paths are
straighter (their Sec. 3), so one or two Euler steps get close. Points are (B, d); s follows
``lesson_lib.flow``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .blocks import SinusoidalTimeEmbedding
from .checks import check_flow_times, check_int, check_points, check_tensor
from .flow import euler_sample
from .mixture import GaussianMixture

__all__ = ["VelocityMLP", "exact_velocity", "reflow_pairs", "straightness", "energy_distance"]


class VelocityMLP(nn.Module):
    """A small velocity network for points: ``v_theta(x_s, s)``, (B, dim), (B,) float in [0, 1]
    -> (B, dim). The sinusoidal embedding of ``s * 1000`` (as the course U-Net embeds flow time)
    joins ``x_s`` at the input of an MLP with SiLU activations."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        hidden = check_int("hidden", hidden, low=4)
        depth = check_int("depth", depth, low=1)
        self.time = SinusoidalTimeEmbedding(time_dim)
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, hidden)]
        for _ in range(depth - 1):
            layers += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.net = nn.Sequential(*layers, nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        check_points("x_s", x_s, self.dim)
        check_flow_times("s", s, batch=x_s.shape[0])
        emb = self.time(s * 1000).to(x_s.dtype)  # (B, time_dim)
        return self.net(torch.cat([x_s, emb], dim=1))  # (B, dim)


def exact_velocity(gm: GaussianMixture) -> Callable:
    """The exact velocity of the straight path from ``gm``'s data to N(0, I):
    ``model(x_s, s) -> v = E[eps - x0 | x_s]``, (B, d), (B,) with 0 < s <= 1.

    x_s = (1 - s) x0 + s eps is distributed as the mixture with means (1 - s) mu_k and variances
    (1 - s)^2 sigma_k^2 + s^2, so Tweedie's formula gives E[x0 | x_s] = (x_s + s^2 score) / (1 - s)
    (for s < 1; E[x0] at s = 1), and v = (x_s - E[x0 | x_s]) / s.
    """

    def model(x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        check_tensor("x_s", x_s)
        if x_s.ndim != 2 or x_s.shape[1] != gm.dim:
            raise ValueError(f"x_s must be (B, {gm.dim}), got {tuple(x_s.shape)}")
        check_tensor("s", s)
        if s.shape != (x_s.shape[0],) or not bool(((s > 0) & (s <= 1)).all()):
            raise ValueError(f"s must have shape ({x_s.shape[0]},) with 0 < s <= 1, got {s}")
        v = torch.empty_like(x_s)
        for value in s.unique().tolist():  # one noise level at a time
            rows = s == value
            if value == 1:
                x0 = (gm.weights @ gm.means).to(x_s)  # E[x0]: x_1 is pure noise
            else:
                stds = ((1 - value) ** 2 * gm.stds**2 + value**2).sqrt()
                p_s = GaussianMixture(gm.weights, (1 - value) * gm.means, stds)
                x0 = (x_s[rows] + value**2 * p_s.score(x_s[rows])) / (1 - value)
            v[rows] = (x_s[rows] - x0) / value
        return v

    return model


def reflow_pairs(
    model: Callable, x_1: torch.Tensor, steps: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflow's coupling (Liu et al. 2023, Algorithm 1): x_0 = the flow's ODE solved from noise
    x_1 (B, ...) by ``steps`` Euler steps from s = 1 to 0. Returns (x_0, x_1)."""
    steps = check_int("steps", steps, low=1)
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return euler_sample(model, x_1, s), x_1


def straightness(path: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Liu et al. 2023's straightness, integral over s of E|| (x_1 - x_0) - dx/ds ||^2, of paths
    sampled at times ``s`` (N + 1,) (decreasing from 1 to 0): ``path`` (N + 1, B, ...) with
    path[0] at s = 1. dx/ds is each segment's slope; 0 means straight. A 0-d float64 tensor."""
    check_tensor("path", path)
    s = check_tensor("s", s).to(torch.float64).cpu()
    if path.ndim < 2 or s.shape != (path.shape[0],) or path.shape[0] < 2:
        raise ValueError(
            f"path must be (N + 1, B, ...) with s of shape (N + 1,), N >= 1; got path "
            f"{tuple(path.shape)} and s {tuple(s.shape)}"
        )
    path = path.to(torch.float64).cpu()
    ds = s[1:] - s[:-1]  # (N,) negative
    slope = (path[1:] - path[:-1]) / ds.reshape(-1, *[1] * (path.ndim - 1))  # (N, B, ...)
    chord = path[0] - path[-1]  # x_1 - x_0: the slope of the straight line
    bent = (chord - slope).flatten(2).square().sum(-1).mean(-1)  # (N,)
    return (bent * -ds).sum()


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between point sets a (N, d) and b (M, d)
    (Székely & Rizzo 2013), as V-statistics: never negative, 0 only for equal distributions."""
    for name, x in (("a", a), ("b", b)):
        check_tensor(name, x)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"{name} must be (N, d) with N >= 2, got {tuple(x.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    a, b = a.to(torch.float64), b.to(torch.float64)
    aa = torch.cdist(a, a).mean()  # V-statistics: never negative
    bb = torch.cdist(b, b).mean()
    return (2 * torch.cdist(a, b).mean() - aa - bb).item()
