"""The optimisation loop's data term as one autograd node per layer.

Per row, ``‖Φ(x) − Φ0‖² / ‖Φ0‖²`` (Mahendran & Vedaldi's normalised feature loss, squared).
Written with torch ops, it cost the loop a subtraction, a product, a sum and a division forward
and five operations backward on every step. :func:`row_distance` computes the same numbers in
two passes forward (the difference, its squared sum) and one backward (the difference times the
row's factor), in the features' own layout; the values and the gradient are bitwise those of
the torch ops (the product rule's ``g·d + g·d`` is ``d·(2g)`` exactly in binary floating
point).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["row_distance"]


class _RowDistance(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, features: torch.Tensor, target: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        d = features - target
        ctx.save_for_backward(d, norms)
        return (d * d).sum(dim=tuple(range(1, d.ndim))) / norms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        d, norms = ctx.saved_tensors
        factor = grad / norms
        return d * (factor + factor).view(-1, *(1,) * (d.ndim - 1)), None, None


def row_distance(features: torch.Tensor, target: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``[N]``: per row, the squared distance of ``features`` to ``target`` (same shape,
    ``[N, ...]``) over ``norms [N]``; a gradient for ``features`` only, in their layout."""
    return _RowDistance.apply(features, target, norms)
