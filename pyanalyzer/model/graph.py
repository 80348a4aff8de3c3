"""Graph analysis: the image input, tensor shapes, and the layer catalogue."""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from pyanalyzer.errors import LayerNotFoundError, ModelError

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}

Dim = int | str | None  # a fixed size, a symbolic name, or unknown

MAX_ATTRIBUTE = 2**16
"""The largest kernel size, stride, dilation, padding or output padding a node may declare
(:func:`check_attributes`): real networks stay far below it, and a Conv padded by 100000 on
each side asks for terabytes."""

_SIZE_ATTRIBUTES = {"kernel_shape": 1, "strides": 1, "dilations": 1, "pads": 0}
"""Size attributes of convolutions and pools, with their smallest allowed value."""
_OPTIONAL_SIZES = {"output_padding": 0}


@dataclass(frozen=True)
class InputInfo:
    """The model's image input.

    Attributes:
        name: the ONNX input name.
        shape: the declared dims (ints, symbolic names or None).
        layout: ``"nchw"`` or ``"nhwc"``.
        channels: 1 or 3.
        height, width: fixed spatial size, or None when dynamic.
        batch: the fixed batch size, or None when dynamic.
        elem_type: ONNX element type (FLOAT, FLOAT16 or DOUBLE).
    """

    name: str
    shape: tuple[Dim, ...]
    layout: str
    channels: int
    height: int | None
    width: int | None
    batch: int | None
    elem_type: int

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {self.layout} {self.numpy_dtype.name}"


@dataclass(frozen=True)
class LayerInfo:
    """One entry of the layer catalogue.

    Attributes:
        name: the ONNX tensor name.
        alias: a short unique name (``conv1``, ``relu3``, ``maxpool2``...).
        op: the op type that produces it (``Conv``, ``Relu``...).
        node: the name of the producing node (may be empty in the file).
        shape: the tensor's dims for a batch of one at the chosen input size.
        layout: ``"nchw"``/``"nhwc"`` for spatial maps, ``""`` otherwise.
        channels, height, width: for spatial maps; ``channels`` is the last dim of other
            tensors (the class count of a logits vector) and height/width are None.
        is_output: a graph output.
        index: position in graph (topological) order.
    """

    name: str
    alias: str
    op: str
    node: str
    shape: tuple[int, ...]
    layout: str
    channels: int | None
    height: int | None
    width: int | None
    is_output: bool
    index: int

    @property
    def is_spatial(self) -> bool:
        return self.height is not None

    def to_nchw(self, t: Any) -> Any:
        """This layer's tensor (numpy array or torch tensor, batch first) as ``[N, C, H, W]``
        when it is a spatial map; any other tensor unchanged (:func:`to_nchw`)."""
        return to_nchw(t, self.layout)

    def from_nchw(self, t: Any) -> Any:
        """The inverse of :meth:`to_nchw`: an ``[N, C, H, W]`` map in this layer's layout."""
        return from_nchw(t, self.layout)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "op": self.op,
            "node": self.node,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "shape": list(self.shape),
            "layout": self.layout,
            "is_output": self.is_output,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], index: int = -1) -> LayerInfo:
        """The inverse of :meth:`to_dict` (``index``: its position in the catalogue)."""
        return cls(
            name=data["name"],
            alias=data["alias"],
            op=data["op"],
            node=data["node"],
            shape=tuple(int(d) for d in data["shape"]),
            layout=data["layout"],
            channels=data["channels"],
            height=data["height"],
            width=data["width"],
            is_output=bool(data["is_output"]),
            index=int(data.get("index", index)),
        )


def _permute(t: Any, order: tuple[int, int, int, int]) -> Any:
    return t.permute(*order) if hasattr(t, "permute") else np.transpose(t, order)


def to_nchw(t: Any, layout: str) -> Any:
    """A rank-4 tensor in ``layout`` (``"nchw"`` or ``"nhwc"``) as ``[N, C, H, W]``.

    The one place where layouts are converted: both engines hand methods NCHW maps, whatever
    layout the model computes in (tf2onnx exports compute in NHWC). Works on numpy arrays (a
    view) and torch tensors (a permuted view, autograd kept); other ranks and layouts (``""``
    for vectors) are returned unchanged.
    """
    if layout == "nhwc" and getattr(t, "ndim", 0) == 4:
        return _permute(t, (0, 3, 1, 2))
    return t


def from_nchw(t: Any, layout: str) -> Any:
    """The inverse of :func:`to_nchw`: an ``[N, C, H, W]`` map back in ``layout``."""
    if layout == "nhwc" and getattr(t, "ndim", 0) == 4:
        return _permute(t, (0, 2, 3, 1))
    return t


def _dims(vi: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (initializers that are also listed as inputs are excluded)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def find_image_input(model: onnx.ModelProto) -> InputInfo:
    """Find and describe the image input.

    The layout is read from the shape (the axis of size 1 or 3), and where the shape cannot
    tell (symbolic channels, or both axes of size 3) from the first consumer: a Transpose with
    perm ``[0, 3, 1, 2]`` (tf2onnx) means NHWC, a Conv's weights give NCHW channels.

    Raises:
        ModelError: no rank-4 float input with 1 or 3 channels, or several inputs.
    """
    inputs = graph_inputs(model)
    if not inputs:
        raise ModelError("the model has no inputs")

    def describe(vi: onnx.ValueInfoProto) -> str:
        d = _dims(vi)
        shape = "unknown shape" if d is None else "[" + ", ".join(str(x) for x in d) + "]"
        return f"{vi.name!r} {shape}"

    for vi in inputs:
        _check_declared_dims(vi)
    candidates = []
    for vi in inputs:
        dims = _dims(vi)
        if vi.type.tensor_type.elem_type not in _FLOAT_TYPES or dims is None or len(dims) != 4:
            continue
        layout, channels = _guess_layout(model, vi.name, dims)
        if layout is not None:
            candidates.append((vi, dims, layout, channels))
    if not candidates:
        listed = ", ".join(describe(v) for v in inputs)
        raise ModelError(
            "the model has no image-like input (a float tensor [N, C, H, W] or [N, H, W, C] "
            f"with 1 or 3 channels); its inputs: {listed}"
        )
    if len(inputs) > 1:
        others = ", ".join(describe(v) for v in inputs if v.name != candidates[0][0].name)
        raise ModelError(
            f"the model has inputs besides the image {candidates[0][0].name!r} ({others}); "
            "only single-input image models are supported"
        )
    vi, dims, layout, channels = candidates[0]
    h, w = (dims[2], dims[3]) if layout == "nchw" else (dims[1], dims[2])
    return InputInfo(
        name=vi.name,
        shape=dims,
        layout=layout,
        channels=channels,
        height=h if isinstance(h, int) and h > 0 else None,
        width=w if isinstance(w, int) and w > 0 else None,
        batch=dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None,
        elem_type=vi.type.tensor_type.elem_type,
    )


def _check_declared_dims(vi: onnx.ValueInfoProto) -> None:
    """Refuse an input that declares a size below 1: a dynamic size has a name or no value."""
    dims = _dims(vi)
    for axis, d in enumerate(dims or ()):
        if isinstance(d, int) and d < 1:
            shape = ", ".join("?" if x is None else str(x) for x in dims or ())
            raise ModelError(
                f"input {vi.name!r} declares size {d} for axis {axis} ([{shape}]); sizes must be "
                "positive (a dynamic size is a name or is left unset)"
            )


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return (
        f"node {node.name!r} ({node.op_type})" if node.name else f"node #{index} ({node.op_type})"
    )


def _all_nodes(graph: onnx.GraphProto) -> Iterable[tuple[int, onnx.NodeProto]]:
    """The nodes of ``graph`` and of the subgraphs of its If/Loop/Scan nodes."""
    for i, node in enumerate(graph.node):
        yield i, node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


def check_attributes(model: onnx.ModelProto) -> None:
    """Refuse nodes whose size attributes no network has: ``kernel_shape``, ``strides``,
    ``dilations`` below 1 or ``pads``, ``output_padding`` below 0 (old ``Pad`` nodes may crop:
    their pads may be negative), or any of them above :data:`MAX_ATTRIBUTE`.

    Raises:
        ModelError: one line naming the node, the attribute and the value.
    """
    for index, node in _all_nodes(model.graph):
        for a in node.attribute:
            lowest = _SIZE_ATTRIBUTES.get(a.name, _OPTIONAL_SIZES.get(a.name))
            if lowest is None or a.type != onnx.AttributeProto.INTS:
                continue
            if node.op_type == "Pad" and a.name == "pads":
                lowest = -MAX_ATTRIBUTE
            bad = next((int(v) for v in a.ints if not lowest <= v <= MAX_ATTRIBUTE), None)
            if bad is not None:
                raise ModelError(
                    f"{_node_label(node, index)} has {a.name} value {bad}, outside "
                    f"{lowest}..{MAX_ATTRIBUTE}: not a size a network can use"
                )


def activation_sizes(
    model: onnx.ModelProto, info: InputInfo, shapes: dict[str, tuple[Dim, ...]]
) -> list[tuple[str, int]]:
    """``(tensor, elements)`` of the image input and of every node output whose shape is known
    (for the batch of one of :func:`infer_shapes`), in graph order."""
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for name in [info.name] + [o for n in model.graph.node for o in n.output if o]:
        dims = shapes.get(name)
        if name in seen or dims is None or not all(isinstance(d, int) for d in dims):
            continue
        seen.add(name)
        out.append((name, math.prod(max(0, int(d)) for d in dims if isinstance(d, int))))
    return out


def _guess_layout(
    model: onnx.ModelProto, name: str, dims: tuple[Dim, ...]
) -> tuple[str | None, int]:
    c1, c3 = dims[1], dims[3]
    ok1, ok3 = c1 in (1, 3), c3 in (1, 3)
    # The consumers settle ambiguous cases and catch [N, H, W, C] images with H == 3.
    consumers = _consumers(model, name)
    for node in consumers:
        if node.op_type == "Transpose" and _perm(node) == [0, 3, 1, 2]:
            # a channel count that is not 1 or 3 (or not fixed) is not an image's
            return ("nhwc", int(c3)) if isinstance(c3, int) and ok3 else (None, 0)
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[0] == name:
            w = _initializer(model, node.input[1])
            if w is not None and w.ndim == 4:
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                c = int(w.shape[1] * group)
                return ("nchw", c) if c in (1, 3) else (None, 0)
    if isinstance(c1, int) and ok1:
        return "nchw", c1  # also when both could be channels: NCHW is ONNX's own layout
    if isinstance(c3, int) and ok3:
        return "nhwc", c3
    return None, 0


def with_input_shape(
    model: onnx.ModelProto, info: InputInfo, batch: int | str, h: int, w: int
) -> onnx.ModelProto:
    """A copy of ``model`` whose image input has the given batch and spatial dims."""
    m = copy.deepcopy(model)
    for vi in m.graph.input:
        if vi.name == info.name:
            dims = vi.type.tensor_type.shape.dim
            new = (
                [batch, info.channels, h, w]
                if info.layout == "nchw"
                else [batch, h, w, info.channels]
            )
            for d, v in zip(dims, new, strict=True):
                d.Clear()
                if isinstance(v, int):
                    d.dim_value = v
                else:
                    d.dim_param = v
    return m


def infer_shapes(
    model: onnx.ModelProto, info: InputInfo, h: int, w: int
) -> dict[str, tuple[Dim, ...]]:
    """Shapes of every tensor for a batch of one at ``h x w`` (onnx shape inference)."""
    m = with_input_shape(model, info, 1, h, w)
    del m.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # inference is best-effort; onnxruntime fills the gaps
        inferred = m
    shapes: dict[str, tuple[Dim, ...]] = {}
    for vi in (
        list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    ):
        d = _dims(vi)
        if d is not None:
            shapes[vi.name] = d
    return shapes


def tensor_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    m = copy.deepcopy(model)
    try:
        m = shape_inference.infer_shapes(m)
    except Exception:
        pass
    out = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        out[vi.name] = vi.type.tensor_type.elem_type
    return out


_ALIAS_PREFIX = {
    "Conv": "conv",
    "ConvTranspose": "deconv",
    "Relu": "relu",
    "LeakyRelu": "lrelu",
    "MaxPool": "maxpool",
    "AveragePool": "avgpool",
    "GlobalAveragePool": "gap",
    "GlobalMaxPool": "gmp",
    "BatchNormalization": "bn",
    "Concat": "concat",
    "Add": "add",
    "Gemm": "fc",
    "MatMul": "matmul",
    "Softmax": "softmax",
    "Transpose": "transpose",
    "LRN": "lrn",
}

# Ops whose rank-4 outputs are not feature maps worth listing.
_SKIP_OPS = {"Constant", "Shape", "ConstantOfShape", "Size", "Range"}


def _alias_prefix(op: str) -> str:
    if op in _ALIAS_PREFIX:
        return _ALIAS_PREFIX[op]
    return re.sub(r"[^a-z0-9]", "", op.lower()) or "op"


def propagate_layouts(model: onnx.ModelProto, info: InputInfo) -> dict[str, str]:
    """Layout of each rank-4 tensor: ONNX ops compute in NCHW; transposes and elementwise
    ops carry the layout of their input."""
    layouts = {info.name: info.layout}
    nchw_ops = {
        "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
        "BatchNormalization", "LRN", "InstanceNormalization", "LpPool", "Resize", "Upsample",
        "DepthToSpace", "SpaceToDepth",
    }  # fmt: skip
    for node in model.graph.node:
        src = next((layouts[i] for i in node.input if i in layouts), None)
        if node.op_type in nchw_ops:
            lay = "nchw"
        elif node.op_type == "Transpose":
            perm = _perm(node)
            if perm == [0, 3, 1, 2]:
                lay = "nchw"
            elif perm == [0, 2, 3, 1]:
                lay = "nhwc"
            else:
                lay = None
        else:
            lay = src or "nchw"
        if lay is not None:
            for o in node.output:
                layouts[o] = lay
    return layouts


def build_catalogue(
    model: onnx.ModelProto, info: InputInfo, shapes: dict[str, tuple[Dim, ...]]
) -> list[LayerInfo]:
    """Every float rank-4 node output (a spatial map) and every graph output, in graph order."""
    outputs = [o.name for o in model.graph.output]
    layouts = propagate_layouts(model, info)
    elem = tensor_elem_types(model)
    counters: dict[str, int] = {}
    taken = {t for n in model.graph.node for t in n.output} | {info.name}
    layers: list[LayerInfo] = []
    for node in model.graph.node:
        if node.op_type in _SKIP_OPS:
            continue
        for out in node.output:
            if not out:
                continue
            dims = shapes.get(out)
            is_out = out in outputs
            if dims is None or any(not isinstance(d, int) for d in dims):
                continue
            dims = tuple(int(d) for d in dims if isinstance(d, int))  # all fixed sizes here
            if elem.get(out, TensorProto.FLOAT) not in _FLOAT_TYPES:
                continue
            spatial = len(dims) == 4 and min(dims[1:]) > 0
            if not (spatial or is_out):
                continue
            prefix = _alias_prefix(node.op_type)
            while True:
                counters[prefix] = counters.get(prefix, 0) + 1
                alias = f"{prefix}{counters[prefix]}"
                if alias not in taken:
                    break
            taken.add(alias)
            lay = layouts.get(out, "nchw") if spatial else ""
            h: int | None
            w: int | None
            if spatial:
                c, h, w = (
                    (dims[1], dims[2], dims[3]) if lay == "nchw" else (dims[3], dims[1], dims[2])
                )
            else:
                c, h, w = (dims[-1] if dims else 1), None, None
            layers.append(
                LayerInfo(
                    name=out,
                    alias=alias,
                    op=node.op_type,
                    node=node.name,
                    shape=tuple(int(d) for d in dims),
                    layout=lay,
                    channels=int(c),
                    height=h,
                    width=w,
                    is_output=is_out,
                    index=len(layers),
                )  # fmt: skip
            )
    return layers


def same_pads(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> tuple[int, int]:
    """``(begin, end)`` padding of ONNX's SAME_UPPER / SAME_LOWER along one axis.

    The output size is ``ceil(size / stride)``; the odd pixel of padding goes to the end for
    SAME_UPPER and to the beginning for SAME_LOWER.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def resolve_layer(layers: Iterable[LayerInfo], name: str) -> LayerInfo:
    """Find a layer by ONNX tensor name (first) or alias.

    Raises:
        LayerNotFoundError: with the closest names as suggestions.
    """
    layers = list(layers)
    for layer in layers:
        if layer.name == name:
            return layer
    for layer in layers:
        if layer.alias == name:
            return layer
    pool = [x.alias for x in layers] + [x.name for x in layers]
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise LayerNotFoundError(
        f"no layer named {name!r} in the model{hint} (`pyanalyzer info MODEL` lists them)"
    )
