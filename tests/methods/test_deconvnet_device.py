"""Where the projections run: the forward recording, the reverse walk and the unpooling kernel
on one torch device (``device``), the results back on the host.

Here (any machine): CUDA asked for and missing is one clear error, from the API and from
``pyanalyzer deconv``, before anything is written; ``"auto"`` without CUDA is the CPU walk,
bit for bit. On a machine where torch and ``pyanalyzer._core_cuda`` both see a GPU: every
method, the multi-unit walk, the analyses and the top-k patches' projections on CUDA against
the CPU, with float32 tolerances (TF32 is switched off for these comparisons: with it, cuDNN's
convolutions round to 10 mantissa bits and the comparison would test TF32, not the walk).
"""

from __future__ import annotations

import numpy as np
import onnx_factory as fac
import pytest
import torch
from cli_helpers import run_cli
from PIL import Image

import pyanalyzer as pa
from pyanalyzer import _backend
from pyanalyzer.errors import BackendUnavailableError, UserInputError
from pyanalyzer.methods import deconvnet
from pyanalyzer.methods.deconvnet import PROJECTIONS, Projector
from pyanalyzer.methods.patches import TopPatches
from pyanalyzer.store import Store

METHODS = ("deconv", "guided", "saliency")
CUDA = torch.cuda.is_available() and _backend.info()["cuda_devices"] > 0
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="CUDA unavailable to torch or to pyanalyzer._core_cuda"
)
without_cuda = pytest.mark.skipif(CUDA, reason="CUDA is available here")


@pytest.fixture(scope="module")
def default(default_model):
    return pa.load_model(default_model, check_parity=False)


def _random_input(model, n=3, seed=0):
    """Normal noise in the model's input layout: no two activations tie, so the strongest
    one (``mode="max"``) is the same on every device."""
    h, w = model.preprocessing.input_size
    c = model.preprocessing.channels
    shape = (n, c, h, w) if model.input.layout == "nchw" else (n, h, w, c)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- without CUDA: one clear error, nothing written; "auto" is the CPU --------------------------


def _one_line_about_cuda(message: str) -> None:
    assert "CUDA" in message and "unavailable" in message and "\n" not in message.strip()


@without_cuda
def test_cuda_asked_for_without_cuda_is_one_clear_error(default, tmp_path):
    for method in METHODS:
        with pytest.raises(BackendUnavailableError) as raised:
            Projector(default, method, device="cuda")
        _one_line_about_cuda(str(raised.value))
    store = tmp_path / "s.h5"
    for cls in PROJECTIONS.values():
        with pytest.raises(BackendUnavailableError) as raised:
            cls(default, layer="relu6", units=[0], device="cuda", store=Store(store))
        _one_line_about_cuda(str(raised.value))
    with pytest.raises(BackendUnavailableError) as raised:
        TopPatches(default, layer="relu6", units=[0], projection="guided", device="cuda",
                   store=Store(store))  # fmt: skip
    _one_line_about_cuda(str(raised.value))
    assert not store.exists()
    # no projection, nothing on the GPU: the device does not matter
    TopPatches(default, layer="relu6", projection="none", device="cuda", progress=False)


@without_cuda
@pytest.mark.parametrize("scan", [False, True], ids=["image", "top-k-scan"])
def test_cli_device_cuda_without_cuda(capsys, default_model, tmp_path, scan):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    args = [
        "deconv",
        str(default_model),
        "--layer",
        "relu6",
        "--unit",
        "1",
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "o"),
        "--store",
        str(tmp_path / "s.h5"),
        "--no-progress",
    ]
    args += ["--n-images", "3"] if scan else ["--image", str(img)]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    _one_line_about_cuda(err)
    assert "Traceback" not in out + err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.h5").exists()


def test_unknown_device_is_refused(default):
    with pytest.raises(UserInputError, match="device must be one of"):
        Projector(default, "deconv", device="tpu")


@without_cuda
@pytest.mark.parametrize("method", METHODS)
def test_auto_without_cuda_is_the_cpu_walk_bit_for_bit(default, method):
    x = _random_input(default)
    auto, cpu = Projector(default, method, device="auto"), Projector(default, method, "cpu")
    assert auto.device == cpu.device == torch.device("cpu")
    assert auto.engine is default.gradient  # the CPU engine itself, no copy
    for mode in ("max", "map"):
        a = auto.project_units(x, "relu4", [11, 3], mode=mode)
        c = cpu.project_units(x, "relu4", [11, 3], mode=mode)
        for p, q in zip(a, c, strict=True):
            assert p.pixels.tobytes() == q.pixels.tobytes()
            assert p.activation.tobytes() == q.activation.tobytes()
            np.testing.assert_array_equal(p.positions, q.positions)


def test_auto_falls_back_to_the_cpu_when_the_cuda_module_cannot_run(monkeypatch):
    """torch sees a GPU but pyanalyzer's CUDA module cannot run (not built, or no device
    visible to it): ``"auto"`` walks on the CPU (the unpooling kernel has nowhere else to
    run); ``"cuda"`` is the module's one-line error."""
    from pyanalyzer.model import gradient

    monkeypatch.setattr(gradient, "torch_device", lambda device: torch.device("cuda", 0))

    def no_cuda_module(device="auto"):
        if device == "cuda":
            raise BackendUnavailableError(
                "device='cuda' was requested but CUDA is unavailable: pyanalyzer._core_cuda "
                "is not built"
            )
        return _backend._core

    monkeypatch.setattr(_backend, "kernels", no_cuda_module)
    assert deconvnet._walk_device("auto") == torch.device("cpu")
    with pytest.raises(BackendUnavailableError, match="_core_cuda is not built"):
        deconvnet._walk_device("cuda")


# ---- on CUDA: the same projections as the CPU ----------------------------------------------------


def _close(got, ref, what=""):
    """CUDA against the CPU: float32 rounding through a few layers and their transposes
    (rtol 1e-3, atol 1e-4 of the largest value); the same shapes and dtypes."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    scale = float(np.abs(ref).max())  # 0 for a unit that never fires: then exact zeros
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * scale, err_msg=what)


def _same_projection(got, ref, what=""):
    _close(got.pixels, ref.pixels, what)
    np.testing.assert_array_equal(got.positions, ref.positions, err_msg=what)
    np.testing.assert_allclose(
        got.activation, ref.activation, rtol=1e-4, atol=1e-6 * float(np.abs(ref.activation).max())
    )


@needs_cuda
@pytest.mark.parametrize("mode", ["max", "map", "topk"])
@pytest.mark.parametrize("layer, unit", [("relu6", 5), ("relu4", 11), ("maxpool3", 2)])
@pytest.mark.parametrize("method", METHODS)
def test_projection_on_cuda_matches_the_cpu(default, fp32, method, layer, unit, mode):
    x = _random_input(default)
    on_gpu = Projector(default, method, device="cuda")
    assert on_gpu.device.type == "cuda"
    assert next(on_gpu.engine.module.parameters()).device.type == "cuda"
    got = on_gpu.project(x, layer, unit, mode=mode, k=4)
    ref = Projector(default, method, device="cpu").project(x, layer, unit, mode=mode, k=4)
    assert isinstance(got.pixels, np.ndarray)
    _same_projection(got, ref, f"{method} {layer} {mode}")


@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_several_units_on_cuda_match_the_cpu(default, fp32, method):
    x = _random_input(default, n=2, seed=1)
    units = [5, 0, 17]
    got = Projector(default, method, device="cuda").project_units(x, "relu6", units)
    ref = Projector(default, method, device="cpu").project_units(x, "relu6", units)
    for u, g, r in zip(units, got, ref, strict=True):
        assert g.unit == r.unit == u
        _same_projection(g, r, f"{method} unit {u}")


@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_overlapping_and_padded_pools_and_nhwc_on_cuda(tmp_path, fp32, method):
    m = pa.load_model(fac.overlapping_pools(tmp_path, padded_tail=True), check_parity=False)
    x = np.random.default_rng(1).normal(size=(2, 3, 27, 27)).astype(np.float32)
    for layer in ("relu2", "maxpool2"):
        for mode in ("map", "max"):
            got = Projector(m, method, device="cuda").project(x, layer, 1, mode=mode)
            ref = Projector(m, method, device="cpu").project(x, layer, 1, mode=mode)
            _same_projection(got, ref, f"{method} {layer} {mode}")
    # tf2onnx-style: NHWC input, transposes, SAME-padded convolutions and pools
    t = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    got = Projector(t, method, device="cuda").project_units(x, "avgpool1", [4, 1], mode="map")
    ref = Projector(t, method, device="cpu").project_units(x, "avgpool1", [4, 1], mode="map")
    for g, r in zip(got, ref, strict=True):
        _same_projection(g, r, f"{method} tf2onnx")


@needs_cuda
@pytest.mark.parametrize(
    "op", ["PRelu", "PReluScalar", "Relu6", "Clip0_2", "LeakyRelu", "MishDecomposed", "GeluErf"]
)
def test_rectifiers_and_smooth_ops_on_cuda(tmp_path, fp32, op):
    """PRelu's slope and the Clips' bounds are read from tensors on the GPU; decomposed smooth
    ops go through autograd there."""
    m = pa.load_model(fac.activation_cnn(tmp_path, op, "nhwc"), check_parity=False)
    x = (3 * np.random.default_rng(1).standard_normal((2, 8, 8, 3))).astype(np.float32)
    for method in METHODS:
        for mode in ("max", "map"):
            got = Projector(m, method, device="cuda").project(x, "act2", 2, mode=mode)
            ref = Projector(m, method, device="cpu").project(x, "act2", 2, mode=mode)
            _same_projection(got, ref, f"{op} {method} {mode}")


@needs_cuda
def test_unpooling_stays_on_the_gpu(default, fp32, monkeypatch):
    """The walk's max-unpooling gets CUDA tensors and never the host paths (numpy unpool, or
    the CUDA module's host-array entry)."""
    seen = []
    real = _backend.unpool_tensor

    def spy(values, switches, *args, **kwargs):
        seen.append((values.device.type, switches.device.type))
        out = real(values, switches, *args, **kwargs)
        seen.append((out.device.type,))
        return out

    def refuse(*args, **kwargs):
        raise AssertionError("the unpooling went through the host")

    monkeypatch.setattr(_backend, "unpool_tensor", spy)
    monkeypatch.setattr(_backend, "unpool", refuse)
    monkeypatch.setattr(_backend._core_cuda, "unpool", refuse)
    Projector(default, "deconv", device="cuda").project(_random_input(default), "relu6", 5)
    assert seen and all(set(s) == {"cuda"} for s in seen)


@needs_cuda
def test_analyses_on_cuda_match_the_cpu(default, fp32):
    h, w = default.preprocessing.input_size
    imgs = np.random.default_rng(2).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    for rule, cls in PROJECTIONS.items():
        got = cls(default, layer="relu5", units="0-4", batch_size=4, device="cuda",
                  progress=False).run(imgs)  # fmt: skip
        ref = cls(default, layer="relu5", units="0-4", batch_size=4, device="cpu",
                  progress=False).run(imgs)  # fmt: skip
        _close(got.pixels, ref.pixels, rule)
        np.testing.assert_array_equal(got.positions, ref.positions)
        np.testing.assert_allclose(got.activation, ref.activation, rtol=1e-4, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_top_patches_projections_on_cuda_match_the_cpu(tmp_path, fp32, method):
    model = pa.load_model(fac.tiny_cnn(tmp_path), check_parity=False)
    images = np.random.default_rng(0).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    runs = [
        TopPatches(model, layer="relu2", k=5, units=[0, 3], projection=method, device=d,
                   progress=False).run(pa.ArraySource(images))
        for d in ("cuda", "cpu")
    ]  # fmt: skip
    got, ref = runs
    np.testing.assert_array_equal(got.images, ref.images)  # the scan is onnxruntime's
    np.testing.assert_array_equal(got.values, ref.values)
    assert sorted(got.projections) == sorted(ref.projections) == [0, 3]
    for u in (0, 3):
        g, r = got.projections[u], ref.projections[u]
        assert g.shape == r.shape and g.dtype == r.dtype == np.uint8
        # display images of pixels equal to 1e-3 of their scale: one grey level at most
        assert np.abs(g.astype(np.int16) - r.astype(np.int16)).max() <= 1
