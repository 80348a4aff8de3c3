"""pyanalyzer._memory: glibc keeps freed big buffers for reuse once gradient work starts.

The setting is process-wide and cannot be undone, so every case runs in a fresh interpreter.
The reference is the kernel's own count of page faults (``ru_minflt``): a buffer that comes
back from a fresh mapping faults in every one of its pages again, a reused one does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's"
)

# Allocates, touches and frees a 48 MiB buffer 8 times (above the 32 MiB up to which glibc
# raises its threshold by itself; ctypes' malloc, so that no library's own cache hides the
# allocator), and reports the page faults of the last 7 rounds.
_PROBE = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    call = sys.argv[1]
    result = None
    if call == "keep":
        from pyanalyzer._memory import keep_freed_buffers
        result = [keep_freed_buffers(), keep_freed_buffers()]
    elif call in ("engine", "on"):
        import onnx
        from onnx import TensorProto, helper
        from pyanalyzer.model.gradient import GradientEngine
        g = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])])
        engine = GradientEngine(
            helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), "x")
        if call == "on":  # where every gradient method gets its engine
            engine.on("cpu")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 48 * 2**20
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"result": result, "faults": sum(faults[1:])}))
    """
)
_PAGES = 48 * 2**20 // 4096  # the pages of one round's buffer


def _probe(call: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "PYANALYZER_MALLOC"))}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, call], env={**clean, **env},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _is_glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        return False
    return True


def _big_enough() -> bool:
    from pyanalyzer._memory import thresholds

    return thresholds()[0] > 48 * 2**20  # a machine of at least 4 GiB


def test_thresholds_scale_with_the_memory_the_process_may_use(monkeypatch):
    from pyanalyzer import _memory, budget

    gib = 2**30
    for total, expected in [
        (None, (256 * 2**20, gib)),  # unknown: the defaults
        (64 * gib, (256 * 2**20, gib)),  # capped
        (4 * gib, (64 * 2**20, 256 * 2**20)),  # a sixteenth, a quarter of that
        (256 * 2**20, (8 * 2**20, 32 * 2**20)),  # never below 32 MiB of trim
    ]:
        monkeypatch.setattr(budget, "physical_memory", lambda total=total: total)
        assert _memory.thresholds() == expected


@pytest.mark.skipif(not _is_glibc(), reason="the thresholds are glibc's")
@pytest.mark.skipif(not _big_enough(), reason="a 48 MiB buffer is above this machine's threshold")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    plain = _probe("none")
    kept = _probe("keep")
    assert kept["result"] == [True, True]  # set once, reported again
    # Without the call every round maps the buffer anew and faults in each page (7 rounds);
    # with it the buffer stays in the heap and the rounds after the first fault in nothing.
    assert plain["faults"] >= 7 * _PAGES * 0.9, plain
    assert kept["faults"] <= 0.05 * 7 * _PAGES, kept


@pytest.mark.skipif(not _is_glibc(), reason="the thresholds are glibc's")
@pytest.mark.skipif(not _big_enough(), reason="a 48 MiB buffer is above this machine's threshold")
def test_they_are_set_when_gradient_work_starts_not_when_an_engine_is_built():
    # Building the engine is what a model's parity check does (the service's uploads too):
    # it leaves glibc alone. A method's engine (GradientEngine.on) sets the thresholds.
    assert _probe("engine")["faults"] >= 7 * _PAGES * 0.9
    assert _probe("on")["faults"] <= 0.05 * 7 * _PAGES


@pytest.mark.parametrize(
    "env",
    [
        {"PYANALYZER_MALLOC": "default"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
    ids=["opt-out", "malloc-env", "tunables"],
)
def test_a_user_tuned_allocator_is_left_alone(env):
    got = _probe("keep", **env)
    assert got["result"] == [False, False]
    if "PYANALYZER_MALLOC" in env and _is_glibc():
        assert got["faults"] >= 7 * _PAGES * 0.9  # glibc's own behaviour, untouched
