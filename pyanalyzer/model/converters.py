"""Converters that onnx2torch lacks for ops found in real model zoos.

Registered once, on import, into onnx2torch's converter registry:

* ``auto_pad = SAME_UPPER / SAME_LOWER`` on Conv, MaxPool and AveragePool (tf2onnx and Keras
  exports): onnx2torch raises ``NotImplementedError``. The padding of SAME depends on the input
  size when the stride is above one, so it is computed at run time by :class:`SamePad`.
* Slice with ``starts/ends/axes`` attributes (opset < 10): onnx2torch registers it under
  version 9, which its own lookup (by the schema's ``since_version``, 1) never finds.
* Newer opset versions of ops whose semantics did not change for the attributes in use
  (``Conv-22``, ``Flatten-21``...), mapped to onnx2torch's converter of the previous version,
  with a guard that refuses attributes the older converter would silently ignore.
* Ops onnx2torch lacks: ``Gelu`` (opset 20, exact or tanh), ``Mish`` (opset 18) and
  ``ReduceMean-18`` (axes given as a constant input).
* ``Clip`` (opset 11-13) with a bound left out (an empty input name, as ``torch.clamp(x,
  max=c)`` exports): onnx2torch takes the empty name for a dynamic bound and gives up.
* ``PRelu``: onnx2torch applies a one-dimensional slope along axis 1 whenever its length equals
  that axis, but ONNX broadcasts it along the last axis (numpy's rule): an NHWC map whose
  height equals its channels got the wrong slope. Ours broadcasts as ONNX does.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import torch
import torch.nn.functional as F
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from pyanalyzer.model.graph import same_pads

_REGISTERED = False


class SamePad(nn.Module, OnnxToTorchModule):
    """Pad the input as SAME auto_pad asks, then run the wrapped op with no padding.

    Args:
        inner: the op converted with ``auto_pad=NOTSET`` and zero pads.
        kernel, strides, dilations: per spatial axis.
        lower: SAME_LOWER (else SAME_UPPER).
        value: the padding value (``-inf`` for max-pooling, 0 otherwise).
    """

    def __init__(
        self,
        inner: nn.Module,
        kernel: list[int],
        strides: list[int],
        dilations: list[int],
        lower: bool,
        value: float = 0.0,
    ):
        super().__init__()
        self.inner = inner
        self.kernel, self.strides, self.dilations = list(kernel), list(strides), list(dilations)
        self.lower, self.value = lower, value

    def pads(self, spatial: tuple[int, ...]) -> list[int]:
        """F.pad's argument: last axis first, (begin, end) per axis."""
        out: list[int] = []
        for i in reversed(range(len(spatial))):
            out.extend(
                same_pads(
                    spatial[i], self.kernel[i], self.strides[i], self.dilations[i], self.lower
                )
            )
        return out

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pads(tuple(x.shape[2:])), value=self.value)
        return self.inner(x, *args)


class SameAvgPool(SamePad):
    """AveragePool with SAME auto_pad; with ``count_include_pad=0`` (the default) padded
    cells are left out of each window's count, as onnxruntime does."""

    def __init__(self, kernel, strides, lower: bool, count_include_pad: bool):
        super().__init__(nn.Identity(), kernel, strides, [1] * len(kernel), lower)
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        pads = self.pads(tuple(x.shape[2:]))
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[x.dim() - 2]
        summed = pool(F.pad(x, pads), self.kernel, self.strides)
        if self.count_include_pad:
            return summed
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        frac = pool(F.pad(ones, pads), self.kernel, self.strides)
        return summed / frac


def _attrs(node: OnnxNode) -> dict:
    return dict(node.attributes)


def _without_auto_pad(node: OnnxNode) -> OnnxNode:
    proto = onnx.NodeProto()
    proto.CopyFrom(node.proto)
    keep = [a for a in proto.attribute if a.name not in ("auto_pad", "pads")]
    del proto.attribute[:]
    proto.attribute.extend(keep)
    return OnnxNode(proto, unique_name=node.unique_name)


def _same_pad_wrapper(base: Callable, op: str) -> Callable:
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        attrs = _attrs(node)
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            return base(node, graph)
        lower = auto_pad == "SAME_LOWER"
        if op == "Conv":
            kernel = attrs.get("kernel_shape")
            if kernel is None:
                kernel = list(graph.initializers[node.input_values[1]].to_torch().shape[2:])
        else:
            kernel = attrs["kernel_shape"]
        rank = len(kernel)
        strides = attrs.get("strides", [1] * rank)
        dilations = attrs.get("dilations", [1] * rank)
        if op == "AveragePool":
            if attrs.get("ceil_mode", 0) or any(d != 1 for d in dilations):
                raise NotImplementedError("AveragePool with SAME padding and ceil_mode/dilations")
            module: nn.Module = SameAvgPool(
                kernel, strides, lower, bool(attrs.get("count_include_pad", 0))
            )
            return OperationConverterResult(
                torch_module=module, onnx_mapping=onnx_mapping_from_node(node)
            )
        inner = base(_without_auto_pad(node), graph)
        value = float("-inf") if op == "MaxPool" else 0.0
        return OperationConverterResult(
            torch_module=SamePad(inner.torch_module, kernel, strides, dilations, lower, value),
            onnx_mapping=inner.onnx_mapping,
        )

    return convert


class SliceAttr(nn.Module, OnnxToTorchModule):
    """Slice-1 (opset < 10): ``starts``, ``ends`` and ``axes`` are attributes, step 1.

    Python's slicing clamps out-of-range bounds and counts negative ones from the end, which
    is exactly ONNX's rule.
    """

    def __init__(self, starts: list[int], ends: list[int], axes: list[int] | None):
        super().__init__()
        self.starts, self.ends = list(starts), list(ends)
        self.axes = list(axes) if axes is not None else list(range(len(starts)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index: list[slice] = [slice(None)] * x.dim()
        for start, end, axis in zip(self.starts, self.ends, self.axes, strict=True):
            index[axis % x.dim()] = slice(start, end)
        return x[tuple(index)]


def _slice_v1(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = _attrs(node)
    module = SliceAttr(attrs["starts"], attrs["ends"], attrs.get("axes"))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _guarded_alias(base: Callable, forbidden: tuple[str, ...], what: str) -> Callable:
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        attrs = _attrs(node)
        bad = [a for a in forbidden if a in attrs]
        if bad:
            raise NotImplementedError(f"{what} with attribute(s) {', '.join(bad)}")
        return base(node, graph)

    return convert


# (op, newer version) -> (onnx2torch's version to reuse, attributes that version cannot honour)
_VERSION_ALIASES: dict[tuple[str, int], tuple[int, tuple[str, ...]]] = {
    ("Conv", 22): (11, ()),
    ("MaxPool", 1): (8, ()),
    ("MaxPool", 22): (12, ()),
    ("AveragePool", 1): (7, ()),
    ("AveragePool", 19): (11, ("dilations",)),
    ("AveragePool", 22): (11, ("dilations",)),
    ("GlobalAveragePool", 22): (1, ()),
    ("BatchNormalization", 7): (9, ()),
    ("Gemm", 7): (9, ()),
    ("Dropout", 7): (10, ()),
    ("Dropout", 22): (13, ()),
    ("Flatten", 21): (13, ()),
    ("Flatten", 23): (13, ()),
    ("Flatten", 24): (13, ()),
    ("Flatten", 25): (13, ()),
    ("Reshape", 19): (14, ()),
    ("Reshape", 21): (14, ()),
    ("Reshape", 23): (14, ()),
    ("Transpose", 21): (13, ()),
    ("Transpose", 23): (13, ()),
    ("Identity", 19): (16, ()),
    ("Identity", 21): (16, ()),
    ("Identity", 23): (16, ()),
    ("Constant", 19): (13, ()),
    ("Constant", 21): (13, ()),
    ("Constant", 23): (13, ()),
    ("Squeeze", 23): (21, ()),
    ("Unsqueeze", 21): (13, ()),
    ("Unsqueeze", 23): (13, ()),
    ("Split", 18): (13, ("num_outputs",)),
}


class PRelu(nn.Module, OnnxToTorchModule):
    """ONNX ``PRelu``: ``x`` where ``x > 0``, else ``slope * x``, the slope broadcast as numpy
    does (aligned on the last axes). The slope stays the module's second input. At 0 the
    gradient is the slope, as torch's own ``prelu`` (and ``relu``, 0 there) have it."""

    def forward(self, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, x * slope)


def _prelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return OperationConverterResult(torch_module=PRelu(), onnx_mapping=onnx_mapping_from_node(node))


def _gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    approximate = _attrs(node).get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu with approximate={approximate!r}")
    return OperationConverterResult(
        torch_module=nn.GELU(approximate=approximate), onnx_mapping=onnx_mapping_from_node(node)
    )


def _mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return OperationConverterResult(
        torch_module=nn.Mish(), onnx_mapping=onnx_mapping_from_node(node)
    )


def _const(name: str, graph: OnnxGraph) -> torch.Tensor | None:
    """The constant behind an optional input (None for an absent one, an empty name).

    Raises:
        NotImplementedError: the input is computed by the graph (not a constant).
    """
    from onnx2torch.utils.common import get_const_value

    if not name:
        return None
    try:
        return torch.as_tensor(get_const_value(name, graph))
    except KeyError:
        raise NotImplementedError(f"input {name!r} is not a constant") from None


class ReduceMean(nn.Module, OnnxToTorchModule):
    """``ReduceMean-18``: the mean over constant ``axes`` (all of them when None)."""

    def __init__(self, axes: list[int] | None, keepdims: bool):
        super().__init__()
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axes is None:
            dims = list(range(x.dim()))
        else:
            dims = [a % x.dim() for a in self.axes]
        return torch.mean(x, dim=dims, keepdim=self.keepdims)


def _reduce_mean_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    from onnx2torch.utils.common import OnnxMapping

    attrs = _attrs(node)
    axes = _const(node.input_values[1], graph) if len(node.input_values) > 1 else None
    if axes is None or axes.numel() == 0:
        if attrs.get("noop_with_empty_axes", 0):
            return OperationConverterResult(
                torch_module=nn.Identity(),
                onnx_mapping=OnnxMapping(
                    inputs=(node.input_values[0],), outputs=node.output_values
                ),
            )
        dims = None
    else:
        dims = [int(a) for a in axes.reshape(-1).tolist()]
    module = ReduceMean(dims, bool(attrs.get("keepdims", 1)))
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


def _clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """``Clip-11..13`` whose bounds are constants or absent (an empty input name)."""
    from onnx2torch.node_converters.clip import _create_torch_module
    from onnx2torch.utils.common import OnnxMapping

    names = list(node.input_values) + ["", ""]
    low, high = (_const(names[i], graph) for i in (1, 2))
    module = _create_torch_module(
        min_val=None if low is None else float(low), max_val=None if high is None else float(high)
    )
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


_OWN: dict[tuple[str, int], Callable[[OnnxNode, OnnxGraph], OperationConverterResult]] = {
    ("PRelu", 7): _prelu,
    ("PRelu", 9): _prelu,
    ("PRelu", 16): _prelu,
    ("Gelu", 20): _gelu,
    ("Mish", 18): _mish,
    ("ReduceMean", 18): _reduce_mean_18,
    ("Clip", 11): _clip,
    ("Clip", 12): _clip,
    ("Clip", 13): _clip,
}
"""Converters of ours that replace onnx2torch's (or fill its gaps)."""


def _desc(op: str, version: int) -> OperationDescription:
    return OperationDescription(domain="", operation_type=op, version=version)


def register() -> None:
    """Install pyanalyzer's converters into onnx2torch's registry (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    for (op, version), (base_version, forbidden) in _VERSION_ALIASES.items():
        target = _desc(op, version)
        base = _CONVERTER_REGISTRY.get(_desc(op, base_version))
        if base is not None and target not in _CONVERTER_REGISTRY:
            _CONVERTER_REGISTRY[target] = _guarded_alias(base, forbidden, f"{op}-{version}")
    _CONVERTER_REGISTRY[_desc("Slice", 1)] = _slice_v1  # onnx2torch files it under 9
    for (op, version), convert in _OWN.items():
        _CONVERTER_REGISTRY[_desc(op, version)] = convert
    for op in ("Conv", "MaxPool", "AveragePool"):
        for desc in [d for d in _CONVERTER_REGISTRY if d.operation_type == op and d.domain == ""]:
            _CONVERTER_REGISTRY[desc] = _same_pad_wrapper(_CONVERTER_REGISTRY[desc], op)
    _REGISTERED = True
