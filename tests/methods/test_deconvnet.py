"""DeconvNet, guided backprop and saliency against independent references."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_factory as fac
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import pyanalyzer as pa
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.deconvnet import Projector


class _RuleReLU(torch.autograd.Function):
    """ReLU whose backward follows a projection rule (the reference's only change)."""

    @staticmethod
    def forward(ctx, x, rule):
        ctx.save_for_backward(x)
        ctx.rule = rule
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.rule == "deconv":  # Zeiler & Fergus: rectify the signal, ignore the forward
            return g.clamp_min(0), None
        return g.clamp_min(0) * (x > 0), None  # guided: both


class _Rule(torch.nn.Module):
    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def forward(self, x):
        return _RuleReLU.apply(x, self.rule)


def reference(model, x, layer, unit, rule):
    """Autograd through a copy of the torch twin whose ReLUs follow ``rule`` (None: plain)."""
    gm = copy.deepcopy(model.gradient.module)
    if rule is not None:
        for name, mod in list(gm.named_children()):
            if isinstance(mod, torch.nn.ReLU):
                setattr(gm, name, _Rule(rule))
    info = model.layer(layer)
    node, k = model.gradient._producer[info.name]
    got = {}
    h = gm.get_submodule(node).register_forward_hook(lambda m, i, o: got.__setitem__("a", o))
    xt = torch.from_numpy(x).requires_grad_(True)
    gm(xt)
    h.remove()
    a = got["a"]
    chan = a[..., unit] if info.layout == "nhwc" else a[:, unit]
    flat = chan.reshape(len(chan), -1)
    sel = torch.zeros_like(flat)
    sel.scatter_(1, flat.argmax(1, keepdim=True), 1.0)
    # The projected signal is the unit's activation itself (Zeiler & Fergus), not a 1.
    (flat * (flat * sel).detach()).sum().backward()
    g = xt.grad
    if model.input.layout == "nhwc":
        g = g.permute(0, 3, 1, 2)
    return g.numpy()


@pytest.fixture(scope="module")
def default(default_model):
    return pa.load_model(default_model, check_parity=False)


def _inputs(model, n=3, seed=0):
    from pyanalyzer.data import synthetic

    imgs = np.stack([synthetic.render(i, seed=seed, size=64).image for i in range(n)])
    return model.preprocessing.normalize(imgs)


@pytest.mark.parametrize(
    "method, rule", [("deconv", "deconv"), ("guided", "guided"), ("saliency", None)]
)
@pytest.mark.parametrize("layer, unit", [("relu6", 5), ("relu4", 11), ("maxpool3", 2)])
def test_matches_autograd_with_the_relu_rule(default, method, rule, layer, unit):
    # The default model's pools do not overlap (2x2/2).
    x = _inputs(default)
    got = Projector(default, method, device="cpu").project(x, layer, unit).pixels
    ref = reference(default, x, layer, unit, rule)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_overlapping_pools_and_nhwc_same_padding(tmp_path):
    # tf2onnx-style: NHWC input, transposes, SAME-padded convs and an overlapping-free but
    # padded max-pool, an average pool with SAME_LOWER: the walker must handle them all.
    m = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    for method, rule in (("deconv", "deconv"), ("saliency", None)):
        got = Projector(m, method, device="cpu").project(x, "avgpool1", 4).pixels
        ref = reference(m, x, "avgpool1", 4, rule)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def _alexnet_pools(tmp_path):
    """Conv -> ReLU -> MaxPool 3x3/2 (overlapping, AlexNet's) -> Conv -> ReLU."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(5, 4, 3, 3)).astype(np.float32), "w2")
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2]),
            helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["r2"]),
        ],
        "alex",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 27, 27])],
        [helper.make_tensor_value_info("r2", TensorProto.FLOAT, ["N", 5, 13, 13])],
        initializer=[w1, w2],
    )
    path = tmp_path / "alex.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_overlapping_pools_sum_shared_switches_like_autograd(tmp_path):
    m = pa.load_model(_alexnet_pools(tmp_path), check_parity=False)
    x = np.random.default_rng(1).normal(size=(2, 3, 27, 27)).astype(np.float32)
    for mode in ("map", "max"):
        got = Projector(m, "deconv", device="cpu").project(x, "relu2", 1, mode=mode).pixels
        if mode == "max":
            ref = reference(m, x, "relu2", 1, "deconv")
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
        assert np.abs(got).max() > 0


def test_hand_computed_tiny_case(tmp_path):
    # x (4x4) -> Conv 1x1 weight 2 -> ReLU -> MaxPool 2x2/2.
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1, 2, 2])],
        initializer=[numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float32), "w")],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    m = pa.load_model(path, check_parity=False)
    x = np.array([[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, -5, 1], [0, 0, 0, 0]], np.float32)[None, None]
    # relu(2x) = [[2,4,0,0],[6,8,0,0],[0,0,0,2],[0,0,0,0]]; pooled [[8,0],[0,2]].
    p = Projector(m, "deconv", device="cpu").project(x, "maxpool1", 0, mode="max")
    expected = np.zeros((1, 1, 4, 4), np.float32)
    expected[0, 0, 1, 1] = 2 * 8  # unpooled to the switch, rectified, times the filter
    np.testing.assert_array_equal(p.pixels, expected)
    assert p.activation[0] == 8 and tuple(p.positions[0]) == (0, 0)
    p = Projector(m, "deconv", device="cpu").project(x, "maxpool1", 0, mode="map")
    expected[0, 0, 2, 3] = 2 * 2
    np.testing.assert_array_equal(p.pixels, expected)


def test_topk_mode_keeps_k_activations(default):
    x = _inputs(default, n=1)
    one = Projector(default, "deconv", device="cpu").project(x, "relu6", 7, mode="topk", k=1)
    mx = Projector(default, "deconv", device="cpu").project(x, "relu6", 7, mode="max")
    np.testing.assert_allclose(one.pixels, mx.pixels)
    many = Projector(default, "deconv", device="cpu").project(x, "relu6", 7, mode="topk", k=5)
    assert many.activation[0] >= mx.activation[0]


def test_errors(default, tmp_path):
    x = _inputs(default, n=1)
    with pytest.raises(UserInputError, match="out of range"):
        Projector(default, "deconv").project(x, "relu6", 128)
    with pytest.raises(UserInputError, match="not a spatial"):
        Projector(default, "deconv").project(x, "fc1", 0)
    with pytest.raises(UserInputError, match="unknown method"):
        Projector(default, "lrp")
    with pytest.raises(UserInputError, match="unknown mode"):
        Projector(default, "deconv").project(x, "relu6", 0, mode="all")
    # A non-linear op the deconvnet cannot invert is named; saliency goes through it.
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["c"], ["s"]),
            helper.make_node("Conv", ["s", "w2"], ["y"], pads=[1, 1, 1, 1]),
        ],
        "sig",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])],
        initializer=[
            numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=(2, 4, 3, 3)).astype(np.float32), "w2"),
        ],
    )
    path = tmp_path / "sig.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    m = pa.load_model(path, check_parity=False)
    xs = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(UserInputError, match="cannot invert op Sigmoid"):
        Projector(m, "deconv").project(xs, "conv2", 0)
    sal = Projector(m, "saliency").project(xs, "conv2", 0).pixels
    np.testing.assert_allclose(sal, reference(m, xs, "conv2", 0, None), rtol=1e-4, atol=1e-6)
