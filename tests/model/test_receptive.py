"""Receptive fields from the ONNX graph, checked against brute force.

The reference is independent of the graph walk: a torch twin of each model (the same geometry,
one channel, weights of one, float64, average pools in place of max pools so that the
gradient reaches every pixel of a window) is differentiated at one output position, and the
input pixels with a nonzero gradient are the position's receptive field, clipped to the image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx_factory as fac
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.nn import functional as F

import pyanalyzer as pa
from pyanalyzer.errors import UserInputError
from pyanalyzer.model.receptive import (
    ReceptiveField,
    crop_box,
    receptive_field,
    receptive_fields,
)

# --------------------------------------------------------------------------- helpers


def _save(nodes, inits, size: int, path: Path, opset: int = 13, channels: int = 3) -> Path:
    outs = [o for n in nodes for o in n.output]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info(outs[-1], TensorProto.FLOAT, [None] * 4)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.save(model, path)
    return path


def _geom(rf: ReceptiveField) -> tuple:
    return rf.size, rf.jump, rf.start


def _load(path: Path) -> pa.Model:
    return pa.load_model(path, check_parity=False)


def _support(
    out: torch.Tensor, x: torch.Tensor, y: int, xx: int
) -> tuple[int, int, int, int] | None:
    """Bounding box (top, left, bottom, right) of the pixels of ``x`` that ``out[0, 0, y, xx]``
    depends on, or None when it depends on none (a position inside padding)."""
    (g,) = torch.autograd.grad(out[0, 0, y, xx], x, retain_graph=True)
    mask = g[0].abs().sum(0) > 0
    if not bool(mask.any()):
        return None
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _inside(inner, outer) -> bool:
    """Box ``inner`` (top, left, bottom, right) lies within box ``outer``."""
    return (
        inner[0] >= outer[0]
        and inner[1] >= outer[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def _positions(h: int, w: int) -> list[tuple[int, int]]:
    rows = sorted({0, 1, h // 2, h - 2, h - 1} & set(range(h)))
    cols = sorted({0, w // 3, w - 1} & set(range(w)))
    return [(r, c) for r in rows for c in cols]


def _ones(k: int, dil: int = 1) -> torch.Tensor:
    return torch.ones(1, 1, k, k, dtype=torch.float64)


# A stack is a list of layers: ("conv", k, stride, (pad_top, pad_left, pad_bottom, pad_right),
# dilation) or ("maxpool", k, stride, pads, ceil_mode) or ("relu",).
def _stack_onnx(stack, size: int, path: Path, channels: int = 4) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits, x, c_in = [], {}, "input", 3
    for i, layer in enumerate(stack):
        out = f"t{i}"
        if layer[0] == "conv":
            _, k, s, pads, dil = layer
            inits[f"w{i}"] = rng.standard_normal((channels, c_in, k, k)).astype(np.float32)
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, f"w{i}"],
                    [out],
                    kernel_shape=[k, k],
                    strides=[s, s],
                    pads=list(pads),
                    dilations=[dil, dil],
                )  # fmt: skip
            )
            c_in = channels
        elif layer[0] == "maxpool":
            _, k, s, pads, ceil = layer
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [x],
                    [out],
                    kernel_shape=[k, k],
                    strides=[s, s],
                    pads=list(pads),
                    ceil_mode=int(ceil),
                )  # fmt: skip
            )
        else:
            nodes.append(helper.make_node("Relu", [x], [out]))
        x = out
    return _save(nodes, inits, size, path)


def _stack_twin(stack, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for layer in stack:
        if layer[0] == "conv":
            _, k, s, (t, lf, b, r), dil = layer
            x = F.conv2d(F.pad(x, (lf, r, t, b)), _ones(k), stride=s, dilation=dil)
        elif layer[0] == "maxpool":
            _, k, s, (t, lf, b, r), ceil = layer
            x = F.avg_pool2d(F.pad(x, (lf, r, t, b)), k, s, ceil_mode=ceil)
        else:
            x = F.relu(x)
        outs.append(x)
    return outs


def _check_against_twin(model: pa.Model, tensors: dict[str, torch.Tensor], x: torch.Tensor):
    """Every position in ``_positions`` of every tensor: crop_box == brute-force support.

    Exact for kernels without dilation (a dilated kernel's field has holes, and a hole at the
    image border makes the clipped support smaller than the clipped field: see
    :func:`test_dilation_strides_asymmetric_pads_and_ceil_mode` for those).
    """
    fields = receptive_fields(model)
    h, w = x.shape[2:]
    for name, out in tensors.items():
        rf = fields[name]
        layer = model.layer(name)
        assert (layer.height, layer.width) == tuple(out.shape[2:]), name
        for y, xx in _positions(*out.shape[2:]):
            support = _support(out, x, y, xx)
            if support is None:  # a position in padding: its field lies outside the image
                t, lf, b, r = rf.span(y, xx)
                assert b <= 0 or r <= 0 or t >= h or lf >= w, (name, y, xx, rf)
            else:
                assert crop_box(rf, y, xx, h, w) == support, (name, y, xx, rf)


def _input(size: int) -> torch.Tensor:
    return torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)


# --------------------------------------------------------------------------- AlexNet

P2, P1, P0 = (2, 2, 2, 2), (1, 1, 1, 1), (0, 0, 0, 0)


def _alexnet(conv1_pad) -> list:
    """AlexNet's geometry (torchvision: conv1 pad 2, input 224; Caffe: pad 0, input 227)."""
    return [
        ("conv", 11, 4, conv1_pad, 1), ("relu",), ("maxpool", 3, 2, P0, False),
        ("conv", 5, 1, P2, 1), ("relu",), ("maxpool", 3, 2, P0, False),
        ("conv", 3, 1, P1, 1), ("relu",),
        ("conv", 3, 1, P1, 1), ("relu",),
        ("conv", 3, 1, P1, 1), ("relu",), ("maxpool", 3, 2, P0, False),
    ]  # fmt: skip


ALEXNET_NAMES = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
ALEXNET_TENSORS = ["t0", "t2", "t3", "t5", "t6", "t8", "t10", "t12"]


def _brute_geometry(stack, size: int) -> dict[str, tuple[int, int, int]]:
    """(size, jump, start) of each named layer's rows, by brute force on a ``size`` input.

    The central unit's support gives the size; the next unit's, the jump; the start follows
    as top - c * jump (the input is large enough that neither support is clipped).
    """
    x = _input(size)
    outs = _stack_twin(stack, x)
    found = {}
    for name, tensor in zip(ALEXNET_NAMES, ALEXNET_TENSORS, strict=True):
        out = outs[int(tensor[1:])]
        c = out.shape[2] // 2
        top, _, bottom, _ = _support(out, x, c, c)
        top1, _, bottom1, _ = _support(out, x, c + 1, c)
        assert 0 < top and bottom1 < size, "the brute-force input must be large enough"
        found[name] = (bottom - top, top1 - top, top - c * (top1 - top))
    return found


@pytest.mark.parametrize("conv1_pad, size", [(P2, 224), (P0, 227)], ids=["pad2-224", "pad0-227"])
def test_alexnet_stack_against_brute_force(tmp_path, conv1_pad, size):
    stack = _alexnet(conv1_pad)
    model = _load(_stack_onnx(stack, size, tmp_path / "alexnet.onnx"))
    fields = receptive_fields(model)
    # Unclipped geometry: brute force on a larger input (it does not depend on the size).
    brute = _brute_geometry(stack, 451)
    for name, tensor in zip(ALEXNET_NAMES, ALEXNET_TENSORS, strict=True):
        rf = fields[tensor]
        assert _geom(rf) == tuple((float(v), float(v)) for v in brute[name]), name
    # The figures usually quoted for AlexNet: padding moves the fields, it does not resize them.
    sizes = [brute[n][0] for n in ALEXNET_NAMES]
    assert sizes == [11, 19, 51, 67, 99, 131, 163, 195]
    assert [brute[n][1] for n in ALEXNET_NAMES] == [4, 8, 8, 16, 16, 16, 16, 32]
    p = conv1_pad[0]
    assert [brute[n][2] for n in ALEXNET_NAMES] == [
        -p,
        -p,
        -p - 16,
        -p - 16,
        -p - 32,
        -p - 48,
        -p - 64,
        -p - 64,
    ]
    # Clipped boxes at corners, edges and the centre of every layer, at the real input size.
    x = _input(size)
    outs = _stack_twin(stack, x)
    _check_against_twin(model, {t: outs[int(t[1:])] for t in ALEXNET_TENSORS}, x)
    # Relu keeps its input's field.
    assert fields["t1"] == fields["t0"]


def test_dilation_strides_asymmetric_pads_and_ceil_mode(tmp_path):
    stack = [
        ("conv", 3, 2, (2, 1, 1, 0), 2),
        ("maxpool", 3, 2, P0, True),  # 16 -> 8 with ceil_mode (7 without)
        ("conv", 3, 1, (4, 4, 4, 4), 4),
        ("conv", 2, 3, (0, 1, 1, 0), 1),
    ]
    size = 33
    model = _load(_stack_onnx(stack, size, tmp_path / "geometry.onnx"))
    assert model.layer("t1").height == 8
    fields = receptive_fields(model)
    # Unclipped reference: the same twin on a canvas with a margin of m pixels of ones around
    # the image, m a multiple of every cumulative stride (2, 4, 4, 12): position (y, x) of the
    # image's map is position (y + m / J, x + m / J) of the canvas's map, and its support on
    # the canvas, shifted back by m, is its whole field (nothing is cut by the border).
    m = 48
    canvas = _input(size + 2 * m)
    on_canvas = _stack_twin(stack, canvas)
    x = _input(size)
    on_image = _stack_twin(stack, x)
    for i, cum in enumerate((2, 4, 4, 12)):
        rf = fields[f"t{i}"]
        assert rf.jump == (cum, cum)
        layer = model.layer(f"t{i}")
        for y, xx in _positions(layer.height, layer.width):
            t, lf, b, r = _support(on_canvas[i], canvas, y + m // cum, xx + m // cum)
            assert 0 < t and 0 < lf and b < size + 2 * m and r < size + 2 * m
            assert rf.span(y, xx) == (t - m, lf - m, b - m, r - m), (i, y, xx)
            # On the image: the support (holes at the border make it smaller) lies inside the
            # box, which lies inside the whole field clamped to the image.
            box = crop_box(rf, y, xx, size, size)
            clamped = (max(t - m, 0), max(lf - m, 0), min(b - m, size), min(r - m, size))
            assert _inside(box, clamped), (i, y, xx)
            inner = _support(on_image[i], x, y, xx)
            if inner is not None:
                assert _inside(inner, box), (i, y, xx)
    assert _geom(fields["t0"]) == ((5.0, 5.0), (2.0, 2.0), (-2.0, -1.0))


def test_dilated_same_lower_equals_explicit_pads(tmp_path):
    same = _load(fac.conv_same_dilated(tmp_path))
    explicit = _load(fac.conv_same_dilated(tmp_path, explicit_pads=True))
    aliases = [layer.alias for layer in same.layers if layer.is_spatial]
    assert aliases == [layer.alias for layer in explicit.layers if layer.is_spatial]
    for alias in aliases:
        assert receptive_field(same, alias) == receptive_field(explicit, alias)
    # k3 dilation 2 stride 2 pads 2: size 1 + 2*2 = 5, start -2; then k3 dilation 2: 5 + 4*2.
    assert _geom(receptive_field(same, "relu1")) == ((5.0, 5.0), (2.0, 2.0), (-2.0, -2.0))
    assert _geom(receptive_field(same, "conv2")) == ((13.0, 13.0), (2.0, 2.0), (-6.0, -6.0))


def test_same_padding_tf2onnx(tmp_path):
    """SAME_UPPER/SAME_LOWER pads from the layer sizes, NHWC input, transposes kept."""
    model = _load(fac.tf2onnx_style(tmp_path))
    # The twin uses the explicit pads the factory documents for each SAME layer.
    x = _input(32)
    c1 = F.conv2d(F.pad(x, (1, 1, 1, 1)), _ones(3))
    c2 = F.conv2d(F.pad(c1, (0, 1, 0, 1)), _ones(3), stride=2)
    c3 = F.conv2d(c2, _ones(2))
    p1 = F.avg_pool2d(F.pad(c3, (0, 1, 0, 1)), 2, 2)
    p2 = F.avg_pool2d(F.pad(p1, (1, 0, 1, 0)), 2, 1)
    by_alias = {"conv1": c1, "conv2": c2, "conv3": c3, "maxpool1": p1, "avgpool1": p2}
    _check_against_twin(model, {model.layer(a).name: t for a, t in by_alias.items()}, x)
    fields = receptive_fields(model)
    nhwc = model.layer("transpose2")
    assert nhwc.layout == "nhwc"
    assert fields[nhwc.name] == fields[model.layer("avgpool1").name]
    assert _geom(receptive_field(model, "avgpool1")) == ((13.0, 13.0), (4.0, 4.0), (-5.0, -5.0))
    gap = receptive_field(model, "gap1")
    assert crop_box(gap, 0, 0, 32, 32) == (0, 0, 32, 32)


def test_nhwc_input_keeps_fields(tmp_path):
    a = _load(fac.tiny_cnn(tmp_path))
    b = _load(fac.tiny_cnn_nhwc(tmp_path))
    for layer in a.layers:
        if layer.is_spatial:
            assert receptive_field(a, layer.alias) == receptive_field(b, layer.alias)
    assert _geom(receptive_field(b, "transpose1")) == ((1.0, 1.0), (1.0, 1.0), (0.0, 0.0))


def test_slice_attributes_opset9(tmp_path):
    model = _load(fac.slice_opset9(tmp_path))
    # Conv k3 pad 1 (start -1), crop 2 px (start +2), pool k2 s2, conv k3 pad 1.
    assert _geom(receptive_field(model, "slice1")) == ((3.0, 3.0), (1.0, 1.0), (1.0, 1.0))
    # The crop keeps conv1's positions 2..29, which see rows 1..30.
    assert receptive_field(model, "slice1").extent == ((1.0, 31.0), (1.0, 31.0))
    assert receptive_field(model, "conv1").extent == ((0.0, 32.0), (0.0, 32.0))
    assert _geom(receptive_field(model, "maxpool1")) == ((4.0, 4.0), (2.0, 2.0), (1.0, 1.0))
    assert _geom(receptive_field(model, "conv2")) == ((8.0, 8.0), (2.0, 2.0), (-1.0, -1.0))


def test_pad_and_slice_inputs_against_brute_force(tmp_path):
    """Pad (asymmetric, constant input) and Slice (negative start, step 2) at opset 13."""
    rng = np.random.default_rng(1)
    inits = {
        "pads": np.array([0, 0, 3, 1, 0, 0, 2, 4], np.int64),
        "w0": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "starts": np.array([-20, 1], np.int64),
        "ends": np.array([1000, -1], np.int64),
        "axes": np.array([2, 3], np.int64),
        "steps": np.array([2, 1], np.int64),
        "w1": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Pad", ["input", "pads"], ["padded"]),
        helper.make_node("Conv", ["padded", "w0"], ["c0"], kernel_shape=[3, 3]),
        helper.make_node("Slice", ["c0", "starts", "ends", "axes", "steps"], ["cut"]),
        helper.make_node(
            "Conv", ["cut", "w1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        ),
        helper.make_node("Relu", ["c1"], ["out"]),
    ]
    model = _load(_save(nodes, inits, 24, tmp_path / "padslice.onnx"))
    x = _input(24)
    padded = F.pad(x, (1, 4, 3, 2))
    c0 = F.conv2d(padded, _ones(3))
    cut = c0[:, :, -20::2, 1:-1]
    c1 = F.conv2d(cut, _ones(3), stride=2, padding=1)
    _check_against_twin(model, {"padded": padded, "c0": c0, "cut": cut, "c1": c1}, x)
    # The padded map's position (0, 0) is the pixel (-3, -1); 29 rows - 2 = 27; 27 - 20 = 7.
    assert receptive_field(model, "padded").start == (-3.0, -1.0)
    assert _geom(receptive_field(model, "cut")) == ((3.0, 3.0), (2.0, 1.0), (4.0, 0.0))


def _branches(tmp_path: Path, kind: str) -> tuple[pa.Model, dict, torch.Tensor]:
    """Two-branch models: Add of two kernel sizes, Concat, Add of different strides, SE gate."""
    rng = np.random.default_rng(2)

    def w(shape):
        return rng.standard_normal(shape).astype(np.float32)

    size = 32
    x = _input(size)
    inits = {"wa": w((4, 3, 3, 3)), "wb": w((4, 3, 5, 5))}
    if kind in ("add", "concat"):
        op = "Add" if kind == "add" else "Concat"
        extra = {"axis": 1} if kind == "concat" else {}
        nodes = [
            helper.make_node("Conv", ["input", "wa"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
            # no kernel_shape: it is optional, the weights give it
            helper.make_node("Conv", ["input", "wb"], ["b"], pads=[2, 1, 2, 3]),
            helper.make_node(op, ["a", "b"], ["u"], **extra),
            helper.make_node("Relu", ["u"], ["out"]),
        ]
        a = F.conv2d(x, _ones(3), padding=1)
        b = F.conv2d(F.pad(x, (1, 3, 2, 2)), _ones(5))
        u = a + b
    elif kind == "strides":
        inits = {"wa": w((4, 3, 1, 1)), "wb": w((4, 3, 1, 1))}
        inits.update(
            starts=np.array([0, 0], np.int64),
            ends=np.array([16, 16], np.int64),
            axes=np.array([2, 3], np.int64),
        )
        nodes = [
            helper.make_node("Conv", ["input", "wa"], ["a"], kernel_shape=[1, 1], strides=[2, 2]),
            helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["crop"]),
            helper.make_node("Conv", ["crop", "wb"], ["b"], kernel_shape=[1, 1]),
            helper.make_node("Add", ["a", "b"], ["u"]),
        ]
        u = F.conv2d(x, _ones(1), stride=2) + F.conv2d(x[:, :, :16, :16], _ones(1))
    else:  # squeeze-and-excitation: a global gate multiplies every position
        nodes = [
            helper.make_node("Conv", ["input", "wa"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
            helper.make_node("GlobalAveragePool", ["a"], ["g"]),
            helper.make_node("Sigmoid", ["g"], ["s"]),
            helper.make_node("Mul", ["a", "s"], ["u"]),
        ]
        a = F.conv2d(x, _ones(3), padding=1)
        u = a * torch.sigmoid(a.mean((2, 3), keepdim=True) / 100)
    model = _load(_save(nodes, inits, size, tmp_path / f"{kind}.onnx"))
    return model, {"u": u}, x


@pytest.mark.parametrize("kind", ["add", "concat", "se"])
def test_union_of_branches(tmp_path, kind):
    model, tensors, x = _branches(tmp_path, kind)
    _check_against_twin(model, tensors, x)
    rf = receptive_field(model, "u")
    if kind == "se":
        assert rf.jump == (0.0, 0.0)
        assert crop_box(rf, 5, 7, 32, 32) == (0, 0, 32, 32)
    else:  # union of (3, start -1) and (5, start -2 / -1): rows -2..2, cols -1..3
        assert _geom(rf) == ((5.0, 5.0), (1.0, 1.0), (-2.0, -1.0))


def test_union_of_different_strides_covers(tmp_path):
    model, tensors, x = _branches(tmp_path, "strides")
    rf = receptive_field(model, "u")
    out = tensors["u"]
    for y in range(16):
        top, left, bottom, right = _support(out, x, y, y)
        box = crop_box(rf, y, y, 32, 32)
        assert _inside((top, left, bottom, right), box), y
    assert _geom(rf) == ((16.0, 16.0), (1.0, 1.0), (0.0, 0.0))


@pytest.mark.parametrize(
    "mode, ctm, nearest, twin",
    [
        ("nearest", "asymmetric", "floor", {"mode": "nearest"}),
        ("linear", "half_pixel", "round_prefer_floor", {"mode": "bilinear"}),
    ],
)
def test_resize_covers_and_is_tight(tmp_path, mode, ctm, nearest, twin):
    rng = np.random.default_rng(3)
    inits = {
        "w0": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "w1": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32),
    }
    nodes = [
        helper.make_node(
            "Conv", ["input", "w0"], ["c0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        ),
        helper.make_node(
            "Resize",
            ["c0", "", "scales"],
            ["up"],
            mode=mode,
            coordinate_transformation_mode=ctm,
            nearest_mode=nearest,
        ),  # fmt: skip
        helper.make_node("Conv", ["up", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
    ]
    model = _load(_save(nodes, inits, 32, tmp_path / "resize.onnx"))
    x = _input(32)
    c0 = F.conv2d(x, _ones(3), stride=2, padding=1)
    extra = {"align_corners": False} if twin["mode"] == "bilinear" else {}
    up = F.interpolate(c0, scale_factor=2, **twin, **extra)
    c1 = F.conv2d(up, _ones(3), padding=1)
    rf_up = receptive_field(model, "up")
    assert rf_up.jump == (1.0, 1.0)  # 2 / 2
    for name, out in (("up", up), ("c1", c1)):
        rf = receptive_field(model, name)
        for y, xx in _positions(32, 32):
            t, lf, b, r = _support(out, x, y, xx)
            box = crop_box(rf, y, xx, 32, 32)
            assert _inside((t, lf, b, r), box), (name, y, xx)
            # at most one step of the coarse map (2 px) looser on each side
            assert max(t - box[0], lf - box[1], box[2] - b, box[3] - r) <= 2, (name, y, xx)


def test_channel_shuffle_reshape_keeps_fields(tmp_path):
    rng = np.random.default_rng(4)
    inits = {
        "w0": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "w1": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
        "s5": np.array([-1, 2, 2, 16, 16], np.int64),
        "s4": np.array([-1, 4, 16, 16], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Reshape", ["c0", "s5"], ["r5"]),
        helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t5", "s4"], ["r4"]),
        helper.make_node("Conv", ["r4", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
    ]
    model = _load(_save(nodes, inits, 16, tmp_path / "shuffle.onnx"))
    assert receptive_field(model, "r4") == receptive_field(model, "c0")
    assert _geom(receptive_field(model, "c1")) == ((5.0, 5.0), (1.0, 1.0), (-2.0, -2.0))


@pytest.mark.parametrize("op", ["ConvTranspose", "Tile"])
def test_unsupported_op_on_the_path(tmp_path, op):
    rng = np.random.default_rng(5)
    inits = {
        "w0": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "wt": rng.standard_normal((4, 4, 2, 2)).astype(np.float32),
        "reps": np.array([1, 1, 2, 2], np.int64),
    }
    second = (
        helper.make_node("ConvTranspose", ["r0", "wt"], ["x1"], kernel_shape=[2, 2], strides=[2, 2])
        if op == "ConvTranspose"
        else helper.make_node("Tile", ["r0", "reps"], ["x1"])
    )
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c0"], ["r0"]),
        second,
        helper.make_node("Relu", ["x1"], ["out"]),
    ]
    if op == "ConvTranspose":
        del inits["reps"]
    else:
        del inits["wt"]
    model = _load(_save(nodes, inits, 16, tmp_path / f"{op}.onnx"))
    fields = receptive_fields(model)
    assert _geom(fields["r0"]) == ((3.0, 3.0), (1.0, 1.0), (-1.0, -1.0))
    assert fields["x1"] is None and fields["out"] is None
    for name in ("x1", "out"):
        with pytest.raises(UserInputError, match=op):
            receptive_field(model, name)


def test_layer_lookup_errors(tmp_path):
    model = _load(fac.tiny_cnn(tmp_path))
    assert receptive_field(model, "conv1") == receptive_field(model, model.layer("conv1").name)
    with pytest.raises(UserInputError, match="not a spatial"):
        receptive_field(model, "logits")
    with pytest.raises(pa.LayerNotFoundError):
        receptive_field(model, "conv9")
    assert model.layer("logits").name not in receptive_fields(model)


def test_crop_box_clamps_and_rounds_outwards():
    rf = ReceptiveField(size=(11.0, 11.0), jump=(4.0, 4.0), start=(-2.0, -2.0))
    assert crop_box(rf, 0, 0, 224, 224) == (0, 0, 9, 9)
    assert crop_box(rf, 1, 2, 224, 224) == (2, 6, 13, 17)
    assert crop_box(rf, 55, 55, 224, 224) == (218, 218, 224, 224)
    frac = ReceptiveField(size=(3.0, 2.5), jump=(0.5, 0.5), start=(-0.75, 0.25))
    assert crop_box(frac, 3, 1, 10, 10) == (0, 0, 4, 4)  # rows 0.75..3.75, cols 0.75..3.25
    far = ReceptiveField(size=(3.0, 3.0), jump=(1.0, 1.0), start=(-10.0, 20.0))
    assert crop_box(far, 0, 0, 8, 8) == (0, 7, 1, 8)  # wholly outside: never empty
    assert math.isclose(sum(rf.span(0, 0)), -4 + 18)
