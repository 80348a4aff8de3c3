"""Where the gradient methods run: ``torch_device`` and ``GradientEngine.on``.

The CUDA cases compare the engine on the GPU with the CPU's and are skipped where torch sees no
CUDA device (``benchmarks/gpu_check.py`` runs them on a lent GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyanalyzer as pa
from pyanalyzer.errors import BackendUnavailableError, UserInputError
from pyanalyzer.model.gradient import torch_device

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA device")


def test_torch_device_values():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if CUDA else "cpu")
    assert torch_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(UserInputError, match="device must be one of auto, cpu, cuda, got 'gpu'"):
        torch_device("gpu")


@pytest.mark.skipif(CUDA, reason="CUDA is available here")
def test_cuda_without_a_device_is_one_clear_error():
    with pytest.raises(BackendUnavailableError, match=r"device='cuda' was requested.*CUDA"):
        torch_device("cuda")


def test_on_cpu_is_the_engine_itself(default_model):
    eng = pa.load_model(default_model).gradient
    assert eng.on("cpu") is eng
    assert eng.device == torch.device("cpu")


@needs_cuda
def test_on_cuda_matches_the_cpu(default_model):
    m = pa.load_model(default_model)
    eng = m.gradient
    gpu = eng.on("cuda")
    assert gpu is eng.on("cuda") and gpu.device.type == "cuda"
    assert next(eng.module.parameters()).device.type == "cpu"  # the CPU engine is untouched
    x = np.random.default_rng(0).normal(size=(4, 3, *m.preprocessing.input_size))
    x = torch.from_numpy(x.astype(np.float32))
    names = [layer.name for layer in m.layers if layer.is_spatial][-2:]
    with torch.no_grad():
        want = eng.features(x, names)
        got = gpu.features(x.to(gpu.device), names)
    for n in names:
        scale = float(want[n].abs().max())
        assert float((got[n].cpu() - want[n]).abs().max()) <= 1e-4 * max(scale, 1.0)
