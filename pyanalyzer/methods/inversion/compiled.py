"""The CPU inversion loop's compiled parts: the image to the model's input, and the step after
the data term's backward pass.

:func:`optim.OptimInversion <pyanalyzer.methods.inversion.optim>` runs momentum SGD for a few
hundred steps on a small batch, where each of the thirty-odd tensor operations around the
network costs more in dispatch than in arithmetic. On the CPU with SGD (``optim.FUSED_STEP``):

- :class:`RollInput`: the image in units of ``x0`` to the model's input (the jitter's roll by
  whole pixels, the centre, the normalisation, the channel order and the layout) in one pass
  of ``pyanalyzer._core.roll_normalize``, whose backward pass is one gather; the same floats
  as torch's ops up to the grouping of the affine map;
- :func:`step`: the priors' closed-form gradients, torch's momentum SGD update and the clamp
  to the pixel box in one pass of ``pyanalyzer._core.inversion_step``, the momentum buffer
  kept where ``torch.optim.SGD`` keeps it.

csrc/include/pyanalyzer/invert.h has both contracts.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pyanalyzer import _backend

if TYPE_CHECKING:
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = ["RollInput", "step"]


class _RollNormalize(torch.autograd.Function):
    """``_core.roll_normalize`` with its backward pass; a gradient for ``u`` only."""

    @staticmethod
    def forward(
        ctx: Any,
        u: torch.Tensor,
        scale: np.ndarray,
        offset: np.ndarray,
        source: np.ndarray,
        shift: tuple[int, int],
        channels_last: bool,
    ) -> torch.Tensor:
        ctx.args = (scale, source, shift, channels_last)
        core = _backend.kernels("cpu")
        data = u.detach().contiguous().numpy()
        return torch.from_numpy(
            core.roll_normalize(data, scale, offset, source, shift[0], shift[1], channels_last)
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scale, source, shift, channels_last = ctx.args
        core = _backend.kernels("cpu")
        g = grad.contiguous().numpy()
        gu = core.roll_normalize_backward(g, scale, source, shift[0], shift[1], channels_last)
        return (torch.from_numpy(gu), *(None,) * 5)


class RollInput:
    """``u [N, C, H, W]`` (the image in units of ``x0``, float32 on the CPU) to the model's
    input: ``x = u * x0 + centre`` in 0-255 pixels, rolled by whole pixels as ``torch.roll``
    does, through ``spec``'s normalisation, channel order and layout; NCHW models get a
    channels-last tensor when ``channels_last`` (the loop's choice from 4 rows on).

    Args:
        spec: the model's preprocessing.
        centre: the mean image's colour, 0-255, ``[C]`` (RGB order, as ``u``).
        x0: the image norm ``u`` is in units of.
        channels_last: the layout of an NCHW model's input (NHWC models take NHWC).
    """

    def __init__(self, spec: PreprocessSpec, centre: np.ndarray, x0: float, channels_last: bool):
        scale, shift, self.source = spec.affine()
        # model channel k = scale[k] * rgb01[source[k]] + shift[k], rgb01 = (u x0 + centre) / 255
        self.scale = np.ascontiguousarray(scale * np.float32(x0 / 255.0), np.float32)
        centre01 = np.asarray(centre, np.float32)[self.source] / np.float32(255.0)
        self.offset = np.ascontiguousarray(scale * centre01 + shift, np.float32)
        self.nhwc = spec.layout == "nhwc"
        self.channels_last = channels_last or self.nhwc

    def __call__(self, u: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
        x = _RollNormalize.apply(u, self.scale, self.offset, self.source, shift, self.channels_last)
        return x.permute(0, 3, 1, 2) if self.channels_last and not self.nhwc else x


def step(u: torch.Tensor, opt: torch.optim.Optimizer, args: dict[str, Any]) -> None:
    """The priors, torch's momentum SGD update and the clamp in one compiled pass on ``u``
    (CPU, float32, contiguous), keeping the momentum buffer where ``torch.optim.SGD`` keeps
    it (``opt.state[u]["momentum_buffer"]``, absent after a reset), so that checkpoints and a
    resumed run see the same state either way."""
    state = opt.state[u]
    buffer = state.get("momentum_buffer")
    fresh = buffer is None
    if fresh:
        buffer = state["momentum_buffer"] = torch.empty_like(
            u, memory_format=torch.contiguous_format
        )
    grad = typing.cast(torch.Tensor, u.grad).contiguous()
    _backend.kernels("cpu").inversion_step(
        u.detach().numpy(), grad.numpy(), buffer.numpy(), lr=float(opt.param_groups[0]["lr"]),
        fresh=fresh, **args,
    )  # fmt: skip
