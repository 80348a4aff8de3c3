"""Shared fixtures: tiny ONNX models made by the tests (tests/onnx_factory.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# Keep every test away from the user's real store.
os.environ.setdefault(
    "PYANALYZER_STORE",
    str(Path(os.environ.get("TMPDIR", "/tmp")) / "pyanalyzer-test-store-unused.h5"),
)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Path:
    """A folder with the factory's small models, built once per session."""
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def default_model() -> Path:
    path = REPO / "models" / "default.onnx"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run python models/build_default.py")
    return path
