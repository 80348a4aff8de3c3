"""Where Net2Vec trains: the weights, activations, masks and optimiser on the dissection's
``device``, the results back on the host.

Here (any machine): CUDA asked for and missing is one clear error; ``"auto"`` without CUDA is
the CPU training bit for bit; ``Dissection`` hands its ``device`` to Net2Vec. Where torch sees
a GPU: the CUDA training against the CPU's, from the same initial weights (drawn on the CPU),
within stated tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyanalyzer as pa
from pyanalyzer import _backend
from pyanalyzer.data.broden import BrodenDataset
from pyanalyzer.data.broden.build import synth_dataset
from pyanalyzer.errors import BackendUnavailableError
from pyanalyzer.methods.dissection import pipeline
from pyanalyzer.methods.dissection.net2vec import net2vec
from pyanalyzer.methods.dissection.pipeline import Dissection
from pyanalyzer.store import Store

TORCH_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not TORCH_CUDA, reason="torch sees no CUDA device")
without_cuda = pytest.mark.skipif(TORCH_CUDA, reason="CUDA is available here")


def _problem(n=60, units=8, h=4, s=16, seed=0):
    """A small Net2Vec problem: concept 1 is a random square per image; units 0-2 respond to
    it (with noise), the others are noise. Returns net2vec's keyword arguments."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((n, 1, s, s), np.int32)
    for i in range(n):
        y, x = rng.integers(0, s - 6, 2)
        seg[i, 0, y : y + 6, x : x + 6] = 1
    cover = seg[:, 0].reshape(n, h, s // h, h, s // h).mean(axis=(2, 4))  # [n, h, h]
    acts = rng.standard_normal((n, units, h, h)).astype(np.float32)
    acts[:, :3] += (np.array([3.0, 2.0, 1.0])[None, :, None, None] * cover[:, None]).astype(
        np.float32
    )
    cats = np.ones((n, 1), np.uint8)

    def acts_of(idx):
        return acts[idx]

    def segmentation_of(idx):
        return seg[idx], np.zeros((len(idx), 0), np.int32), cats[idx]

    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(units, -1), 0.9, axis=1)
    return dict(
        acts_of=acts_of, segmentation_of=segmentation_of, n_images=n, concepts=[1],
        concept_names=["-", "square"], concept_category=np.array([0, 0]),
        thresholds=thresholds.astype(np.float32), is_train=(np.arange(n) % 10) < 7,
        batch_size=16,
    )  # fmt: skip


@without_cuda
def test_cuda_without_cuda_is_one_clear_error(default_model, tmp_path):
    with pytest.raises(BackendUnavailableError) as raised:
        net2vec(**_problem(), device="cuda")
    message = str(raised.value)
    assert "CUDA" in message and "unavailable" in message and "\n" not in message
    if _backend.info()["cuda_devices"] > 0:  # pragma: no cover - torch and the module disagree
        return
    model = pa.load_model(default_model, check_parity=False)
    store = tmp_path / "s.h5"
    with pytest.raises(BackendUnavailableError, match="CUDA is unavailable"):
        Dissection(model, layers=["relu6"], net2vec=["circle"], device="cuda", store=Store(store))
    with pytest.raises(BackendUnavailableError, match="CUDA is unavailable"):  # standalone
        pipeline.Net2Vec(model, layer="relu6", concepts=["circle"], device="cuda",
                         store=Store(store))  # fmt: skip
    assert not store.exists()


@without_cuda
def test_auto_without_cuda_is_the_cpu_training_bit_for_bit():
    (a,) = net2vec(**_problem(), device="auto")
    (c,) = net2vec(**_problem(), device="cpu")
    (d,) = net2vec(**_problem())  # the default: the CPU
    for other in (c, d):
        assert a.weights.tobytes() == other.weights.tobytes()
        assert (a.bias, a.set_iou, a.best_unit, a.best_unit_iou) == (
            other.bias, other.set_iou, other.best_unit, other.best_unit_iou,
        )  # fmt: skip
    assert a.set_iou >= a.best_unit_iou > 0 and a.best_unit == 0


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return BrodenDataset(
        synth_dataset(d / "ds", n_images=120, size=64, progress=False), cache_dir=d / "c"
    )


def test_dissection_hands_its_device_to_net2vec(default_model, synth, monkeypatch):
    seen = []
    real = pipeline.net2vec

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "net2vec", spy)
    model = pa.load_model(default_model, check_parity=False)
    for device in ("cpu", "auto"):
        Dissection(model, layers=["relu6"], batch_size=32, net2vec=["circle"], device=device,
                   progress=False).run(synth)  # fmt: skip
    assert seen == ["cpu", "auto"]


# ---- on CUDA: the CPU's training, to float32 rounding --------------------------------------------


def _agree(gpu, cpu):
    """The same convex problem from the same start: 100 Adam steps whose gradients differ by
    float32 rounding (and the order of CUDA's atomic adds in the upsampling's backward). Weights
    within 1% of the largest one, IoUs within 0.01 (a few pixels), image counts exact."""
    assert (gpu.concept, gpu.train_images, gpu.test_images) == (
        cpu.concept, cpu.train_images, cpu.test_images,
    )  # fmt: skip
    assert gpu.weights.dtype == np.float32 and gpu.weights.shape == cpu.weights.shape
    scale = float(np.abs(cpu.weights).max())
    np.testing.assert_allclose(gpu.weights, cpu.weights, rtol=1e-2, atol=1e-2 * scale)
    assert abs(gpu.bias - cpu.bias) <= 1e-2 * max(1.0, abs(cpu.bias))
    assert abs(gpu.set_iou - cpu.set_iou) <= 0.01
    assert abs(gpu.best_unit_iou - cpu.best_unit_iou) <= 0.01


@needs_cuda
def test_net2vec_on_cuda_matches_the_cpu(fp32, monkeypatch):
    devices = []
    real_adam = torch.optim.Adam

    def adam(params, *args, **kwargs):
        params = list(params)
        devices.extend(p.device.type for p in params)
        return real_adam(params, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    (gpu,) = net2vec(**_problem(), device="cuda")
    assert devices == ["cuda", "cuda"]  # the weights and the bias trained on the GPU
    (cpu,) = net2vec(**_problem(), device="cpu")
    assert isinstance(gpu.weights, np.ndarray) and isinstance(gpu.bias, float)
    _agree(gpu, cpu)
    assert gpu.best_unit == cpu.best_unit == 0  # unit 0 carries the concept most clearly


@needs_cuda
def test_dissection_net2vec_on_cuda_matches_the_cpu(default_model, synth, fp32, monkeypatch):
    model = pa.load_model(default_model, check_parity=False)
    found = {}
    real = pipeline.net2vec

    def keep(*args, **kwargs):
        found[kwargs["device"]] = out = real(*args, **kwargs)
        return out

    monkeypatch.setattr(pipeline, "net2vec", keep)
    for device in ("cuda", "cpu"):
        layers = Dissection(model, layers=["relu6"], batch_size=32, net2vec=["circle"],
                            device=device, progress=False).run(synth)  # fmt: skip
        assert layers[0].extra["net2vec"][0]["name"] == "circle"
    (gpu,), (cpu,) = found["cuda"], found["cpu"]
    _agree(gpu, cpu)
