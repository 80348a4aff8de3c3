"""One cache for every analysis: :func:`cached` runs a computation unless the store holds its
result, hands it a :class:`Checkpoint` to save progress and resume from, and stores the result."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from pyanalyzer.errors import UserInputError
from pyanalyzer.store._keys import Key
from pyanalyzer.store._store import Store

_S = TypeVar("_S", bound="Storable")
R = TypeVar("R", bound="Storable")


class Storable(Protocol):
    """A result :func:`cached` can store: arrays plus JSON-able meta, and back."""

    def to_arrays(self) -> Mapping[str, np.ndarray]:
        """The result's arrays."""
        ...

    def to_meta(self) -> dict[str, Any]:
        """The result's JSON-able non-array fields (no NaN: canonical JSON has none)."""
        ...

    @classmethod
    def from_stored(cls: type[_S], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> _S:
        """The result back from its arrays and meta; KeyError, ValueError or TypeError when they
        do not fit (an entry of another layout: then it is recomputed)."""
        ...


class Checkpoint:
    """Handed to a computation by :func:`cached`: the state to resume from, and ``save`` for
    progress.

    Attributes:
        state: arrays of the checkpoint saved by an interrupted earlier run, or None (fresh).
        meta: JSON meta saved with it (``{}`` when fresh).
        every: seconds between saves that are not forced.
    """

    def __init__(
        self,
        store: Store | None,
        key: Key | None,
        params: Any,
        *,
        model_file: str | os.PathLike[str] = "",
        preprocessing: Any = None,
        every: float = 2.0,
        state: dict[str, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.state = state
        self.meta: dict[str, Any] = dict(meta or {})
        self.every = every
        self._store, self._key, self._params = store, key, params
        self._model_file, self._preprocessing = model_file, preprocessing
        self._last = time.monotonic()
        self._scratch: Path | None = None

    @property
    def persistent(self) -> bool:
        """Whether checkpoints are written at all (there is a store to write them to). A
        computation whose checkpoints are not persistent can never be resumed, so it need not
        keep on disk what a checkpoint would rely on."""
        return self._store is not None and self._key is not None

    def due(self, force: bool = False) -> bool:
        """Whether :meth:`save` with this ``force`` would write now (a store is there, and
        ``force`` or ``every`` seconds passed since the last save): lets a computation flush
        what the checkpoint relies on (a spill file) only when one is written."""
        if not self.persistent:
            return False
        return force or time.monotonic() - self._last >= self.every

    def save(
        self,
        arrays: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Write a checkpoint (replacing the previous one) when ``force`` or ``every`` seconds
        passed since the last; returns whether it wrote. A no-op (False) without a store."""
        if not self.due(force):
            return False
        assert self._store is not None and self._key is not None  # due() says so
        self._store.put(
            self._key.partial(), arrays, params=self._params, model_file=self._model_file,
            preprocessing=self._preprocessing, extra_attrs={"checkpoint": dict(meta or {})},
        )  # fmt: skip
        self._last = time.monotonic()
        return True

    def scratch(self) -> Path:
        """A folder for large temporary files of this computation, kept across interruptions
        (so that a resumed run finds them) and removed when the result is stored or the
        computation fails with a UserInputError. Without a store: a private temporary folder
        removed when :func:`cached` returns."""
        if self._scratch is None:
            if self._store is not None and self._key is not None:
                self._scratch = self._store.scratch_dir(self._key)
            else:
                self._scratch = Path(tempfile.mkdtemp(prefix="pyanalyzer-scratch-"))
        return self._scratch


@dataclass(frozen=True)
class Cached(Generic[R]):
    """What :func:`cached` returns.

    Attributes:
        result: the result.
        key: its store key (None without a store).
        from_store: answered from the store, nothing computed.
        resumed: the computation started from a checkpoint.
    """

    result: R
    key: Key | None
    from_store: bool
    resumed: bool


def cached(
    store: Store | None,
    *,
    model_sha256: str,
    method: str,
    params: Any,
    revision: int,
    compute: Callable[[Checkpoint], R],
    result_type: type[R],
    model_file: str | os.PathLike[str] = "",
    preprocessing: Any = None,
    checkpoint_every: float = 2.0,
) -> Cached[R]:
    """The result of ``compute`` for these parameters, from the store when it holds it.

    The key is ``Key.make(model_sha256, method, {"params": params, "revision": revision})``:
    bumping ``revision`` (the stored layout of that analysis) turns old entries into misses. A
    hit is decoded with ``result_type.from_stored(entry.arrays, entry.extra["result"])``; one
    that does not decode is recomputed. A miss runs ``compute(checkpoint)``, starting from the
    checkpoint (``key.partial()``) an interrupted run saved; its result is stored and the
    checkpoint removed in one transaction, then the scratch folder is removed. A
    :class:`~pyanalyzer.errors.UserInputError` from ``compute`` removes checkpoint and scratch
    (nothing half-written remains); any other exception (KeyboardInterrupt too) keeps them for
    the next call to resume.

    Args:
        store: the store, or None to compute without caching (checkpoints are not saved).
        model_file: the model's file, stored with the result.
        preprocessing: the preprocessing spec, stored with the result.
        checkpoint_every: seconds between checkpoint saves that are not forced.
    """
    stored_params = {"params": params, "revision": revision}
    common: dict[str, Any] = {"model_file": model_file, "preprocessing": preprocessing}
    if store is None:
        ck = Checkpoint(None, None, stored_params, every=checkpoint_every, **common)
        try:
            return Cached(compute(ck), None, from_store=False, resumed=False)
        finally:
            if ck._scratch is not None:
                shutil.rmtree(ck._scratch, ignore_errors=True)
    key = Key.make(model_sha256, method, stored_params)
    entry = store.get(key)
    if entry is not None and entry.extra.get("revision") == revision:
        with contextlib.suppress(KeyError, ValueError, TypeError):
            result = result_type.from_stored(entry.arrays, entry.extra["result"])
            return Cached(result, key, from_store=True, resumed=False)
    partial = store.get(key.partial())
    ck = Checkpoint(
        store, key, stored_params, every=checkpoint_every,
        state=None if partial is None else dict(partial.arrays),
        meta=None if partial is None else partial.extra.get("checkpoint"), **common,
    )  # fmt: skip
    try:
        result = compute(ck)
    except UserInputError:
        store.remove(key.partial())
        store.remove_scratch(key)
        raise
    with store.transaction() as tx:
        tx.put(
            key, result.to_arrays(), params=stored_params,
            extra_attrs={"revision": revision, "result": result.to_meta()}, **common,
        )  # fmt: skip
        tx.remove(key.partial())
    store.remove_scratch(key)
    return Cached(result, key, from_store=False, resumed=partial is not None)
