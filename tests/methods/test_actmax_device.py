"""Activation maximization on a CUDA device: the same images as on the CPU up to float
rounding (the random draws are made on the CPU for every device). Skipped where torch sees no
CUDA device; ``benchmarks/gpu_check.py`` runs them on a lent GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyanalyzer as pa
from pyanalyzer.errors import BackendUnavailableError
from pyanalyzer.methods.actmax import ActivationMaximization
from pyanalyzer.methods.actmax.objectives import channel
from pyanalyzer.methods.actmax.render import render

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")


@pytest.fixture(scope="module")
def model(default_model):
    return pa.load_model(default_model, check_parity=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable_fails_before_anything_is_stored(model, tmp_path):
    store = pa.Store(tmp_path / "s.h5")
    with pytest.raises(BackendUnavailableError, match="device='cuda' was requested"):
        ActivationMaximization(model, layer="relu5", units="0-1", steps=2, device="cuda",
                               store=store, progress=False).run(None)  # fmt: skip
    assert list(store.entries()) == []


@needs_cuda
@pytest.mark.parametrize(
    "kw",
    [
        {"param": "fft", "regularizers": "lucid"},
        {"param": "pixel", "regularizers": "yosinski4"},
    ],
    ids=["fft-lucid", "pixel-yosinski4"],
)
def test_cuda_renders_what_the_cpu_renders(model, kw):
    units = [0, 3, 7, 11]
    got = {
        dev: render(
            model,
            channel("relu5", units),
            len(units),
            keys=units,
            steps=8,
            size=48,
            device=dev,
            **kw,
        )  # fmt: skip
        for dev in ("cpu", "cuda")
    }
    cpu, gpu = got["cpu"], got["cuda"]
    # the start images are identical (CPU draws): only the network's rounding differs
    np.testing.assert_allclose(gpu.start, cpu.start, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.curve[0], cpu.curve[0], rtol=1e-4, atol=1e-5)
    # eight Adam steps amplify rounding a little: pixels within a few levels, values within 2%
    diff = np.abs(gpu.pixels.astype(np.int16) - cpu.pixels.astype(np.int16))
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())
    np.testing.assert_allclose(gpu.reached, cpu.reached, rtol=0.02, atol=1e-3)


@needs_cuda
def test_cuda_analysis_and_reference_maxima(model, tmp_path):
    ref = pa.SyntheticImages(8, seed=0)
    res = {
        dev: ActivationMaximization(
            model, layer="relu5", units="0-3", steps=4, device=dev, progress=False
        ).run(ref)  # fmt: skip
        for dev in ("cpu", "cuda")
    }
    np.testing.assert_allclose(
        res["cuda"].reference_max, res["cpu"].reference_max, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(res["cuda"].start, res["cpu"].start, rtol=1e-4, atol=1e-5)
