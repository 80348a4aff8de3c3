"""Natural-image priors: total variation and the α-norm (Mahendran & Vedaldi, CVPR 2015).

Both activation maximization (as penalties of a custom regularizer set) and optimisation
inversion (the paper's objective) use them; each caller states its paper's normalisation
with explicit arguments instead of keeping a copy of its own:

* :func:`total_variation` — ``Σ_c ((Δh² + Δw²) / v²)^(β/2)`` averaged over the pixel
  positions where it is counted: ``boundary="zero"`` counts every position, differences past
  the last row / column being zero (the authors' ``tv`` in deep-goggle's ``invert_nn.m``);
  ``boundary="crop"`` counts only the positions that have both neighbours.
* :func:`alpha_norm` — ``Σ |x / b|^α`` over all elements, divided by ``H W`` (the paper's
  ``per="pixel"``) or by ``C H W`` (``per="element"``), with an optional floor on ``|x / b|``
  that keeps float32 out of its slow subnormal range.

Each returns per-sample values ``[N]``, differentiable by autograd; the ``..._grad`` variants
return ``(value, gradient)`` with the gradient in closed form (no autograd: cheaper in a hot
loop, and the same numbers as the authors' code).
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["alpha_norm", "alpha_norm_grad", "total_variation", "total_variation_grad"]

TV_EPS = 1e-8
"""Added under the power when β != 2, so that the gradient stays finite where the image is
flat (both callers always did)."""

Boundary = Literal["zero", "crop"]
Per = Literal["pixel", "element"]


def _tv_terms(
    x: torch.Tensor, beta: float, v: float, boundary: Boundary
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(value [N], dh, dw, sq, count)``: the differences (zero where they do not count), the
    squared magnitudes (with :data:`TV_EPS` when β != 2) and the number of positions."""
    h, w = x.shape[-2:]
    xn = x / v if v != 1.0 else x
    dh = torch.zeros_like(xn)
    dw = torch.zeros_like(xn)
    dh[:, :, :-1, :] = xn[:, :, 1:, :] - xn[:, :, :-1, :]
    dw[:, :, :, :-1] = xn[:, :, :, 1:] - xn[:, :, :, :-1]
    if boundary == "crop":  # only positions with both neighbours count
        dh[:, :, :, -1] = 0.0
        dw[:, :, -1, :] = 0.0
        count = (h - 1) * (w - 1)
    elif boundary == "zero":
        count = h * w
    else:
        raise ValueError(f"unknown boundary {boundary!r}")
    sq = dh * dh + dw * dw
    if beta == 2.0:
        terms = sq
    else:
        sq = sq + TV_EPS
        terms = sq.pow(beta / 2)
    if boundary == "crop":
        terms = terms[:, :, :-1, :-1]
    return terms.flatten(1).sum(1) / count, dh, dw, sq, count


def total_variation(
    x: torch.Tensor, beta: float = 2.0, *, v: float = 1.0, boundary: Boundary = "zero"
) -> torch.Tensor:
    """Total variation ``R_{V^β}`` per sample (see the module docstring).

    Args:
        x: ``[N, C, H, W]``.
        beta: the exponent β (2: the squared gradient magnitude).
        v: differences are divided by ``v`` (the paper's typical neighbour difference V).
        boundary: ``"zero"`` or ``"crop"`` (which positions count, and the average's size).

    Returns:
        ``value [N]``, differentiable by autograd.
    """
    return _tv_terms(x, beta, v, boundary)[0]


def total_variation_grad(
    x: torch.Tensor, beta: float = 2.0, *, v: float = 1.0, boundary: Boundary = "zero"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`total_variation` and its gradient with respect to ``x``, in closed form.

    Returns:
        ``(value [N], gradient [N, C, H, W])``.
    """
    value, dh, dw, sq, count = _tv_terms(x, beta, v, boundary)
    if beta == 2.0:
        gh, gw = 2.0 * dh, 2.0 * dw
    else:
        g = beta * sq.pow(beta / 2 - 1)
        gh, gw = g * dh, g * dw
    # d/dx[i] of Σ f(x[i+1] - x[i]) is f'(d[i-1]) - f'(d[i]).
    out = -gh - gw
    out[:, :, 1:, :] += gh[:, :, :-1, :]
    out[:, :, :, 1:] += gw[:, :, :, :-1]
    return value, out / (v * count)


def _power(a: torch.Tensor, e: float) -> torch.Tensor:
    """``a ** e`` as a new tensor: a whole ``e`` from 2 to 16 by repeated squaring (the paper's
    α = 6 needs ``a ** 5``: three multiplications, about 5x faster than ``pow`` with a float
    exponent on the CPU, within a few float32 roundings of it), any other by ``pow``."""
    k = int(e)
    if k != e or not 2 <= k <= 16:
        return a.pow(e)
    factors, square = [], a
    while k:
        if k & 1:
            factors.append(square)
        k >>= 1
        if k:
            square = square * square
    result = factors[0] * factors[1] if len(factors) > 1 else factors[0]
    for f in factors[2:]:
        result.mul_(f)
    return result


def _alpha_base(x: torch.Tensor, b: float, per: Per, floor: float) -> tuple[torch.Tensor, int]:
    """``(|x / b| floored, the divisor D)``."""
    c, h, w = x.shape[-3:]
    a = x.abs() / b if b != 1.0 else x.abs()
    if floor > 0:
        a = a.clamp_min(floor)
    return a, (h * w if per == "pixel" else c * h * w)


def alpha_norm(
    x: torch.Tensor, alpha: float = 6.0, *, b: float = 1.0, per: Per = "pixel", floor: float = 0.0
) -> torch.Tensor:
    """The α-norm ``R_α = Σ |x / b|^α / D`` per sample (see the module docstring).

    Args:
        x: ``[N, C, H, W]``, centred (the mean image subtracted).
        alpha: the exponent α (6 in the paper).
        b: values are divided by ``b`` (the paper's typical pixel value B).
        per: ``D = H W`` (``"pixel"``, the paper) or ``C H W`` (``"element"``, a mean).
        floor: ``|x / b|`` is raised to at least this (0: exact); 1e-5 keeps ``|x/b|^α`` and
            its gradient out of float32's subnormal range, where CPUs slow down a hundredfold.

    Returns:
        ``value [N]``, differentiable by autograd.
    """
    a, d = _alpha_base(x, b, per, floor)
    return a.pow(alpha).flatten(1).sum(1) / d


def alpha_norm_grad(
    x: torch.Tensor, alpha: float = 6.0, *, b: float = 1.0, per: Per = "pixel", floor: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`alpha_norm` and its gradient with respect to ``x``, in closed form.

    Returns:
        ``(value [N], gradient [N, C, H, W])``.
    """
    a, d = _alpha_base(x, b, per, floor)
    p = _power(a, alpha - 1)
    value = (p * a).flatten(1).sum(1) / d
    return value, p.mul_(x.sign()).mul_(alpha / (b * d))
