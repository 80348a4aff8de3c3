"""Subprocess side of tests/test_store.py: writers that get killed or race each other.

Usage::

    python _store_worker.py hang STORE READY_FILE STAGE   # STAGE: arrays | replace | renamed
    python _store_worker.py write STORE NAME N GO_FILE

``hang`` starts writing a three-array entry and, at STAGE (after the first array is in the
entry's temp file, just before the temp file is renamed onto the entry's name, or just after),
creates READY_FILE and sleeps until it is killed. ``write`` waits for GO_FILE, then writes N
entries with method NAME.

The package is imported from ``$PYANALYZER_PKG_DIR`` without running its ``__init__`` (which
may import torch), so that a worker starts in a fraction of a second.
"""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import numpy as np

MODEL = "ab" * 32


def _import_store() -> types.ModuleType:
    pkg_dir = os.environ.get("PYANALYZER_PKG_DIR")
    if pkg_dir and "pyanalyzer" not in sys.modules:
        pkg = types.ModuleType("pyanalyzer")
        pkg.__path__ = [pkg_dir]
        sys.modules["pyanalyzer"] = pkg
    import pyanalyzer.store as store_mod

    return store_mod


def _import_hdf5() -> types.ModuleType:
    import pyanalyzer.store._hdf5 as hdf5_mod

    return hdf5_mod


def hang(store_path: str, ready: str, stage: str) -> None:
    sm = _import_store()
    store = sm.Store(store_path)

    def pause() -> None:
        Path(ready).write_text(str(os.getpid()))
        time.sleep(120)

    if stage == "arrays":
        hdf5 = _import_hdf5()  # where entry files are written
        original = hdf5._write_array
        calls = 0

        def slow_write(group, name, value):  # type: ignore[no-untyped-def]
            nonlocal calls
            original(group, name, value)
            calls += 1
            if calls == 1:
                group.file.flush()  # part of the entry really is in the temp file
                pause()

        hdf5._write_array = slow_write
    elif stage in ("replace", "renamed"):
        real_replace = os.replace

        def slow_replace(src, dst):  # type: ignore[no-untyped-def]
            if stage == "replace":
                pause()
            real_replace(src, dst)
            pause()

        os.replace = slow_replace  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown stage {stage}")

    rng = np.random.default_rng(0)
    params = {"victim": True}
    arrays = {n: rng.random(200_000) for n in ("a", "b", "c")}
    store.put(sm.Key.make(MODEL, "victim", params), arrays, params=params, model_file="m.onnx")
    raise SystemExit("the write finished but should have been killed")


def write(store_path: str, name: str, n: int, go: str) -> None:
    sm = _import_store()
    store = sm.Store(store_path, fsync=False)
    deadline = time.monotonic() + 30
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.001)
    for i in range(n):
        params = {"writer": name, "i": i}
        store.put(
            sm.Key.make(MODEL, name, params),
            {"values": np.full(1000, i, dtype=np.int32), "name": np.array([name])},
            params=params,
            model_file="m.onnx",
        )


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "hang":
        hang(*args)
    elif cmd == "write":
        write(args[0], args[1], int(args[2]), args[3])
    else:
        raise SystemExit(f"unknown command {cmd}")
