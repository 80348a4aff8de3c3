"""Entry files of the result store: per-dtype compression (:data:`CODECS`), writing and
reading arrays and attributes, and the groups of format-1 single-file stores."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pyanalyzer.errors import StoreError, UserInputError
from pyanalyzer.store._keys import _ENTRIES, Entry, Key

COMPRESS_MIN_BYTES = 64 * 1024
"""Arrays larger than this are chunked and compressed (see :data:`CODECS`); smaller ones not."""

_FLOAT = ((0.45, "lzf"),)
_INT = ((0.2, "gzip1+shuffle"), (0.8, "lzf+shuffle"))
# Shuffle does nothing to 1-byte values. lzf stops at 0.5: photos (probe ~0.6-0.9) gain a few %
# at ~130 MB/s, while masks and label maps (probe < 0.2) shrink 5-10x.
_BYTE = ((0.2, "gzip1"), (0.5, "lzf"))
CODECS: dict[tuple[str, int], tuple[tuple[float, str], ...]] = {
    **{("f", n): _FLOAT for n in (2, 4, 8)},
    **{("c", n): _FLOAT for n in (8, 16)},
    **{(k, n): _INT for k in "iu" for n in (2, 4, 8)},
    ("i", 1): _BYTE,
    ("u", 1): _BYTE,
    ("b", 1): _BYTE,
}
"""Codec per dtype (kind, itemsize) for arrays over :data:`COMPRESS_MIN_BYTES`, chosen by
``benchmarks/bench_store.py``: the smallest result that still writes at >= 200 MB/s on a
2-core machine (HDF5 filters run on one core); codecs within 20 % of that size count as
equally small and the fastest of them wins. Each dtype has tiers ``(max_ratio, codec)``: a
probe compresses four 4 KiB slices of the array with zlib level 1 (well under a millisecond),
and the first tier whose ``max_ratio`` is at least the probe's size ratio applies; past the
last tier the array is stored raw (contiguous, at disk speed). Tiers, because a codec's speed
falls with the compressibility of the data: lzf writes float32 ReLU maps at ~500 MB/s with
90 % zeros but ~130-190 MB/s with half of them; gzip-1+shuffle writes small int64 counts at
~300 MB/s but values up to 10^4 at ~170.

Measured by the benchmark (``Store.put`` of 256 MiB, fsync off; codecs on 64 MiB samples,
best of 3; size = compressed / raw):

==================== ===== ============= ====== ===== =====================================
sample               probe codec          MB/s  size  rejected (MB/s, size)
==================== ===== ============= ====== ===== =====================================
float32 random       0.93  none           2580  1.00  lzf 209 1.00; lzf+shuffle 199 0.93
float32 ReLU, 69% 0  0.40  lzf             234  0.47  gzip1 109 0.40
float32 ReLU, 90% 0  0.16  lzf             519  0.19  gzip1 254 0.16 (within 20 %, slower)
float64 ReLU, 69% 0  0.35  lzf             331  0.40  gzip1 130 0.36
int64 Poisson(3)     0.12  gzip1+shuffle   261  0.06  lzf+shuffle 609 0.09
int64 < 10^4         0.33  lzf+shuffle     375  0.26  gzip1+shuffle 169 0.22
int32 Poisson(3)     0.19  gzip1+shuffle   270  0.12  lzf+shuffle 505 0.17
uint8 images         0.90  none           1681  1.00  lzf 126 1.00; gzip1 51 0.85
bool masks, 5% true  0.10  gzip1           280  0.10  lzf 527 0.17
==================== ===== ============= ====== ===== =====================================

Dtypes not listed are stored raw; bytes strings use lzf when they compress. Unicode and 0-d
arrays are never compressed. Every codec reads back without options (h5py decodes them all).
"""

_CODEC_ARGS: dict[str, dict[str, Any]] = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "lzf+shuffle": {"compression": "lzf", "shuffle": True},
    "gzip1": {"compression": "gzip", "compression_opts": 1},
    "gzip1+shuffle": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
}
_CHUNK_BYTES = 1 << 20
_PROBE_BYTES = 4096  # x4 slices: costs well under a millisecond
_ARRAYS = "arrays"
_STR_MARK = "pyanalyzer_dtype"  # dataset attr: "str" for numpy unicode arrays
_LIBVER = ("v110", "latest")  # readable by HDF5 >= 1.10


# ---- HDF5 helpers -----------------------------------------------------------------------------


def _check_array_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise UserInputError(f"invalid array name {name!r}")
    for seg in name.split("/"):
        if seg in ("", ".", ".."):
            raise UserInputError(
                f"invalid array name {name!r}: empty, '.' and '..' parts are not allowed"
            )
    return name


def _is_str(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "U" or (
        arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.flat)
    )


def _check_array(name: str, value: Any) -> None:
    """Fail before anything is written for an array that cannot be stored."""
    arr = np.asarray(value)
    if arr.dtype.kind in "OMm" and not _is_str(arr):
        raise TypeError(f"array {name!r}: dtype {arr.dtype} cannot be stored")


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """About :data:`_CHUNK_BYTES` a chunk, whole trailing axes first (rows stay contiguous)."""
    chunk = list(shape)
    for ax in range(len(shape)):
        slab = itemsize * math.prod(shape[ax + 1 :])
        if slab <= _CHUNK_BYTES:
            chunk[ax] = max(1, min(shape[ax], _CHUNK_BYTES // slab))
            break
        chunk[ax] = 1
    return tuple(chunk)


def _probe(arr: np.ndarray) -> float:
    """Size ratio of four :data:`_PROBE_BYTES` slices of ``arr`` under zlib level 1."""
    flat = arr.reshape(-1) if arr.flags.c_contiguous else arr.flat  # .flat: no full copy
    n = max(1, _PROBE_BYTES // arr.dtype.itemsize)
    step = max(n, arr.size // 4)
    sample = b"".join(
        np.ascontiguousarray(flat[i : i + n]).tobytes() for i in range(0, arr.size, step)[:4]
    )
    return len(zlib.compress(sample, 1)) / max(1, len(sample))


def _codec(arr: np.ndarray) -> dict[str, Any]:
    """The dataset creation arguments for ``arr`` (see :data:`CODECS`)."""
    if arr.ndim == 0 or arr.size == 0 or arr.nbytes <= COMPRESS_MIN_BYTES:
        return {}
    tiers = CODECS.get(
        (arr.dtype.kind, arr.dtype.itemsize), ((0.8, "lzf"),) if arr.dtype.kind == "S" else ()
    )
    if not tiers:
        return {}
    ratio = _probe(arr)
    for max_ratio, name in tiers:
        if ratio <= max_ratio:
            return {"chunks": _chunk_shape(arr.shape, arr.dtype.itemsize), **_CODEC_ARGS[name]}
    return {}


def _write_array(group: h5py.Group, name: str, value: Any) -> None:
    """Write one array under ``group`` (creating sub-groups for "/" in ``name``)."""
    arr = np.asarray(value)
    if _is_str(arr):
        data: Any = arr.astype(object)
        kwargs: dict[str, Any] = {"dtype": h5py.string_dtype("utf-8")}
    elif arr.dtype.kind in "OMm":
        raise TypeError(f"array {name!r}: dtype {arr.dtype} cannot be stored")
    else:
        data, kwargs = arr, _codec(arr)
    try:
        dset = group.create_dataset(name, data=data, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"array {name!r} cannot be stored: {exc}") from exc
    if "dtype" in kwargs:
        dset.attrs[_STR_MARK] = "str"


def _read_array(dset: h5py.Dataset) -> np.ndarray:
    if dset.attrs.get(_STR_MARK) == "str":
        return np.asarray(dset.asstr()[()], dtype=str)
    return np.asarray(dset[()])


def _read_arrays(group: h5py.Group, names: set[str] | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and (names is None or name in names):
            out[name] = _read_array(obj)

    group.visititems(visit)
    return dict(sorted(out.items()))


def _storage_size(group: Any) -> int:
    total = 0

    def visit(_name: str, obj: Any) -> None:
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += obj.id.get_storage_size()

    if isinstance(group, h5py.Group):
        group.visititems(visit)
    return total


def _attr_str(group: h5py.Group, name: str) -> str:
    value = group.attrs.get(name, "")
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _key_of(group: h5py.Group) -> Key:
    return Key(
        _attr_str(group, "model_sha256"),
        _attr_str(group, "method"),
        _attr_str(group, "params_sha256"),
    )


def _load_entry(g: h5py.Group, names: set[str] | None = None) -> Entry:
    arrays_group = g.get(_ARRAYS)
    arrays = _read_arrays(arrays_group, names) if isinstance(arrays_group, h5py.Group) else {}
    return Entry(
        key=_key_of(g),
        arrays=arrays,
        params=json.loads(_attr_str(g, "parameters") or "null"),
        version=_attr_str(g, "pyanalyzer_version"),
        created=_attr_str(g, "created"),
        model_file=_attr_str(g, "model_file"),
        preprocessing=json.loads(_attr_str(g, "preprocessing") or "null"),
        extra=json.loads(_attr_str(g, "extra") or "{}"),
    )


def _summary(g: h5py.Group) -> dict[str, Any]:
    """What :class:`EntryInfo` holds besides the key (JSON-able: the index caches it)."""
    return {
        "created": _attr_str(g, "created"),
        "model_file": _attr_str(g, "model_file"),
        "version": _attr_str(g, "pyanalyzer_version"),
        "size": _storage_size(g.get(_ARRAYS)),
        "params": json.loads(_attr_str(g, "parameters") or "null"),
    }


def _write_entry_file(path: Path, attrs: Mapping[str, str], arrays: Mapping[str, Any]) -> None:
    with h5py.File(path, "w", libver=_LIBVER, locking=False) as f:
        group = f.create_group(_ARRAYS)
        for name in sorted(arrays):
            _write_array(group, name, arrays[name])
        for k, v in attrs.items():
            f.attrs[k] = v


def _v1_groups(f: h5py.File) -> Iterator[h5py.Group]:
    """Every entry group of a format-1 file; does not descend into entries."""
    stack = [f.get(_ENTRIES)]
    while stack:
        g = stack.pop()
        if not isinstance(g, h5py.Group):
            continue
        for name in sorted(g.keys(), reverse=True):
            child = g.get(name)
            if isinstance(child, h5py.Group) and "params_sha256" in child.attrs:
                yield child
            elif isinstance(child, h5py.Group):
                stack.append(child)


def _v1_group(f: h5py.File, key: Key) -> h5py.Group | None:
    g = f.get(key.path)
    return g if isinstance(g, h5py.Group) and "params_sha256" in g.attrs else None


def _open_entry(path: Path, store: Path) -> h5py.File | None:
    try:
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if not path.exists():
            return None  # removed meanwhile
        raise StoreError(
            f"cannot read {path} in the store {store}: not an HDF5 file or corrupt ({exc})"
        ) from exc


def _read_entry(path: Path, store: Path, names: set[str] | None = None) -> Entry | None:
    f = _open_entry(path, store)
    if f is None:
        return None
    with f:
        try:
            return _load_entry(f, names)
        except (UserInputError, ValueError) as exc:
            raise StoreError(f"{path} in the store {store} is not a valid entry ({exc})") from exc


def _read_summary(path: Path, store: Path) -> dict[str, Any] | None:
    f = _open_entry(path, store)
    if f is None:
        return None
    with f:
        try:
            return _summary(f)
        except ValueError as exc:
            raise StoreError(f"{path} in the store {store} is not a valid entry ({exc})") from exc
