"""Model import: real ONNX files exported from torch and hand-built tf2onnx-style graphs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx_factory as fac
import onnxruntime as ort
import pytest
import torch

import pyanalyzer as pa
from pyanalyzer.errors import (
    GradientUnavailableError,
    ModelError,
    ParityWarning,
    UserInputError,
)


def _plain_ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
@pytest.mark.parametrize("batch", ["dynamic", 1])
def test_torch_export_nchw(tmp_path, opset, batch):
    path = fac.tiny_cnn(tmp_path, opset=opset, batch=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ParityWarning)
        m = pa.load_model(path)
    assert m.input.layout == "nchw" and m.input.channels == 3
    assert (m.input.height, m.input.width) == (32, 32)
    assert m.input.batch == (1 if batch == 1 else None)
    # The architecture is 3 -> 8 (32x32) -> pool -> 16 (16x16) -> pool -> 16 (8x8).
    convs = [layer for layer in m.layers if layer.op == "Conv"]
    assert [(c.alias, c.channels, c.height) for c in convs] == [
        ("conv1", 8, 32), ("conv2", 16, 16), ("conv3", 16, 8),
    ]  # fmt: skip
    assert m.layers[-1].is_output and m.layers[-1].channels == 10
    assert m.parity_report.ok, m.parity_report.describe()
    # A batch of 5 through the engine equals 5 plain onnxruntime runs of the file itself.
    x = np.random.default_rng(1).normal(size=(5, 3, 32, 32)).astype(np.float32)
    got = m.forward.run(x, [m.layers[-1].name])[m.layers[-1].name]
    ref = np.concatenate([_plain_ort(path, x[i : i + 1])[0] for i in range(5)])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    if batch == 1:
        assert m.forward.batch_mode in ("rewritten", "loop")


def test_batch1_rewrite_is_measured_choice(tmp_path):
    # tiny_cnn(batch=1) hard-codes a Reshape to [1, -1]: the rewrite must be refused.
    m = pa.load_model(fac.tiny_cnn(tmp_path, batch=1), check_parity=False)
    assert m.forward.batch_mode == "loop"


def test_nhwc_torch_export(tmp_path):
    m = pa.load_model(fac.tiny_cnn_nhwc(tmp_path))
    assert m.input.layout == "nhwc" and m.preprocessing.layout == "nhwc"
    assert m.parity_report.ok
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    out = m.forward.run(x, [m.layers[-1].name])[m.layers[-1].name]
    np.testing.assert_allclose(out, _plain_ort(m.path, x)[0], rtol=1e-5, atol=1e-6)


def test_tf2onnx_style_same_padding_and_transposes(tmp_path):
    path = fac.tf2onnx_style(tmp_path)
    m = pa.load_model(path)
    assert m.input.layout == "nhwc" and m.input.name == "input_1:0"
    assert m.gradient_available, m.gradient_error
    assert m.parity_report.ok, m.parity_report.describe()
    # Every layer of the graph is compared, SAME-padded convs and pools included.
    compared = {p.alias for p in m.parity_report.layers}
    assert {"conv2", "conv3", "maxpool1", "avgpool1"} <= compared
    layouts = {layer.alias: layer.layout for layer in m.layers if layer.is_spatial}
    assert "nhwc" in layouts.values() and layouts["conv1"] == "nchw"


def test_slice_with_attributes_opset9(tmp_path):
    m = pa.load_model(fac.slice_opset9(tmp_path))
    assert m.opset == 9 and m.gradient_available, m.gradient_error
    assert m.parity_report.ok
    assert any(layer.op == "Slice" and layer.height == 28 for layer in m.layers)


def test_grayscale_model(tmp_path):
    m = pa.load_model(fac.channels1(tmp_path))
    assert m.input.channels == 1 and m.preprocessing.channels == 1
    assert m.parity_report.ok


def test_external_data_inside_folder(tmp_path):
    m = pa.load_model(fac.external_data(tmp_path))
    assert m.parity_report.ok
    # The digest covers the weights file: changing it changes the model key.
    before = m.sha256
    weights = next(p for p in tmp_path.iterdir() if p.suffix != ".onnx")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert pa.load_model(m.path, check_parity=False).sha256 != before


def test_unconvertible_op_keeps_forward_and_names_op(tmp_path):
    m = pa.load_model(fac.unconvertible_op(tmp_path))
    assert not m.gradient_available
    x = np.zeros((2, 3, 16, 16), np.float32)
    assert m.forward.run(x, ["relu1"])["y"].shape == (2, 4, 16, 16)
    with pytest.raises(GradientUnavailableError, match="Shrink"):
        _ = m.gradient
    assert "Shrink" in m.parity_report.describe()


def test_parity_mismatch_warns(tmp_path, monkeypatch):
    from pyanalyzer.model import gradient

    original = gradient.GradientEngine.__init__

    def broken(self, *a, **k):
        original(self, *a, **k)
        conv = next(mod for mod in self.module.modules() if isinstance(mod, torch.nn.Conv2d))
        conv.weight.data += 0.5  # a converter bug in miniature

    monkeypatch.setattr(gradient.GradientEngine, "__init__", broken)
    with pytest.warns(ParityWarning, match="disagree"):
        m = pa.load_model(fac.tiny_cnn(tmp_path))
    assert not m.parity_report.ok and m.parity_report.worst.max_rel > 1e-3


def test_taps_match_onnxruntime_and_hooks_are_removed(tmp_path):
    m = pa.load_model(fac.tiny_cnn(tmp_path), check_parity=False)
    eng = m.gradient
    names = [m.layer("relu2").name, m.layer("conv3").name]
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
    ref = m.forward.run(x, names)
    with eng.taps(names) as got:
        eng(torch.from_numpy(x))
    for n in names:
        np.testing.assert_allclose(got[n].detach().numpy(), ref[n], rtol=1e-4, atol=1e-5)
    assert eng.hook_count() == 0
    with pytest.raises(RuntimeError, match="boom"), eng.taps(names):
        raise RuntimeError("boom")
    assert eng.hook_count() == 0
    # Taps keep the autograd graph: a channel's gradient reaches the input.
    xt = torch.from_numpy(x).requires_grad_(True)
    with eng.taps(names[:1]) as got:
        eng(xt)
        got[names[0]][:, 3].mean().backward()
    assert xt.grad is not None and float(xt.grad.abs().sum()) > 0


def test_both_engines_hand_out_nchw_maps_and_cut_after_the_layer(tmp_path):
    m = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    nhwc = [layer for layer in m.layers if layer.layout == "nhwc"]
    assert nhwc  # the tf2onnx graph computes in NHWC between its transposes
    h, w = m.preprocessing.input_size
    pix = np.random.default_rng(4).integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
    x = m.preprocessing.normalize(pix)
    names = [layer.name for layer in nhwc]
    raw = m.forward.run(x, names, nchw=False)
    got = m.forward.run(x, names)
    eng = m.gradient
    with torch.no_grad():
        feats = eng.features(torch.from_numpy(x), names)
    for layer in nhwc:
        assert raw[layer.name].shape[-1] == layer.channels  # as the graph makes it
        np.testing.assert_array_equal(got[layer.name], raw[layer.name].transpose(0, 3, 1, 2))
        assert got[layer.name].shape[1:] == (layer.channels, layer.height, layer.width)
        np.testing.assert_allclose(feats[layer.name].numpy(), got[layer.name], rtol=1e-4, atol=1e-5)
    # The cut network computes nothing after the last requested tensor.
    first = nhwc[0].name
    cut = eng.truncated([first])
    last = eng.producer(first)[0]
    order = [n.target for n in eng.module.graph.nodes if n.op == "call_module"]
    kept = [n.target for n in cut.graph.nodes if n.op == "call_module"]
    assert kept and set(kept) <= set(order[: order.index(last) + 1])
    assert eng.truncated([first]) is cut  # one cut per set of tensors, cached
    with pytest.raises(UserInputError, match="not produced"):
        eng.producer("no-such-tensor")


def test_layer_lookup_by_alias_and_name(tmp_path):
    m = pa.load_model(fac.tiny_cnn(tmp_path), check_parity=False)
    layer = m.layer("conv2")
    assert m.layer(layer.name) is layer
    assert len({x.alias for x in m.layers}) == len(m.layers)
    with pytest.raises(pa.LayerNotFoundError, match="did you mean 'conv2'"):
        m.layer("conv22")
    with pytest.raises(pa.UserInputError, match="not a spatial"):
        m.spatial_layer(m.layers[-1].alias)


def test_default_model_loads(default_model):
    m = pa.load_model(default_model)
    assert m.parity_report.ok
    assert m.input.channels == 3 and m.preprocessing.input_size == (64, 64)
    assert m.preprocessing.source["mean"] == "model metadata"
    assert m.class_names and len(m.class_names) >= 6


def test_building_the_torch_twin_leaves_the_global_generator_alone(default_model):
    # onnx2torch builds randomly initialised modules before copying the weights in
    m = pa.load_model(default_model, check_parity=False)
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    assert m.gradient_available
    assert torch.equal(torch.random.get_rng_state(), before)


# ---- models that one engine (or both) cannot run -------------------------------------------


def _bn_on_the_wrong_axis(tmp_path):
    """Transpose to NHWC, then a BatchNormalization with 3 channels' parameters: its input's
    axis 1 is the height, 32. A valid graph by onnx's checker; no engine can run it."""
    from onnx import TensorProto, helper, numpy_helper

    params = [numpy_helper.from_array(np.full(3, v, np.float32), f"b{i}") for i, v in
              enumerate((1.0, 0.0, 0.0, 1.0))]  # fmt: skip
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("BatchNormalization", ["t", "b0", "b1", "b2", "b3"], ["y"], name="bn"),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["a", "b", "c", "d"])], params,
    )  # fmt: skip
    path = tmp_path / "bn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_a_graph_neither_engine_runs_is_refused_naming_the_node(tmp_path, capsys):
    from cli_helpers import run_cli

    m = pa.load_model(_bn_on_the_wrong_axis(tmp_path), check_parity=False)
    assert "'bn'" in m.onnxruntime_error and "BatchNormalization" in m.onnxruntime_error
    with pytest.raises(ModelError, match="BatchNormalization node. Name:'bn'"):
        _ = m.gradient_available
    code, _, err = run_cli(
        capsys, "actmax", str(m.path), "--layer", "z", "--steps", "1",
        "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store"), "--no-progress",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Name:'bn'" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


def test_a_graph_only_torch_runs_keeps_the_gradient_methods(tmp_path):
    # onnxruntime has no dilated SAME_LOWER convolution; the converted module computes it
    m = pa.load_model(fac.conv_same_dilated(tmp_path), check_parity=False)
    assert "Dilation not supported" in m.onnxruntime_error
    assert m.gradient_available
    x = torch.zeros(1, 3, 32, 32)
    assert m.gradient.features(x, [m.layer("relu1").name])[m.layer("relu1").name].shape[1] > 0
    with pytest.raises(ModelError, match="Dilation not supported"):
        m.forward.run(x.numpy(), ["relu1"])


def test_a_conversion_torch_cannot_run_leaves_forward_methods(tmp_path, monkeypatch):
    from pyanalyzer.model import gradient

    original = gradient.GradientEngine.__init__

    def broken(self, *a, **k):
        original(self, *a, **k)
        conv = next(mod for mod in self.module.modules() if isinstance(mod, torch.nn.Conv2d))
        conv.weight.data = conv.weight.data[:, :2]  # a converter bug: one input channel lost

    monkeypatch.setattr(gradient.GradientEngine, "__init__", broken)
    m = pa.load_model(fac.tiny_cnn(tmp_path), check_parity=False)
    assert m.onnxruntime_error is None and not m.gradient_available
    assert "converted to torch cannot run" in m.gradient_error and "channels" in m.gradient_error
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert m.forward.run(x, ["conv1"])[m.layer("conv1").name].shape == (1, 8, 32, 32)
