"""pyanalyzer._backend: module loading, device choice and the CUDA module's build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyanalyzer import _backend
from pyanalyzer.errors import BackendUnavailableError


def test_info_keys_and_types():
    info = _backend.info()
    assert info["core_loaded"] is True and info["core_error"] is None
    assert isinstance(info["cuda_module_loaded"], bool)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    assert len(info["cuda_device_names"]) == info["cuda_devices"]
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["omp_max_threads"], int) and info["omp_max_threads"] >= 1
    if info["cuda_module_loaded"]:
        assert info["cuda_module_error"] is None
    else:
        assert isinstance(info["cuda_module_error"], str) and info["cuda_module_error"]


def test_cpu_kernels():
    core = _backend.kernels("cpu")
    assert core.__name__ == "pyanalyzer._core"
    assert {"unpool", "topk_merge", "topk_merge_states", "has_openmp"} <= set(dir(core))


def test_unknown_device():
    with pytest.raises(ValueError, match="device must be one of"):
        _backend.kernels("tpu")
    with pytest.raises(ValueError, match="device must be one of"):
        _backend.unpool([[[[1.0]]]], [[[[0]]]], 1, 1, device="cuda:0")


def test_auto_and_cuda_choice():
    info = _backend.info()
    if info["cuda_devices"] > 0:
        assert _backend.kernels("cuda").__name__ == "pyanalyzer._core_cuda"
        assert _backend.kernels("auto").__name__ == "pyanalyzer._core_cuda"
    else:
        assert _backend.kernels("auto").__name__ == "pyanalyzer._core"
        with pytest.raises(BackendUnavailableError, match="CUDA is unavailable: .+"):
            _backend.kernels("cuda")
        with pytest.raises(BackendUnavailableError):
            _backend.unpool([[[[1.0]]]], [[[[0]]]], 1, 1, device="cuda")


def test_cuda_module_without_gpu_reports_zero_devices():
    """Linked against the static CUDA runtime, the module imports with no GPU or driver."""
    if not _backend.info()["cuda_module_loaded"]:
        pytest.skip("pyanalyzer._core_cuda not built")
    import pyanalyzer._core_cuda as core_cuda

    count = core_cuda.device_count()
    assert count == _backend.info()["cuda_devices"]
    with pytest.raises(IndexError):
        core_cuda.device_name(count)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.skipif(
    os.environ.get("PYANALYZER_CUDA", "").upper() == "OFF", reason="PYANALYZER_CUDA=OFF"
)
def test_cuda_module_built_when_nvcc_present():
    core_dir = Path(_backend.kernels("cpu").__file__).parent
    built = [
        p
        for p in core_dir.iterdir()
        if p.name.startswith("_core_cuda.") and p.suffix in {".so", ".pyd"}
    ]
    assert built, f"nvcc is on PATH but no _core_cuda extension next to _core in {core_dir}"
    assert _backend.info()["cuda_module_loaded"], _backend.info()["cuda_module_error"]


def _run_with_blocked(module: str, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in which importing `module` fails."""
    package_root = Path(_backend.__file__).resolve().parents[1]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")])
    }
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env, timeout=120
    )


def test_missing_core_raises_clear_import_error():
    proc = _run_with_blocked("pyanalyzer._core", "import pyanalyzer._backend")
    assert proc.returncode != 0
    assert "CoreImportError" in proc.stderr and "pip install -e ." in proc.stderr


def test_missing_cuda_module_is_tolerated_and_reported():
    code = (
        "from pyanalyzer import _backend\n"
        "from pyanalyzer.errors import BackendUnavailableError\n"
        "info = _backend.info()\n"
        "assert not info['cuda_module_loaded'] and info['cuda_devices'] == 0, info\n"
        "assert info['cuda_module_error'], info\n"
        "assert _backend.kernels('auto').__name__ == 'pyanalyzer._core'\n"
        "try:\n"
        "    _backend.kernels('cuda')\n"
        "except BackendUnavailableError as exc:\n"
        "    assert '_core_cuda' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "print('ok')\n"
    )
    proc = _run_with_blocked("pyanalyzer._core_cuda", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
