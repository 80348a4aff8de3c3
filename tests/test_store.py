"""Tests of pyanalyzer.store: keys, round trips, listing/removal, atomicity, concurrency, the
listing index, format-1 migration and the `cached` contract."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import pyanalyzer.store as store_mod
import pyanalyzer.store._hdf5 as hdf5_mod
import pyanalyzer.store._store as impl
from pyanalyzer._version import __version__
from pyanalyzer.errors import StoreError, UserInputError
from pyanalyzer.store import (
    Checkpoint,
    Entry,
    Key,
    Store,
    cached,
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


_TEMP = re.compile(r"\..*\.tmp-\d+-[0-9a-f]+(\.[A-Za-z0-9]+)?")


def temp_files(store: Store) -> list[Path]:
    """Temp files and folders of writers: in the store and beside it."""
    inside = store.path.rglob(".*") if store.path.is_dir() else []
    beside = store.path.parent.glob(f".{store.path.name}.*")
    return sorted(p for p in [*inside, *beside] if _TEMP.fullmatch(p.name))


def entry_file(store: Store, key: Key) -> Path:
    return store.path / "entries" / key.relpath


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, size) of every file under ``folder``."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def du(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


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
    assert k1.partial().relpath == f"{M1}/dissect/partial/{k1.params_sha256}.h5"
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
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = tmp_path / "home" / ".cache" / "pyanalyzer"
    assert default_path() == base / "store"
    # A single-file store of earlier versions is kept (and migrated in place by a write) ...
    base.mkdir(parents=True)
    write_v1(base / "store.h5", [(Key.make(M1, "m", {}), {}, {"x": np.arange(2)})])
    assert default_path() == base / "store.h5"
    put(Store(), M1, "m", {"i": 1})
    assert (base / "store.h5").is_dir() and default_path() == base / "store.h5"
    assert len(Store().entries()) == 2
    # ... unless the new default exists.
    (base / "store").mkdir()
    assert default_path() == base / "store"


# ---- round trip ---------------------------------------------------------------------------------


def _compression(store: Store, key: Key, name: str) -> tuple[str | None, bool]:
    with h5py.File(entry_file(store, key), "r") as f:
        d = f["arrays/" + name]
        return d.compression, d.shuffle


def _expected(arr: np.ndarray) -> tuple[str | None, bool]:
    args = hdf5_mod._codec(arr)
    return args.get("compression"), bool(args.get("shuffle", False))


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
        "big": rng.random((300, 300)),  # > 64 KiB but random: stored raw
        "acts": np.maximum(rng.standard_normal((3, 200, 200)).astype(np.float32) - 1.3, 0),
        "counts": rng.poisson(3, (500, 70)).astype(np.int64),
        "wide": rng.integers(0, 10_000, (500, 70), dtype=np.int64),
        "pixels": rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8),
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
    # The entry is a plain HDF5 file with readable attributes; big arrays are compressed with
    # their dtype's codec unless they do not compress.
    assert (store.path / "format.json").is_file()
    with h5py.File(entry_file(store, key), "r") as f:
        assert f.attrs["parameters"] == canonical_json(params)
        assert f.attrs["pyanalyzer_version"] == __version__
        assert f.attrs["model_file"] == "net.onnx"
        assert f.attrs["params_sha256"] == key.params_sha256
    for name in ("acts", "counts", "wide", "pixels", "big"):
        assert _compression(store, key, name) == _expected(arrays[name]), name
    assert _compression(store, key, "acts") == ("lzf", False)  # sparse floats (90 % zeros)
    assert _compression(store, key, "counts") == ("gzip", True)  # small counts
    assert _compression(store, key, "wide")[0] is not None  # larger ints: a faster codec
    assert _compression(store, key, "big") == (None, False)  # random: stored raw
    assert _compression(store, key, "i8") == (None, False)  # small
    assert temp_files(store) == []


def test_put_checks_key_and_overwrite(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.h5")
    key = put(store, M1, "m", {"a": 1}, x=np.zeros(2))
    with pytest.raises(UserInputError, match="does not match"):
        store.put(key, {"x": np.zeros(2)}, params={"a": 2})
    with pytest.raises(StoreError, match="already exists"):
        store.put(key, {"x": np.ones(2)}, params={"a": 1}, overwrite=False)
    with pytest.raises(StoreError, match="already exists"), store.transaction() as tx:
        tx.put(key, {"x": np.ones(2)}, params={"a": 1}, overwrite=False)
    store.put(key, {"y": np.ones(2)}, params={"a": 1})  # overwrite replaces the whole entry
    assert list(store.get(key)) == ["y"]
    with pytest.raises(UserInputError):
        store.put(Key.make(M1, "m", {}), {"a/../b": np.zeros(1)}, params={})
    with pytest.raises(TypeError):
        store.put(Key.make(M1, "m", {}), {"o": np.array([object()])}, params={})
    assert len(store.entries()) == 1 and temp_files(store) == []
    new = Key.make(M2, "m", {})
    store.put(new, {"x": np.zeros(1)}, params={}, overwrite=False)  # not there yet: written
    assert new in store


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_transaction_is_all_or_nothing(tmp_path: Path, error: type[BaseException]) -> None:
    store = Store(tmp_path / "store.h5")
    k1 = put(store, M1, "m", {"i": 1})
    k2 = Key.make(M1, "m", {"i": 2})
    listing = store.entries()
    with pytest.raises(error), store.transaction() as tx:
        tx.put(k2, {"x": np.zeros(1)}, params={"i": 2})
        tx.remove(k1)
        assert k2 in tx and k1 not in tx and tx.keys() == [k2]
        assert tx.get(k1) is None and tx.get(k2)["x"].tolist() == [0.0]
        assert k2 not in store and k1 in store  # nothing applied before the block ends
        raise error("boom")
    assert k1 in store and k2 not in store and temp_files(store) == []
    assert store.entries() == listing
    # Checkpoint → final, atomically per entry and in that order.
    final = Key.make(M1, "dissect", {"q": 1})
    put(store, M1, "dissect/partial", {"q": 1}, done=np.array(2))
    with store.transaction() as tx:
        tx.put(final, {"r": np.ones(2)}, params={"q": 1})
        assert tx.remove(final.partial())
        assert not tx.remove(final.partial())  # already removed (in this transaction)
    assert final in store and final.partial() not in store
    assert not (store.path / "entries" / M1 / "dissect" / "partial").exists()
    # A put then a remove of the same key in one block cancel out; a remove then a put writes.
    with store.transaction() as tx:
        tx.put(k2, {"x": np.zeros(1)}, params={"i": 2})
        assert tx.remove(k2)
        assert tx.remove(k1)
        tx.put(k1, {"z": np.ones(1)}, params={"i": 1})
    assert k2 not in store and list(store.get(k1)) == ["z"] and temp_files(store) == []


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
    assert sorted(i.key for i in infos) == sorted(keys) and infos == sorted(
        infos, key=lambda i: i.key
    )
    info = next(i for i in infos if i.key == keys[0])
    assert info.method == "dissect" and info.model_file == "net.onnx"
    assert info.version == __version__ and info.size >= 8000 and info.params == {"i": 0}
    assert dt.datetime.fromisoformat(info.created).utcoffset() == dt.timedelta(0)
    assert store.entries() == infos  # from the index this time

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
    assert list((store.path / "entries").iterdir()) == []  # empty folders are pruned
    assert temp_files(store) == []


def test_replacing_a_checkpoint_does_not_grow_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.h5", fsync=False)
    rng = np.random.default_rng(1)
    ck = Key.make(M1, "dissect/partial", {})
    sizes = []
    for _ in range(8):
        store.put(ck, {"state": rng.random(100_000)}, params={})
        sizes.append(du(store.path / "entries"))
    assert sizes[-1] < 1.2 * sizes[0]
    for i in range(4):
        put(store, M1, "big", {"i": i}, x=rng.random(200_000))
    big = du(store.path / "entries")
    store.remove_where(method="big")  # space comes back at once
    assert du(store.path / "entries") < 0.5 * big
    store.compact()
    assert ck in store and len(store.entries()) == 1


def test_write_touches_no_other_file(tmp_path: Path) -> None:
    """A write costs what it writes: no other file of the store is rewritten or even touched."""
    store = Store(tmp_path / "store", fsync=False)
    rng = np.random.default_rng(2)
    for i in range(10):  # ~50 MB of other entries
        put(store, M1, "bulk", {"i": i}, x=rng.random(650_000))
    store.entries()  # the index exists too
    before = snapshot(store.path)
    assert sum(s for _, _, s in before.values()) > 50_000_000
    time.sleep(0.01)  # so that a rewrite would show in mtime_ns
    small = put(store, M2, "small", {"n": 1}, x=np.arange(5))  # 40 bytes
    again = put(store, M1, "bulk", {"i": 3}, y=np.arange(5))  # an overwrite in a full folder
    after = snapshot(store.path)
    replaced = str(entry_file(store, again).relative_to(store.path))
    assert set(after) - set(before) == {str(entry_file(store, small).relative_to(store.path))}
    for name, sig in before.items():
        if name != replaced:
            assert after[name] == sig, name
    assert after[replaced][0] != before[replaced][0]  # a new file renamed in


# ---- the listing index --------------------------------------------------------------------------


def test_index_follows_the_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "store", fsync=False)
    keys = [put(store, M1, "m", {"i": i}) for i in range(4)]
    assert [i.key for i in store.entries()] == sorted(keys)
    index = store.path / "index.sqlite"
    with sqlite3.connect(index) as con:
        assert con.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 4
    # Changed behind the index's back: a file removed, one replaced, one added.
    entry_file(store, keys[0]).unlink()
    old = next(i for i in store.entries() if i.key == keys[1])
    store.put(keys[1], {"y": np.zeros(10_000)}, params={"i": 1}, model_file="other.onnx")
    infos = {i.key: i for i in store.entries()}
    assert set(infos) == set(keys[1:])
    assert infos[keys[1]].model_file == "other.onnx" and infos[keys[1]].created > old.created
    with sqlite3.connect(index) as con:
        assert con.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 3
    # The listing never opens a file the index knows.
    monkeypatch.setattr(impl, "_read_summary", lambda *a: pytest.fail("opened an entry"))
    assert sorted(store.entries(), key=lambda i: i.key) == sorted(
        infos.values(), key=lambda i: i.key
    )
    monkeypatch.undo()
    # A corrupt index is rebuilt; an index that cannot be opened (a read-only folder) is done
    # without.
    index.write_bytes(b"garbage" * 1000)
    assert {i.key for i in store.entries()} == set(keys[1:])
    assert {i.key for i in store.entries()} == set(keys[1:])

    def no_sqlite(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", no_sqlite)
    put(store, M2, "m", {"i": 9})
    assert len(store.entries()) == 4


def test_killed_writer_after_rename_is_listed(tmp_path: Path) -> None:
    """Writers do not update the index: one killed right after its rename is still listed."""
    store = Store(tmp_path / "store.h5")
    earlier = put(store, M1, "earlier", {"n": 1})
    assert [i.key for i in store.entries()] == [earlier]
    proc, _ = _start_victim(store, tmp_path, "renamed")
    _kill(proc)
    victim = Key.make("ab" * 32, "victim", {"victim": True})
    assert [i.key for i in store.entries()] == sorted([earlier, victim])
    assert store.get(victim)["c"].shape == (200_000,) and temp_files(store) == []


# ---- missing, corrupt and foreign stores --------------------------------------------------------


def test_missing_store_is_empty_and_not_created(tmp_path: Path) -> None:
    store = Store(tmp_path / "no" / "such" / "store.h5")
    key = Key.make(M1, "m", {})
    assert store.entries() == [] and not store.exists()
    assert store.get(key) is None and key not in store
    assert store.remove(key) is False
    assert store.remove_where(method="m") == 0 and store.clear() == 0
    store.compact()
    store.remove_scratch(key)
    with store.transaction() as tx:
        assert key not in tx and not tx.remove(key) and tx.keys() == []
    assert not (tmp_path / "no").exists()
    assert cached(None, compute=lambda ck: Res(np.ones(1), "n"), **SPEC).result.note == "n"
    assert not (tmp_path / "no").exists()


def test_empty_folder_becomes_a_store(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    store = Store(tmp_path / "s")
    assert store.entries() == [] and not store.exists()
    key = put(store, M1, "m", {})
    assert store.exists() and key in Store(tmp_path / "s")


def test_symlinked_store_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real" / "store.h5"
    real.parent.mkdir()
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    assert Store(link).entries() == []  # dangling link: an empty store
    key = put(Store(link), M1, "m", {})
    put(Store(link), M1, "m", {"b": 1})
    assert link.is_symlink() and real.is_dir()
    assert key in Store(real) and len(Store(real).entries()) == 2
    assert len(Store(link).entries()) == 2 and Store(link).remove(key)
    assert Store(link).scratch_dir(key).resolve().parent == real / "scratch"


def test_corrupt_or_foreign_store_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not hdf5" * 100)
    store = Store(bad)
    key = Key.make(M1, "m", {})
    actions = (
        store.entries,
        lambda: store.get(key),
        lambda: key in store,
        lambda: put(store, M1, "m", {}),
        lambda: store.remove(key),
        store.compact,
        lambda: store.transaction().__enter__(),
    )
    for action in actions:
        with pytest.raises(StoreError, match=re.escape(str(bad))):
            action()
    assert bad.read_bytes() == b"this is not hdf5" * 100 and temp_files(store) == []
    assert sorted(os.listdir(tmp_path)) == ["bad.h5"]

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a pyanalyzer store"):
        Store(foreign).entries()
    with pytest.raises(StoreError, match="not a pyanalyzer store"):
        put(Store(foreign), M1, "m", {})

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=f"{re.escape(str(folder))}.*not a pyanalyzer store"):
        Store(folder)
    assert os.listdir(folder) == ["notes.txt"]

    for marker, msg in (
        ('{"format": "other"}', "not a pyanalyzer store"),
        ('{"format": "pyanalyzer-store", "format_version": 99}', "store format 99"),
        ("{", "bad format.json"),
    ):
        (folder / "format.json").write_text(marker)
        with pytest.raises(StoreError, match=msg):
            Store(folder).entries()

    entry = tmp_path / "s"
    key = put(Store(entry), M1, "m", {})
    entry_file(Store(entry), key).write_bytes(b"damaged")
    with pytest.raises(StoreError, match="not an HDF5 file or corrupt"):
        Store(entry).get(key)


# ---- format 1 (one HDF5 file) -------------------------------------------------------------------


def write_v1(path: Path, entries: list[tuple[Key, dict, dict[str, np.ndarray]]]) -> None:
    """A single-file store laid out as pyanalyzer's format 1 wrote it."""
    with h5py.File(path, "w", libver=("v110", "latest")) as f:
        f.attrs["format"] = "pyanalyzer-store"
        f.attrs["format_version"] = 1
        f.create_group("entries")
        for key, params, arrays in entries:
            g = f.create_group(key.path)
            ag = g.create_group("arrays")
            for name, arr in arrays.items():
                if arr.dtype.kind == "U":
                    d = ag.create_dataset(
                        name, data=arr.astype(object), dtype=h5py.string_dtype("utf-8")
                    )
                    d.attrs["pyanalyzer_dtype"] = "str"
                elif arr.nbytes > 64 * 1024:
                    ag.create_dataset(
                        name, data=arr, chunks=True, compression="gzip", compression_opts=4,
                        shuffle=True,
                    )  # fmt: skip
                else:
                    ag.create_dataset(name, data=arr)
            attrs = {
                "model_sha256": key.model_sha256,
                "method": key.method,
                "params_sha256": key.params_sha256,
                "parameters": canonical_json(params),
                "pyanalyzer_version": "0.0.9",
                "created": "2024-05-01T10:00:00.000000+00:00",
                "model_file": "old.onnx",
                "preprocessing": canonical_json({"scale": 0.5}),
                "extra": canonical_json({"batches_done": 2}),
            }
            for k, v in attrs.items():
                g.attrs[k] = v


def _v1_content() -> list[tuple[Key, dict, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(3)
    return [
        (
            Key.make(M1, "dissect", {"q": 1}),
            {"q": 1},
            {"tally/iou": rng.random((4, 3)), "labels": np.array(["a", "é"]), "n": np.array(7)},
        ),
        (Key.make(M1, "dissect/partial", {"q": 1}), {"q": 1}, {"done": np.arange(3)}),
        (Key.make(M2, "actmax", {"u": [1, 2]}), {"u": [1, 2]}, {"px": rng.random((64, 300))}),
    ]


def _check_v1_content(store: Store) -> None:
    content = _v1_content()
    assert sorted(i.key for i in store.entries()) >= sorted(k for k, _, _ in content)
    for key, params, arrays in content:
        entry = store.get(key)
        assert entry is not None and sorted(entry) == sorted(arrays)
        for name, value in arrays.items():
            assert entry[name].dtype == value.dtype
            np.testing.assert_array_equal(entry[name], value)
        assert entry.params == _plain(params)
        assert entry.model_file == "old.onnx" and entry.version == "0.0.9"
        assert entry.created == "2024-05-01T10:00:00.000000+00:00"
        assert entry.preprocessing == {"scale": 0.5} and entry.extra == {"batches_done": 2}


def _plain(params: dict) -> object:
    return json.loads(canonical_json(params))


@pytest.mark.parametrize("exchange", [True, False])
def test_format1_store_is_read_then_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:  # a file system without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(impl, "_exchange", lambda a, b: False)
    path = tmp_path / "store.h5"
    write_v1(path, _v1_content())
    before = path.read_bytes()
    # Reading takes no lock and writes nothing.
    store = Store(path)
    _check_v1_content(store)
    assert len(store.entries()) == 3
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["store.h5"]
    # The first write migrates: the file becomes a store folder holding every entry.
    new = put(store, M2, "deconvnet", {"k": 1}, x=np.arange(4))
    assert path.is_dir() and (path / "format.json").is_file()
    for s in (store, Store(path)):
        _check_v1_content(s)
        assert len(s.entries()) == 4 and s.get(new)["x"].tolist() == [0, 1, 2, 3]
    assert sorted(os.listdir(tmp_path)) == ["store.h5", "store.h5.lock"]
    assert temp_files(store) == []
    # Compressed arrays were copied as they were (their chunks are not re-encoded).
    px = Key.make(M2, "actmax", {"u": [1, 2]})
    with h5py.File(entry_file(store, px), "r") as f:
        assert f["arrays/px"].compression == "gzip"


def test_format1_migration_crash_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.h5"
    write_v1(path, _v1_content())
    before = path.read_bytes()
    real_write = h5py.File.copy
    calls = 0

    def failing_copy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(h5py.File, "copy", failing_copy)
    with pytest.raises(StoreError, match="disk full"):
        put(Store(path), M2, "m", {})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == [
        "store.h5",
        "store.h5.lock",
    ]
    monkeypatch.undo()
    # A migration that stopped between its two renames (no RENAME_EXCHANGE): the file waits
    # under its backup name; it is read from there, and the next write finishes the job.
    os.replace(path, tmp_path / ".store.h5.v1-backup")
    _check_v1_content(Store(path))
    put(Store(path), M2, "m", {})
    _check_v1_content(Store(path))
    assert sorted(os.listdir(tmp_path)) == ["store.h5", "store.h5.lock"]


# ---- scratch space and `cached` -----------------------------------------------------------------


@dataclasses.dataclass
class Res:
    values: np.ndarray
    note: str

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values}

    def to_meta(self) -> dict[str, object]:
        return {"note": self.note}

    @classmethod
    def from_stored(cls, arrays, meta):  # type: ignore[no-untyped-def]
        return cls(np.asarray(arrays["values"]), meta["note"])


SPEC = {"model_sha256": M1, "method": "analysis", "params": {"layer": "c1"}, "revision": 1,
        "result_type": Res}  # fmt: skip


def test_scratch_dir(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    key = Key.make(M1, "dissect/partial", {"a": 1})
    folder = store.scratch_dir(key)
    assert folder == tmp_path / "store" / "scratch" / (
        f"{M1[:16]}-{key.params_sha256[:16]}-dissect_partial"
    )
    assert folder.is_dir() and store.entries() == []
    (folder / "big.f32").write_bytes(b"x" * 10)
    store.remove_scratch(key)
    assert not folder.exists() and not (tmp_path / "store" / "scratch").exists()


def test_cached_miss_hit_and_revision(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", fsync=False)
    calls = []

    def compute(ck: Checkpoint) -> Res:
        calls.append(ck)
        assert ck.state is None and ck.meta == {}
        return Res(np.arange(4.0), f"run {len(calls)}")

    first = cached(store, compute=compute, model_file="/m/net.onnx", **SPEC)
    assert not first.from_store and not first.resumed and len(calls) == 1
    assert first.key == Key.make(M1, "analysis", {"params": {"layer": "c1"}, "revision": 1})
    entry = store.get(first.key)
    assert entry.extra == {"revision": 1, "result": {"note": "run 1"}}
    assert entry.model_file == "net.onnx" and entry.params["params"] == {"layer": "c1"}
    hit = cached(store, compute=compute, **SPEC)
    assert hit.from_store and hit.key == first.key and len(calls) == 1
    assert hit.result.note == "run 1" and hit.result.values.tolist() == [0, 1, 2, 3]
    bumped = cached(store, compute=compute, **{**SPEC, "revision": 2})
    assert not bumped.from_store and bumped.key != first.key and len(calls) == 2
    # An entry that does not decode (another layout) is recomputed and replaced.
    store.put(first.key, {"other": np.ones(1)}, params=entry.params, extra_attrs=entry.extra)
    again = cached(store, compute=compute, **SPEC)
    assert not again.from_store and len(calls) == 3 and again.result.note == "run 3"
    assert cached(store, compute=compute, **SPEC).from_store and len(calls) == 3
    assert {i.key.method for i in store.entries()} == {"analysis"}  # no checkpoint left


def test_cached_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", fsync=False)
    seen: list[tuple[object, dict, bool]] = []

    def compute(ck: Checkpoint) -> Res:
        start = 0 if ck.state is None else int(ck.state["done"])
        seen.append((None if ck.state is None else int(ck.state["done"]), dict(ck.meta),
                     (ck.scratch() / "spill").exists()))  # fmt: skip
        (ck.scratch() / "spill").write_bytes(b"partial work")
        for step in range(start, 6):
            assert ck.save({"done": np.array(step)}, {"step": step}, force=(step == 3))
            if step == 3 and start == 0:
                raise KeyboardInterrupt  # Ctrl-C
        return Res(np.array([start]), "done")

    ck_key = Key.make(M1, "analysis", {"params": {"layer": "c1"}, "revision": 1}).partial()
    with pytest.raises(KeyboardInterrupt):
        cached(store, compute=compute, checkpoint_every=0, **SPEC)
    assert store.get(ck_key).extra == {"checkpoint": {"step": 3}}
    assert store.get(ck_key)["done"] == 3
    out = cached(store, compute=compute, checkpoint_every=0, **SPEC)
    assert out.resumed and not out.from_store and out.result.values.tolist() == [3]
    assert seen == [(None, {}, False), (3, {"step": 3}, True)]
    assert ck_key not in store and not (store.path / "scratch").exists()


def test_cached_user_input_error_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", fsync=False)

    def compute(ck: Checkpoint) -> Res:
        assert ck.save({"done": np.array(1)}, force=True)
        (ck.scratch() / "spill").write_bytes(b"x")
        raise UserInputError("an unreadable image")

    with pytest.raises(UserInputError, match="unreadable"):
        cached(store, compute=compute, **SPEC)
    assert store.entries() == [] and not (store.path / "scratch").exists()

    def crash(ck: Checkpoint) -> Res:
        assert ck.save({"done": np.array(1)}, force=True)
        (ck.scratch() / "spill").write_bytes(b"x")
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        cached(store, compute=crash, **SPEC)
    assert [i.key.is_partial for i in store.entries()] == [True]
    assert len(list((store.path / "scratch").iterdir())) == 1


def test_cached_without_store_and_save_throttle(tmp_path: Path) -> None:
    folders = []

    def compute(ck: Checkpoint) -> Res:
        assert ck.state is None and not ck.save({"a": np.ones(1)}, force=True)
        assert not ck.due(force=True)
        folders.append(ck.scratch())
        assert ck.scratch() == folders[0] and folders[0].is_dir()
        return Res(np.zeros(2), "free")

    out = cached(None, compute=compute, **SPEC)
    assert out.key is None and not out.from_store and not out.resumed
    assert out.result.note == "free" and not folders[0].exists()

    store = Store(tmp_path / "store", fsync=False)
    saves = []

    def throttled(ck: Checkpoint) -> Res:
        assert not ck.due() and ck.due(force=True)
        saves.append(ck.save({"a": np.ones(1)}))  # less than `every` since the start
        saves.append(ck.save({"a": np.ones(1)}, force=True))
        ck.every = 0
        assert ck.due()
        saves.append(ck.save({"a": np.ones(1)}))
        return Res(np.zeros(1), "t")

    cached(store, compute=throttled, checkpoint_every=3600, **SPEC)
    assert saves == [False, True, True] and [i.key.method for i in store.entries()] == ["analysis"]


# ---- crashes and concurrency --------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYANALYZER_PKG_DIR"] = str(Path(store_mod.__file__).parents[1])
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


def _start_victim(store: Store, tmp_path: Path, stage: str) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / f"ready-{stage}"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "hang", str(store.path), str(ready), stage],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for(ready, proc)
    return proc, ready


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes the pipes
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("stage", ["arrays", "replace"])
def test_killed_writer_leaves_store_intact(tmp_path: Path, stage: str) -> None:
    store = Store(tmp_path / "store.h5")
    earlier = put(store, M1, "earlier", {"n": 1}, x=np.arange(10))
    before = entry_file(store, earlier).read_bytes()
    victim = Key.make("ab" * 32, "victim", {"victim": True})
    old_victim = store.put(victim, {"old": np.arange(3)}, params={"victim": True})
    proc, _ = _start_victim(store, tmp_path, stage)
    try:
        (tmp,) = temp_files(store)  # the victim's half-written (or complete) new version
        assert tmp.parent == entry_file(store, victim).parent
        assert tmp.stat().st_size > 1_000_000
    finally:
        _kill(proc)
    assert entry_file(store, earlier).read_bytes() == before
    np.testing.assert_array_equal(store.get(earlier)["x"], np.arange(10))
    got = store.get(victim)  # the old version, intact
    assert list(got) == ["old"] and got.created == old_victim.created
    # The next write into that folder removes the dead writer's temp file.
    assert temp_files(store) == [tmp]
    later = put(store, "ab" * 32, "victim", {"later": 1})
    assert later in store and temp_files(store) == []
    assert [i.key for i in store.entries()] == sorted([earlier, victim, later])


def test_listing_and_compact_remove_orphans(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.h5")
    put(store, M1, "earlier", {"n": 1})
    for sweeper in (store.entries, store.compact):
        proc, _ = _start_victim(store, tmp_path, "arrays")
        _kill(proc)
        assert len(temp_files(store)) == 1
        sweeper()
        assert temp_files(store) == [] and len(store.entries()) == 1
    assert not (store.path / "entries" / ("ab" * 32)).exists()  # compact pruned the folder


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
        infos = store.entries()  # must never fail while writers add files
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


# ---- paths a store cannot live at, and read-only stores ----------------------------------------


def _no_write_bits(path: Path) -> None:
    path.chmod(path.stat().st_mode & ~0o222)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_store_path_that_is_a_fifo_or_device(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        word = "FIFO"
    else:
        path = Path("/dev/null")
        word = "character device"
    with pytest.raises(StoreError, match=f"is a {word}, not a store folder") as exc:
        Store(path)
    assert "\n" not in str(exc.value)
    assert not Path("/dev/concepts").exists() and os.listdir(tmp_path) == (
        ["fifo"] if kind == "fifo" else []
    )


def test_read_only_store_folder_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    key = put(store, M1, "m", {"a": 1})
    before = snapshot(store.path)
    for folder in (store.path, store.path / "entries"):
        _no_write_bits(folder)
    try:
        fresh = Store(tmp_path / "store")
        assert [i.key for i in fresh.entries()] == [key]  # reading works
        with pytest.raises(StoreError, match="is read-only"):
            fresh.check_writable()
        with pytest.raises(StoreError, match="is read-only"):
            put(fresh, M1, "m", {"a": 2})
        with pytest.raises(StoreError, match="is read-only"):
            fresh.remove(key)
        assert fresh.get(key) is not None
    finally:
        for folder in (store.path, store.path / "entries"):
            folder.chmod(0o755)
    after = snapshot(store.path)
    assert {k: v for k, v in after.items() if not k.startswith("index.sqlite")} == {
        k: v for k, v in before.items() if not k.startswith("index.sqlite")
    }


def test_read_only_format1_file_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "store.h5"
    write_v1(path, _v1_content())
    _no_write_bits(path)
    before = path.read_bytes()
    store = Store(path)
    _check_v1_content(store)
    with pytest.raises(StoreError, match="read-only"):
        put(store, M2, "m", {})
    assert path.is_file() and path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["store.h5"]  # no lock file, no temp folder


def test_store_under_read_only_folder(tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    _no_write_bits(parent)
    try:
        store = Store(parent / "sub" / "store")
        with pytest.raises(StoreError, match="is not writable") as exc:
            put(store, M1, "m", {})
        assert "\n" not in str(exc.value)
        assert os.listdir(parent) == []
    finally:
        parent.chmod(0o755)
    with pytest.raises(StoreError, match="cannot create the store .*/proc is not writable"):
        Store("/proc/pyanalyzer-no-such/store").check_writable()


def test_dangling_symlink_creates_no_folders(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone" / "deeper" / "store")
    store = Store(link)
    assert store.entries() == [] and not store.exists()
    with pytest.raises(StoreError, match="is a symlink to .* which does not exist"):
        put(store, M1, "m", {})
    assert sorted(os.listdir(tmp_path)) == ["link"]
    # A symlink into a folder that exists still makes the store there (the first test above).
    (tmp_path / "gone" / "deeper").mkdir(parents=True)
    put(Store(link), M1, "m", {})
    assert (tmp_path / "gone" / "deeper" / "store" / "format.json").is_file()


def test_empty_store_path_is_refused() -> None:
    for path in ("", "  "):
        with pytest.raises(StoreError, match="the store path is empty"):
            Store(path)
    with pytest.raises(StoreError, match="contains a NUL character"):
        Store("store\0x")
