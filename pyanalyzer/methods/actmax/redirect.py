"""Redirected ReLU gradients (lucid's ``redirected_relu_grad``), so that dead units move.

A unit that is zero on the start image gets no gradient through an ordinary ReLU, and the
optimiser never moves it. During the first steps of :func:`~.render.render` every ``nn.ReLU``
(and ``nn.ReLU6``) of the truncated torch network is swapped for a module whose forward is the
same and whose backward lets the gradient through where that would raise a negative input.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "REDIRECTED",
    "RedirectedReLU",
    "RedirectedReLU6",
    "redirected_relu",
    "redirected_twin",
]


@functools.cache
def _next(value: float, toward: float, dtype: torch.dtype) -> float:
    """The ``dtype`` number next to ``value`` in the direction of ``toward``, as a float."""
    a = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(a, torch.tensor(toward, dtype=dtype)).item())


def _dead(g: torch.Tensor) -> torch.Tensor:
    """Per image (first axis), whether ``g`` is zero everywhere: bool ``[N]``; a reduction over
    the other axes in whatever layout ``g`` has (no flattening copy of a channels-last map, no
    temporary: its largest and smallest values are both 0)."""
    if g.ndim == 1:
        return g == 0
    dims = tuple(range(1, g.ndim))
    return (g.amax(dim=dims) == 0) & (g.amin(dim=dims) == 0)


class _RedirectedReLUFunction(torch.autograd.Function):
    """ReLU forward; lucid's redirected gradient backward.

    ``grad`` is the gradient of the loss being minimised. Per image: when the ordinary ReLU
    gradient (``grad`` where ``x >= 0``) is nonzero somewhere, it is used unchanged; when it is
    zero everywhere (the unit is dead on this image), ``grad`` passes through except where it
    would push an already negative input lower, so the optimiser can raise it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # grad where x >= 0, by torch's fused ReLU backward (zero where x <= threshold): x <=
        # (the largest number below 0) is x < 0 exactly. masked_fill, the obvious spelling, is
        # about 15x slower on channels-last maps.
        relu_grad = torch.ops.aten.threshold_backward(grad, x, _next(0.0, -1.0, x.dtype))
        if x.ndim == 0:
            if bool(relu_grad != 0):
                return relu_grad
            return grad.masked_fill((x < 0) & (grad > 0), 0.0)
        dead = _dead(relu_grad)
        if bool(dead.any()):  # only dead images pay for the redirection
            g, ng = grad[dead], x[dead] < 0
            relu_grad[dead] = g.masked_fill(ng & (g > 0), 0.0)
        return relu_grad


class RedirectedReLU(nn.Module):
    """Drop-in ``nn.ReLU`` with lucid's redirected gradient (forward is unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RedirectedReLUFunction.apply(x)


class _RedirectedReLU6Function(torch.autograd.Function):
    """ReLU6 forward; lucid's ``redirected_relu6_grad`` backward.

    Per image: the ordinary gradient (zero where ``x < 0`` or ``x > 6``) when it is nonzero
    somewhere; otherwise ``grad`` passes through except where it would push an input that is
    already below 0 lower, or one already above 6 higher.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # grad where 0 <= x <= 6, by torch's fused backward (zero where x <= lo or x >= hi)
        lo, hi = _next(0.0, -1.0, x.dtype), _next(6.0, 7.0, x.dtype)
        relu6_grad = torch.ops.aten.hardtanh_backward(grad, x, lo, hi)
        nan = x.isnan()  # hardtanh_backward zeroes NaN inputs; the masks' rule passes them
        if bool(nan.any()):
            relu6_grad = torch.where(nan, grad, relu6_grad)
        dead = _dead(relu6_grad) if x.ndim else (relu6_grad == 0).reshape(1)
        if bool(dead.any()):
            low, high = x < 0, x > 6
            blocked = (low & (grad > 0)) | (high & (grad < 0))  # grad of the loss minimised
            redirected = grad.masked_fill(blocked, 0.0)
            if x.ndim == 0:
                return redirected
            relu6_grad[dead] = redirected[dead]
        return relu6_grad


class RedirectedReLU6(nn.Module):
    """Drop-in ``nn.ReLU6`` (onnx2torch's ``Clip(0, 6)``) with lucid's redirected gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RedirectedReLU6Function.apply(x)


REDIRECTED: dict[type[nn.Module], type[nn.Module]] = {
    nn.ReLU: RedirectedReLU,
    nn.ReLU6: RedirectedReLU6,
}
"""Each activation module that is redirected, with the module that replaces it."""


def redirected_twin(module: nn.Module) -> type[nn.Module] | None:
    """The module class that replaces ``module`` while ReLUs are redirected, or None."""
    return next((r for kind, r in REDIRECTED.items() if isinstance(module, kind)), None)


@contextlib.contextmanager
def redirected_relu(module: nn.Module) -> Iterator[int]:
    """Replace every ``nn.ReLU`` submodule of ``module`` by :class:`RedirectedReLU` (and every
    ``nn.ReLU6`` by :class:`RedirectedReLU6`, as lucid redirects both) inside the block, and
    put the originals back in ``finally`` (also when the block raises).

    onnx2torch turns every ONNX ``Relu`` node into an ``nn.ReLU`` submodule of the
    ``fx.GraphModule``, whose generated ``forward`` looks its submodules up by attribute, so
    swapping the attribute swaps the op.

    Yields:
        the number of ReLUs replaced.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, sub in list(module.named_modules(remove_duplicate=False)):
            replacement = redirected_twin(sub)
            if replacement is not None and name:
                parent_name, _, attr = name.rpartition(".")
                parent = module.get_submodule(parent_name) if parent_name else module
                setattr(parent, attr, replacement())
                swapped.append((parent, attr, sub))
        yield len(swapped)
    finally:
        for parent, attr, sub in reversed(swapped):
            setattr(parent, attr, sub)
