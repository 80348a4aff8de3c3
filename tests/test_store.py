"""Tests of pyanalyzer.store: keys, round trips, listing/removal, atomicity, concurrency."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import pyanalyzer.store as store_mod
from pyanalyzer._version import __version__
from pyanalyzer.errors import StoreError, UserInputError
from pyanalyzer.store import (
    Entry,
    Key,
    Store,
    canonical_json,
    default_path,
    file_sha256,
    params_digest,
)

M1 = "1" * 64
M2 = "2" * 64
WORKER = Path(__file__).with_name("_store_worker.py")


def put(store: Store, model: str, method: str, params: dict, **arrays: np.ndarray) -> Key:
    key = Key.make(model, method, params)
    store.put(key, arrays or {"x": np.arange(3)}, params=params, model_file="net.onnx")
    return key


def temp_files(store: Store) -> list[Path]:
    return sorted(store.path.parent.glob(store.path.name + ".tmp-*"))


# ---- canonical JSON and keys --------------------------------------------------------------------


def test_canonical_json_is_stable() -> None:
    a = {"b": [1, 2.5], "a": {"y": "é", "x": None}, "c": True}
    b = {"c": True, "a": {"x": None, "y": "é"}, "b": (1, 2.5)}
    assert (
        canonical_json(a)
        == canonical_json(b)
        == ('{"a":{"x":null,"y":"\\u00e9"},"b":[1,2.5],"c":true}')
    )
    numpy_version = {
        "c": np.bool_(True),
        "b": np.array([1, 2.5])[:1].astype(np.int64).tolist() + [np.float64(2.5)],
        "a": {"x": None, "y": np.str_("é")},
    }
    assert canonical_json(numpy_version) == canonical_json(a)
    assert canonical_json(np.arange(3, dtype=np.uint8)) == "[0,1,2]"
    assert canonical_json(np.float32(0.1)) == repr(float(np.float32(0.1)))
    assert canonical_json({"p": Path("/a/b.onnx")}) == '{"p":"/a/b.onnx"}'
    assert canonical_json({3, 1, 2}) == "[1,2,3]"

    @dataclasses.dataclass
    class Spec:
        size: tuple[int, int]
        mean: float

    assert canonical_json(Spec((2, 3), 0.5)) == '{"mean":0.5,"size":[2,3]}'


def test_canonical_json_rejects_nan_and_unknown_types() -> None:
    with pytest.raises(UserInputError, match="NaN"):
        canonical_json({"lr": [1.0, float("nan")]})
    with pytest.raises(UserInputError, match=r"\['lr'\]"):
        canonical_json({"lr": np.float32("inf")})
    with pytest.raises(TypeError):
        canonical_json({1: "a"})
    with pytest.raises(TypeError):
        canonical_json({"f": object()})


def test_params_digest_and_keys() -> None:
    assert params_digest({"a": 1, "b": 2}) == params_digest({"b": 2, "a": 1})
    assert params_digest({"a": 1}) != params_digest({"a": 2})
    assert params_digest({"a": 1}) != params_digest({"a": 1.0})
    assert params_digest({"a": 1}) != params_digest({"a": 1, "b": None})
    k1 = Key.make(M1, "dissect", {"q": 0.005})
    assert k1 == Key.make(M1, "dissect", {"q": np.float64(0.005)})
    assert k1 != Key.make(M1, "dissect", {"q": 0.01})
    assert k1 != Key.make(M2, "dissect", {"q": 0.005})
    assert k1 != Key.make(M1, "deconvnet", {"q": 0.005})
    assert k1.path == f"/entries/{M1}/dissect/{k1.params_sha256}"
    assert k1.partial().method == "dissect/partial" and k1.partial().is_partial
    assert k1.partial().final() == k1 and k1.partial().partial() == k1.partial()
    for bad_method in ("", "a b", "1abc", "a//b", "/a", "a/", "x/" + "a" * 64):
        with pytest.raises(UserInputError):
            Key.make(M1, bad_method, {})
    with pytest.raises(UserInputError):
        Key.make("ABC", "dissect", {})


def test_file_sha256(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "m.onnx").write_bytes(data)
    assert file_sha256(tmp_path / "m.onnx") == hashlib.sha256(data).hexdigest()


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYANALYZER_STORE", str(tmp_path / "s.h5"))
    assert default_path() == tmp_path / "s.h5"
    assert Store().path == tmp_path / "s.h5"
    monkeypatch.delenv("PYANALYZER_STORE")
    assert default_path() == Path.home() / ".cache" / "pyanalyzer" / "store.h5"


# ---- round trip ---------------------------------------------------------------------------------


def test_round_trip_arrays_and_attributes(tmp_path: Path) -> None:
    store = Store(tmp_path / "sub" / "dir" / "store.h5")
    rng = np.random.default_rng(0)
    arrays = {
        "f16": rng.random((2, 3)).astype(np.float16),
        "f32": rng.random((4, 5, 6)).astype(np.float32),
        "f64": np.array(3.25),  # 0-d
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u64": np.array([0, 2**64 - 1], dtype=np.uint64),
        "b": np.array([True, False, True]),
        "c64": (rng.random(3) + 1j * rng.random(3)).astype(np.complex64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "labels": np.array(["sky", "héllo", ""]),
        "raw": np.array([b"ab", b"c"]),
        "big": rng.random((300, 300)),  # > 64 KiB: chunked + gzip
        "tally/iou": np.arange(12, dtype=np.int64).reshape(3, 4),
        "tally/deep/count": np.ones(2, dtype=np.uint32),
    }
    params = {"layer": "conv2", "quantile": 0.005, "size": (7, 7)}
    prep = {"scale": 1 / 255, "mean": (0.5,), "std": (0.25,)}
    key = Key.make(M1, "dissect", params)
    before = dt.datetime.now(dt.timezone.utc)
    written = store.put(
        key,
        arrays,
        params=params,
        model_file=tmp_path / "models" / "net.onnx",
        preprocessing=prep,
        extra_attrs={"batches_done": 3, "note": "x"},
    )
    assert written.key == key and set(written) == set(arrays)
    entry = store.get(key)
    assert isinstance(entry, Entry) and key in store
    assert sorted(entry) == sorted(arrays)
    for name, value in arrays.items():
        got = entry[name]
        assert got.dtype == value.dtype, name
        assert got.shape == value.shape, name
        np.testing.assert_array_equal(got, value, err_msg=name)
    assert entry.params == {"layer": "conv2", "quantile": 0.005, "size": [7, 7]}
    assert entry.version == __version__
    assert entry.model_file == "net.onnx"
    assert entry.preprocessing == {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}
    assert entry.extra == {"batches_done": 3, "note": "x"}
    created = dt.datetime.fromisoformat(entry.created)
    assert created.utcoffset() == dt.timedelta(0)
    assert before <= created <= dt.datetime.now(dt.timezone.utc)
    assert entry.attrs["model_file"] == "net.onnx" and entry.attrs["batches_done"] == 3
    # Only some arrays.
    assert sorted(store.get(key, names=["f32", "tally/iou"])) == ["f32", "tally/iou"]
    # The file is plain HDF5 with readable attributes; big arrays are compressed.
    with h5py.File(store.path, "r") as f:
        g = f[key.path]
        assert g.attrs["parameters"] == canonical_json(params)
        assert g.attrs["pyanalyzer_version"] == __version__
        assert g.attrs["model_file"] == "net.onnx"
        assert f[key.path + "/arrays/big"].compression == "gzip"
        assert f[key.path + "/arrays/i8"].compression is None
    assert temp_files(store) == []


def test_put_checks_key_and_overwrite(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.h5")
    key = put(store, M1, "m", {"a": 1}, x=np.zeros(2))
    with pytest.raises(UserInputError, match="does not match"):
        store.put(key, {"x": np.zeros(2)}, params={"a": 2})
    with pytest.raises(StoreError, match="already exists"):
        store.put(key, {"x": np.ones(2)}, params={"a": 1}, overwrite=False)
    store.put(key, {"y": np.ones(2)}, params={"a": 1})  # overwrite replaces the whole entry
    assert list(store.get(key)) == ["y"]
    with pytest.raises(UserInputError):
        store.put(Key.make(M1, "m", {}), {"a/../b": np.zeros(1)}, params={})
    assert len(store.entries()) == 1


def test_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.h5")
    k1 = put(store, M1, "m", {"i": 1})
    k2 = Key.make(M1, "m", {"i": 2})
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put(k2, {"x": np.zeros(1)}, params={"i": 2})
        tx.remove(k1)
        assert k2 in tx and k1 not in tx
        raise RuntimeError("boom")
    assert k1 in store and k2 not in store and temp_files(store) == []
    # Checkpoint → final, atomically.
    final = Key.make(M1, "dissect", {"q": 1})
    put(store, M1, "dissect/partial", {"q": 1}, done=np.array(2))
    with store.transaction() as tx:
        tx.put(final, {"r": np.ones(2)}, params={"q": 1})
        assert tx.remove(final.partial())
    assert final in store and final.partial() not in store


# ---- listing and removal ------------------------------------------------------------------------


def test_entries_remove_remove_where_clear(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.h5")
    keys = [
        put(store, M1, "dissect", {"i": 0}, a=np.zeros(1000)),
        put(store, M1, "dissect", {"i": 1}),
        put(store, M1, "dissect/partial", {"i": 2}),
        put(store, M2, "deconvnet", {"i": 0}),
        put(store, M2, "actmax", {"i": 9}),
    ]
    infos = store.entries()
    assert sorted(i.key for i in infos) == sorted(keys)
    info = next(i for i in infos if i.key == keys[0])
    assert info.method == "dissect" and info.model_file == "net.onnx"
    assert info.version == __version__ and info.size >= 8000 and info.params == {"i": 0}
    assert dt.datetime.fromisoformat(info.created).utcoffset() == dt.timedelta(0)

    assert store.remove(keys[1]) is True
    assert store.remove(keys[1]) is False
    assert keys[1] not in store and keys[0] in store
    assert store.remove_where(method="dissect") == 1  # not "dissect/partial"
    assert store.remove_where(method="nothing") == 0
    assert store.remove_where(prefix=keys[4].params_sha256[:8]) == 1
    assert store.remove_where(model_sha256=M1) == 1
    assert [i.key for i in store.entries()] == [keys[3]]
    assert store.clear() == 1
    assert store.entries() == [] and store.clear() == 0
    with h5py.File(store.path, "r") as f:
        assert list(f["entries"]) == []  # empty parent groups are pruned
    assert temp_files(store) == []


def test_replacing_a_checkpoint_does_not_grow_the_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.h5", fsync=False)
    rng = np.random.default_rng(1)
    ck = Key.make(M1, "dissect/partial", {})
    sizes = []
    for _ in range(8):
        store.put(ck, {"state": rng.random(100_000)}, params={})
        sizes.append(store.path.stat().st_size)
    assert sizes[-1] < 2.5 * sizes[0]
    for i in range(4):
        put(store, M1, "big", {"i": i}, x=rng.random(200_000))
    big = store.path.stat().st_size
    store.remove_where(method="big")  # most of the file becomes free: compacted
    assert store.path.stat().st_size < 0.5 * big
    store.compact()
    assert ck in store and len(store.entries()) == 1


# ---- missing, corrupt and foreign stores --------------------------------------------------------


def test_missing_store_is_empty_and_not_created(tmp_path: Path) -> None:
    store = Store(tmp_path / "no" / "such" / "store.h5")
    key = Key.make(M1, "m", {})
    assert store.entries() == []
    assert store.get(key) is None and key not in store
    assert store.remove(key) is False
    assert store.remove_where(method="m") == 0 and store.clear() == 0
    store.compact()
    assert not (tmp_path / "no").exists()


def test_symlinked_store_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real" / "store.h5"
    real.parent.mkdir()
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    assert Store(link).entries() == []  # dangling link: an empty store
    key = put(Store(link), M1, "m", {})
    put(Store(link), M1, "m", {"b": 1})
    assert link.is_symlink() and key in Store(real) and len(Store(real).entries()) == 2


def test_corrupt_or_foreign_store_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not hdf5" * 100)
    store = Store(bad)
    key = Key.make(M1, "m", {})
    for action in (store.entries, lambda: store.get(key), lambda: put(store, M1, "m", {})):
        with pytest.raises(StoreError, match=str(bad)):
            action()
    assert bad.read_bytes() == b"this is not hdf5" * 100 and temp_files(store) == []

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a pyanalyzer store"):
        Store(foreign).entries()
    with pytest.raises(StoreError, match="not a pyanalyzer store"):
        put(Store(foreign), M1, "m", {})

    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)


# ---- crashes and concurrency --------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYANALYZER_PKG_DIR"] = str(Path(store_mod.__file__).parent)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"worker exited with {proc.returncode}: {err.decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("worker never reached the hook")
        time.sleep(0.01)


@pytest.mark.parametrize("stage", ["arrays", "replace"])
def test_killed_writer_leaves_store_intact(tmp_path: Path, stage: str) -> None:
    store = Store(tmp_path / "store.h5")
    earlier = put(store, M1, "earlier", {"n": 1}, x=np.arange(10))
    before = store.path.read_bytes()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "hang", str(store.path), str(ready), stage],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(ready, proc)
        (tmp,) = temp_files(store)  # the victim's half-written copy
        assert tmp.stat().st_size > 1_000_000
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes the pipes
    assert proc.returncode == -signal.SIGKILL
    assert store.path.read_bytes() == before
    assert [i.key for i in store.entries()] == [earlier]
    np.testing.assert_array_equal(store.get(earlier)["x"], np.arange(10))
    assert Key.make("ab" * 32, "victim", {"victim": True}) not in store
    # The next writer removes the dead writer's temp file.
    later = put(store, M1, "later", {})
    assert later in store and temp_files(store) == []


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.h5")
    n = 12
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "write", str(store.path), name, str(n), str(go)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("alpha", "beta")
    ]
    time.sleep(0.5)  # let both import and wait on the go file
    go.touch()
    seen = 0
    reads = 0
    while any(p.poll() is None for p in procs):
        infos = store.entries()  # must never fail while writers replace the file
        assert len(infos) >= seen
        seen = len(infos)
        for info in infos[-2:]:
            entry = store.get(info.key)
            assert entry is not None
            np.testing.assert_array_equal(entry["values"], np.full(1000, entry.params["i"]))
        reads += 1
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err.decode()
    infos = store.entries()
    assert len(infos) == 2 * n
    for name in ("alpha", "beta"):
        for i in range(n):
            entry = store.get(Key.make("ab" * 32, name, {"writer": name, "i": i}))
            assert entry is not None
            np.testing.assert_array_equal(entry["values"], np.full(1000, i, dtype=np.int32))
            assert entry["name"].tolist() == [name]
    assert reads > 0 and temp_files(store) == []
