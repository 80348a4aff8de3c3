"""The render loop's transforms and the model's normalisation as one compiled pass on the CPU.

Every step of activation maximization resamples its batch once (:class:`.transforms.Compose`
fuses lucid's pad, jitter, scale, rotate and the crop back into one matrix per image) and then
maps it into the model's input range and layout. In torch that is an affine grid, a grid
sample, a normalisation and a copy to channels-last, and the backward pass of each: about 6 of
the 15 ms of the method's own work per step of 64 images of 64 px on two CPU cores.
``pyanalyzer._core.warp_normalize`` does the resampling and the normalisation in one pass over
the output, and its backward pass in one scatter (csrc/include/pyanalyzer/warp.h has the
contract); the values equal the torch path's to float rounding.

:func:`fused_input` decides where it applies: the CPU, a composition that is one resampling,
and images at the model's input size (another size needs a resize in between). Elsewhere the
render loop keeps the torch ops; :data:`ENABLED` set to False keeps them everywhere (the
benchmark times both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pyanalyzer import _backend
from pyanalyzer.methods.actmax.transforms import Compose, Generators

if TYPE_CHECKING:
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = ["ENABLED", "FusedInput", "fused_input"]

ENABLED = True
"""Whether :func:`fused_input` may choose the compiled pass (False: the torch ops always)."""


class _WarpNormalize(torch.autograd.Function):
    """``_core.warp_normalize`` with its backward pass; a gradient for ``x`` only."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        theta: np.ndarray,
        scale: np.ndarray,
        shift: np.ndarray,
        source: np.ndarray,
        fill: float,
        out: tuple[int, int],
    ) -> torch.Tensor:
        core = _backend.kernels("cpu")
        data = x.detach().contiguous().numpy()
        ctx.args = (theta, scale, source, int(x.shape[-2]), int(x.shape[-1]))
        return torch.from_numpy(
            core.warp_normalize(data, theta, scale, shift, source, fill, out[0], out[1])
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        theta, scale, source, h, w = ctx.args
        core = _backend.kernels("cpu")
        g = grad.contiguous().numpy()
        return (
            torch.from_numpy(core.warp_normalize_backward(g, theta, scale, source, h, w)),
            *(None,) * 6,
        )


class FusedInput:
    """RGB 0..1 images ``[N, C, H, W]`` (float32, on the CPU) to the model's input: the
    transforms of ``pipeline`` (one resampling, :meth:`.Compose.as_resampling`), then
    ``spec``'s normalisation, channel order and layout (NCHW as a channels-last tensor, which
    the render loop's network takes; NHWC as it is).

    Args:
        pipeline: the render loop's transforms, ending with the crop back to the image size.
        spec: the model's preprocessing.
    """

    def __init__(self, pipeline: Compose, spec: PreprocessSpec):
        self.pipeline = pipeline
        self.nhwc = spec.layout == "nhwc"
        self.scale, self.shift, self.source = spec.affine()

    def __call__(self, images: torch.Tensor, generator: Generators) -> torch.Tensor:
        n, _, h, w = images.shape
        matrix, out, fill = self.pipeline.resampling(n, (int(h), int(w)), generator)
        theta = np.ascontiguousarray(matrix[:, :2])
        x = _WarpNormalize.apply(
            images, theta, self.scale, self.shift, self.source, float(fill), out
        )
        return x if self.nhwc else x.permute(0, 3, 1, 2)


def fused_input(
    pipeline: Compose,
    spec: PreprocessSpec,
    size: tuple[int, int],
    device: torch.device,
) -> FusedInput | None:
    """The compiled pass for the render loop's ``pipeline`` on images of ``size``, or None
    where the loop keeps the torch ops: another device than the CPU, a composition that is not
    one resampling, or a ``size`` whose crop is not the model's input size (a resize follows)."""
    if not ENABLED or device.type != "cpu" or pipeline.as_resampling() is None:
        return None
    # the output size does not depend on the draws
    _, out, _ = pipeline.resampling(1, size, torch.Generator())
    if tuple(out) != tuple(spec.input_size):
        return None
    return FusedInput(pipeline, spec)
