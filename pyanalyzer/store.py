"""The HDF5 result store: every result pyanalyzer computes, cached under a content key.

A result is keyed by the model file's sha256, the method name and the sha256 of the canonical
JSON of the method's parameters (:class:`Key`). The store is one HDF5 file (default
``$PYANALYZER_STORE``, else ``~/.cache/pyanalyzer/store.h5``) laid out as::

    /                                   attrs: format="pyanalyzer-store", format_version=1
    /entries/<model_sha256>/<method>/<params_sha256>      one entry (a group)
        attrs: model_sha256, method, params_sha256, parameters (canonical JSON),
               pyanalyzer_version, created (ISO 8601 UTC), model_file,
               preprocessing (canonical JSON), extra (canonical JSON)
        arrays/<name>                   the entry's arrays; names with "/" are sub-groups

A method may contain "/" (``"dissect/partial"``); it then spans several group levels.

Entries are immutable once written. A resumable computation stores its progress as an
ordinary entry under :meth:`Key.partial` (method ``"<method>/partial"``), replaces it after
every finished batch, and finally writes the real key and drops the checkpoint in one
:meth:`Store.transaction`.

Atomicity and concurrency. HDF5 updates metadata in place all over the file, so a process killed
in the middle of a write can leave a file that no longer opens. Writers therefore never touch the
store file itself: under an exclusive ``fcntl.flock`` on the sidecar ``<store>.lock``, a writer
copies the store to ``<store>.tmp-<pid>-<random>`` in the same directory (a reflink where the
file system supports it, else an in-kernel copy), applies its changes to the copy, fsyncs it and
``os.replace``-s it onto the store, then fsyncs the directory. A crash at any point leaves either
the old file or the new one, never a mix; the dead writer's temp file is deleted by the next
writer. Writers are serialised by the lock, so concurrent writers of different keys all land.

Readers take no lock at all: the file at the store path is never modified after it is renamed
there, and an open file keeps the inode it opened, so a reader always sees one complete
snapshot and never waits for (or delays) a writer.

Removed entries leave free space in the file. The file is created with persistent free-space
tracking so that later writes reuse it, and a write that leaves more than half of a file larger
than 1 MiB free rewrites it compactly (:meth:`Store.compact` does so on demand).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import errno
import fcntl
import glob
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pyanalyzer._version import __version__
from pyanalyzer.errors import StoreError, UserInputError

__all__ = [
    "Entry",
    "EntryInfo",
    "Key",
    "Store",
    "StoreTransaction",
    "canonical_json",
    "default_path",
    "file_sha256",
    "params_digest",
]

STORE_ENV = "PYANALYZER_STORE"
"""Environment variable naming the default store file."""

FORMAT = "pyanalyzer-store"
FORMAT_VERSION = 1

PARTIAL_SUFFIX = "partial"
"""Last method segment of checkpoint entries (see :meth:`Key.partial`)."""

COMPRESS_MIN_BYTES = 64 * 1024
"""Arrays larger than this are stored chunked and gzip-compressed (level 4, with shuffle)."""

_STALE_TEMP_SECONDS = 3600.0
_COMPACT_MIN_BYTES = 1 << 20
_COMPACT_FREE_FRACTION = 0.5
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_METHOD_SEGMENT = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")
_MAX_METHOD_LEN = 200
_ENTRIES = "entries"
_ARRAYS = "arrays"
_STR_MARK = "pyanalyzer_dtype"  # dataset attr: "str" for numpy unicode arrays
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


# ---- canonical JSON and digests ---------------------------------------------------------------


def _plain(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON data (dict with str keys, list, str, int, float, bool, None)."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str.__str__(obj)  # a plain str, also for np.str_ and str enums
    if isinstance(obj, enum.Enum):
        return _plain(obj.value, where)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise UserInputError(
                f"parameter {where or '(root)'} is {obj!r}: NaN and infinity have no canonical"
                " JSON form, so they cannot be part of a result's key"
            )
        return float(obj)
    if isinstance(obj, np.generic):
        return _plain(obj.item(), where)
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist(), where)
    if isinstance(obj, os.PathLike):
        return _plain(os.fsdecode(os.fspath(obj)), where)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str | enum.Enum):
                k = _plain(k, where)
            if not isinstance(k, str):
                raise TypeError(f"parameter {where or '(root)'}: key {k!r} is not a string")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        items = [_plain(v, f"{where}{{}}") for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return _plain(to_dict(), where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, where)
    raise TypeError(
        f"parameter {where or '(root)'}: {type(obj).__name__} cannot be written as canonical JSON"
    )


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: equal parameters give byte-equal text.

    Keys are sorted, there is no whitespace, text is ASCII, floats use Python's shortest
    round-trip ``repr``. Tuples become lists, sets sorted lists, numpy scalars and arrays Python
    numbers and (nested) lists, paths strings, enums their value, objects with ``to_dict()`` and
    dataclasses dicts. ``1`` and ``1.0`` stay different (the parameter's type is part of it).

    Raises:
        UserInputError: a float is NaN or infinite.
        TypeError: a value or a mapping key cannot be represented.
    """
    return json.dumps(
        _plain(obj, ""), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def params_digest(params: Any) -> str:
    """sha256 hex digest of :func:`canonical_json` of ``params``."""
    return hashlib.sha256(canonical_json(params).encode("ascii")).hexdigest()


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def default_path() -> Path:
    """``$PYANALYZER_STORE`` if set and not empty, else ``~/.cache/pyanalyzer/store.h5``."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pyanalyzer" / "store.h5"


# ---- keys and entries -------------------------------------------------------------------------


def _check_method(method: str) -> str:
    if not isinstance(method, str) or not method or len(method) > _MAX_METHOD_LEN:
        raise UserInputError(f"invalid method name {method!r}: 1 to {_MAX_METHOD_LEN} characters")
    for seg in method.split("/"):
        if not _METHOD_SEGMENT.match(seg) or _HEX64.match(seg):
            raise UserInputError(
                f"invalid method name {method!r}: '/'-separated parts must start with a letter"
                " and contain only letters, digits and '_.+-'"
            )
    return method


def _check_digest(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise UserInputError(f"invalid {what} {value!r}: expected 64 lowercase hex digits")
    return value


@dataclass(frozen=True, order=True)
class Key:
    """Identity of one result: model digest + method + parameters digest.

    Attributes:
        model_sha256: sha256 hex of the ONNX file (:func:`file_sha256`).
        method: method name, e.g. ``"dissect"``; may contain ``/`` (``"dissect/partial"``).
        params_sha256: :func:`params_digest` of the method's parameters.
    """

    model_sha256: str
    method: str
    params_sha256: str

    def __post_init__(self) -> None:
        _check_digest(self.model_sha256, "model sha256")
        _check_method(self.method)
        _check_digest(self.params_sha256, "parameters sha256")

    @classmethod
    def make(cls, model_sha256: str, method: str, params: Any) -> Key:
        """The key of ``method`` run with ``params`` on the model with digest ``model_sha256``."""
        return cls(model_sha256, method, params_digest(params))

    @property
    def path(self) -> str:
        """The entry's HDF5 group path."""
        return f"/{_ENTRIES}/{self.model_sha256}/{self.method}/{self.params_sha256}"

    @property
    def is_partial(self) -> bool:
        """Whether this is a checkpoint key (made by :meth:`partial`)."""
        return self.method.rsplit("/", 1)[-1] == PARTIAL_SUFFIX

    def partial(self) -> Key:
        """The checkpoint key of this result: same model and parameters, method + "/partial"."""
        if self.is_partial:
            return self
        return Key(self.model_sha256, f"{self.method}/{PARTIAL_SUFFIX}", self.params_sha256)

    def final(self) -> Key:
        """The result key of a checkpoint key (inverse of :meth:`partial`)."""
        if not self.is_partial:
            return self
        return Key(self.model_sha256, self.method.rsplit("/", 1)[0], self.params_sha256)

    def __str__(self) -> str:
        return f"{self.model_sha256[:12]}/{self.method}/{self.params_sha256[:12]}"


@dataclass(frozen=True, eq=False)
class Entry(Mapping[str, np.ndarray]):
    """One stored result: its arrays (the mapping itself) and attributes.

    Attributes:
        key: the entry's key.
        arrays: name → numpy array; nested names use "/" (``"tally/iou"``).
        params: the method's parameters, decoded from the stored canonical JSON.
        version: pyanalyzer version that wrote the entry.
        created: creation time, ISO 8601 UTC (``2025-01-31T12:00:00.123456+00:00``).
        model_file: the model's file name when the entry was written.
        preprocessing: the preprocessing spec as plain data (or None).
        extra: further attributes given to :meth:`Store.put` as ``extra_attrs``.
    """

    key: Key
    arrays: dict[str, np.ndarray]
    params: Any
    version: str
    created: str
    model_file: str
    preprocessing: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    __eq__ = object.__eq__  # type: ignore[assignment]
    __hash__ = object.__hash__  # type: ignore[assignment]

    @property
    def attrs(self) -> dict[str, Any]:
        """All attributes in one dict (the ``extra`` ones last; they cannot shadow the others)."""
        base = {
            "params": self.params,
            "version": self.version,
            "created": self.created,
            "model_file": self.model_file,
            "preprocessing": self.preprocessing,
        }
        return {**self.extra, **base}


@dataclass(frozen=True)
class EntryInfo:
    """A summary of one entry, as listed by :meth:`Store.entries` (arrays are not read).

    Attributes:
        size: bytes the entry's arrays take in the file (after compression).
    """

    key: Key
    created: str
    model_file: str
    version: str
    size: int
    params: Any

    @property
    def method(self) -> str:
        return self.key.method

    @property
    def model_sha256(self) -> str:
        return self.key.model_sha256


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


def _write_array(group: h5py.Group, name: str, value: Any) -> None:
    """Write one array under ``group`` (creating sub-groups for "/" in ``name``)."""
    arr = np.asarray(value)
    kwargs: dict[str, Any] = {}
    is_str = False
    if arr.dtype.kind == "U" or (
        arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.flat)
    ):
        is_str = True
        data: Any = arr.astype(object)
        kwargs["dtype"] = h5py.string_dtype("utf-8")
    elif arr.dtype.kind in "OMm":
        raise TypeError(f"array {name!r}: dtype {arr.dtype} cannot be stored")
    else:
        data = arr
    if arr.ndim > 0 and arr.size > 0 and arr.nbytes > COMPRESS_MIN_BYTES:
        kwargs.update(chunks=True, compression="gzip", compression_opts=4, shuffle=True)
    try:
        dset = group.create_dataset(name, data=data, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"array {name!r} cannot be stored: {exc}") from exc
    if is_str:
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


def _storage_size(group: h5py.Group) -> int:
    total = 0

    def visit(_name: str, obj: Any) -> None:
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += obj.id.get_storage_size()

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


def _is_entry(group: h5py.Group) -> bool:
    return "params_sha256" in group.attrs


def _iter_entry_groups(f: h5py.File) -> Iterator[h5py.Group]:
    """Every entry group in the file; does not descend into entries."""
    root = f.get(_ENTRIES)
    if not isinstance(root, h5py.Group):
        return
    stack = [root]
    while stack:
        g = stack.pop()
        for name in sorted(g.keys(), reverse=True):
            child = g.get(name)
            if not isinstance(child, h5py.Group):
                continue
            if _is_entry(child):
                yield child
            else:
                stack.append(child)


def _entry_group(f: h5py.File, key: Key) -> h5py.Group | None:
    g = f.get(key.path)
    if isinstance(g, h5py.Group) and _is_entry(g):
        return g
    return None


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


def _info(g: h5py.Group) -> EntryInfo:
    arrays_group = g.get(_ARRAYS)
    return EntryInfo(
        key=_key_of(g),
        created=_attr_str(g, "created"),
        model_file=_attr_str(g, "model_file"),
        version=_attr_str(g, "pyanalyzer_version"),
        size=_storage_size(arrays_group) if isinstance(arrays_group, h5py.Group) else 0,
        params=json.loads(_attr_str(g, "parameters") or "null"),
    )


def _delete_entry(f: h5py.File, key: Key) -> bool:
    if _entry_group(f, key) is None:
        return False
    del f[key.path]
    # Prune the now empty parents (method levels, then the model level).
    parent = key.path.rsplit("/", 1)[0]
    while parent.count("/") >= 2:  # stop at /entries
        g = f[parent]
        if len(g) or _is_entry(g):
            break
        del f[parent]
        parent = parent.rsplit("/", 1)[0]
    return True


def _matches(key: Key, model_sha256: str | None, method: str | None, prefix: str | None) -> bool:
    if model_sha256 is not None and key.model_sha256 != model_sha256:
        return False
    if method is not None and key.method != method:
        return False
    if prefix is not None and not (
        key.model_sha256.startswith(prefix) or key.params_sha256.startswith(prefix)
    ):
        return False
    return True


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory
        if not directory or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to the new file ``dst`` without the bytes leaving the kernel.

    A reflink (instant, shares blocks until written) where the file system supports it (btrfs,
    XFS), else ``copy_file_range(2)``, else a plain read/write loop.
    """
    with open(src, "rb") as fsrc, open(dst, "xb") as fdst:
        try:
            fcntl.ioctl(fdst.fileno(), _FICLONE, fsrc.fileno())
            return
        except OSError:
            pass
        remaining = os.fstat(fsrc.fileno()).st_size
        try:
            while remaining > 0:
                n = os.copy_file_range(fsrc.fileno(), fdst.fileno(), min(remaining, 1 << 30))
                if n == 0:
                    break
                remaining -= n
        except (OSError, AttributeError):  # no copy_file_range here: start again by hand
            fsrc.seek(0)
            fdst.seek(0)
            fdst.truncate()
            shutil.copyfileobj(fsrc, fdst, 1 << 20)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


# ---- the store --------------------------------------------------------------------------------


class StoreTransaction:
    """Changes to a private copy of the store, published all together or not at all.

    Obtained from :meth:`Store.transaction`; valid only inside its ``with`` block.
    """

    def __init__(self, store: Store, f: h5py.File) -> None:
        self._store = store
        self._f = f
        self.changed = False

    def put(
        self,
        key: Key,
        arrays: Mapping[str, Any],
        *,
        params: Any,
        model_file: str | os.PathLike[str] = "",
        preprocessing: Any = None,
        extra_attrs: Mapping[str, Any] | None = None,
        overwrite: bool = True,
    ) -> Entry:
        """Write one entry; see :meth:`Store.put`."""
        params_json = canonical_json(params)
        if hashlib.sha256(params_json.encode("ascii")).hexdigest() != key.params_sha256:
            raise UserInputError(
                f"key {key} does not match the given parameters (use Key.make with the same"
                " parameters)"
            )
        names = [_check_array_name(n) for n in arrays]
        existing = _entry_group(self._f, key)
        if existing is not None:
            if not overwrite:
                raise StoreError(f"entry {key} already exists in {self._store.path}")
            _delete_entry(self._f, key)
        elif key.path in self._f:
            raise StoreError(f"{key.path} in {self._store.path} is not an entry; cannot write it")
        g = self._f.create_group(key.path)
        model_file = os.path.basename(os.fspath(model_file)) if model_file else ""
        attrs = {
            "model_sha256": key.model_sha256,
            "method": key.method,
            "params_sha256": key.params_sha256,
            "parameters": params_json,
            "pyanalyzer_version": __version__,
            "created": _now(),
            "model_file": model_file,
            "preprocessing": canonical_json(preprocessing),
            "extra": canonical_json(dict(extra_attrs or {})),
        }
        self.changed = True
        ag = g.create_group(_ARRAYS)
        for name in names:
            _write_array(ag, name, arrays[name])
        # The attributes go last: a group without them is not an entry.
        for k, v in attrs.items():
            g.attrs[k] = v
        return Entry(
            key=key,
            arrays={n: np.asarray(arrays[n]) for n in sorted(names)},
            params=json.loads(params_json),
            version=__version__,
            created=attrs["created"],
            model_file=model_file,
            preprocessing=json.loads(attrs["preprocessing"]),
            extra=json.loads(attrs["extra"]),
        )

    def get(self, key: Key) -> Entry | None:
        """The entry as this transaction sees it (its own writes included)."""
        g = _entry_group(self._f, key)
        return None if g is None else _load_entry(g)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, Key) and _entry_group(self._f, key) is not None

    def keys(self) -> list[Key]:
        return [_key_of(g) for g in _iter_entry_groups(self._f)]

    def remove(self, key: Key) -> bool:
        """Delete one entry; False if it was not there."""
        removed = _delete_entry(self._f, key)
        self.changed |= removed
        return removed

    def remove_where(
        self,
        model_sha256: str | None = None,
        method: str | None = None,
        prefix: str | None = None,
    ) -> int:
        """Delete the matching entries (see :meth:`Store.remove_where`); their count."""
        keys = [k for k in self.keys() if _matches(k, model_sha256, method, prefix)]
        for k in keys:
            self.remove(k)
        return len(keys)


class Store:
    """The HDF5 result store (see the module docstring for layout and guarantees).

    Args:
        path: the store file; None means :func:`default_path`. Nothing is created until the
            first write, then the parent folders too.
        fsync: flush each write to disk before publishing it (survives power loss, not only a
            killed process). Off makes writes of large stores much cheaper.

    Raises:
        StoreError: ``path`` is a directory.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool = True) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.fsync = fsync
        self._check_path()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ---- reading ------------------------------------------------------------------------------
    def _check_path(self) -> None:
        if self.path.is_dir():
            raise StoreError(f"store path {self.path} is a directory, not a file")

    def _open_error(self, exc: BaseException) -> StoreError:
        return StoreError(f"cannot read the store {self.path}: not an HDF5 file or corrupt ({exc})")

    @staticmethod
    def _validate(f: h5py.File, path: Path) -> None:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT:
            raise StoreError(f"{path} is an HDF5 file but not a pyanalyzer store")
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{path} has store format {version}; this pyanalyzer reads up to {FORMAT_VERSION}"
            )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[h5py.File | None]:
        """The current snapshot of the store, or None when there is no store file yet."""
        self._check_path()
        f = None
        try:
            f = h5py.File(self.path, "r", locking=False)
        except FileNotFoundError:
            pass  # no store yet: an empty one
        except OSError as exc:
            if self.path.exists():
                raise self._open_error(exc) from exc
        if f is None:
            yield None
            return
        try:
            self._validate(f, self.path)
            yield f
        finally:
            f.close()

    def exists(self) -> bool:
        """Whether the store file exists."""
        return self.path.is_file()

    def get(self, key: Key, names: Any = None) -> Entry | None:
        """The entry under ``key`` with its arrays loaded, or None.

        Args:
            names: load only these arrays (an iterable of names); None loads all.
        """
        with self._reading() as f:
            if f is None:
                return None
            g = _entry_group(f, key)
            return None if g is None else _load_entry(g, None if names is None else set(names))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, Key):
            return False
        with self._reading() as f:
            return f is not None and _entry_group(f, key) is not None

    def entries(self) -> list[EntryInfo]:
        """Every entry, sorted by model digest, method and parameters digest."""
        with self._reading() as f:
            if f is None:
                return []
            return sorted((_info(g) for g in _iter_entry_groups(f)), key=lambda e: e.key)

    # ---- writing ------------------------------------------------------------------------------
    def _target(self) -> Path:
        """The file writers replace: the store path with symlinks resolved."""
        return Path(os.path.realpath(self.path))

    @contextlib.contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target.with_name(target.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StoreError(f"cannot write to the store {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _temp_path(target: Path) -> Path:
        return target.with_name(f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")

    @staticmethod
    def _remove_stale_temps(target: Path) -> None:
        """Delete temp files of writers that died (called with the lock held).

        A temp file only exists while its writer holds the exclusive lock, and flock locks die
        with their process, so while we hold the lock every temp file is an orphan; the pid and
        age check only guards against file systems that do not honour the lock.
        """
        now = time.time()
        for p in target.parent.glob(f"{glob.escape(target.name)}.tmp-*"):
            m = re.fullmatch(r".*\.tmp-(\d+)-[0-9a-f]+", p.name)
            if m is None:
                continue
            pid = int(m.group(1))
            try:
                age = now - p.stat().st_mtime
            except FileNotFoundError:
                continue
            if pid == os.getpid() or not _pid_alive(pid) or age > _STALE_TEMP_SECONDS:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    @staticmethod
    def _create(tmp: Path) -> h5py.File:
        # Persistent free-space tracking: space freed by a removed or replaced entry is reused
        # by later writes instead of growing the file.
        f = h5py.File(
            tmp,
            "w",
            libver=("v110", "latest"),
            fs_strategy="fsm",
            fs_persist=True,
            fs_threshold=1,
            locking=False,
        )
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.create_group(_ENTRIES)
        return f

    def _publish(self, tmp: Path, target: Path) -> None:
        with contextlib.suppress(OSError):
            shutil.copymode(target, tmp)  # keep the store's permissions
        if self.fsync:
            _fsync_path(tmp)
        os.replace(tmp, target)
        if self.fsync:
            _fsync_path(target.parent, directory=True)

    def _compact_into(self, src: Path, target: Path) -> Path:
        """Rewrite ``src`` without free space into a new temp file; returns its path."""
        dst = self._temp_path(target)
        try:
            with h5py.File(src, "r", locking=False) as fin, self._create(dst) as fout:
                for name, value in fin.attrs.items():
                    fout.attrs[name] = value
                del fout[_ENTRIES]
                fin.copy(fin[_ENTRIES], fout, _ENTRIES)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
            raise
        return dst

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """Several changes published together, atomically, under the store's write lock.

        The block works on a private copy; when it ends normally and changed something, the copy
        replaces the store. An exception (or a killed process) leaves the store untouched.
        Other writers wait for the lock; readers are never blocked.

        Example::

            with store.transaction() as tx:
                tx.put(key, arrays, params=params, model_file=model.path.name)
                tx.remove(key.partial())

        Raises:
            StoreError: the store is corrupt or not a pyanalyzer store, or its folder is not
                writable.
        """
        self._check_path()
        target = self._target()
        with self._locked(target):
            self._remove_stale_temps(target)
            tmp = self._temp_path(target)
            to_clean = [tmp]
            try:
                if not target.exists():
                    f = self._create(tmp)
                else:
                    _copy_file(target, tmp)
                    try:
                        f = h5py.File(tmp, "r+", locking=False)
                    except OSError as exc:
                        raise self._open_error(exc) from exc
                    try:
                        self._validate(f, self.path)
                    except BaseException:
                        f.close()
                        raise
                try:
                    tx = StoreTransaction(self, f)
                    yield tx
                    free = f.id.get_freespace() if tx.changed else 0
                finally:
                    f.close()
                if not tx.changed:
                    return
                size = tmp.stat().st_size
                if size > _COMPACT_MIN_BYTES and free > _COMPACT_FREE_FRACTION * size:
                    tmp = self._compact_into(tmp, target)
                    to_clean.append(tmp)
                self._publish(tmp, target)
            finally:
                for p in to_clean:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()

    def put(
        self,
        key: Key,
        arrays: Mapping[str, Any],
        *,
        params: Any,
        model_file: str | os.PathLike[str] = "",
        preprocessing: Any = None,
        extra_attrs: Mapping[str, Any] | None = None,
        overwrite: bool = True,
    ) -> Entry:
        """Write one entry atomically.

        Args:
            key: where to write; its parameters digest must be that of ``params``.
            arrays: name → array (numpy or anything ``np.asarray`` takes; unicode arrays are
                stored as UTF-8 strings). Names may contain "/".
            params: the method's parameters (stored as canonical JSON).
            model_file: the model's file (only its name is kept).
            preprocessing: the preprocessing spec (a dict, or an object with ``to_dict()``).
            extra_attrs: further JSON-able attributes (e.g. ``{"batches_done": 3}``).
            overwrite: replace an existing entry; if False, raise StoreError instead.

        Returns:
            The entry as written.
        """
        with self.transaction() as tx:
            return tx.put(
                key,
                arrays,
                params=params,
                model_file=model_file,
                preprocessing=preprocessing,
                extra_attrs=extra_attrs,
                overwrite=overwrite,
            )

    def remove(self, key: Key) -> bool:
        """Delete one entry; False if there was none (then the file is not rewritten)."""
        if key not in self:
            return False
        with self.transaction() as tx:
            return tx.remove(key)

    def remove_where(
        self,
        model_sha256: str | None = None,
        method: str | None = None,
        prefix: str | None = None,
    ) -> int:
        """Delete every entry matching all the given filters; returns how many.

        Args:
            model_sha256: exact model digest.
            method: exact method name (``"dissect"`` does not match ``"dissect/partial"``).
            prefix: start of the model digest or of the parameters digest (as ``cache ls``
                shows them).
        """
        if not any(_matches(e.key, model_sha256, method, prefix) for e in self.entries()):
            return 0
        with self.transaction() as tx:
            return tx.remove_where(model_sha256=model_sha256, method=method, prefix=prefix)

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        if not self.entries():
            return 0
        with self.transaction() as tx:
            return tx.remove_where()

    def compact(self) -> None:
        """Rewrite the store without the free space left by removed entries.

        Writes compact by themselves when more than half of a file over 1 MiB is free.
        """
        with self._reading() as f:  # validates
            if f is None:
                return
        target = self._target()
        with self._locked(target):
            self._remove_stale_temps(target)
            compacted = self._compact_into(target, target)
            try:
                self._publish(compacted, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    compacted.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
