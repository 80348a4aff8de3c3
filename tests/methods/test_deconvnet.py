"""DeconvNet, guided backprop and saliency against independent references."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import onnx_factory as fac
import pytest
import torch
import torch.nn.functional as F
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


def test_a_projection_leaves_no_cycle_holding_its_recording(default):
    # Every recorded value is freed when the call returns, not when Python's cycle collector
    # happens to run (a class made per call once kept them, ~50 MB a call on a 227-px AlexNet).
    import gc

    x = _inputs(default)
    projector = Projector(default, "deconv", device="cpu")
    projector.project_units(x, "relu4", [0, 1])  # warm-up: caches made once
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        projector.project_units(x, "relu4", [0, 1])
        projector.project(x, "relu6", 5)
        gc.collect()
        tensors = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert tensors == []


def test_overlapping_pools_and_nhwc_same_padding(tmp_path):
    # tf2onnx-style: NHWC input, transposes, SAME-padded convs and an overlapping-free but
    # padded max-pool, an average pool with SAME_LOWER: the walker must handle them all.
    m = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    for method, rule in (("deconv", "deconv"), ("saliency", None)):
        got = Projector(m, method, device="cpu").project(x, "avgpool1", 4).pixels
        ref = reference(m, x, "avgpool1", 4, rule)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_overlapping_pools_sum_shared_switches_like_autograd(tmp_path):
    m = pa.load_model(fac.overlapping_pools(tmp_path), check_parity=False)
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
    # A non-linear op the deconvnet cannot invert (not an activation: Abs) is named; saliency
    # goes through it.
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Abs", ["c"], ["s"]),
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
    for method in ("deconv", "guided"):
        with pytest.raises(UserInputError, match=f"{method} cannot invert op Abs"):
            Projector(m, method).project(xs, "conv2", 0)
    sal = Projector(m, "saliency").project(xs, "conv2", 0).pixels
    np.testing.assert_allclose(sal, reference(m, xs, "conv2", 0, None), rtol=1e-4, atol=1e-6)


# ---- every common activation ------------------------------------------------------------------
#
# The rules of the module's table, checked two ways on the factory's activation models: by hand
# (numpy, float64) on the smallest graph, input -> op -> 1x1 convolution, and against autograd
# through an independent torch replica of a two-layer CNN (NCHW, and NHWC as tf2onnx writes it)
# whose rectifiers are custom autograd functions implementing the rule.

METHODS = ("deconv", "guided", "saliency")


@pytest.fixture(scope="module")
def fused_converters():
    """Converters for the fused Gelu (opset 20) and Mish (opset 18) ops, which onnx2torch
    lacks, installed for these tests only (and only where none is registered)."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    def gelu(node, graph):
        approximate = node.attributes.get("approximate", "none")
        return OperationConverterResult(
            torch_module=torch.nn.GELU(approximate=approximate),
            onnx_mapping=onnx_mapping_from_node(node),
        )

    def mish(node, graph):
        return OperationConverterResult(
            torch_module=torch.nn.Mish(), onnx_mapping=onnx_mapping_from_node(node)
        )

    added = []
    for op, version, conv in (("Gelu", 20, gelu), ("Mish", 18, mish)):
        desc = OperationDescription(domain="", operation_type=op, version=version)
        if desc not in _CONVERTER_REGISTRY:
            _CONVERTER_REGISTRY[desc] = conv
            added.append(desc)
    try:
        yield
    finally:
        for desc in added:
            _CONVERTER_REGISTRY.pop(desc, None)


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


# Rectifiers: op -> (negative slope, cap); None: PRelu's slope, read from the model file.
_RECT = {
    "Relu": (0.0, None), "Relu6": (0.0, 6.0), "ClipMin0": (0.0, None), "Clip0_2": (0.0, 2.0),
    "LeakyRelu": (0.1, None), "PRelu": (None, None), "PReluScalar": (None, None),
}  # fmt: skip


def _erf(x):
    return np.vectorize(math.erf)(x)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np_smooth(op, x):
    """(f(x), f'(x)) in float64 for the smooth ops (and decompositions) of the factory."""
    sp, dsp = np.log1p(np.exp(x)), _sigmoid(x)
    if op == "Sigmoid":
        return _sigmoid(x), _sigmoid(x) * (1 - _sigmoid(x))
    if op == "Tanh":
        return np.tanh(x), 1 - np.tanh(x) ** 2
    if op == "HardSigmoid":  # alpha 0.25, beta 0.4
        u = 0.25 * x + 0.4
        return np.clip(u, 0, 1), 0.25 * ((u > 0) & (u < 1))
    if op in ("HardSwish", "HardSwishDecomposed"):
        hs = np.clip(x / 6 + 0.5, 0, 1)
        return x * hs, hs + x / 6 * ((x > -3) & (x < 3))
    if op == "Elu":  # alpha 0.7
        return np.where(x > 0, x, 0.7 * np.expm1(x)), np.where(x > 0, 1, 0.7 * np.exp(x))
    if op == "Selu":
        a, lam = 1.6732632423543772, 1.0507009873554805
        return lam * np.where(x > 0, x, a * np.expm1(x)), lam * np.where(x > 0, 1, a * np.exp(x))
    if op == "Celu":  # alpha 1.3
        return np.where(x > 0, x, 1.3 * np.expm1(x / 1.3)), np.where(x > 0, 1, np.exp(x / 1.3))
    if op in ("Softplus", "SoftplusDecomposed"):
        return sp, dsp
    if op == "Softsign":
        return x / (1 + np.abs(x)), 1 / (1 + np.abs(x)) ** 2
    if op in ("Gelu", "GeluErf"):
        phi = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + _erf(x / math.sqrt(2)))
        return x * cdf, cdf + x * phi
    if op == "GeluTanh":
        k = math.sqrt(2 / math.pi)
        t = np.tanh(k * (x + 0.044715 * x**3))
        return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (
            1 + 3 * 0.044715 * x * x
        )
    if op in ("Mish", "MishDecomposed"):
        t = np.tanh(sp)
        return x * t, t + x * (1 - t * t) * dsp
    if op == "Swish":
        return x * _sigmoid(x), _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))
    if op == "ClipSym":
        return np.clip(x, -1, 1), ((x > -1) & (x < 1)).astype(float)
    if op == "Square":
        return x * x, 2 * x
    raise AssertionError(op)


# Channel c of the probe's input: negative and positive values, exact zeros and caps (0, 2, 6),
# none at the kinks of the hard smooth ops (+-3, -1.6, 2.4), where "the gradient" is a choice.
_PROBE_X = np.array(
    [
        [-3.5, -2, -1, -0.5, 0, 0.25, 0.5, 1, 1.5, 2, 2.5, 3.5, 5, 6, 7, 9],
        [2, -3.5, 0.75, -1.25, 6, -0.25, 0, 4, -5, 1, -2.5, 3.25, 8, -0.75, 0.5, 1.75],
        [0.1, -0.1, 2.2, -2.2, 6.5, 5.5, -4, 4.5, 0, 1.2, -1.2, 2, -6, 7.5, 0.3, -0.3],
    ]
).reshape(1, 3, 4, 4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("op", fac.ACTIVATIONS)
def test_activation_rule_by_hand(tmp_path, fused_converters, op, method):
    path = fac.activation_probe(tmp_path, op)
    m = pa.load_model(path, check_parity=False)
    x = _PROBE_X
    w = np.asarray(fac.PROBE_WEIGHTS).reshape(1, 3, 1, 1)
    if op in _RECT:
        a, cap = _RECT[op]
        if a is None:
            a = _weights(path)["act/slope"].astype(np.float64)  # [3, 1, 1] or [1]
        f = np.where(x > 0, x, a * x) if cap is None else np.where(x > 0, np.minimum(x, cap), 0)
        df = np.where(x > 0, 1.0, a) * (1.0 if cap is None else (x < cap))
    else:
        f, df = _np_smooth(op, x)
    y = (w * f).sum(axis=1, keepdims=True)  # the probe's output, the projected map
    s = w * y  # the signal that reaches the op (the 1x1 convolution's transpose)
    if method == "saliency" or op not in _RECT:
        expected = s * df  # the gradient: saliency everywhere, the local gradient when smooth
    else:
        r = np.where(s > 0, s, a * s)  # the op's own piecewise-linear map on the signal
        expected = r if method == "deconv" else r * df
    got = Projector(m, method, device="cpu").project(x.astype(np.float32), "y", 0, mode="map")
    np.testing.assert_allclose(got.pixels, expected, rtol=1e-5, atol=1e-6)


def test_rectifier_rules_differ_where_the_table_says(tmp_path):
    # At every rectifier the three methods give three different projections of the probe (so
    # the hand-computed checks above are not one rule three times)...
    x = _PROBE_X.astype(np.float32)
    for op in _RECT:
        m = pa.load_model(fac.activation_probe(tmp_path, op), check_parity=False)
        p = [Projector(m, k, device="cpu").project(x, "y", 0, mode="map").pixels for k in METHODS]
        for i, j in ((0, 1), (0, 2), (1, 2)):
            assert np.abs(p[i] - p[j]).max() > 1e-3, (op, METHODS[i], METHODS[j])
    # ... and a ReLU6 input above the cap passes the deconvnet's signal but not guided's.
    m = pa.load_model(fac.activation_probe(tmp_path, "Relu6"), check_parity=False)
    above = np.zeros((1, 3, 4, 4), np.float32)
    above[0, 0] = 7.0  # the output is 6 * w0 = 6 everywhere, sent back as 6 * w0 = 6
    d = Projector(m, "deconv", device="cpu").project(above, "y", 0, mode="map").pixels
    g = Projector(m, "guided", device="cpu").project(above, "y", 0, mode="map").pixels
    np.testing.assert_array_equal(d[0, 0], np.full((4, 4), 6.0))
    np.testing.assert_array_equal(g[0, 0], np.zeros((4, 4)))


class _RuleRectifier(torch.autograd.Function):
    """A rectifier (negative slope, optional cap) whose backward is the projection rule."""

    @staticmethod
    def forward(ctx, x, slope, cap, rule):
        ctx.save_for_backward(x)
        ctx.slope, ctx.cap, ctx.rule = slope, cap, rule
        y = torch.where(x > 0, x, slope * x)
        return y if cap is None else y.clamp_max(cap)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        r = torch.where(g > 0, g, ctx.slope * g)  # the unit's own map on the signal, no cap
        if ctx.rule == "deconv":
            return r, None, None, None
        d = torch.where(x > 0, torch.ones_like(x), ctx.slope * torch.ones_like(x))
        if ctx.cap is not None:
            d = d * (x < ctx.cap)
        return r * d, None, None, None  # guided: and the forward gradient


def _torch_activation(op, x, slope, rule):
    """``op`` on NCHW ``x``: rectifiers follow ``rule`` (None: autograd), smooth ops autograd
    through torch's own (fused) functions, whatever graph the model uses."""
    if op in _RECT:
        a, cap = _RECT[op]
        a = slope if a is None else a
        if rule is not None:
            return _RuleRectifier.apply(x, a, cap, rule)
        y = F.leaky_relu(x, a) if isinstance(a, float) else torch.where(x > 0, x, a * x)
        return y if cap is None else y.clamp_max(cap)
    fns = {
        "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Softsign": F.softsign,
        "HardSigmoid": lambda t: (0.25 * t + 0.4).clamp(0, 1), "HardSwish": F.hardswish,
        "HardSwishDecomposed": F.hardswish, "Elu": lambda t: F.elu(t, 0.7), "Selu": F.selu,
        "Celu": lambda t: F.celu(t, 1.3), "Softplus": F.softplus, "SoftplusDecomposed": F.softplus,
        "Gelu": F.gelu, "GeluErf": F.gelu, "GeluTanh": lambda t: F.gelu(t, approximate="tanh"),
        "Mish": F.mish, "MishDecomposed": F.mish, "Swish": F.silu,
        "ClipSym": lambda t: t.clamp(-1, 1), "Square": lambda t: t * t,
    }  # fmt: skip
    return fns[op](x)


def _replica_projection(op, path, x, layer, unit, mode, rule):
    """The projection of ``unit`` of ``layer`` by autograd through a torch replica (NCHW) of
    :func:`onnx_factory.activation_cnn` built from the file's weights."""
    w = {k: torch.from_numpy(v.copy()) for k, v in _weights(path).items()}

    def slope(i):
        s = w.get(f"act{i}/slope")
        return None if s is None else s.reshape(-1, 1, 1) if s.numel() > 1 else s

    xt = torch.from_numpy(x).requires_grad_(True)
    h = F.conv2d(xt, w["conv1.weight"], w["conv1.bias"], padding=1)
    a1 = _torch_activation(op, h, slope(1), rule)
    out = F.conv2d(a1, w["conv2.weight"], w["conv2.bias"], padding=1)
    if layer == "act2":
        out = _torch_activation(op, out, slope(2), rule)
    chan = out[:, unit].reshape(len(out), -1)
    keep = torch.ones_like(chan)
    if mode == "max":
        keep = torch.zeros_like(chan).scatter_(1, chan.argmax(1, keepdim=True), 1.0)
    chan.backward((chan * keep).detach())  # the projected signal is the activation itself
    return xt.grad.numpy()


_OLD_CLIPS = [("Relu6", 9), ("ClipMin0", 9), ("Clip0_2", 10), ("ClipSym", 9), ("LeakyRelu", 9)]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("op, opset", [(op, None) for op in fac.ACTIVATIONS] + _OLD_CLIPS)
def test_activation_matches_autograd_with_its_rule(tmp_path, fused_converters, op, opset, layout):
    # Before opset 11 the Clips carry their bounds as attributes, from 11 on as constant
    # inputs (a Constant node's output and an initializer).
    path = fac.activation_cnn(tmp_path, op, layout, opset=opset)
    m = pa.load_model(path, check_parity=False)
    x = (3 * np.random.default_rng(1).standard_normal((2, 3, 8, 8))).astype(np.float32)
    xin = x if layout == "nchw" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for method in METHODS:
        projector = Projector(m, method, device="cpu")
        for layer in ("conv2", "act2"):
            for mode in ("max", "map"):
                got = projector.project(xin, layer, 2, mode=mode).pixels
                rule = None if method == "saliency" else method
                ref = _replica_projection(op, path, x, layer, 2, mode, rule)
                np.testing.assert_allclose(
                    got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max(),
                    err_msg=f"{op} {layout} {method} {layer} {mode}",
                )  # fmt: skip


def test_clip_bounds_whatever_module_onnx2torch_makes(tmp_path):
    # onnx2torch turns Clip(0, none) into nn.ReLU, Clip(0, 6) into nn.ReLU6 and other bounds
    # into its OnnxClip; the walker dispatches on the ONNX op and reads the bounds from
    # attributes (opset < 11) or the module (constant inputs), so each Clip is what its
    # bounds say, in both forms.
    from onnx2torch.node_converters.clip import OnnxClip

    x = _PROBE_X.astype(np.float32)
    for op, kind in (("ClipMin0", torch.nn.ReLU), ("Relu6", torch.nn.ReLU6), ("Clip0_2", OnnxClip)):
        got = []
        for opset in (9, 13):
            path = fac.activation_probe(tmp_path, op, opset=opset)
            m = pa.load_model(path, check_parity=False)
            node, _ = m.gradient.producer("act")
            if opset == 13:
                assert isinstance(m.gradient.module.get_submodule(node), kind)
            got.append(Projector(m, "guided", device="cpu").project(x, "y", 0, mode="map").pixels)
        np.testing.assert_array_equal(got[0], got[1])


def test_an_op_read_twice_counts_both_terms(tmp_path):
    # Mul(x, x): the walker sends 2 * x * s once, not twice (nor once x * s).
    m = pa.load_model(fac.activation_probe(tmp_path, "Square"), check_parity=False)
    x = _PROBE_X.astype(np.float32)
    w = np.asarray(fac.PROBE_WEIGHTS).reshape(1, 3, 1, 1)
    y = (w * x * x).sum(axis=1, keepdims=True)
    got = Projector(m, "deconv", device="cpu").project(x, "y", 0, mode="map").pixels
    np.testing.assert_allclose(got, 2 * x * w * y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["deconv", "guided", "saliency"])
def test_several_units_in_one_walk_equal_each_alone(default, tmp_path, method):
    """project_units: one forward pass, the walk on the images repeated once per unit; each
    unit equals its own project() (and the autograd reference)."""
    x = _inputs(default, n=3)
    p = Projector(default, method, device="cpu")
    units = [5, 0, 17]
    many = p.project_units(x, "relu6", units, mode="max")
    for u, got in zip(units, many, strict=True):
        alone = p.project(x, "relu6", u, mode="max")
        assert got.unit == u
        np.testing.assert_allclose(got.pixels, alone.pixels, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(got.positions, alone.positions)
        np.testing.assert_array_equal(got.activation, alone.activation)
    # NHWC with a padded max-pool and transposes, in map mode
    m = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    p = Projector(m, method, device="cpu")
    many = p.project_units(x, "avgpool1", [4, 1], mode="map")
    for u, got in zip([4, 1], many, strict=True):
        ref = p.project(x, "avgpool1", u, mode="map").pixels
        np.testing.assert_allclose(got.pixels, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    with pytest.raises(UserInputError, match="one per row"):
        p.project(x, "avgpool1", [1, 2, 3])


def test_switches_come_from_the_forward_pass(tmp_path, monkeypatch):
    # Each max-pool is pooled once per projection, in the forward pass, with its switches; the
    # walk reuses them. The converted pool module runs only the first time (to check that the
    # two agree bit for bit), and the projections are the same either way.
    from pyanalyzer.methods import deconvnet

    m = pa.load_model(fac.overlapping_pools(tmp_path, padded_tail=True), check_parity=False)
    x = np.random.default_rng(1).normal(size=(2, 3, 27, 27)).astype(np.float32)
    p = Projector(m, "deconv", device="cpu")
    pools = [n for n, node in p.engine.onnx_nodes.items() if node.op_type == "MaxPool"]
    ran: list[str] = []
    for name in pools:
        p.engine.module.get_submodule(name).register_forward_hook(
            lambda mod, i, o, name=name: ran.append(name)
        )
    made: list[str] = []
    real = deconvnet._pool_switches

    def counting(node, x):
        made.append(node.name)
        return real(node, x)

    monkeypatch.setattr(deconvnet, "_pool_switches", counting)
    first = p.project(x, "relu2", 3, mode="map")
    assert sorted(ran) == sorted(pools[:1]) and sorted(made) == sorted(pools[:1])
    assert p._pool_same == {pools[0]: True}
    ran.clear(), made.clear()
    again = p.project_units(x, "maxpool2", [3, 1], mode="map")
    assert ran == pools[1:] and sorted(made) == sorted(pools)  # pool 2 first met: checked
    ran.clear(), made.clear()
    p.project_units(x, "maxpool2", [3, 1], mode="map")
    assert ran == [] and sorted(made) == sorted(pools)  # once each, in the forward pass
    np.testing.assert_array_equal(first.pixels, Projector(m, "deconv", "cpu").project(
        x, "relu2", 3, mode="map").pixels)  # fmt: skip
    assert len(again) == 2


# ---- the transposed convolution where the signal is ----------------------------------------


def _sparse_signal(rng, n, c, h, w, kind):
    sig = torch.zeros(n, c, h, w, dtype=torch.float64)
    if kind == "dense":
        return torch.from_numpy(rng.normal(size=(n, c, h, w)))
    for i in range(n):
        if kind == "one-empty" and i == 1:
            continue
        # one unit's channel, a position each (corners included); topk: three near it
        y0 = int(rng.choice([0, h - 1, int(rng.integers(0, h))]))
        x0 = int(rng.choice([0, w - 1, int(rng.integers(0, w))]))
        for j in range(3 if kind == "topk" else 1):
            ch = int(rng.integers(0, 2)) if kind == "two-channels" else 0
            y = min(max(y0 + (int(rng.integers(-1, 2)) if j else 0), 0), h - 1)
            x = min(max(x0 + (int(rng.integers(-1, 2)) if j else 0), 0), w - 1)
            sig[i, ch, y, x] = float(rng.normal())
    return sig


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=5, out_channels=8, kernel_size=3, padding=1),
        dict(in_channels=3, out_channels=8, kernel_size=11, stride=4, padding=2),
        dict(in_channels=4, out_channels=8, kernel_size=(3, 5), stride=(2, 1), padding=(0, 2)),
        dict(in_channels=4, out_channels=8, kernel_size=3, dilation=2, padding=2),
        dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),  # depthwise
        dict(in_channels=6, out_channels=8, kernel_size=3, stride=2, groups=2),
    ],
)
@pytest.mark.parametrize("kind", ["one", "topk", "two-channels", "one-empty", "zero", "dense"])
def test_windowed_transposed_convolution_equals_the_full_one(conv, kind):
    """_conv_input against torch's conv2d_input of the whole signal, in float64: windows
    at the map's edges (padding cut off), strides, dilation, groups, an image without signal,
    no signal at all, and a dense signal (the full convolution)."""
    from pyanalyzer.methods import deconvnet as dn

    rng = np.random.default_rng(hash((str(conv), kind)) % 2**32)
    module = torch.nn.Conv2d(**conv, bias=False).double()
    x_shape = (3, conv["in_channels"], 23, 19)
    h, w = module(torch.zeros(x_shape, dtype=torch.float64)).shape[-2:]
    sig = _sparse_signal(rng, 3, conv["out_channels"], h, w, "one" if kind == "zero" else kind)
    if kind == "zero":
        sig.zero_()
    want = torch.nn.grad.conv2d_input(x_shape, module.weight, sig, module.stride,
                                      module.padding, module.dilation, module.groups)  # fmt: skip
    windows = dn._windows(sig.abs())
    assert (windows is None) == (kind == "dense")  # the windowed path is the one tested
    with torch.no_grad():
        got = dn._conv_input(module, sig, x_shape)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_live_channels_and_windows_are_what_the_signal_reaches():
    from pyanalyzer.methods import deconvnet as dn

    sig = torch.zeros(2, 6, 9, 9)
    sig[0, 4, 2, 3] = 1.0
    sig[1, 1, 7, 8] = float("nan")  # NaN is signal
    assert dn._live_channels(sig.abs()).tolist() == [1, 4]
    assert dn._windows(sig.abs()) == ((1, 1), [(2, 3), (7, 8)])
    sig[1, 1, 5, 6] = -2.0  # image 1 spans rows 5..7, cols 6..8: a 3x3 window for both
    assert dn._windows(sig.abs()) == ((3, 3), [(2, 3), (5, 6)])
    assert dn._live_channels(torch.ones(2, 6, 3, 3)) is None  # every channel: the full filters
    assert dn._windows(torch.ones(2, 6, 3, 3)) is None
    assert dn._live_channels(torch.zeros(2, 6, 3, 3)).tolist() == [0]
