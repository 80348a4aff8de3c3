"""Content keys of the result store: canonical JSON, digests, :class:`Key`, :class:`Entry`
and :class:`EntryInfo` (see :mod:`pyanalyzer.store`)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyanalyzer.errors import UserInputError

STORE_ENV = "PYANALYZER_STORE"
"""Environment variable naming the default store."""

PARTIAL_SUFFIX = "partial"
"""Last method segment of checkpoint entries (see :meth:`Key.partial`)."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_METHOD_SEGMENT = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")
_MAX_METHOD_LEN = 200
_ENTRIES = "entries"


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
    """``$PYANALYZER_STORE`` if set and not empty, else ``~/.cache/pyanalyzer/store``.

    When that folder does not exist but the single-file store of earlier versions,
    ``~/.cache/pyanalyzer/store.h5``, does, that path is returned instead: its results stay
    found, and the first write migrates it in place (it becomes a folder of that name).
    """
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    base = Path.home() / ".cache" / "pyanalyzer"
    new, old = base / "store", base / "store.h5"
    return old if not os.path.lexists(new) and os.path.lexists(old) else new


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
        """The entry's HDF5 group path in a format-1 (single-file) store."""
        return f"/{_ENTRIES}/{self.model_sha256}/{self.method}/{self.params_sha256}"

    @property
    def relpath(self) -> str:
        """The entry file's path below ``<store>/entries/``."""
        return f"{self.model_sha256}/{self.method}/{self.params_sha256}.h5"

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

    __eq__ = object.__eq__
    __hash__ = object.__hash__

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
