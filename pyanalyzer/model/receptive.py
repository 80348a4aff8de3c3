"""Receptive fields: which input pixels each position of a feature map can see.

Computed from the ONNX graph alone, by walking its nodes in order from the image input and
composing each op's geometry (kernel, stride, padding, dilation), as DeconvNet's top-k patches
need (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014,
Fig. 2: each patch is the image region the unit's receptive field covers).

Convention (corner-based). A field is three pairs ``(rows, cols)`` in input pixels:

- ``start``: the first input pixel covered by output position 0 (negative inside padding);
- ``jump``: how far the field moves in the input when the output position moves by one;
- ``size``: how many input pixels one output position covers.

Output position ``(y, x)`` covers input rows ``start_h + y * jump_h`` to
``start_h + y * jump_h + size_h - 1`` (and the same for columns). The field may extend
outside the image; :func:`crop_box` clamps it. The input itself is ``size 1, jump 1, start 0``.

A window op (Conv, MaxPool, AveragePool, LpPool) with kernel ``k``, stride ``s``, dilation
``d`` and begin padding ``p`` maps an input field ``(r, j, start)`` to::

    r_out     = r + (k - 1) * d * j
    j_out     = j * s
    start_out = start - p * j

(the centre-based variant writes ``centre_out = centre + ((k - 1) * d / 2 - p) * j`` with
``centre = start + (r - 1) / 2``; both describe the same pixels). ``auto_pad`` SAME pads are
worked out from the layer's input size (``total = max(0, (ceil(n / s) - 1) * s + (k - 1) * d
+ 1 - n)``, SAME_UPPER puts ``total // 2`` before, SAME_LOWER the rest); ``ceil_mode`` only
adds output positions, so it does not change the formulas.

Other rules:

- Global pools, spatial reductions and normalisations over the spatial axes
  (InstanceNormalization, GroupNormalization...): every position sees the whole input along
  that axis (``r_out = r + (n - 1) * j``, ``j_out = 0``).
- Elementwise ops (Relu, BatchNormalization, Clip, Sigmoid, Dropout, Identity, LRN... and the
  n-ary Add, Mul, Sum, Max...), Concat and Split along a non-spatial axis: the union of the
  inputs' fields (a broadcast input of spatial size 1 has jump 0). Equal jumps give the exact
  union; different jumps a covering affine bound (the chords of the lower and upper envelopes).
- Transpose, Reshape, Squeeze, Unsqueeze, Flatten: the field follows the spatial axes where the
  op keeps them whole (NHWC <-> NCHW, channel shuffles).
- Pad: ``start_out = start - p_begin * j`` (reflect/edge modes: border positions are
  approximate). Slice on a spatial axis: ``start_out = start + first * j``, ``j_out = j * step``.
- Resize, Upsample (and DepthToSpace): ``j_out = j / f`` for a scale ``f``, fractional where
  it must be; the input coordinate of each output position follows the op's
  ``coordinate_transformation_mode``, and the field covers the input pixels its interpolation
  mode can read (nearest: one, linear: two, cubic: four), so that it is a covering bound.

Each field also carries an ``extent``: the input pixels that reach the map at all (the
image, narrower after a Slice). :func:`crop_box` clamps to it, which makes the box exactly the
bounding box of the pixels a position depends on wherever no dilation leaves holes: the
padding a window reads, at the image border or next to a cut, brings no pixels.

Any other op on the path from the image (ConvTranspose included) leaves its outputs and every
tensor computed from them without a field; :func:`receptive_field` then raises naming the op.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from pyanalyzer.errors import UserInputError
from pyanalyzer.model import graph as _graph

if TYPE_CHECKING:
    from pyanalyzer.model.model import Model

__all__ = ["ReceptiveField", "crop_box", "receptive_field", "receptive_fields"]

Pair = tuple[float, float]


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of a feature map, in input pixels (see the module's convention).

    Attributes:
        size: ``(rows, cols)`` covered by one output position.
        jump: ``(rows, cols)`` the field moves per output position (0 after a global op).
        start: ``(row, col)`` of the first pixel covered by output position ``(0, 0)``.
        extent: ``((top, bottom), (left, right))``, bottom and right exclusive: the input
            pixels that reach the map at all. It is the image unless a Slice (or a cropping
            Pad) cut the map on the way; :func:`crop_box` clamps to it, so that a position
            next to a cut does not claim the pixels the cut removed (its padding reads none).
            None: the whole input.
    """

    size: Pair
    jump: Pair
    start: Pair
    extent: tuple[Pair, Pair] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (:meth:`from_dict` inverts it)."""
        return {
            "size": list(self.size),
            "jump": list(self.jump),
            "start": list(self.start),
            "extent": None if self.extent is None else [list(e) for e in self.extent],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReceptiveField:
        """The inverse of :meth:`to_dict`."""

        def pair(v: Any) -> Pair:
            return (v[0], v[1])

        ext = data.get("extent")
        return cls(
            size=pair(data["size"]),
            jump=pair(data["jump"]),
            start=pair(data["start"]),
            extent=None if ext is None else (pair(ext[0]), pair(ext[1])),
        )

    def span(self, y: int, x: int) -> tuple[float, float, float, float]:
        """Unclamped ``(top, left, bottom, right)`` of position ``(y, x)``, bottom/right
        exclusive, as floats."""
        top = self.start[0] + y * self.jump[0]
        left = self.start[1] + x * self.jump[1]
        return top, left, top + self.size[0], left + self.size[1]


def crop_box(
    rf: ReceptiveField, y: int, x: int, image_h: int, image_w: int
) -> tuple[int, int, int, int]:
    """The pixels of an ``image_h x image_w`` input that position ``(y, x)`` sees.

    Fractional bounds (after a Resize) are widened to whole pixels, then clamped to the image
    and to the field's :attr:`~ReceptiveField.extent`; a field wholly outside them (a position
    inside padding) keeps the nearest row or column: the box is never empty.

    Returns:
        ``(top, left, bottom, right)``, bottom and right exclusive: ``image[top:bottom,
        left:right]`` is the patch.
    """
    t, lf, b, r = rf.span(y, x)
    ext = rf.extent or ((0.0, float(image_h)), (0.0, float(image_w)))

    def bounds(v0: float, v1: float, e: Pair, n: int) -> tuple[int, int]:
        lo_bound = max(0, math.floor(round(e[0], 6)) if math.isfinite(e[0]) else 0)
        hi_bound = min(n, math.ceil(round(e[1], 6)) if math.isfinite(e[1]) else n)
        if hi_bound <= lo_bound:  # an extent outside the image: fall back to the image
            lo_bound, hi_bound = 0, n
        a = min(max(math.floor(round(v0, 6)), lo_bound), hi_bound - 1)
        return a, max(min(math.ceil(round(v1, 6)), hi_bound), a + 1)

    top, bottom = bounds(t, b, ext[0], image_h)
    left, right = bounds(lf, r, ext[1], image_w)
    return top, left, bottom, right


# --------------------------------------------------------------------------- graph walk


@dataclass(frozen=True)
class _Field:
    """A tracked tensor: its field and which of its axes index image rows and columns."""

    size: Pair
    jump: Pair
    start: Pair
    axes: tuple[int, int]
    rank: int
    extent: tuple[Pair, Pair] = ((-math.inf, math.inf), (-math.inf, math.inf))

    def with_dim(self, d: int, size: float, jump: float, start: float) -> _Field:
        s, j, st = list(self.size), list(self.jump), list(self.start)
        s[d], j[d], st[d] = float(size), float(jump), float(start)
        return replace(self, size=(s[0], s[1]), jump=(j[0], j[1]), start=(st[0], st[1]))


class _Unsupported(Exception):
    """Raised inside a rule: the op's outputs get no field, for this reason."""


_WINDOW_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool"}
_GLOBAL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCE_OPS = {
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
}  # fmt: skip
_ELEMENTWISE_OPS = {
    # unary
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Mish", "Tanh", "Softplus", "Softsign", "ThresholdedRelu", "Shrink", "Clip", "Dropout",
    "Identity", "BatchNormalization", "LRN", "Cast", "CastLike", "Neg", "Abs", "Exp", "Log",
    "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Erf", "Not", "Sin", "Cos",
    "IsNaN", "IsInf", "QuantizeLinear", "DequantizeLinear",
    # n-ary, broadcasting
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "And",
    "Or", "Xor", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Mod", "Expand",
}  # fmt: skip
_RESHAPE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_DATA_FREE_OPS = {"Shape", "Size"}  # read the input's shape, never its pixels


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Walker:
    def __init__(self, model: Model):
        self.model = model
        proto = model.proto
        self.opset = model.opset
        self.inits = {t.name: t for t in proto.graph.initializer}
        self.constants: dict[str, np.ndarray] = {}
        for node in proto.graph.node:
            if node.op_type == "Constant" and node.output:
                a = _attrs(node)
                if "value" in a:
                    self.constants[node.output[0]] = numpy_helper.to_array(a["value"])
                elif "value_ints" in a:
                    self.constants[node.output[0]] = np.asarray(a["value_ints"], np.int64)
                elif "value_int" in a:
                    self.constants[node.output[0]] = np.asarray(a["value_int"], np.int64)
                elif "value_floats" in a:
                    self.constants[node.output[0]] = np.asarray(a["value_floats"], np.float32)
                elif "value_float" in a:
                    self.constants[node.output[0]] = np.asarray(a["value_float"], np.float32)
        h, w = model.preprocessing.input_size
        self.shapes: dict[str, tuple] = dict(_graph.infer_shapes(proto, model.input, h, w))
        for layer in model.layers:
            self.shapes[layer.name] = tuple(layer.shape)
        info = model.input
        c = info.channels
        self.shapes[info.name] = (1, c, h, w) if info.layout == "nchw" else (1, h, w, c)

    # ---- helpers -------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...] | None:
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) or d < 0 for d in s):
            return None
        return tuple(int(d) for d in s)

    def dim(self, name: str, axis: int, op: str) -> int:
        s = self.shape(name)
        if s is None or axis >= len(s):
            raise _Unsupported(f"{op}: the size of {name!r} is unknown")
        return s[axis]

    def const(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return self.constants.get(name)

    # ---- the walk ------------------------------------------------------------------------
    def walk(self) -> dict[str, _Field | str]:
        info = self.model.input
        axes = (2, 3) if info.layout == "nchw" else (1, 2)
        h, w = self.model.preprocessing.input_size
        state: dict[str, _Field | str] = {
            info.name: _Field((1.0, 1.0), (1.0, 1.0), (0.0, 0.0), axes, 4, ((0.0, h), (0.0, w)))
        }
        for node in self.model.proto.graph.node:
            tracked = [(i, state[i]) for i in node.input if i and i in state]
            if not tracked or node.op_type in _DATA_FREE_OPS:
                continue
            bad = next((f for _, f in tracked if isinstance(f, str)), None)
            if bad is None:
                fields = [(name, f) for name, f in tracked if isinstance(f, _Field)]
                result: _Field | str
                try:
                    result = self.bound(node, self.apply(node, fields), [f for _, f in fields])
                except _Unsupported as exc:
                    where = f" (node {node.name!r})" if node.name else ""
                    result = f"{exc}{where}"
            else:
                result = bad
            for out in node.output:
                if out:
                    state[out] = result
        return state

    def bound(self, node: onnx.NodeProto, f: _Field, inputs: list[_Field]) -> _Field:
        """The output's extent: the inputs' (their union) cut to what its positions cover.

        The pixels that reach position y are those of its field that reach the input at all
        (the padding a window reads carries none), so for windows without dilation holes the
        field cut to the extent is exactly the bounding box of its support.
        """
        out = self.shape(node.output[0])
        ext = []
        for d in (0, 1):
            lo = min(g.extent[d][0] for g in inputs)
            hi = max(g.extent[d][1] for g in inputs)
            if out is not None and f.axes[d] < len(out) and out[f.axes[d]] > 0:
                n = out[f.axes[d]]
                lo = max(lo, f.start[d])
                hi = min(hi, f.start[d] + (n - 1) * f.jump[d] + f.size[d])
            ext.append((lo, hi))
        return replace(f, extent=(ext[0], ext[1]))

    def apply(self, node: onnx.NodeProto, tracked: list[tuple[str, _Field]]) -> _Field:
        op = node.op_type
        if op in _WINDOW_OPS:
            if node.input[0] != tracked[0][0] or len(tracked) > 1:
                raise _Unsupported(f"{op} whose weights depend on the image is not supported")
            return self.window(node, tracked[0][1])
        if op in _GLOBAL_OPS:
            f = self.nchw(node, tracked[0][1])
            return self.whole(f, node.input[0], f.axes, op)
        if op in _ELEMENTWISE_OPS:
            return self.union(node, tracked)
        if op == "Concat" or op == "Split":
            return self.concat_split(node, tracked)
        if op in _REDUCE_OPS:
            return self.reduce(node, tracked[0][1])
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            return self.softmax(node, tracked[0][1])
        if op in ("InstanceNormalization", "GroupNormalization"):
            f = self.nchw(node, tracked[0][1])
            return self.whole(f, node.input[0], f.axes, op)
        if op in ("LayerNormalization", "MeanVarianceNormalization"):
            return self.normalize(node, tracked[0][1])
        if op == "Transpose":
            return self.transpose(node, tracked[0][1])
        if op in _RESHAPE_OPS:
            return self.reshape(node, tracked)
        if op == "Pad":
            return self.pad(node, tracked)
        if op == "Slice":
            return self.slice(node, tracked)
        if op in ("Resize", "Upsample"):
            return self.resize(node, tracked)
        if op == "DepthToSpace":
            return self.depth_to_space(node, tracked[0][1])
        if op == "SpaceToDepth":
            f = self.nchw(node, tracked[0][1])
            b = int(_attrs(node)["blocksize"])
            for d in (0, 1):
                r, j, s = f.size[d], f.jump[d], f.start[d]
                f = f.with_dim(d, r + (b - 1) * j, j * b, s)
            return f
        if op == "ConvTranspose":
            raise _Unsupported("ConvTranspose is not supported for receptive fields")
        raise _Unsupported(f"op {op!r} is not supported for receptive fields")

    # ---- rules ---------------------------------------------------------------------------
    def nchw(self, node: onnx.NodeProto, f: _Field) -> _Field:
        if f.rank != 4 or sorted(f.axes) != [2, 3]:
            raise _Unsupported(
                f"{node.op_type} on a tensor whose spatial axes are not 2 and 3 "
                "(it computes in NCHW)"
            )
        return f

    def window(self, node: onnx.NodeProto, f: _Field) -> _Field:
        op = node.op_type
        f = self.nchw(node, f)
        a = _attrs(node)
        kernel = a.get("kernel_shape")
        if kernel is None and op == "Conv":  # optional: the weights' shape tells
            init = self.inits.get(node.input[1])
            w = tuple(init.dims) if init is not None else self.shape(node.input[1])
            kernel = list(w[2:]) if w is not None else None
        if kernel is None or len(kernel) != 2:
            raise _Unsupported(f"{op}: a 2-D kernel_shape is needed")
        strides = list(a.get("strides") or [1, 1])
        dilations = list(a.get("dilations") or [1, 1])
        pads = list(a.get("pads") or [0, 0, 0, 0])
        auto_pad = _text(a.get("auto_pad", "NOTSET"))
        for i, axis in enumerate((2, 3)):
            k, s, dil = int(kernel[i]), int(strides[i]), int(dilations[i])
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                n = self.dim(node.input[0], axis, op)
                p = _graph.same_pads(n, k, s, dil, lower=auto_pad == "SAME_LOWER")[0]
            elif auto_pad == "VALID":
                p = 0
            else:
                p = int(pads[i])
            d = f.axes.index(axis)
            r, j, st = f.size[d], f.jump[d], f.start[d]
            f = f.with_dim(d, r + (k - 1) * dil * j, j * s, st - p * j)
        return f

    def whole(self, f: _Field, name: str, axes: Sequence[int], op: str) -> _Field:
        """Every position sees the whole input along ``axes`` (tensor axes of ``name``)."""
        for axis in axes:
            if axis in f.axes:
                d = f.axes.index(axis)
                n = self.dim(name, axis, op)
                f = f.with_dim(d, f.size[d] + (n - 1) * f.jump[d], 0.0, f.start[d])
        return f

    def union(self, node: onnx.NodeProto, tracked: list[tuple[str, _Field]]) -> _Field:
        out = node.output[0]
        out_shape = self.shape(out)
        rank = len(out_shape) if out_shape is not None else max(f.rank for _, f in tracked)
        placed = []
        for name, f in tracked:
            shift = rank - f.rank
            axes = (f.axes[0] + shift, f.axes[1] + shift)
            jumps = list(f.jump)
            in_shape = self.shape(name)
            for d in (0, 1):  # a broadcast spatial axis: every output position reads index 0
                if (
                    in_shape is not None
                    and out_shape is not None
                    and in_shape[f.axes[d]] == 1
                    and out_shape[axes[d]] > 1
                ):
                    jumps[d] = 0.0
            placed.append((axes, f, jumps))
        axes = placed[0][0]
        if any(p[0] != axes for p in placed):
            raise _Unsupported(f"{node.op_type} of inputs whose spatial axes do not line up")
        return self.merge(node.op_type, [(f, j) for _, f, j in placed], axes, rank, out_shape)

    def merge(self, op, items, axes, rank, out_shape) -> _Field:
        size, jump, start = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
        for d in (0, 1):
            s = [f.start[d] for f, _ in items]
            j = [jj[d] for _, jj in items]
            r = [f.size[d] for f, _ in items]
            if all(x == j[0] for x in j):
                lo = min(s)
                size[d] = max(a + b for a, b in zip(s, r, strict=True)) - lo
                jump[d], start[d] = j[0], lo
                continue
            n = out_shape[axes[d]] if out_shape is not None else None
            if n is None:
                raise _Unsupported(f"{op} of inputs with different strides and unknown size")
            lo0 = min(s)
            hi0 = max(a + b for a, b in zip(s, r, strict=True))
            if n <= 1:
                size[d], jump[d], start[d] = hi0 - lo0, 0.0, lo0
                continue
            # The lower envelope min_k(s_k + y j_k) is concave, the upper one convex: their
            # chords over [0, n-1] bound them from below and above.
            lo1 = min(a + (n - 1) * b for a, b in zip(s, j, strict=True))
            hi1 = max(a + (n - 1) * b + c for a, b, c in zip(s, j, r, strict=True))
            jump[d] = (lo1 - lo0) / (n - 1)
            size[d] = max(hi0 - lo0, hi1 - lo1)
            start[d] = lo0
        return _Field(tuple(size), tuple(jump), tuple(start), axes, rank)  # type: ignore[arg-type]

    def concat_split(self, node: onnx.NodeProto, tracked: list[tuple[str, _Field]]) -> _Field:
        op = node.op_type
        a = _attrs(node)
        f0 = tracked[0][1]
        axis = int(a.get("axis", 0))
        axis = axis + f0.rank if axis < 0 else axis
        if any(f.rank != f0.rank or f.axes != f0.axes for _, f in tracked):
            raise _Unsupported(f"{op} of inputs whose spatial axes do not line up")
        if axis in f0.axes:
            raise _Unsupported(f"{op} along a spatial axis is not supported")
        if op == "Split":
            if tracked[0][0] != node.input[0]:
                raise _Unsupported("Split with image-dependent split sizes")
            return f0
        return self.merge(
            op, [(f, f.jump) for _, f in tracked], f0.axes, f0.rank, self.shape(node.output[0])
        )

    def reduce_axes(self, node: onnx.NodeProto, rank: int) -> list[int]:
        a = _attrs(node)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            c = self.const(node.input[1])
            if c is None:
                raise _Unsupported(f"{node.op_type} with image-dependent axes")
            axes = c.reshape(-1).tolist()
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return []
            return list(range(rank))
        return sorted(int(x) + rank if int(x) < 0 else int(x) for x in axes)

    def reduce(self, node: onnx.NodeProto, f: _Field) -> _Field:
        axes = self.reduce_axes(node, f.rank)
        f = self.whole(f, node.input[0], axes, node.op_type)
        if int(_attrs(node).get("keepdims", 1)):
            return f
        if any(a in axes for a in f.axes):
            raise _Unsupported(f"{node.op_type} removes a spatial axis")
        a0, a1 = (x - sum(1 for a in axes if a < x) for x in f.axes)
        return replace(f, axes=(a0, a1), rank=f.rank - len(axes))

    def softmax(self, node: onnx.NodeProto, f: _Field) -> _Field:
        a = _attrs(node)
        if self.opset < 13:
            axis = int(a.get("axis", 1))
            axis = axis + f.rank if axis < 0 else axis
            axes = list(range(axis, f.rank))
        else:
            axis = int(a.get("axis", -1))
            axes = [axis + f.rank if axis < 0 else axis]
        return self.whole(f, node.input[0], axes, node.op_type)

    def normalize(self, node: onnx.NodeProto, f: _Field) -> _Field:
        a = _attrs(node)
        if node.op_type == "LayerNormalization":
            axis = int(a.get("axis", -1))
            axis = axis + f.rank if axis < 0 else axis
            axes = list(range(axis, f.rank))
        else:
            axes = [int(x) + f.rank if int(x) < 0 else int(x) for x in a.get("axes", [0, 2, 3])]
        return self.whole(f, node.input[0], axes, node.op_type)

    def transpose(self, node: onnx.NodeProto, f: _Field) -> _Field:
        perm = _attrs(node).get("perm")
        perm = list(perm) if perm is not None else list(range(f.rank))[::-1]
        axes = (perm.index(f.axes[0]), perm.index(f.axes[1]))
        return replace(f, axes=axes)

    def reshape(self, node: onnx.NodeProto, tracked: list[tuple[str, _Field]]) -> _Field:
        op = node.op_type
        if tracked[0][0] != node.input[0] or len(tracked) > 1:
            raise _Unsupported(f"{op} to an image-dependent shape")
        f = tracked[0][1]
        src, dst = self.shape(node.input[0]), self.shape(node.output[0])
        if src is None or dst is None:
            raise _Unsupported(f"{op}: the shapes of {node.input[0]!r} are unknown")
        # An axis survives a reshape whole when its size and the sizes before and after it
        # keep their products: its index then means the same thing on both sides.
        found = []
        for a in f.axes:
            before, after = math.prod(src[:a]), math.prod(src[a + 1 :])
            found.append(
                [
                    b
                    for b in range(len(dst))
                    if dst[b] == src[a]
                    and math.prod(dst[:b]) == before
                    and math.prod(dst[b + 1 :]) == after
                ]
            )
        for bh in found[0]:
            for bw in found[1]:
                if bh != bw and (bh < bw) == (f.axes[0] < f.axes[1]):
                    return replace(f, axes=(bh, bw), rank=len(dst))
        raise _Unsupported(f"{op} merges or splits a spatial axis")

    def pad(self, node: onnx.NodeProto, tracked: list[tuple[str, _Field]]) -> _Field:
        if tracked[0][0] != node.input[0] or len(tracked) > 1:
            raise _Unsupported("Pad with image-dependent pads")
        f = tracked[0][1]
        a = _attrs(node)
        if "pads" in a:
            pads = list(a["pads"])
        else:
            c = self.const(node.input[1]) if len(node.input) > 1 else None
            if c is None:
                raise _Unsupported("Pad whose pads are not constant")
            pads = c.reshape(-1).tolist()
        axes = list(range(f.rank))
        if len(node.input) > 3 and node.input[3]:
            c = self.const(node.input[3])
            if c is None:
                raise _Unsupported("Pad whose axes are not constant")
            axes = [int(x) + f.rank if int(x) < 0 else int(x) for x in c.reshape(-1)]
        for i, axis in enumerate(axes):
            if axis in f.axes:
                d = f.axes.index(axis)
                f = f.with_dim(d, f.size[d], f.jump[d], f.start[d] - int(pads[i]) * f.jump[d])
        return f

    def slice(self, node: onnx.NodeProto, tracked: list[tuple[str, _Field]]) -> _Field:
        if tracked[0][0] != node.input[0] or len(tracked) > 1:
            raise _Unsupported("Slice with image-dependent bounds")
        f = tracked[0][1]
        a = _attrs(node)
        if self.opset < 10 or "starts" in a:
            starts = list(a["starts"])
            axes = list(a.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            vals = []
            for i in (1, 3, 4):
                name = node.input[i] if len(node.input) > i else ""
                c = self.const(name)
                if name and c is None:
                    raise _Unsupported("Slice whose bounds are not constant")
                vals.append(None if c is None else c.reshape(-1).tolist())
            starts = vals[0] if vals[0] is not None else []  # the checker requires them
            axes = vals[1] if vals[1] is not None else list(range(len(starts)))
            steps = vals[2] if vals[2] is not None else [1] * len(starts)
        for st, axis, step in zip(starts, axes, steps, strict=True):
            axis = int(axis) + f.rank if int(axis) < 0 else int(axis)
            if axis not in f.axes:
                continue
            st, step = int(st), int(step)
            if step < 1:
                raise _Unsupported("Slice with a negative step along a spatial axis")
            known = self.shape(node.input[0])
            if st < 0:  # counts from the end; clamped like ONNX does
                st = max(st + self.dim(node.input[0], axis, "Slice"), 0)
            elif known is not None:
                st = min(st, known[axis])
            d = f.axes.index(axis)
            f = f.with_dim(d, f.size[d], f.jump[d] * step, f.start[d] + st * f.jump[d])
        return f

    def resize(self, node: onnx.NodeProto, tracked: list[tuple[str, _Field]]) -> _Field:
        op = node.op_type
        if tracked[0][0] != node.input[0] or len(tracked) > 1:
            raise _Unsupported(f"{op} with image-dependent scales")
        f = tracked[0][1]
        a = _attrs(node)
        mode = _text(a.get("mode", "nearest"))
        legacy = op == "Upsample" or self.opset < 11
        ctm = (
            "asymmetric" if legacy else _text(a.get("coordinate_transformation_mode", "half_pixel"))
        )
        nearest = (
            "floor" if op == "Upsample" else _text(a.get("nearest_mode", "round_prefer_floor"))
        )
        if legacy and op == "Resize" and mode == "nearest":
            nearest = "any"
        for axis in f.axes:
            n_in = self.dim(node.input[0], axis, op)
            n_out = self.dim(node.output[0], axis, op)
            scale = n_out / n_in
            # Input coordinate of output position y: x_in = slope * y + offset.
            if ctm in ("half_pixel", "half_pixel_symmetric"):
                slope, offset = 1 / scale, 0.5 / scale - 0.5
            elif ctm == "pytorch_half_pixel":
                slope, offset = (1 / scale, 0.5 / scale - 0.5) if n_out > 1 else (0.0, 0.0)
            elif ctm == "align_corners":
                slope, offset = ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0), 0.0
            elif ctm == "asymmetric":
                slope, offset = 1 / scale, 0.0
            elif ctm == "tf_half_pixel_for_nn":
                slope, offset = 1 / scale, 0.5 / scale
            else:
                raise _Unsupported(f"{op} with coordinate_transformation_mode {ctm!r}")
            # Input pixels read around x_in: [x_in + lo, x_in + hi].
            if mode == "nearest":
                if nearest == "floor":
                    whole = abs(scale - round(scale)) < 1e-9 and ctm == "asymmetric"
                    lo, hi = (-(1 - 1 / scale) if whole else -1.0), 0.0
                elif nearest == "ceil":
                    lo, hi = 0.0, 1.0
                elif nearest == "any":
                    lo, hi = -1.0, 1.0
                else:
                    lo, hi = -0.5, 0.5
            elif mode in ("linear", "bilinear"):
                lo, hi = -1.0, 1.0
            elif mode in ("cubic", "bicubic"):
                lo, hi = -2.0, 2.0
            else:
                raise _Unsupported(f"{op} with mode {mode!r}")
            d = f.axes.index(axis)
            r, j, s = f.size[d], f.jump[d], f.start[d]
            f = f.with_dim(d, r + (hi - lo) * j, j * slope, s + (offset + lo) * j)
        return f

    def depth_to_space(self, node: onnx.NodeProto, f: _Field) -> _Field:
        f = self.nchw(node, f)
        b = int(_attrs(node)["blocksize"])
        for d in (0, 1):
            # Output y reads input floor(y / b), which lies in [y/b - (b-1)/b, y/b].
            r, j, s = f.size[d], f.jump[d], f.start[d]
            f = f.with_dim(d, r + (b - 1) / b * j, j / b, s - (b - 1) / b * j)
        return f


# --------------------------------------------------------------------------- public API

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _analyse(model: Model) -> dict[str, ReceptiveField | str]:
    """Field or reason (a string naming the op) for each spatial layer of the catalogue."""
    cached = _CACHE.get(model)
    if cached is not None:
        return cached
    state = _Walker(model).walk()
    out: dict[str, ReceptiveField | str] = {}
    for layer in model.layers:
        if not layer.is_spatial:
            continue
        f = state.get(layer.name)
        if f is None:
            out[layer.name] = "it is not computed from the image input"
        elif isinstance(f, str):
            out[layer.name] = f
        elif f.rank != 4 or f.axes != ((2, 3) if layer.layout == "nchw" else (1, 2)):
            out[layer.name] = "a Transpose or Reshape moved its spatial axes"
        else:
            ext = tuple((float(lo), float(hi)) for lo, hi in f.extent)
            out[layer.name] = ReceptiveField(f.size, f.jump, f.start, ext)  # type: ignore[arg-type]
    _CACHE[model] = out
    return out


def receptive_fields(model: Model) -> dict[str, ReceptiveField | None]:
    """The receptive field of every spatial layer of ``model.layers``, by ONNX tensor name.

    A layer computed through an op without a geometry rule maps to None;
    :func:`receptive_field` says which op.
    """
    return {k: (v if isinstance(v, ReceptiveField) else None) for k, v in _analyse(model).items()}


def receptive_field(model: Model, name: str) -> ReceptiveField:
    """The receptive field of one spatial layer (ONNX tensor name or alias).

    Raises:
        LayerNotFoundError: no such layer.
        UserInputError: the layer is not a spatial map, or an op on its path from the image
            has no geometry rule (the message names it).
    """
    layer = model.spatial_layer(name)
    rf = _analyse(model)[layer.name]
    if isinstance(rf, str):
        raise UserInputError(f"layer {layer.alias} ({layer.name!r}) has no receptive field: {rf}")
    return rf
