"""Where network inversion runs: ``device="auto"|"cpu"|"cuda"`` for the optimisation, the
UpconvNet decoder's training and its inference, through the Python API and ``pyanalyzer
invert --device``.

Without CUDA: asking for it is one line naming CUDA as unavailable, before anything runs or is
stored; ``device="cpu"`` is the default (``auto``) bit for bit; the device is not part of the
store key. With CUDA (skipped here, run on a lent GPU): the GPU's results match the CPU's.

The CUDA comparisons run twice: with float32 kernels, and with torch's default (TF32
convolutions on recent GPUs). Their tolerances were set by perturbing every feature map of the
CPU runs by a random relative 1e-4 .. 3e-3 per element and step (TF32's rounding and beyond):
the first step's feature error moved by <= 7e-5 (relative), the whole curve by <= 2.6e-3, the
final feature error by <= 1e-3, the pixel error by <= 3e-4 and the mean absolute pixel by
<= 3.2e-3 (Adam) / 6.6e-4 (SGD), while single pixels can move far (Adam's steps have a fixed
size whatever the gradient's, so a pixel whose gradient is near zero can go either way): the
optimisation's bounds below keep a margin of 3-15x over those and compare mean pixels, never
single ones (a decoder's one forward pass is compared pixel by pixel).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from PIL import Image

import pyanalyzer as pa
from pyanalyzer.data import synthetic
from pyanalyzer.errors import BackendUnavailableError, UserInputError
from pyanalyzer.methods.inversion import (
    OptimInversion,
    UpconvInversion,
    UpconvTraining,
    find_decoder,
)
from pyanalyzer.model.gradient import GradientEngine

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA device")
without_cuda = pytest.mark.skipif(CUDA, reason="CUDA is available here (auto is the GPU)")
UNAVAILABLE = r"^device='cuda' was requested but CUDA is unavailable: "

TRAIN = dict(layer="relu4", n_images=32, epochs=1, batch_size=16, seed=1, progress=False)


@pytest.fixture(scope="module")
def model(default_model):
    return pa.load_model(default_model, check_parity=False)


@pytest.fixture(scope="module")
def images():
    return synthetic.render_batch(2, seed=11)[0]


@pytest.fixture(scope="module")
def decoder(model):
    """relu4's decoder, trained tiny on the CPU."""
    return UpconvTraining(model, device="cpu", **TRAIN).run(None)


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(synthetic.render(2, seed=8, size=64).image).save(path)
    return path


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit: the dtype, the shape and every byte."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---- everywhere ------------------------------------------------------------------------------


def test_device_is_a_checked_parameter(model, decoder):
    for make in (
        lambda: OptimInversion(model, layers=["relu2"], device="gpu"),
        lambda: UpconvTraining(model, layer="relu4", device="gpu"),
        lambda: UpconvInversion(model, layers=["relu4"], decoders=[decoder], device="gpu"),
    ):
        with pytest.raises(UserInputError, match=r"device.*'gpu'.*auto, cpu, cuda") as exc:
            make()
        assert "\n" not in str(exc.value)
    for cls in (OptimInversion, UpconvTraining, UpconvInversion):
        assert "device" in cls.key_excludes
        field = cls.params_type.model_fields["device"]
        assert field.default == "auto"


def test_device_is_not_part_of_the_key(model, images, decoder, tmp_path):
    store = pa.Store(tmp_path / "s.h5")
    kw = dict(layers=["relu2"], steps=3, store=store, progress=False)
    first = OptimInversion(model, device="cpu", **kw)
    a = first.run(images[:1])
    again = OptimInversion(model, **kw)  # auto: the GPU where there is one
    b = again.run(images[:1])
    assert not first.from_store and again.from_store and _same(a.images, b.images)
    assert "device" not in a.params

    trained = UpconvTraining(model, device="cpu", store=store, **TRAIN)
    dec = trained.run(None)
    loaded = UpconvTraining(model, store=store, **TRAIN)
    assert loaded.run(None).from_store and "device" not in dec.params
    kw = dict(layers=["relu4"], decoders=[dec], store=store, progress=False)
    x = UpconvInversion(model, device="cpu", **kw).run(images)
    inv = UpconvInversion(model, **kw)
    y = inv.run(images)
    assert inv.from_store and _same(x.images, y.images)


def test_decoders_live_on_the_cpu(model, decoder):
    assert decoder.device == torch.device("cpu") and decoder.on("cpu") is decoder
    assert {v.device.type for v in decoder.net.state_dict().values()} == {"cpu"}


# ---- without CUDA ----------------------------------------------------------------------------


@without_cuda
@pytest.mark.parametrize("kind", ["optim", "train", "upconv"])
def test_cuda_without_cuda_is_one_line_and_stores_nothing(model, decoder, tmp_path, kind):
    store = pa.Store(tmp_path / "s.h5")
    make = {
        "optim": lambda: OptimInversion(
            model, layers=["relu2"], steps=2, device="cuda", store=store, progress=False
        ),
        "train": lambda: UpconvTraining(model, store=store, **{**TRAIN, "device": "cuda"}),
        "upconv": lambda: UpconvInversion(
            model, layers=["relu4"], decoders=[decoder], device="cuda", store=store,
            progress=False,
        ),
    }[kind]  # fmt: skip
    with pytest.raises(BackendUnavailableError, match=UNAVAILABLE) as exc:
        make()
    assert "\n" not in str(exc.value) and "CUDA" in str(exc.value)
    assert not any(tmp_path.iterdir())  # no store, no checkpoint, nothing
    with pytest.raises(BackendUnavailableError, match=UNAVAILABLE):
        decoder.on("cuda")


@without_cuda
@pytest.mark.parametrize(
    "extra",
    [["--method", "optim"], ["--method", "upconv"], ["--method", "both"], ["train"]],
    ids=["optim", "upconv", "both", "train"],
)
def test_cli_cuda_without_cuda_is_one_line(capsys, default_model, image, tmp_path, extra):
    store = str(tmp_path / "s.h5")
    if extra == ["train"]:
        args = ["invert", "train", str(default_model), "--layer", "relu4", "--epochs", "1"]
    else:
        args = ["invert", str(default_model), "--image", str(image), "--layer", "relu2", *extra,
                "--out", str(tmp_path / "o")]  # fmt: skip
    code, out, err = run_cli(capsys, *args, "--device", "cuda", "--store", store, "--no-progress")
    assert code == 2 and out == "", err
    assert err.startswith("error: device='cuda' was requested but CUDA is unavailable: "), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.h5").exists()


@without_cuda
def test_explicit_cpu_equals_the_default(model, images, decoder):
    # two images from two layers: four rows, the channels-last path; jitter draws shifts
    kw = dict(layers=["relu2", "relu4"], steps=6, jitter=1, seed=2, progress=False)
    for opt in ("sgd", "adam"):
        a = OptimInversion(model, optimizer=opt, **kw).run(images)
        b = OptimInversion(model, optimizer=opt, device="cpu", **kw).run(images)
        for f in ("images", "history", "feature_error", "pixel_error"):
            assert _same(getattr(a, f), getattr(b, f)), (opt, f)
    a = UpconvTraining(model, **TRAIN).run(None)
    sa, sb = a.to_arrays(), decoder.to_arrays()  # the fixture's: device="cpu"
    assert sa.keys() == sb.keys() and all(_same(sa[k], sb[k]) for k in sa)
    kw = dict(layers=["relu4"], decoders=[decoder], progress=False)
    x = UpconvInversion(model, **kw).run(images)
    y = UpconvInversion(model, device="cpu", **kw).run(images)
    for f in ("images", "feature_error", "pixel_error"):
        assert _same(getattr(x, f), getattr(y, f)), f


# ---- with CUDA -------------------------------------------------------------------------------


@pytest.fixture(params=["fp32", "torch-default"])
def precision(request, monkeypatch):
    """fp32: cuDNN and cuBLAS without TF32 (the GPU's float32 then rounds as the CPU's does, in
    another order); torch-default: as torch leaves them (TF32 convolutions on Ampere and later,
    inputs rounded to 10 bits), what ``device="auto"`` gives a user."""
    if request.param == "fp32":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    return request.param


def _optim_close(gpu, cpu, mean_pixel: float) -> None:
    """The GPU's inversion against the CPU's (see the module for the tolerances)."""
    # the same start (noise from the CPU generator, the same targets): the first step agrees
    np.testing.assert_allclose(gpu.history[0], cpu.history[0], rtol=1e-3)
    np.testing.assert_allclose(gpu.history, cpu.history, rtol=1e-2)
    np.testing.assert_allclose(gpu.feature_error, cpu.feature_error, rtol=1e-2)
    np.testing.assert_allclose(gpu.pixel_error, cpu.pixel_error, atol=2e-3)
    assert gpu.images.dtype == np.float32 and gpu.images.shape == cpu.images.shape
    assert float(np.abs(gpu.images - cpu.images).mean()) < mean_pixel


@needs_cuda
def test_optim_on_cuda_matches_the_cpu(model, images, precision):
    # momentum SGD with the authors' priors; four rows (the channels-last path)
    kw = dict(layers=["relu2", "relu4"], steps=25, seed=3, progress=False)
    cpu = OptimInversion(model, device="cpu", **kw).run(images)
    on_gpu = OptimInversion(model, device="cuda", **kw)
    assert on_gpu.engine.device.type == "cuda" and model.gradient.device.type == "cpu"
    gpu = on_gpu.run(images)
    _optim_close(gpu, cpu, mean_pixel=4e-3)
    assert next(model.gradient.module.parameters()).device.type == "cpu"  # left on the CPU
    # Adam with jitter, one row: the jitter offsets come from the CPU generator too
    kw = dict(layers=["relu3"], steps=20, optimizer="adam", jitter=2, seed=5, progress=False)
    cpu = OptimInversion(model, device="cpu", **kw).run(images[:1])
    gpu = OptimInversion(model, device="cuda", **kw).run(images[:1])
    _optim_close(gpu, cpu, mean_pixel=1e-2)


def _interrupt(model, params, images, store, monkeypatch):
    """Run ``params`` into ``store`` and stop it in step 8 (Ctrl-C): the stored checkpoint."""
    real = GradientEngine.features
    calls = {"n": 0}

    def dying(self, *a, **k):  # call 1 is the targets' forward pass
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(GradientEngine, "features", dying)
    with pytest.raises(KeyboardInterrupt):
        OptimInversion(model, params, store=store, checkpoint_every=0, progress=False).run(images)
    monkeypatch.setattr(GradientEngine, "features", real)
    (partial,) = store.entries()
    return store.get(partial.key)


@needs_cuda
@pytest.mark.parametrize("write, resume", [("cuda", "cuda"), ("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoints_resume_across_devices(model, images, tmp_path, monkeypatch, write, resume):
    # Adam: its buffers go to the image's device, its step count stays a CPU scalar
    base = dict(layers=["relu2", "relu4"], steps=12, optimizer="adam", jitter=2, seed=3)
    store = pa.Store(tmp_path / "s")
    saved = _interrupt(model, {**base, "device": write}, images[:1], store, monkeypatch)
    assert saved.extra["checkpoint"]["step"] == 7
    assert set(saved.arrays) == {"u", "history", "opt/exp_avg", "opt/exp_avg_sq", "opt/step"}
    assert np.asarray(saved.arrays["history"]).dtype == np.float64  # as checkpoints kept it

    params = {**base, "device": resume}  # the device is not in the key: the same checkpoint
    again = OptimInversion(model, params, store=store, checkpoint_every=0, progress=False)
    got = again.run(images[:1])
    assert again.resumed
    ref = OptimInversion(model, params, progress=False).run(images[:1])
    if write == resume:  # the same kernels: only cuDNN's own run-to-run rounding
        np.testing.assert_allclose(got.history, ref.history, rtol=1e-3)
        assert float(np.abs(got.images - ref.images).mean()) < 2e-3
    else:  # seven steps on one device, five on the other
        _optim_close(got, ref, mean_pixel=1e-2)


@needs_cuda
def test_upconv_decoding_on_cuda_matches_the_cpu(model, images, decoder, precision):
    # a decoder trained on the CPU, decoding on the GPU: one forward pass
    kw = dict(layers=["relu4"], decoders=[decoder], progress=False)
    cpu = UpconvInversion(model, device="cpu", **kw).run(images)
    gpu = UpconvInversion(model, device="cuda", **kw).run(images)
    assert decoder.device.type == "cpu"  # the given decoder is left where it was
    np.testing.assert_allclose(gpu.images, cpu.images, atol=1e-2)
    assert float(np.abs(gpu.images - cpu.images).mean()) < 1e-3
    np.testing.assert_allclose(gpu.feature_error, cpu.feature_error, rtol=1e-2)
    np.testing.assert_allclose(gpu.pixel_error, cpu.pixel_error, atol=1e-3)
    moved = decoder.on("cuda")
    assert moved is not decoder and moved.device.type == "cuda" and moved.on("cuda") is moved
    assert moved.digest() == decoder.digest()  # the weights are copied exactly
    a, b = moved.to_arrays(), decoder.to_arrays()
    assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


@needs_cuda
def test_upconv_training_on_cuda_matches_the_cpu(model, images, tmp_path, precision):
    kw = dict(layer="relu4", n_images=64, epochs=2, batch_size=32, seed=4, progress=False)
    cpu = UpconvTraining(model, device="cpu", **kw).run(None)
    store = pa.Store(tmp_path / "s.h5")
    gpu = UpconvTraining(model, device="cuda", store=store, **kw).run(None)
    assert gpu.device.type == "cpu"  # handed back (and stored) from the CPU
    # four Adam steps: the loss curve agrees, and so do the two decoders' reconstructions
    np.testing.assert_allclose(gpu.curve, cpu.curve, rtol=5e-3)
    inv = dict(layers=["relu4"], device="cpu", progress=False)
    a = UpconvInversion(model, decoders=[cpu], **inv).run(images)
    b = UpconvInversion(model, decoders=[gpu], **inv).run(images)
    np.testing.assert_allclose(b.images, a.images, atol=2e-2)
    assert float(np.abs(b.images - a.images).mean()) < 2e-3
    np.testing.assert_allclose(b.pixel_error, a.pixel_error, atol=2e-3)
    # the decoder trained on the GPU loads from the store on the CPU, the same weights
    found = find_decoder(store, model, "relu4")
    assert found is not None and found.device.type == "cpu"
    x, y = found.to_arrays(), gpu.to_arrays()
    assert x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    # the weights are drawn on the CPU: with a negligible learning rate both devices hand back
    # the same initial weights
    still = {**kw, "epochs": 1, "lr": 1e-12}
    x = UpconvTraining(model, device="cpu", **still).run(None).to_arrays()
    y = UpconvTraining(model, device="cuda", **still).run(None).to_arrays()
    for k in x:
        if k.startswith("state/"):
            np.testing.assert_allclose(y[k], x[k], rtol=0, atol=1e-6, err_msg=k)
