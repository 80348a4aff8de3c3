"""pyanalyzer's own converters (ops and cases onnx2torch lacks or gets wrong), each checked
against onnxruntime on a model made here."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import pyanalyzer as pa


def _model(tmp_path, nodes, inits, in_shape, out_shape, opset, name="m"):
    g = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits,
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    path = tmp_path / f"{name}.onnx"
    onnx.save(m, path)
    return path


def _conv(c_in: int = 3, c_out: int = 4) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    w = np.random.default_rng(0).normal(size=(c_out, c_in, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])
    return node, numpy_helper.from_array(w, "w")


def _parity_ok(path) -> pa.ParityReport:
    m = pa.load_model(path, check_parity=False)
    assert m.gradient_available, m.gradient_error
    report = m.check_parity()
    assert report.ok, report.describe()
    assert report.layers, "no layer was compared"
    return report


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_20(tmp_path, approximate):
    conv, w = _conv()
    gelu = helper.make_node("Gelu", ["c"], ["y"], approximate=approximate)
    _parity_ok(_model(tmp_path, [conv, gelu], [w], [1, 3, 8, 8], [1, 4, 8, 8], 20))


def test_mish_18(tmp_path):
    conv, w = _conv()
    mish = helper.make_node("Mish", ["c"], ["y"])
    _parity_ok(_model(tmp_path, [conv, mish], [w], [1, 3, 8, 8], [1, 4, 8, 8], 18))


@pytest.mark.parametrize(
    "axes, keepdims, out",
    [([2, 3], 1, [1, 4, 1, 1]), ([-1], 0, [1, 4, 8]), (None, 1, [1, 1, 1, 1])],
)
def test_reduce_mean_18_with_axes_as_an_input(tmp_path, axes, keepdims, out):
    conv, w = _conv()
    inputs, inits = ["c"], [w]
    if axes is not None:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        inputs.append("axes")
    relu = helper.make_node("Relu", ["c"], ["r"])
    mean = helper.make_node("ReduceMean", ["r", *inputs[1:]], ["y"], keepdims=keepdims)
    path = _model(tmp_path, [conv, relu, mean], inits, ["N", 3, 8, 8], ["N", *out[1:]], 18)
    m = pa.load_model(path, check_parity=False)
    x = m.preprocessing.normalize(np.full((2, 8, 8, 3), 100, np.uint8))
    import torch

    with torch.no_grad():
        got = m.gradient.features(torch.from_numpy(x), ["y"])["y"].numpy()
    ref = m.forward.run(x, ["y"], nchw=False)["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_clip_with_a_bound_left_out(tmp_path):
    conv, w = _conv()
    hi = numpy_helper.from_array(np.array(0.5, np.float32), "hi")
    clip = helper.make_node("Clip", ["c", "", "hi"], ["y"])  # torch.clamp(x, max=0.5)
    _parity_ok(_model(tmp_path, [conv, clip], [w, hi], [1, 3, 8, 8], [1, 4, 8, 8], 13))


def test_prelu_slope_broadcasts_along_the_last_axis(tmp_path):
    # NHWC map [N, 4, 4, 4]: its height equals its channels, where onnx2torch applied a 1-D
    # slope along axis 1 (the height) instead of the last axis (the channels).
    conv, w = _conv()
    to_nhwc = helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1])
    slope = numpy_helper.from_array(np.array([0.1, 0.5, 2.0, -1.0], np.float32), "s")
    prelu = helper.make_node("PRelu", ["t", "s"], ["y"])
    path = _model(tmp_path, [conv, to_nhwc, prelu], [w, slope], [1, 3, 4, 4], [1, 4, 4, 4], 13)
    _parity_ok(path)
