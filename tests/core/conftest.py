"""Fixtures for the compiled-core tests: the device is a parameter, never a global."""

from __future__ import annotations

import pytest

from pyanalyzer import _backend


def _cuda_usable() -> bool:
    return _backend.info()["cuda_devices"] > 0


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> str:
    """Each kernel test runs on the CPU, and on CUDA where a device is visible."""
    if request.param == "cuda" and not _cuda_usable():
        pytest.skip("no CUDA device visible (or pyanalyzer._core_cuda not built)")
    return request.param
