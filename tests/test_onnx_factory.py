"""Tests of the test-model factory (tests/onnx_factory.py).

They check that every good model is valid ONNX that onnxruntime runs, that the hand-built
tf2onnx-style and dilated graphs compute what an independent torch implementation with
explicit asymmetric padding computes (the reference for pyanalyzer's own converters), that the
broken files break where intended, and they record what plain ``onnx2torch.convert`` does
with each model.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))  # until the lead's conftest does it

import onnx_factory as fac  # noqa: E402

MAX_BYTES = 200_000


# --------------------------------------------------------------------------- helpers


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _input_shape(path: Path, dynamic_batch: int = 2) -> list[int]:
    """The model's input shape with every symbolic dim replaced by ``dynamic_batch``."""
    (inp,) = _session(path).get_inputs()
    return [d if isinstance(d, int) else dynamic_batch for d in inp.shape]


def _random_input(path: Path, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(_input_shape(path)).astype(np.float32)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = _session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _total_bytes(path: Path) -> int:
    """Size of the model file plus every external-data file it references."""
    proto = onnx.load(path, load_external_data=False)
    locations = {
        e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"
    }
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1, upper: bool = True):
    """ONNX ``auto_pad`` SAME padding of one spatial axis, as ``(before, after)``.

    total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0);
    SAME_UPPER puts the odd pixel after, SAME_LOWER before.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def _pad2d(
    x: torch.Tensor, k: int, s: int, dilation: int = 1, upper: bool = True, value: float = 0.0
) -> torch.Tensor:
    """Pad ``[N, C, H, W]`` as ``auto_pad`` SAME_UPPER (or SAME_LOWER) would."""
    (top, bottom), (left, right) = (same_pads(n, k, s, dilation, upper) for n in x.shape[2:])
    return F.pad(x, (left, right, top, bottom), value=value)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)  # a copy: initializer arrays are read-only


# --------------------------------------------------------------------------- good models

# (id, builder, input name, input shape with None for the symbolic batch, output name)
GOOD: list[tuple[str, Callable[[Path], Path], str, list[int | None], str]] = [
    ("tiny_cnn", fac.tiny_cnn, "input", [None, 3, 32, 32], "logits"),
    ("tiny_cnn_nhwc", fac.tiny_cnn_nhwc, "input", [None, 32, 32, 3], "logits"),
    ("tf2onnx_style", fac.tf2onnx_style, "input_1:0", [None, 32, 32, 3], "dense"),
    (
        "tf2onnx_style_op11",
        lambda d: fac.tf2onnx_style(d, opset=11, name="tf11.onnx"),
        "input_1:0",
        [None, 32, 32, 3],
        "dense",
    ),
    ("slice_opset9", fac.slice_opset9, "input", [None, 3, 32, 32], "logits"),
    ("channels1", fac.channels1, "input", [None, 1, 28, 28], "logits"),
    ("external_data", fac.external_data, "input", [None, 3, 32, 32], "logits"),
    ("softmax_head", fac.softmax_head, "input", [None, 3, 32, 32], "probs"),
    ("caffe_style", fac.caffe_style, "data", [None, 3, 32, 32], "prob"),
    ("with_sidecar", fac.with_sidecar, "input", [None, 3, 32, 32], "logits"),
    (
        "conv_same_dilated_pads",
        lambda d: fac.conv_same_dilated(d, explicit_pads=True),
        "input",
        [None, 3, 32, 32],
        "logits",
    ),
    ("odd_channels", fac.odd_channels, "input", [None, 17, 32, 32], "logits"),
    ("not_image_model", fac.not_image_model, "input", [None, 20], "logits"),
]


@pytest.mark.parametrize(
    ("builder", "in_name", "in_shape", "out_name"),
    [g[1:] for g in GOOD],
    ids=[g[0] for g in GOOD],
)
def test_good_model_checks_and_runs(tmp_path, builder, in_name, in_shape, out_name):
    path = builder(tmp_path)
    assert path.is_file() and path.suffix == ".onnx"
    assert _total_bytes(path) < MAX_BYTES
    onnx.checker.check_model(str(path), full_check=True)

    sess = _session(path)
    (inp,) = sess.get_inputs()
    assert inp.name == in_name
    assert isinstance(inp.shape[0], str), "batch dim should be symbolic"
    assert inp.shape[1:] == in_shape[1:]
    assert [o.name for o in sess.get_outputs()] == [out_name]

    x = _random_input(path)
    (y,) = sess.run(None, {in_name: x})
    assert y.shape == (2, fac.NUM_CLASSES)
    assert np.isfinite(y).all()


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
@pytest.mark.parametrize("batch", ["dynamic", 1])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_tiny_cnn_variants(tmp_path, opset, batch, layout):
    path = fac.tiny_cnn(tmp_path, opset=opset, batch=batch, layout=layout)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(path)
    assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    ops = [n.op_type for n in proto.graph.node]
    assert {"Conv", "Relu", "MaxPool", "BatchNormalization", "GlobalAveragePool", "Gemm"} <= set(
        ops
    )

    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if batch == 1:
        assert dim0.dim_value == 1
        assert "Reshape" in ops and "Flatten" not in ops
        shapes = [
            numpy_helper.to_array(n.attribute[0].t).tolist()
            for n in proto.graph.node
            if n.op_type == "Constant"
        ]
        assert [1, -1] in shapes  # the hard-coded batch of x.view(1, -1)
    else:
        assert dim0.dim_param and "Flatten" in ops

    if layout == "nhwc":
        first = proto.graph.node[0]
        assert first.op_type == "Transpose"
        assert list(first.attribute[0].ints) == [0, 3, 1, 2]
        assert first.input[0] == "input"

    x = _random_input(path)
    assert x.shape[0] == (2 if batch == "dynamic" else 1)
    assert _run(path, x).shape == (x.shape[0], fac.NUM_CLASSES)


def test_fixed_batch_refuses_batch_2(tmp_path):
    path = fac.tiny_cnn(tmp_path, batch=1)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _run(path, np.zeros((2, 3, 32, 32), np.float32))


def test_tiny_cnn_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        fac.tiny_cnn(tmp_path, opset=7)
    with pytest.raises(ValueError, match="batch"):
        fac.tiny_cnn(tmp_path, batch=4)
    with pytest.raises(ValueError, match="layout"):
        fac.tiny_cnn(tmp_path, layout="chw")


def test_weights_are_seeded(tmp_path):
    a = _weights(fac.tiny_cnn(tmp_path / "a", seed=3))
    b = _weights(fac.tiny_cnn(tmp_path / "b", seed=3))
    c = _weights(fac.tiny_cnn(tmp_path / "c", seed=4))
    assert a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    t1 = _weights(fac.tf2onnx_style(tmp_path / "a", seed=3))
    t2 = _weights(fac.tf2onnx_style(tmp_path / "b", seed=3))
    assert all(np.array_equal(t1[k], t2[k]) for k in t1)


def test_nhwc_matches_nchw_with_same_seed(tmp_path):
    nchw = fac.tiny_cnn(tmp_path, seed=1)
    nhwc = fac.tiny_cnn_nhwc(tmp_path, seed=1)
    x = _random_input(nchw)
    np.testing.assert_allclose(_run(nhwc, x.transpose(0, 2, 3, 1)), _run(nchw, x), atol=1e-5)


def test_size_and_channels_arguments(tmp_path):
    path = fac.tiny_cnn(tmp_path, size=20, channels=4)
    assert _input_shape(path) == [2, 4, 20, 20]
    assert _run(path, _random_input(path)).shape == (2, fac.NUM_CLASSES)


# --------------------------------------------------------------------------- tf2onnx style


def _tf2onnx_reference(
    w: dict[str, np.ndarray], x_nhwc: np.ndarray, conv_upper: bool = True
) -> np.ndarray:
    """The tf2onnx_style graph in float64 torch with explicit (asymmetric) padding."""
    p = "StatefulPartitionedCall/model"

    def conv(x, layer, stride, same):
        weight = _t(w[f"{p}/{layer}/Conv2D/ReadVariableOp:0"])
        bias = _t(w[f"{p}/{layer}/BiasAdd/ReadVariableOp:0"])
        if same:
            x = _pad2d(x, weight.shape[2], stride, upper=conv_upper)
        return F.relu(F.conv2d(x, weight, bias, stride=stride))

    x = _t(x_nhwc).permute(0, 3, 1, 2)
    x = conv(x, "conv2d", 1, same=True)  # 32 -> 32
    x = conv(x, "conv2d_1", 2, same=True)  # 32 -> 16, pads (0, 1)
    x = conv(x, "conv2d_2", 1, same=False)  # 16 -> 15 (VALID)
    x = F.max_pool2d(_pad2d(x, 2, 2, value=-math.inf), 2, 2)  # 15 -> 8, pads (0, 1)
    # AveragePool SAME_LOWER, count_include_pad=0: pads (1, 0); divide by the real-pixel count.
    num = F.avg_pool2d(_pad2d(x, 2, 1, upper=False), 2, 1)
    den = F.avg_pool2d(_pad2d(torch.ones_like(x), 2, 1, upper=False), 2, 1)
    x = (num / den).mean(dim=(2, 3))
    logits = x @ _t(w[f"{p}/dense/MatMul/ReadVariableOp:0"]) + _t(
        w[f"{p}/dense/BiasAdd/ReadVariableOp:0"]
    )
    return torch.softmax(logits, dim=1).numpy()


def test_same_pads_formula():
    assert same_pads(32, 3, 1) == (1, 1)
    assert same_pads(32, 3, 2) == (0, 1)
    assert same_pads(32, 3, 2, upper=False) == (1, 0)
    assert same_pads(15, 2, 2) == (0, 1)
    assert same_pads(8, 2, 1, upper=False) == (1, 0)
    assert same_pads(32, 3, 2, dilation=2, upper=False) == (2, 1)
    assert same_pads(4, 1, 4) == (0, 0)


@pytest.mark.parametrize("opset", [11, 13])
def test_tf2onnx_style_matches_reference(tmp_path, opset):
    path = fac.tf2onnx_style(tmp_path, opset=opset)
    x = np.random.default_rng(1).standard_normal((3, 32, 32, 3)).astype(np.float32)
    y = _run(path, x)
    ref = _tf2onnx_reference(_weights(path), x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-6)
    # The test is sensitive to where the odd padding pixel goes.
    wrong = _tf2onnx_reference(_weights(path), x, conv_upper=False)
    assert np.abs(wrong - y).max() > 1e-3


def test_tf2onnx_style_looks_like_tf2onnx(tmp_path):
    proto = onnx.load(fac.tf2onnx_style(tmp_path))
    assert proto.producer_name == "tf2onnx"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param.startswith("unk__")
    assert [d.dim_value for d in dims[1:]] == [32, 32, 3]
    names = [o for n in proto.graph.node for o in n.output]
    assert any(":0" in n and "/" in n for n in names)

    attrs = {
        n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in proto.graph.node
    }
    auto = {(n.op_type, attrs[n.name].get("auto_pad", b"NOTSET")) for n in proto.graph.node}
    assert {("Conv", b"SAME_UPPER"), ("MaxPool", b"SAME_UPPER")} <= auto
    assert ("AveragePool", b"SAME_LOWER") in auto
    perms = [attrs[n.name]["perm"] for n in proto.graph.node if n.op_type == "Transpose"]
    assert perms == [[0, 3, 1, 2], [0, 2, 3, 1], [0, 3, 1, 2]]
    strides = [attrs[n.name]["strides"] for n in proto.graph.node if n.op_type == "Conv"]
    assert [2, 2] in strides
    assert [n.op_type for n in proto.graph.node][-3:] == ["MatMul", "Add", "Softmax"]


# --------------------------------------------------------------------------- other hand-built


def test_slice_opset9_uses_attributes(tmp_path):
    path = fac.slice_opset9(tmp_path)
    proto = onnx.load(path)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 9
    (sl,) = [n for n in proto.graph.node if n.op_type == "Slice"]
    assert len(sl.input) == 1
    attrs = {a.name: list(a.ints) for a in sl.attribute}
    assert attrs == {"axes": [2, 3], "starts": [2, 2], "ends": [-2, -2]}

    # Independent reference.
    w = {k: _t(v) for k, v in _weights(path).items()}
    x = _random_input(path)
    h = F.relu(F.conv2d(_t(x), w["conv1.weight"], w["conv1.bias"], padding=1))
    h = F.max_pool2d(h[:, :, 2:-2, 2:-2], 2)
    h = F.relu(F.conv2d(h, w["conv2.weight"], w["conv2.bias"], padding=1)).mean(dim=(2, 3))
    ref = h @ w["fc.weight"].T + w["fc.bias"]
    np.testing.assert_allclose(_run(path, x), ref.numpy(), rtol=1e-4, atol=1e-5)


def _dilated_reference(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    t = {k: _t(v) for k, v in w.items()}
    h = _pad2d(_t(x), 3, 2, dilation=2, upper=False)
    h = F.relu(F.conv2d(h, t["conv1.weight"], t["conv1.bias"], stride=2, dilation=2))
    h = _pad2d(h, 3, 1, dilation=2, upper=False)
    h = F.relu(F.conv2d(h, t["conv2.weight"], t["conv2.bias"], dilation=2)).mean(dim=(2, 3))
    return (h @ t["fc.weight"].T + t["fc.bias"]).numpy()


def test_conv_same_dilated(tmp_path):
    same = fac.conv_same_dilated(tmp_path)
    pads = fac.conv_same_dilated(tmp_path, explicit_pads=True)
    onnx.checker.check_model(str(same), full_check=True)
    x = _random_input(pads)
    ref = _dilated_reference(_weights(pads), x)
    np.testing.assert_allclose(_run(pads, x), ref, rtol=1e-4, atol=1e-5)
    # onnxruntime 1.32 creates the session but refuses dilated SAME_* convs when it runs.
    sess = _session(same)
    try:
        y = sess.run(None, {"input": x})[0]
    except Exception as err:  # onnxruntime raises its own pybind types
        assert "Dilation not supported" in str(err)
    else:
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- metadata, sidecar


def test_softmax_head(tmp_path):
    path = fac.softmax_head(tmp_path)
    proto = onnx.load(path)
    last = proto.graph.node[-1]
    assert last.op_type == "Softmax" and last.output[0] == "probs"
    producer = next(n for n in proto.graph.node if last.input[0] in n.output)
    assert producer.op_type == "Gemm"  # the logits
    y = _run(path, _random_input(path))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_caffe_style_metadata(tmp_path):
    proto = onnx.load(fac.caffe_style(tmp_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["pyanalyzer.preprocessing"]) == fac.CAFFE_PREPROCESSING
    assert proto.graph.input[0].name == "data"


def test_with_sidecar(tmp_path):
    path = fac.with_sidecar(tmp_path)
    sidecar = tmp_path / "sidecar.onnx.json"
    assert path == tmp_path / "sidecar.onnx"
    assert json.loads(sidecar.read_text()) == {"preset": "imagenet"}


# --------------------------------------------------------------------------- external data


@pytest.mark.parametrize("location", [None, "custom.data"])
def test_external_data(tmp_path, location):
    path = fac.external_data(tmp_path, location=location)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, location or "weights.bin"]
    )
    proto = onnx.load(path, load_external_data=False)
    assert proto.graph.initializer
    assert all(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    inline = _weights(fac.tiny_cnn(tmp_path / "inline"))
    external = _weights(path)
    assert all(np.array_equal(inline[k], external[k]) for k in inline)


@pytest.mark.parametrize("kind", ["parent", "absolute", "passwd"])
def test_external_data_outside(tmp_path, kind):
    path = fac.external_data_outside(tmp_path, kind)
    assert path.parent == tmp_path.resolve() / "model"
    proto = onnx.load(path, load_external_data=False)  # the proto itself reads fine
    info = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in proto.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }
    locations = {i["location"] for i in info.values()}
    expected = {
        "parent": {"../evil.bin"},
        "absolute": {str(tmp_path.resolve() / "abs_weights.bin")},
        "passwd": {"/etc/passwd", "outside_passwd.bin"},
    }[kind]
    assert locations == expected

    if kind != "passwd":
        # The referenced bytes are the real weights: only a location check can refuse them.
        reference = _weights(fac.tiny_cnn(tmp_path / "ref"))
        for name, i in info.items():
            raw = (path.parent / i["location"]).read_bytes()
            off, n = int(i.get("offset", 0)), int(i["length"])
            got = np.frombuffer(raw[off : off + n], dtype=np.float32)
            np.testing.assert_array_equal(got, reference[name].ravel())

    # onnx 1.23 and onnxruntime 1.32 both refuse them already.
    with pytest.raises(onnx.checker.ValidationError, match="outside|absolute"):
        onnx.load(path)
    with pytest.raises(Exception, match="(?i)external data path"):
        _session(path)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("builder", [fac.random_bytes, fac.truncated], ids=["random", "truncated"])
def test_unparseable_files_fail_to_load(tmp_path, builder):
    path = builder(tmp_path)
    assert path.stat().st_size > 0
    with pytest.raises(DecodeError):
        onnx.load(path)


def test_truncated_is_half_a_real_model(tmp_path):
    path = fac.truncated(tmp_path)
    full = fac.tiny_cnn(tmp_path / "full")
    assert full.read_bytes()[: path.stat().st_size] == path.read_bytes()
    assert path.stat().st_size == full.stat().st_size // 2
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["truncated.onnx"]


def test_empty_file_loads_as_empty_proto_but_fails_checks(tmp_path):
    path = fac.empty_file(tmp_path)
    assert path.stat().st_size == 0
    proto = onnx.load(path)  # protobuf parses b"" as an empty ModelProto
    assert len(proto.graph.node) == 0
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize("kind", ["dangling", "type"])
def test_invalid_graph_fails_checker(tmp_path, kind):
    path = fac.invalid_graph(tmp_path, kind)
    onnx.load(path)  # parses
    with pytest.raises((onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
        onnx.checker.check_model(str(path), full_check=True)
    with pytest.raises(Exception, match="(?i)invalid|type"):
        _session(path)


def test_not_image_and_odd_channel_models_are_valid(tmp_path):
    mlp = onnx.load(fac.not_image_model(tmp_path))
    assert len(mlp.graph.input[0].type.tensor_type.shape.dim) == 2
    odd = onnx.load(fac.odd_channels(tmp_path))
    dims = odd.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [17, 32, 32]


# --------------------------------------------------------------------------- onnx2torch

# What plain onnx2torch 1.5.15 cannot convert (pyanalyzer's own converters must cover these).
ONNX2TORCH_GAPS = {
    "tf2onnx_style": '"SAME_UPPER" auto_pad is not implemented',
    "tf2onnx_style_op11": '"SAME_UPPER" auto_pad is not implemented',
    "slice_opset9": "operation_type='Slice', version=1",
    "conv_same_dilated": '"SAME_LOWER" auto_pad is not implemented',
}

O2T = [(g[0], g[1]) for g in GOOD] + [
    ("tiny_cnn_b1_op9", lambda d: fac.tiny_cnn(d, opset=9, batch=1)),
    ("tiny_cnn_nhwc_b1", lambda d: fac.tiny_cnn_nhwc(d, batch=1)),
    ("conv_same_dilated", fac.conv_same_dilated),
]


@pytest.mark.parametrize("builder", [b for _, b in O2T], ids=[i for i, _ in O2T])
def test_onnx2torch(tmp_path, request, builder):
    """Convert with plain onnx2torch: parity with onnxruntime, or a known, recorded gap.

    A gap that gets fixed (for instance by pyanalyzer registering converters) turns into a
    parity check instead of a failure.
    """
    onnx2torch = pytest.importorskip("onnx2torch")
    model_id = request.node.callspec.id
    path = builder(tmp_path)
    try:
        module = onnx2torch.convert(onnx.load(path)).eval()  # eval: BatchNorm running stats
    except Exception as err:
        if model_id in ONNX2TORCH_GAPS:
            assert ONNX2TORCH_GAPS[model_id] in str(err)
            pytest.xfail(f"onnx2torch: {type(err).__name__}: {err}")
        raise
    x = _random_input(path)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    if model_id == "conv_same_dilated":
        ref = _dilated_reference(_weights(path), x)  # onnxruntime cannot run it
    else:
        ref = _run(path, x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
