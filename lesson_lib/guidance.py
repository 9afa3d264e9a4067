"""Classifier-free guidance (Ho & Salimans 2022): label dropout for training, `cfg` for sampling."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .checks import check_labels, check_real, check_tensor

__all__ = ["NULL_LABEL", "cfg", "cfg_eps", "drop_labels"]

NULL_LABEL = 10  # the class index meaning "no label"; MNIST digits are 0-9
NULL_NOTE = f"({NULL_LABEL} = NULL_LABEL, no label)"


def drop_labels(
    y: torch.Tensor, p_uncond: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return y (B,) with each label replaced by NULL_LABEL with probability p_uncond.

    The lesson wrote `conditions[mask] = None`, which a tensor cannot hold; a "null" class index
    does the same job, and the model learns an embedding for it. The generator lives on y's device.
    """
    check_labels("y", y, NULL_LABEL, note=NULL_NOTE)
    p_uncond = check_real("p_uncond", p_uncond, 0.0, 1.0)
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, NULL_LABEL), y)


def cfg_eps(
    model: Callable, x_t: torch.Tensor, t: torch.Tensor, w: float, cond: dict, uncond: dict
) -> torch.Tensor:
    """eps_uncond + w * (eps_cond - eps_uncond) from one model call of batch 2B.

    ``cond`` and ``uncond`` hold the same keywords (e.g. ``y``), each a (B, ...) tensor.
    """
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}  # (2B, ...)
    eps_cond, eps_uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
    return eps_uncond + w * (eps_cond - eps_uncond)  # Ho & Salimans 2022, Eq. 6 (w' = w - 1)


def cfg(model: Callable, w: float) -> Callable:
    """Wrap a class-conditional model into a guided one: `guided(x_t, t, y) -> eps`.

    eps = eps_uncond + w * (eps_cond - eps_uncond), the lesson's convention: w = 1 is plain
    conditional sampling, w = 0 unconditional. Ho & Salimans 2022 write (1 + w') eps_cond - w'
    eps_uncond, so their w' is our w - 1. Both halves go through one model call of batch 2B:
    `model(cat[x_t, x_t], cat[t, t], y=cat[y, NULL_LABEL...])`, so the model must read label
    NULL_LABEL as "no label". With y=None, guided is the unconditional model. The same wrapper
    guides a flow model's velocity (t is then a float time).
    """
    w = check_real("w", w)
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t, y=...), got {model!r}")

    def guided(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x_t", x_t)
        if y is None:
            return model(x_t, t, y=None)
        check_labels("y", y, NULL_LABEL, batch=x_t.shape[0], note=NULL_NOTE)
        return cfg_eps(model, x_t, t, w, {"y": y}, {"y": torch.full_like(y, NULL_LABEL)})

    return guided
