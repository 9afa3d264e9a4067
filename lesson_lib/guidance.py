"""Classifier-free guidance (Ho & Salimans 2022): label dropout for training, `cfg` for sampling."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .checks import check_real, check_tensor

__all__ = ["NULL_LABEL", "cfg", "drop_labels", "guide"]

NULL_LABEL = 10  # the class index meaning "no label"; MNIST digits are 0-9


def _check_labels(name: str, y: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    check_tensor(name, y)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {y.dtype}")
    if y.ndim != 1 or (batch is not None and y.shape[0] != batch):
        want = "(B,)" if batch is None else f"({batch},)"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > NULL_LABEL):
        raise ValueError(
            f"{name} has values in [{int(y.min())}, {int(y.max())}]: allowed 0 <= {name} <= "
            f"{NULL_LABEL} ({NULL_LABEL} = NULL_LABEL, no label)"
        )
    return y


def drop_labels(
    y: torch.Tensor, p_uncond: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return y (B,) with each label replaced by NULL_LABEL with probability p_uncond.

    The lesson wrote `conditions[mask] = None`, which a tensor cannot hold; a "null" class index
    does the same job, and the model learns an embedding for it. The generator lives on y's device.
    """
    _check_labels("y", y)
    p_uncond = check_real("p_uncond", p_uncond, 0.0, 1.0)
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, NULL_LABEL), y)


def guide(
    model: Callable,
    w: float,
    name: str,
    null_like: Callable[[torch.Tensor], torch.Tensor],
    check: Callable[[torch.Tensor, int], object] | None = None,
) -> Callable:
    """Classifier-free guidance for any condition passed to the model as keyword ``name``.

    Returns ``guided(x_t, t, c)``: eps = eps_uncond + w * (eps_cond - eps_uncond), where the
    unconditional branch gets ``null_like(c)``. Both halves go through one model call of batch
    2B. With ``c=None`` it is the unconditional model. ``check(c, B)`` validates ``c``.
    """
    w = check_real("w", w)
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t, {name}=...), got {model!r}")

    def guided(x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x_t", x_t)
        if c is None:
            return model(x_t, t, **{name: None})
        if check is not None:
            check(c, x_t.shape[0])
        both = {name: torch.cat([c, null_like(c)])}  # (2B, ...)
        eps_cond, eps_uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
        return eps_uncond + w * (eps_cond - eps_uncond)  # Ho & Salimans 2022, Eq. 6 (w' = w - 1)

    return guided


def cfg(model: Callable, w: float) -> Callable:
    """Wrap a class-conditional model into a guided one: `guided(x_t, t, y) -> eps`.

    eps = eps_uncond + w * (eps_cond - eps_uncond), the lesson's convention: w = 1 is plain
    conditional sampling, w = 0 unconditional. Ho & Salimans 2022 write (1 + w') eps_cond - w'
    eps_uncond, so their w' is our w - 1. Both halves go through one model call of batch 2B:
    `model(cat[x_t, x_t], cat[t, t], y=cat[y, NULL_LABEL...])`, so the model must read label
    NULL_LABEL as "no label". With y=None, guided is the unconditional model.
    """
    guided = guide(
        model,
        w,
        "y",
        lambda y: torch.full_like(y, NULL_LABEL),
        lambda y, batch: _check_labels("y", y, batch=batch),
    )

    def labelled(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return guided(x_t, t, y)

    return labelled
