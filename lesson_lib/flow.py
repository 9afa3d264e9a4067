"""Flow matching (Lipman et al. 2023; Liu et al. 2023, rectified flow) in the convention of
Stable Diffusion 3 and diffusers' ``FlowMatchEulerDiscreteScheduler``.

| here  | meaning                                                          |
|-------|------------------------------------------------------------------|
| `s`   | flow time in [0, 1]; s = 0 is data, s = 1 pure noise             |
| `x_s` | (1 - s) * x0 + s * eps, the straight path from data to noise     |
| `v`   | d x_s / d s = eps - x0, the velocity a flow model predicts       |

A flow model is any callable ``model(x_s, s, **cond) -> v`` with ``s`` a float tensor (B,).
Other code (Lipman et al.'s, Meta's ``flow_matching``) runs time the other way, t = 1 at the
data: there t = 1 - s and the velocity is -v.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checks import check_real, check_tensor
from .forward import noise_like
from .guidance import drop_labels
from .samplers import Trajectory
from .schedules import broadcast_like

__all__ = ["flow_path", "flow_loss", "euler_sample"]


def flow_path(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps, the straight path (Liu et al. 2023, Eq. 1). s: (B,) in [0, 1]."""
    check_tensor("x0", x0)
    s = broadcast_like(check_tensor("s", s), x0)
    return (1 - s) * x0 + s * eps


def flow_loss(
    model: Callable,
    x0: torch.Tensor,
    y: torch.Tensor | None = None,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The conditional flow-matching loss ``|| v_theta(x_s, s) - (eps - x0) ||^2``, s ~ U(0, 1)
    (Lipman et al. 2023, Eq. 23 with sigma_min = 0). ``y``: (B,) labels, dropped to the null label
    with probability ``p_uncond`` (Ho & Salimans 2022), or None."""
    check_tensor("x0", x0)
    check_real("p_uncond", p_uncond, low=0.0, high=1.0)
    s = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    eps = noise_like(x0, generator=generator)
    cond = {} if y is None else {"y": drop_labels(y, p_uncond, generator=generator)}
    return F.mse_loss(model(flow_path(x0, eps, s), s, **cond), eps - x0)


@torch.no_grad()
def euler_sample(
    model: Callable,
    x_1: torch.Tensor,
    s: torch.Tensor,
    *,
    progress: bool = False,
    return_trajectory: bool = False,
    **cond,
) -> torch.Tensor | Trajectory:
    """Euler's method on dx/ds = v(x, s) from ``s[0]`` down to ``s[-1]``: x_1 (B, ...) -> x (B, ...).

    ``s``: decreasing float times (N + 1,), usually from 1 to 0; N model calls. The trajectory's
    ``timesteps`` holds the N flow times visited (float64) and ``x0_pred`` each x - s v.
    """
    check_tensor("x_1", x_1)
    s = check_tensor("s", s).detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.numel() < 2 or not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"s must be a decreasing 1-D tensor of at least 2 times, got {s.tolist()}")
    if float(s[0]) > 1 or float(s[-1]) < 0:
        raise ValueError(f"s has values in [{float(s[-1])}, {float(s[0])}]: allowed 0 <= s <= 1")
    x, xs, x0s = x_1, [], []
    for s_now, s_next in tqdm(list(zip(s[:-1], s[1:])), disable=not progress, desc="sampling"):
        s_batch = torch.full((x.shape[0],), float(s_now), device=x.device, dtype=x.dtype)
        v = model(x, s_batch, **cond)
        if return_trajectory:
            xs.append(x.cpu())
            x0s.append((x - float(s_now) * v).cpu())  # x0 = x_s - s v on the straight path
        x = x + float(s_next - s_now) * v  # Euler step
    if not return_trajectory:
        return x
    return Trajectory(x, s[:-1], torch.stack(xs), torch.stack(x0s))
