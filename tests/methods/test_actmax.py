"""Activation maximization: objectives, parametrizations, transforms, regularizers, the loop.

Checked against hand-computed cases (transforms on tiny tensors, objective algebra), against
onnxruntime (class images are classified by the ONNX model itself), and by optimisation
outcomes (activations rise at least tenfold; dead units move only with redirected ReLUs).
"""

from __future__ import annotations

import contextlib
import importlib

import numpy as np
import onnx_factory as fac
import pytest
import torch
from PIL import Image

import pyanalyzer as pa
from pyanalyzer.data.images import ArraySource
from pyanalyzer.errors import GradientUnavailableError, UserInputError
from pyanalyzer.methods.actmax import (
    ActivationMaximization,
    Activations,
    ActmaxResult,
    CenterCrop,
    Compose,
    ContributionClip,
    GaussianBlur,
    Jitter,
    L2Decay,
    NormClip,
    Pad,
    RandomRotate,
    RandomScale,
    RedirectedReLU,
    RedirectedReLU6,
    TotalVariation,
    channel,
    color_correlation_from_images,
    custom_set,
    direction,
    diversity,
    find_logits,
    load_directions,
    mean_color,
    neuron,
    redirected_relu,
    render,
    standard_transforms,
)
from pyanalyzer.methods.actmax import fused as fused_module
from pyanalyzer.methods.actmax import selected as selected_module
from pyanalyzer.methods.actmax import transforms as transforms_module
from pyanalyzer.methods.actmax.fused import fused_input
from pyanalyzer.methods.actmax.objectives import Objective, resolve
from pyanalyzer.methods.actmax.param import IMAGENET_COLOR_SQRT, FFTParam
from pyanalyzer.methods.actmax.regularizers import blur, gaussian_kernel
from pyanalyzer.methods.actmax.render import Net
from pyanalyzer.methods.actmax.selected import selected_units
from pyanalyzer.methods.actmax.transforms import DrawAhead, Transform, draw_ahead, draw_index
from pyanalyzer.model.preprocessing import PreprocessSpec
from pyanalyzer.report.actmax import write_actmax
from pyanalyzer.store import Key, Store

FAST = {"progress": False}
render_module = importlib.import_module("pyanalyzer.methods.actmax.render")  # not the function


def run_actmax(model, layer, units, *, reference=None, **kw):
    """One analysis run: the call form every test below uses."""
    return ActivationMaximization(model, layer=layer, units=units, **kw).run(reference)


@pytest.fixture(scope="module")
def model(default_model):
    return pa.load_model(default_model, check_parity=False)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- transforms on tiny tensors ------------------------------------------------------------


def test_pad_constant_and_reflect_on_2x2():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    const = Pad(1, mode="constant", value=0.5)(x, gen())
    assert const.tolist() == [
        [[[0.5, 0.5, 0.5, 0.5], [0.5, 1, 2, 0.5], [0.5, 3, 4, 0.5], [0.5, 0.5, 0.5, 0.5]]]
    ]
    refl = Pad(1, mode="reflect")(x, gen())
    assert refl.tolist() == [[[[4, 3, 4, 3], [2, 1, 2, 1], [4, 3, 4, 3], [2, 1, 2, 1]]]]


def test_jitter_is_the_crop_the_generator_draws():
    x = torch.rand(3, 2, 9, 7)
    off = draw_index(gen(11), 3, 4, 2)  # what Jitter(3) draws from the same generator
    got = Jitter(3)(x, gen(11))
    assert got.shape == (3, 2, 6, 4)
    for i, (dy, dx) in enumerate(off.tolist()):
        assert torch.equal(got[i], x[i, :, dy : dy + 6, dx : dx + 4])


def test_per_image_generators_make_draws_independent_of_the_batch():
    x = torch.rand(2, 3, 12, 12)
    both = Jitter(5)(x, [gen(1), gen(2)])
    alone = Jitter(5)(x[1:], [gen(2)])
    assert torch.equal(both[1:], alone)


def test_scale_2x_of_constant_and_of_a_ramp():
    flat = torch.full((1, 3, 6, 6), 0.3)
    assert torch.allclose(RandomScale([2.0])(flat, gen()), flat)
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    # zoom 2x about the centre 3.5: output x samples 3.5 + (x - 3.5) / 2
    expect = 3.5 + (torch.arange(8.0) - 3.5) / 2
    assert torch.allclose(RandomScale([2.0])(ramp, gen())[0, 0], expect.expand(8, 8), atol=1e-5)


@pytest.mark.parametrize("size", [4, 5])
def test_rotate_0_is_identity_and_90_is_rot90(size):
    x = torch.rand(2, 3, size, size)
    assert torch.allclose(RandomRotate([0])(x, gen()), x, atol=1e-6)
    assert torch.allclose(RandomRotate([90])(x, gen()), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(RandomRotate([-90])(x, gen()), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)


def test_resampling_fill_and_the_standard_set_shows_no_black(size=224):
    flat = torch.full((2, 3, 16, 16), 0.5)
    assert torch.allclose(RandomScale([0.5], fill=0.5)(flat, gen()), flat)  # grey stays grey
    zoomed_out = RandomScale([0.5])(flat, gen())  # default fill 0: a black border
    assert zoomed_out[..., 0, 0].abs().max() == 0 and torch.isclose(zoomed_out[0, 0, 8, 8],
                                                                   torch.tensor(0.5))  # fmt: skip
    with pytest.raises(UserInputError, match="different values"):
        Compose([RandomScale([0.9], fill=0.5), RandomRotate([5])])(flat, gen())
    # a large grey image through lucid's set, cropped back to its size: grey everywhere
    grey = torch.full((8, 3, size, size), 0.5)
    out = Compose([*standard_transforms(), CenterCrop((size, size))])(grey, gen(3))
    assert torch.allclose(out, grey, atol=1e-6)


def test_compose_fuses_affine_steps_with_the_same_draws():
    x = torch.rand(3, 2, 10, 10)
    fused = Compose([Jitter(3), Jitter(2), CenterCrop((4, 4))])(x, gen(5))
    g = gen(5)
    one_by_one = CenterCrop((4, 4))(Jitter(2)(Jitter(3)(x, g), g), g)
    assert torch.allclose(fused, one_by_one, atol=1e-6)
    # lucid's set: 12 px of padding, 8 + 4 of jitter -> 12 pixels larger than the image
    assert standard_transforms()(torch.rand(2, 3, 20, 20), gen()).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    ("pad", "fill", "fused"),
    [(Pad(3, "constant", 0.5), 0.5, True), (Pad(3, "constant", 0.0), 0.5, False),
     (Pad(3, "reflect"), 0.5, False)],
    ids=["same-fill", "other-fill", "reflect"],
)  # fmt: skip
def test_a_constant_pad_joins_the_resampling_of_its_fill(pad, fill, fused):
    """The pad as a shift inside the one resampling (no padded canvas) when the run fills
    with its value: the padded-then-resampled image to float rounding; otherwise (another
    fill, reflect) the pad runs on its own, as before, with no error about fills."""
    x = torch.rand(4, 3, 12, 12)
    steps = [pad, Jitter(2), RandomScale([0.9, 1.1], fill=fill), RandomRotate([-7, 7], fill=fill)]
    compose = Compose(steps)
    assert (compose._resampling(0, []) is not None) == fused
    g = gen(9)
    one_by_one = Compose(steps[1:])(pad(x, g), g)
    got = compose(x, gen(9))
    assert got.shape == one_by_one.shape == (4, 3, 16, 16)
    torch.testing.assert_close(got, one_by_one, rtol=0, atol=1e-5)


SPECS = {
    "rgb-nchw": PreprocessSpec((20, 18), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "caffe-bgr": PreprocessSpec((20, 18), scale=1.0, mean=(103.9, 116.8, 123.7),
                                channel_order="bgr"),
    "nhwc": PreprocessSpec((20, 18), mean=(0.5,), std=(0.5,), layout="nhwc"),
    "gray": PreprocessSpec((20, 18), mean=(0.2,), std=(0.3,), channels=1),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SPECS))
def test_the_compiled_transforms_equal_the_torch_ops(name):
    """fused.FusedInput (one C++ pass) against what the render loop does in torch: lucid's
    transforms, the crop, normalize_torch and the channels-last copy; forward values and the
    gradient for the images, on every preprocessing kind, both against the torch ops in
    float64 (the float32 ops round their sampling coordinates to float32, the kernel does not)."""
    spec = SPECS[name]
    c, hw = spec.channels, spec.input_size
    pipeline = Compose([*standard_transforms(), CenterCrop(hw)])
    fused = fused_input(pipeline, spec, hw, torch.device("cpu"))
    assert fused is not None
    x = torch.rand(5, c, *hw, dtype=torch.float64, requires_grad=True)
    gens = [gen(k) for k in range(5)]
    want = spec.normalize_torch(pipeline(x, gens))
    got = fused(x.detach().float().requires_grad_(True), [gen(k) for k in range(5)])
    assert got.shape == want.shape
    if spec.layout == "nchw":
        assert got.is_contiguous(memory_format=torch.channels_last)
    tol = 2e-6 * float(want.detach().abs().max())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)
    g = torch.randn(want.shape, dtype=torch.float64)
    (want_grad,) = torch.autograd.grad((want * g).sum(), x)
    xf = x.detach().float().requires_grad_(True)
    (got_grad,) = torch.autograd.grad((fused(xf, [gen(k) for k in range(5)]) * g.float()).sum(), xf)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=0,
                               atol=1e-5 * float(want_grad.abs().max()))  # fmt: skip


def test_the_compiled_transforms_are_chosen_only_where_they_apply(monkeypatch):
    spec = SPECS["rgb-nchw"]
    hw, cpu = spec.input_size, torch.device("cpu")
    lucid = Compose([*standard_transforms(), CenterCrop(hw)])
    assert fused_input(lucid, spec, hw, cpu) is not None
    assert fused_input(lucid, spec, hw, torch.device("cuda")) is None  # torch ops there
    reflect = Compose([Pad(4, "reflect"), Jitter(2), CenterCrop(hw)])
    assert reflect.as_resampling() is None and fused_input(reflect, spec, hw, cpu) is None
    bigger = (hw[0] * 2, hw[1] * 2)  # a resize to the input size follows the crop
    assert fused_input(Compose([Jitter(2), CenterCrop(bigger)]), spec, bigger, cpu) is None
    monkeypatch.setattr(fused_module, "ENABLED", False)
    assert fused_input(lucid, spec, hw, cpu) is None


def _rendered_both_ways(model, monkeypatch, lever, layer):
    """``(with, without)``: renderings of 1 and 12 steps of units 0, 3, 5 of ``layer`` with
    ``lever.ENABLED`` True, then False."""
    runs = {}
    for enabled in (True, False):
        monkeypatch.setattr(lever, "ENABLED", enabled)
        runs[enabled] = [run_actmax(model, layer, [0, 3, 5], steps=s, seed=3, **FAST)
                         for s in (1, 12)]  # fmt: skip
    return runs[True], runs[False]


def test_render_with_the_compiled_transforms_equals_the_torch_ops(model, monkeypatch):
    """The same rendering both ways. The two paths sample at coordinates about 1e-5 pixels
    apart; after one step the images are the same to one grey level; Adam, which scales every
    update to about the learning rate, lets such differences grow in the pixels the objective
    barely moves, so after 12 steps the objective's values are compared (they agree to 0.1 %
    here, and the units' activations rise the same way)."""
    (one_fast, fast), (one_slow, slow) = _rendered_both_ways(
        model, monkeypatch, fused_module, "relu2"
    )
    assert np.abs(one_fast.images.astype(int) - one_slow.images.astype(int)).max() <= 1
    np.testing.assert_allclose(fast.reached, slow.reached, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(fast.curve, slow.curve, rtol=0, atol=1e-3)
    assert (fast.reached[:2] > fast.start[:2]).all()


def test_same_generator_seed_same_transforms():
    x = torch.rand(4, 3, 16, 16)
    t = standard_transforms()
    assert torch.equal(t(x, gen(3)), t(x, gen(3)))
    assert not torch.equal(t(x, gen(3)), t(x, gen(4)))


def _copies(gens):
    out = [torch.Generator() for _ in gens]
    for c, g in zip(out, gens, strict=True):
        c.set_state(g.get_state())
    return out


def test_draws_ahead_are_the_generators_own_draws():
    """Every draw of a DrawAhead equals torch's randint from the generator itself, for
    generators fresh from a seed, used for other draws before, or deep into a block, for
    ranges from 1 to 2**24 and several words at a time, across block refills."""
    gens = [gen(s) for s in range(5)]
    torch.randn(7, generator=gens[1])  # normal draws (two words each, and a cached one)
    torch.rand(3, generator=gens[2])
    torch.randint(0, 9, (1500,), generator=gens[3])  # past MT19937's 624-word regeneration
    before = [g.get_state().clone() for g in gens]
    ref = _copies(gens)
    ahead = draw_ahead(gens)
    assert isinstance(ahead, DrawAhead) and len(ahead) == 5
    rng = np.random.default_rng(0)
    for i in range(1200):  # about 2400 words: two refills of DrawAhead.BLOCK
        high = int(rng.integers(1, 2**24 + 1)) if i % 40 == 0 else int(rng.integers(1, 30))
        k = int(rng.integers(1, 4))
        assert torch.equal(draw_index(ahead, 5, high, k), draw_index(ref, 5, high, k))
    assert all(torch.equal(b, g.get_state()) for b, g in zip(before, gens, strict=True))
    with pytest.raises(ValueError, match="4 images"):
        draw_index(ahead, 4, 3)
    with pytest.raises(ValueError, match="below"):
        draw_index(ahead, 5, 2**24 + 1)


def test_draws_ahead_fall_back_to_torch_where_the_state_is_unknown(monkeypatch):
    gens = [gen(1), gen(2)]
    monkeypatch.setattr(transforms_module, "_STATE_BYTES", 5000)  # another layout
    assert draw_ahead(gens) == gens
    monkeypatch.undo()
    # words that do not match torch's own draws (the check on a copy of the first generator)
    monkeypatch.setattr(transforms_module, "_mersenne", lambda g: np.random.MT19937(7))
    assert draw_ahead(gens) == gens


class _Custom(Transform):
    def __call__(self, x, generator):
        return x


def test_render_draws_ahead_only_for_the_module_transforms_and_the_same_images(model, monkeypatch):
    lucid = Compose([*standard_transforms(), CenterCrop((8, 8))])
    assert lucid.draws_by_index()
    assert not Compose([_Custom(), Jitter(2)]).draws_by_index()
    runs = {}
    for ahead in (True, False):
        monkeypatch.setattr(render_module, "DRAW_AHEAD", ahead)
        for enabled in (True, False):  # the compiled pass and the torch ops
            monkeypatch.setattr(fused_module, "ENABLED", enabled)
            runs[ahead, enabled] = run_actmax(model, "relu2", [0, 3], steps=6, seed=3, **FAST)
    for enabled in (True, False):
        a, b = runs[True, enabled], runs[False, enabled]
        assert np.array_equal(a.images, b.images)
        assert np.array_equal(a.curve, b.curve)


# ---- parametrizations ----------------------------------------------------------------------


@pytest.mark.parametrize("size, centre", [((6, 8), (0.485, 0.456, 0.406)), ((7, 5), (0.3,))])
def test_fft_param_is_lucids_formula(size, centre):
    """The image against numpy's inverse FFT in float64 of the 1/f-scaled spectrum, lucid's
    colour square root (normalised) and the sigmoid about the centre's logit; the gradient
    against autograd through the same formula in float64."""
    h, w = size
    p = FFTParam(2, size, centre, start="noise", generators=[gen(1), gen(2)], sd=0.5)
    spec = p.spectrum.detach().double().numpy()
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    factor = 0.25 / np.maximum(f, 1.0 / max(h, w))
    img = np.fft.irfft2((spec[..., 0] + 1j * spec[..., 1]) * factor, s=size, norm="ortho")
    if len(centre) == 3:
        color = IMAGENET_COLOR_SQRT.astype(np.float64)
        color /= np.linalg.norm(color, axis=0).max()
        img = np.einsum("ij,njhw->nihw", color, img)
    logit = np.log(np.asarray(centre) / (1 - np.asarray(centre)))[None, :, None, None]
    want = 1 / (1 + np.exp(-(img + logit)))
    got = p()
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=0, atol=2e-6)
    g = torch.rand(got.shape, generator=gen(3))
    (got_grad,) = torch.autograd.grad(got, p.spectrum, g)
    s64 = p.spectrum.detach().double().requires_grad_(True)
    z = torch.fft.irfftn(
        torch.view_as_complex(s64 * torch.from_numpy(factor)[None, None, :, :, None]),
        s=size, dim=(-2, -1), norm="ortho",
    )  # fmt: skip
    if len(centre) == 3:
        z = torch.einsum("ij,njhw->nihw", torch.from_numpy(color), z)
    (want_grad,) = torch.autograd.grad(torch.sigmoid(z + torch.from_numpy(logit)), s64, g.double())
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-5, atol=1e-6)


# ---- each image's own unit alone -------------------------------------------------------------


def _values_and_grad(net, objective, x, select=None, redirect=False):
    x = x.detach().clone().requires_grad_(True)
    modules = select.modules() if select is not None else ()
    with net.redirected(*modules) if redirect else contextlib.nullcontext():
        v = select(x) if select is not None else objective.value(net.on_input(x))
        (g,) = torch.autograd.grad(-v.sum(), x)  # the loss the render loop minimises
    return v.detach(), g


@pytest.mark.parametrize(
    "objective",
    [
        channel("relu5", list(range(6))),  # a ReLU after a convolution, one unit per image
        channel("conv5", [5, 0, 63, 7, 7, 1]),  # the convolution's output itself
        channel("relu1", 3),  # the first convolution: it reads the model input
        neuron("relu4", [1, 2, 3, 4, 5, 6], x=2, y=5),
        channel("relu6", list(range(6)), batch=2),
        channel("relu6", [0, 3, 1, 16, 3, 95]),  # dead on images 1, 3, 4 and 5
    ],
    ids=repr,
)
@pytest.mark.parametrize("redirect", [False, True])
def test_selected_units_equal_the_whole_layer(model, objective, redirect):
    """Values and the gradient at the model input equal those of the whole layer, with the
    ReLUs plain and redirected (the last case's units are dead on four of its images, so
    that the redirection changes their gradient)."""
    net = Net(model, {r: resolve(model, r) for r in objective.refs()}, "cpu")
    select = selected_units(net, objective, 6)
    assert select is not None
    x = net.prepare(torch.rand(6, 3, 64, 64, generator=gen(4)) * 0.6)
    want_v, want_g = _values_and_grad(net, objective, x, redirect=redirect)
    got_v, got_g = _values_and_grad(net, objective, x, select, redirect=redirect)
    torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_g, want_g, rtol=0, atol=1e-5 * float(want_g.abs().max()))
    assert float(want_g.abs().max()) > 0


def test_selected_units_pass_the_gradient_back_in_the_maps_layout(model):
    """The gradient reaching the convolution's input map is channels-last like the map (the
    ReLU backward before it then reads both in one layout), with the whole layer's values."""
    objective = channel("relu5", [3, 1, 4, 1])
    net = Net(model, {r: resolve(model, r) for r in objective.refs()}, "cpu")
    select = selected_units(net, objective, 4)
    assert select is not None and select.module is not None
    seen = []

    def keep(module, args, out):
        assert out[0].is_contiguous(memory_format=torch.channels_last)
        out[0].register_hook(lambda g: seen.append(g))

    handle = select.module.register_forward_hook(keep)
    try:
        x = net.prepare(torch.rand(4, 3, 64, 64, generator=gen(6)))
        _, got = _values_and_grad(net, objective, x, select)
    finally:
        handle.remove()
    (g,) = seen
    assert not g.is_contiguous() and g.is_contiguous(memory_format=torch.channels_last)
    _, want = _values_and_grad(net, objective, x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize(
    "objective",
    [
        direction("relu5", np.arange(6 * 64, dtype=np.float32).reshape(6, 64) % 5 - 2),
        channel("maxpool2", [0, 5, 9, 31, 2, 2]),
    ],
    ids=repr,
)
def test_objectives_pass_the_gradient_back_in_the_maps_layout(model, objective):
    """An objective's reductions pass back a contiguous gradient; the render loop's network
    hands it to the channels-last map channels-last, with the values and input gradient of
    the plain network."""
    (ref,) = objective.refs()
    net = Net(model, {ref: resolve(model, ref)}, "cpu")
    seen = []

    def keep(module, args, out):
        out[0].register_hook(lambda g: seen.append(g))

    x = net.prepare(torch.rand(6, 3, 64, 64, generator=gen(7)))
    handle = net.module.register_forward_hook(keep)
    try:
        got_v, got_g = _values_and_grad(net, objective, x)
    finally:
        handle.remove()
    (g,) = seen
    assert not g.is_contiguous() and g.is_contiguous(memory_format=torch.channels_last)
    plain = x.detach().clone().requires_grad_(True)
    want_v = objective.value(
        Activations({ref: net.engine.features(plain, net.names)[net.names[0]]})
    )
    (want_g,) = torch.autograd.grad(-want_v.sum(), plain)
    torch.testing.assert_close(got_v, want_v.detach(), rtol=0, atol=0)
    torch.testing.assert_close(got_g, want_g, rtol=0, atol=0)


@pytest.mark.parametrize("redirect", [False, True])
def test_selected_units_through_relu6_equal_the_whole_layer(tmp_path, redirect):
    """The same through a ReLU6 (ONNX Clip(0, 6)), whose unit 0 is dead on flat images."""
    m = pa.load_model(fac.relu6_cnn(tmp_path), check_parity=False)
    layer = [info for info in m.layers if info.op == "Clip"][-1].alias
    objective = channel(layer, [0, 1, 0, 2])
    net = Net(m, {r: resolve(m, r) for r in objective.refs()}, "cpu")
    select = selected_units(net, objective, 4)
    assert select is not None
    flat = torch.linspace(0.1, 0.9, 4).view(4, 1, 1, 1).expand(4, 3, 32, 32)
    x = net.prepare(flat + 0.05 * torch.rand(4, 3, 32, 32, generator=gen(2)))
    want_v, want_g = _values_and_grad(net, objective, x, redirect=redirect)
    got_v, got_g = _values_and_grad(net, objective, x, select, redirect=redirect)
    torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_g, want_g, rtol=0, atol=1e-5 * float(want_g.abs().max()))
    assert float(want_g[0].abs().max()) > 0 if redirect else float(want_g[0].abs().max()) == 0


def test_selected_units_only_where_they_apply(model, tmp_path, monkeypatch):
    def chosen(m, objective, n=2):
        net = Net(m, {r: resolve(m, r) for r in objective.refs()}, "cpu")
        return selected_units(net, objective, n) is not None

    assert chosen(model, channel("relu5", [0, 1]))
    assert not chosen(model, channel("maxpool2", [0, 1]))  # not a convolution's output
    assert not chosen(model, channel("relu5", 0) + channel("relu5", 1))  # a combination
    assert not chosen(model, direction("relu5", np.ones((2, 64), np.float32)))
    relu6 = pa.load_model(fac.relu6_cnn(tmp_path), check_parity=False)
    clip = [layer for layer in relu6.layers if layer.op == "Clip"][-1]
    assert chosen(relu6, channel(clip.alias, [0, 1]))  # Clip(0, 6): a ReLU6
    monkeypatch.setattr(selected_module, "ENABLED", False)
    assert not chosen(model, channel("relu5", [0, 1]))


def test_render_with_selected_units_equals_the_whole_layer(model, monkeypatch):
    """The same rendering both ways: one step to one grey level, the objective's values over
    the first 5 steps to 0.05 %, over 12 steps to 2 % (Adam lets rounding grow: 1e-7 at the
    first steps, 0.9 % at the 12th here), the values reached to 0.5 %."""
    (one_fast, fast), (one_slow, slow) = _rendered_both_ways(
        model, monkeypatch, selected_module, "relu5"
    )
    assert np.abs(one_fast.images.astype(int) - one_slow.images.astype(int)).max() <= 1
    np.testing.assert_allclose(fast.curve[:5], slow.curve[:5], rtol=5e-4, atol=1e-5)
    np.testing.assert_allclose(fast.curve, slow.curve, rtol=2e-2, atol=1e-4)
    np.testing.assert_allclose(fast.reached, slow.reached, rtol=5e-3, atol=1e-3)


# ---- regularizers --------------------------------------------------------------------------


def test_blur_matches_scipy_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 2, 9, 11, dtype=torch.float64)
    for sigma in (0.5, 1.0):
        ref = np.stack([ndimage.gaussian_filter(c, sigma, mode="reflect") for c in x[0].numpy()])
        assert np.allclose(blur(x, sigma)[0].numpy(), ref, atol=1e-6)
    assert abs(float(gaussian_kernel(1.0).sum()) - 1.0) < 1e-6


def test_decay_and_clipping_edit_delta():
    delta = torch.tensor([[[[1.0, -2.0], [0.1, 3.0]], [[0.0, 0.0], [0.1, 0.0]]]])
    d = delta.clone()
    L2Decay(0.5).after_step(d, None, 0)
    assert torch.allclose(d, delta * 0.5)
    d = delta.clone()
    NormClip(50).after_step(d, None, 0)  # norms 1, 2, 0.14, 3: median 1.5
    assert d[0, :, 1, 0].abs().sum() == 0 and d[0, 0, 0, 0] == 0
    assert d[0, 0, 0, 1] == -2.0 and d[0, 0, 1, 1] == 3.0
    d = delta.clone()
    grad = torch.ones_like(delta)
    ContributionClip(50).after_step(d, grad, 0)  # |sum_c grad * delta|: 1, 2, 0.2, 3
    assert d[0, 0, 0, 0] == 0 and d[0, 0, 1, 0] == 0 and d[0, 0, 0, 1] == -2.0
    d = delta.clone()
    GaussianBlur(1.0, every=4).after_step(d, None, 1)  # not a blur step
    assert torch.equal(d, delta)


def test_total_variation_of_a_step_edge():
    img = torch.zeros(1, 1, 4, 4)
    img[..., 2:] = 1.0  # a vertical edge: 3 of the 9 pixels see a jump of 1
    assert torch.allclose(TotalVariation(1.0).penalty(img, None), torch.tensor([3 / 9]))


# ---- objectives ----------------------------------------------------------------------------


def _acts(n=3):
    g = gen(0)
    t6 = torch.rand(n, 8, 4, 4, generator=g)
    t5 = torch.rand(n, 4, 5, 5, generator=g)
    # the engines hand out NCHW maps whatever the model's layout (tests/model check that)
    return Activations({"relu6": t6, "relu5": t5}), t6, t5


def test_objectives_compose_linearly():
    acts, t6, t5 = _acts()
    a, b = channel("relu6", 5), neuron("relu5", 1)
    assert torch.allclose(a(acts), t6[:, 5].mean((1, 2)))
    assert torch.allclose(b(acts), t5[:, 1, 2, 2])  # the centre by default
    combo = a - 0.5 * b + 2
    assert torch.allclose(combo(acts), a(acts) - 0.5 * b(acts) + 2)
    assert torch.allclose((-a)(acts), -a(acts))
    assert torch.allclose((a / 4 + b * 3)(acts), a(acts) / 4 + 3 * b(acts))
    assert torch.allclose((1 - a)(acts), 1 - a(acts))
    assert repr(combo) == "channel(relu6, 5) - 0.5 * neuron(relu5, 1) + 2"
    assert combo.refs() == {"relu6", "relu5"}
    with pytest.raises(TypeError):
        _ = a * b


def test_objectives_per_image_units_and_batch_index():
    acts, t6, _ = _acts()
    per_image = channel("relu6", [0, 3, 7])(acts)
    assert torch.allclose(
        per_image, torch.stack([t6[i, u].mean() for i, u in enumerate([0, 3, 7])])
    )
    only1 = channel("relu6", 2, batch=1)(acts)
    assert only1[0] == 0 and only1[2] == 0 and torch.isclose(only1[1], t6[1, 2].mean())
    assert torch.allclose(neuron("relu6", 4, x=0, y=3)(acts), t6[:, 4, 3, 0])


def test_direction_and_diversity():
    acts, t6, _ = _acts()
    onehot = torch.zeros(8)
    onehot[5] = 1.0
    assert torch.allclose(direction("relu6", onehot)(acts), channel("relu6", 5)(acts))
    v = torch.arange(8.0)
    assert torch.allclose(
        direction("relu6", v)(acts), (t6 * v.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    )
    # one direction per image: row i for image i
    rows = torch.randn(3, 8, generator=gen(2))
    per_image = direction("relu6", rows)(acts)
    assert torch.allclose(
        per_image, torch.stack([direction("relu6", rows[i])(acts)[i] for i in range(3)])
    )
    assert repr(direction("relu6", rows)) == "direction(relu6, <3x8>)"
    same = Activations({"relu6": t6[:1].repeat(3, 1, 1, 1)})
    assert torch.allclose(diversity("relu6")(same), torch.full((3,), -1.0))
    assert (diversity("relu6")(acts) > -1).all()


# ---- the method on the default model ------------------------------------------------------


def test_channel_objectives_reach_ten_times_their_start(model):
    # Start from the mean image (mid-grey): "start" is the activation there (no transforms).
    for layer, units in (("relu4", [2, 5, 9]), ("relu6", [2, 5, 9, 10])):
        r = run_actmax(model, layer, units, steps=48, seed=0, start="mean", **FAST)
        assert (r.start > 0).all(), (layer, r.start)
        assert (r.reached >= 10 * r.start).all(), (layer, r.start, r.reached)
        assert r.images.shape == (len(units), 64, 64, 3) and r.images.dtype == np.uint8
        assert r.curve.shape == (48, len(units)) and (r.curve[-1] > r.curve[0]).all()


def test_fixed_seed_gives_identical_images(model):
    kw = dict(steps=12, **FAST)
    a = run_actmax(model, "relu5", [0, 7, 9], seed=3, **kw)
    b = run_actmax(model, "relu5", [0, 7, 9], seed=3, **kw)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.reached, b.reached)
    c = run_actmax(model, "relu5", [0, 7, 9], seed=4, **kw)
    assert not np.array_equal(a.images, c.images)


def test_batched_equals_one_by_one_and_batches_of_any_size(model):
    kw = dict(steps=8, seed=1, **FAST)
    units = [3, 11, 4, 20, 7]
    together = run_actmax(model, "relu5", units, **kw)
    apart = run_actmax(model, "relu5", units, batch=False, **kw)
    in_twos = run_actmax(model, "relu5", units, batch_size=2, **kw)  # batches of 2, 2 and 1
    # Same generators per unit, so the same draws; only float rounding of batched kernels.
    for other in (apart, in_twos):
        diff = np.abs(together.images.astype(int) - other.images.astype(int))
        assert diff.mean() < 1.0, diff.mean()
        assert np.allclose(together.reached, other.reached, rtol=0.05)
        assert list(other.units) == units
    assert in_twos.params["batch_size"] == 2 and apart.params["batch_size"] == 1
    with pytest.raises(UserInputError, match="^batch size must be >= 1, got 0$"):
        run_actmax(model, "relu5", units, batch_size=0, **kw)


def test_direction_objective_renders_one_image_per_direction(model, tmp_path):
    # Two directions in relu5's channel space: a mixture and a one-hot (channel 9). "reached"
    # is checked against onnxruntime on the uint8 images: the mean over positions of the
    # dot product of each position's channel vector with the direction.
    rng = np.random.default_rng(0)
    dirs = np.stack([rng.standard_normal(64), np.eye(64)[9]]).astype(np.float32)
    r = run_actmax(model, "relu5", "all", objective="direction", directions=dirs, steps=32,
                   seed=0, start="mean", **FAST)  # fmt: skip
    assert list(r.units) == [0, 1] and r.labels == ("d0", "d1") and r.objective == "direction"
    info = model.layer("relu5")
    acts = model.forward.run(model.preprocessing.normalize(r.images), [info.name])[info.name]
    expect = (acts.mean(axis=(2, 3)) * dirs).sum(1)
    assert np.allclose(r.reached, expect, rtol=1e-3, atol=1e-4), (r.reached, expect)
    assert (r.reached - r.start > 0.3).all() and (r.curve[-1] > r.curve[0]).all(), r.summary()
    # a row renders as it would alone (its generator is keyed by the row number)
    solo = run_actmax(model, "relu5", [1], objective="direction", directions=dirs, steps=32,
                      seed=0, start="mean", **FAST)  # fmt: skip
    assert np.abs(solo.images.astype(int) - r.images[1:].astype(int)).mean() < 1.0
    assert solo.params["directions"] == r.params["directions"]
    # a one-hot direction is the channel objective: same key, same image
    kw = dict(steps=16, keys=[9], start="mean")
    via_dir = render(model, direction("relu5", dirs[1]), 1, **kw)
    via_channel = render(model, channel("relu5", 9), 1, **kw)
    assert np.array_equal(via_dir.pixels, via_channel.pixels)
    # the reference maximum of a direction is measured like its reached value
    imgs = rng.integers(0, 256, (5, 64, 64, 3)).astype(np.uint8)
    rr = run_actmax(model, "relu5", [0], objective="direction", directions=dirs, steps=2,
                    reference=ArraySource(imgs), **FAST)  # fmt: skip
    ref_acts = model.forward.run(model.preprocessing.normalize(imgs), [info.name])[info.name]
    assert np.isclose(rr.reference_max[0], (ref_acts.mean(axis=(2, 3)) @ dirs[0]).max(),
                      rtol=1e-4)  # fmt: skip


def test_load_directions_from_npy_and_text(tmp_path):
    v = np.arange(1, 5, dtype=np.float32)
    np.save(tmp_path / "v.npy", v)
    assert load_directions(tmp_path / "v.npy").tolist() == [v.tolist()]
    (tmp_path / "m.txt").write_text("1, 0, 0, 2\n\n0 1 1 0\n")
    assert load_directions(tmp_path / "m.txt").tolist() == [[1, 0, 0, 2], [0, 1, 1, 0]]
    for name, body, match in [
        ("ragged.txt", "1 2 3\n4 5\n", "different lengths"),
        ("words.csv", "1, two, 3\n", "cannot read direction file"),
        ("empty.txt", "\n", "directions must be a vector"),
    ]:
        (tmp_path / name).write_text(body)
        with pytest.raises(UserInputError, match=match):
            load_directions(tmp_path / name)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match="cannot read direction file"):
        load_directions(tmp_path / "obj.npy")
    with pytest.raises(UserInputError, match="does not exist"):
        load_directions(tmp_path / "missing.npy")


def test_class_images_are_classified_as_their_class(model):
    r = run_actmax(model, None, "all", objective="class", steps=48, seed=0, **FAST)
    assert list(r.units) == list(range(7)) and r.labels[3] == "3 star"
    x = model.preprocessing.normalize(r.images)  # the uint8 images through onnxruntime
    (logits,) = model.forward.run(x, ["fc1"]).values()
    hits = int((logits.argmax(1) == np.arange(7)).sum())
    assert hits >= 6, logits.argmax(1)  # >= 80 % of the 7 classes


def test_redirected_relu_moves_a_dead_unit(model):
    grey = np.full((1, 64, 64, 3), 127.5)
    acts = model.forward.run(model.preprocessing.normalize(grey), ["relu6"])["relu4_1"]
    dead = int(np.flatnonzero(acts[0].max(axis=(1, 2)) <= 0)[0])  # zero everywhere on grey
    kw = dict(param="pixel", regularizers="none", start="mean", steps=24, **FAST)
    stuck = run_actmax(model, "relu6", [dead], redirect_steps=0, **kw)
    assert stuck.start[0] == 0 and stuck.reached[0] == 0  # no gradient: nothing moves
    moved = run_actmax(model, "relu6", [dead], redirect_steps=16, **kw)
    assert moved.start[0] == 0 and moved.reached[0] > 0


def test_redirected_relu6_gradient_on_a_hand_case():
    # lucid's redirected_relu6_grad: an image whose ordinary ReLU6 gradient is zero everywhere
    # passes the loss gradient, except where it would push x < 0 lower or x > 6 higher.
    x = torch.tensor([[-1.0, 7.0, -2.0, 8.0], [3.0, -1.0, 7.0, 2.0]], requires_grad=True)
    grad = torch.tensor([[0.5, -0.5, -0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])  # d loss / d output
    RedirectedReLU6()(x).backward(grad)
    # row 0 is dead: blocked (-1 pushed lower, 7 pushed higher), passed (-2 up, 8 down);
    # row 1 is alive: the ordinary gradient (zero outside 0..6)
    assert x.grad.tolist() == [[0.0, 0.0, -0.5, 0.5], [1.0, 0.0, 0.0, 1.0]]
    assert RedirectedReLU6()(x).tolist() == torch.clamp(x, 0, 6).tolist()


def _redirected_reference(x, grad, lo, hi):
    """lucid's redirected gradient written out with masks (the plain, slow spelling)."""
    blocked_always = (x < lo) | (x > hi)
    ordinary = grad.masked_fill(blocked_always, 0.0)
    flat = ordinary.reshape(x.shape[0], -1) if x.ndim else ordinary.reshape(1, -1)
    dead = (flat != 0).sum(1) == 0
    redirected = grad.masked_fill(((x < lo) & (grad > 0)) | ((x > hi) & (grad < 0)), 0.0)
    if x.ndim == 0:
        return redirected if bool(dead[0]) else ordinary
    out = ordinary.clone()
    out[dead] = redirected[dead]
    return out


@pytest.mark.parametrize("six", [False, True], ids=["relu", "relu6"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "vector", "scalar"])
def test_redirected_backward_equals_the_masked_reference(six, layout):
    # exact 0 and 6, the numbers either side of them, NaN, dead and live images, any layout
    gen = torch.Generator().manual_seed(3)
    shape = {"nchw": (5, 4, 3, 3), "channels_last": (5, 4, 3, 3), "vector": (5,), "scalar": ()}
    x = torch.randn(shape[layout], generator=gen) * 4
    grad = torch.randn(shape[layout], generator=gen)
    special = torch.tensor([0.0, -0.0, 6.0, 1e-45, -1e-45, 6.0000005, 5.9999995, float("nan")])
    flat = x.view(-1)
    flat[: min(len(special), flat.numel())] = special[: flat.numel()]
    if x.ndim == 4:
        x[1] = -1.0 - x[1].abs()  # image 1: dead (every input below 0)
        if six:
            x[2] = 7.0 + x[2].abs()  # image 2: dead (every input above 6)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        grad = grad.contiguous(memory_format=torch.channels_last)
    leaf = x.clone().requires_grad_(True)
    (RedirectedReLU6 if six else RedirectedReLU)()(leaf).backward(grad)
    want = _redirected_reference(x, grad, 0.0, 6.0 if six else float("inf"))
    assert torch.equal(leaf.grad.nan_to_num(123.0), want.nan_to_num(123.0))
    assert torch.equal(torch.signbit(leaf.grad), torch.signbit(want))  # no -0.0 for +0.0


def test_redirected_relu6_moves_a_dead_unit(tmp_path):
    m = pa.load_model(fac.relu6_cnn(tmp_path), check_parity=False)
    assert any(isinstance(x, torch.nn.ReLU6) for x in m.gradient.module.modules())
    kw = dict(param="pixel", regularizers="none", start="mean", steps=24, **FAST)
    stuck = run_actmax(m, "clip2", [0], redirect_steps=0, **kw)
    assert stuck.start[0] == 0 and stuck.reached[0] == 0
    moved = run_actmax(m, "clip2", [0], redirect_steps=24, lr=0.5, **kw)
    assert moved.reached[0] > 0, moved.curve[:, 0]
    with redirected_relu(m.gradient.module) as count:
        assert count == 2
    assert sum(isinstance(x, torch.nn.ReLU6) for x in m.gradient.module.modules()) == 2


def test_relu_replacements_are_undone_after_success_and_error(model):
    gm = model.gradient.module
    before = {n: m for n, m in gm.named_modules() if isinstance(m, torch.nn.ReLU)}
    assert before
    with redirected_relu(gm) as count:
        assert count == len(before)
        assert not any(isinstance(m, torch.nn.ReLU) for m in gm.modules())
    with pytest.raises(RuntimeError, match="boom"), redirected_relu(gm):
        raise RuntimeError("boom")
    after = {n: m for n, m in gm.named_modules() if isinstance(m, torch.nn.ReLU)}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not any(isinstance(m, RedirectedReLU) for m in gm.modules())

    class Failing(Objective):  # raises inside the loop, while the ReLUs are redirected
        def __init__(self):
            self.calls = 0

        def refs(self):
            return frozenset(["relu5"])

        def value(self, acts):
            self.calls += 1
            if self.calls > 3:
                raise RuntimeError("objective failed")
            return acts("relu5")[:, 0].mean((1, 2))

    with pytest.raises(RuntimeError, match="objective failed"):
        render(model, Failing(), 2, steps=10)
    assert not any(isinstance(m, RedirectedReLU) for m in gm.modules())
    assert model.gradient.hook_count() == 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model.gradient(model.preprocessing.normalize_torch(x))
    ref = model.forward.run(
        model.preprocessing.normalize(x.permute(0, 2, 3, 1).numpy() * 255), ["fc1"]
    )
    assert np.allclose(out.numpy(), ref["logits"], atol=1e-4)


def test_objective_without_gradient_path_is_refused(model):
    class Constant(Objective):
        def refs(self):
            return frozenset(["relu5"])

        def value(self, acts):
            return acts("relu5").detach()[:, 0].mean((1, 2))  # cut off from the image

    with pytest.raises(UserInputError, match="does not depend on the image"):
        render(model, Constant(), 1, steps=2)


def test_yosinski_sets_run_and_differ_from_lucid(model):
    kw = dict(param="pixel", steps=12, seed=0, **FAST)
    images = {
        name: run_actmax(model, "relu5", [1, 2], regularizers=name, **kw).images
        for name in ("lucid", "yosinski1", "yosinski2", "yosinski3", "yosinski4")
    }
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(images[a], images[b]), (a, b)
    with pytest.raises(UserInputError, match="pixel"):
        run_actmax(model, "relu5", [1], regularizers="yosinski3", param="fft", **FAST)


def test_penalties_and_diversity_in_render(model):
    regs = custom_set("lucid+tv", standard_transforms(), [TotalVariation(0.5)])
    r = render(model, channel("relu5", 3) + 0.5 * diversity("relu5"), 3, regularizers=regs, steps=6)
    assert r.pixels.shape == (3, 64, 64, 3) and np.isfinite(r.curve).all()
    assert len({img.tobytes() for img in r.pixels}) == 3


def test_result_save_store_and_reference(model, tmp_path):
    from pyanalyzer.data import synthetic

    ref = ArraySource(np.stack([s.image for s in synthetic.generate(8, seed=2, size=64)]))
    r = run_actmax(model, "relu6", "0-2", steps=6, reference=ref, **FAST)
    assert r.reference_max.shape == (3,) and (r.reference_max > 0).all()
    assert np.allclose(r.relative, r.reached / r.reference_max)
    acts = model.forward.run(model.preprocessing.normalize(ref.images), ["relu6"])["relu4_1"]
    assert np.allclose(r.reference_max, acts[:, :3].mean(axis=(2, 3)).max(axis=0), rtol=1e-5)

    paths = write_actmax(r, tmp_path / "out")
    assert [p.name for p in paths] == [
        "relu6_channel_unit0000.png", "relu6_channel_unit0001.png",
        "relu6_channel_unit0002.png", "relu6_channel.png",
    ]  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(paths[1])), r.images[1])

    store = Store(tmp_path / "s.h5")
    key = Key.make(model.sha256, "actmax", r.params)
    store.put(key, r.to_arrays(), params=r.params, extra_attrs={"result": r.to_meta()})
    entry = store.get(key)
    back = ActmaxResult.from_stored(entry.arrays, entry.extra["result"])
    assert np.array_equal(back.images, r.images) and back.labels == r.labels
    assert np.array_equal(back.reference_max, r.reference_max) and back.params == r.params


# ---- other models --------------------------------------------------------------------------


def test_caffe_nhwc_and_gray_models_run(tmp_path):
    caffe = pa.load_model(fac.caffe_style(tmp_path), check_parity=False)
    # the mean image of a caffe model: its BGR 0-255 mean, in RGB 0..1
    assert np.allclose(
        mean_color(caffe.preprocessing), [123.68 / 255, 116.779 / 255, 103.939 / 255]
    )
    for path in (fac.caffe_style(tmp_path), fac.tiny_cnn_nhwc(tmp_path), fac.channels1(tmp_path)):
        m = pa.load_model(path, check_parity=False)
        size = m.preprocessing.input_size
        r = run_actmax(m, "relu2", [0, 1, 2], steps=24, start="mean", **FAST)
        assert r.images.shape == (3, *size, 3), path.name
        assert np.isfinite(r.reached).all() and r.reached.mean() > r.start.mean(), path.name
        if m.preprocessing.channels == 1:
            assert np.array_equal(r.images[..., 0], r.images[..., 2])
        rc = run_actmax(m, None, [0, 4], objective="class", steps=24, **FAST)
        assert (rc.reached > rc.start).all(), path.name


def test_reached_is_what_onnxruntime_measures_on_the_images(tmp_path):
    # tf2onnx-style model: an NHWC layer, read by the objectives as NCHW
    m = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    info = m.layer("transpose2")
    assert info.layout == "nhwc"
    x = m.preprocessing.normalize
    r = run_actmax(m, "transpose2", [0, 3], steps=8, start="mean", **FAST)
    acts = m.forward.run(x(r.images), ["transpose2"], nchw=False)[info.name]  # [N, h, w, C]
    assert np.allclose(r.reached, acts[[0, 1], :, :, [0, 3]].mean(axis=(1, 2)), atol=1e-4)
    r = run_actmax(m, "transpose2", [5, 1], objective="neuron", steps=4, **FAST)
    acts = m.forward.run(x(r.images), ["transpose2"], nchw=False)[info.name]
    assert np.allclose(r.reached, acts[[0, 1], 4, 4, [5, 1]], atol=1e-4)  # the centre of 8x8


def test_class_objective_finds_the_logits_behind_softmax(tmp_path):
    m = pa.load_model(fac.softmax_head(tmp_path), check_parity=False)
    ref = find_logits(m)
    producer = {o: n for n in m.proto.graph.node for o in n.output}
    assert producer["probs"].op_type == "Softmax" and ref.name == producer["probs"].input[0]
    assert ref.channels == 10
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    logits = m.forward.session([ref.name]).run(
        [ref.name], {m.input.name: m.preprocessing.normalize(x)}
    )[0]
    r = run_actmax(m, None, [3], objective="class", steps=4, start="mean", **FAST)
    grey = np.full((1, 32, 32, 3), 255 * np.asarray(mean_color(m.preprocessing)))
    at_start = m.forward.session([ref.name]).run(
        [ref.name], {m.input.name: m.preprocessing.normalize(grey)}
    )[0]
    assert np.isclose(r.start[0], at_start[0, 3], atol=1e-4)
    assert logits.shape == (2, 10)


def test_color_correlation_from_images():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.15, (6, 16, 16, 1))
    noise = rng.normal(0, 0.03, (6, 16, 16, 3))
    pix = np.clip((base + noise) * 255, 0, 255).astype(np.uint8)
    spec = PreprocessSpec(input_size=(16, 16))
    c = color_correlation_from_images(ArraySource(pix), spec)
    rgb = pix.reshape(-1, 3) / 255.0
    cov = np.cov(rgb.T, bias=True)
    # C C^T is the covariance, up to the normalisation of the largest column to norm 1
    cct = c.astype(np.float64) @ c.T
    assert np.allclose(cct / cct.max(), cov / cov.max(), atol=1e-3)
    assert np.isclose(np.linalg.norm(c, axis=0).max(), 1.0)
    assert c[:, 0].min() > 0  # the first (luminance) direction has one sign
    with pytest.raises(UserInputError, match="3-channel"):
        color_correlation_from_images(
            ArraySource(pix[..., :1]), PreprocessSpec((16, 16), channels=1)
        )


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer="relu4", units=[64]), r"^unit 64 is out of range: layer relu4 has units 0\.\.63$"),
        (dict(layer="relu4", units="60-70"), r"^unit 64 is out of range: layer relu4 has units 0\.\.63$"),
        (dict(layer=None, units=[7], objective="class"), r"^class 7 is out of range: the model has classes 0\.\.6$"),
        (dict(layer="relu4", units=[1], objective="tickle"), r"^unknown objective 'tickle'; choose one of channel, neuron, class, direction$"),
        (dict(layer="relu4", units="all", objective="direction"), r"^the direction objective needs directions"),
        (dict(layer="relu4", units=[1], directions=np.ones(64)), r"^directions are used by the direction objective only, not by 'channel'$"),
        (dict(layer="relu4", units="all", objective="direction", directions=np.ones(32)), r"^the directions have 32 entries; layer relu4 has 64 channels$"),
        (dict(layer="relu4", units=[2], objective="direction", directions=np.ones((2, 64))), r"^direction 2 is out of range: 2 direction\(s\) were given \(0\.\.1\)$"),
        (dict(layer="relu4", units="all", objective="direction", directions=np.zeros((2, 64))), r"^direction 0 is all zeros"),
        (dict(layer="relu4", units="all", objective="direction", directions=np.full(64, np.nan)), r"^directions must be finite"),
        (dict(layer="relu4", units="all", objective="direction", directions=np.ones((1, 2, 64))), r"^directions must be a vector"),
        (dict(layer="relu4", units=[1], regularizers="strong"), r"^unknown regularizer set 'strong'; choose one of lucid, yosinski1"),
        (dict(layer="relu4", units=[1], param="dct"), r"^unknown parametrization 'dct'"),
        (dict(layer="relu44", units=[1]), r"relu44"),
        (dict(layer="relu4", units="1-"), r"^units '1-'"),
        (dict(layer="relu4", units=[1], steps=0), r"^steps must be >= 1, got 0$"),
        (dict(layer="relu4", units=[1], steps=10**11), r"^steps must be at most 100000"),
        (dict(layer="relu4", units=[1], lr=float("inf")), r"^learning rate must be a positive finite"),
        (dict(layer="relu4", units=[1], size=64.0), r"^image size must be an integer or a \(height"),
        (dict(layer="relu4", units=[1], size=(8,)), r"^image size must be an integer or a \(height"),
        (dict(layer="relu4", units="-1"), r"^unit -1 is out of range: layer relu4 has units 0\.\.63$"),
        (dict(layer="relu4", units=[1.5]), r"^units must be integers"),
        (dict(layer="relu4", units=[3], objective="class"), r"^class objectives read class scores \[N, K\]; layer relu4 has shape"),
    ],
)  # fmt: skip
def test_bad_input_raises_one_clear_line(model, kwargs, match):
    layer, units = kwargs.pop("layer"), kwargs.pop("units")
    with pytest.raises(UserInputError, match=match) as exc:
        run_actmax(model, layer, units, **FAST, **kwargs)
    assert "\n" not in str(exc.value)


def test_numpy_integer_units(model):
    r = run_actmax(model, "relu6", np.int64(3), steps=2, **FAST)
    assert list(r.units) == [3]


def test_model_without_torch_twin_names_the_op(tmp_path):
    m = pa.load_model(fac.unconvertible_op(tmp_path), check_parity=False)
    with pytest.raises(GradientUnavailableError, match="Shrink") as exc:
        run_actmax(m, "relu1", [0], **FAST)
    assert isinstance(exc.value, UserInputError) and "\n" not in str(exc.value)
