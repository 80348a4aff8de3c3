"""Shared test set-up: tests/ on sys.path (for onnx_factory), a private store, the default model."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# Keep every test away from the user's real store (and its concept-label cache).
os.environ["PYANALYZER_STORE"] = str(
    Path(tempfile.mkdtemp(prefix="pyanalyzer-tests-")) / "store.h5"
)


@pytest.fixture(scope="session")
def default_model() -> Path:
    path = REPO / "models" / "default.onnx"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run python models/build_default.py")
    return path


@pytest.fixture
def fp32():
    """Full float32 on a GPU for CUDA-vs-CPU comparisons (no TF32 in cuDNN or cuBLAS: the GPU
    then rounds as the CPU does), restored afterwards."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
