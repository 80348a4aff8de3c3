"""The :class:`Store` and its :class:`StoreTransaction` (see :mod:`pyanalyzer.store` for the
layout and the guarantees)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pyanalyzer._io import fsync_path, is_writable, temp_sibling, write_text
from pyanalyzer._version import __version__
from pyanalyzer.errors import StoreError, UserInputError
from pyanalyzer.store._fs import (
    _TEMP_NAME,
    _backup,
    _exchange,
    _Index,
    _note_folder,
    _prune,
    _scratch_name,
    _sweep,
    _sweep_if_touched,
    _unlink,
    _walk,
)
from pyanalyzer.store._hdf5 import (
    _ARRAYS,
    _LIBVER,
    _check_array,
    _check_array_name,
    _key_of,
    _load_entry,
    _read_entry,
    _read_summary,
    _summary,
    _v1_group,
    _v1_groups,
    _write_entry_file,
)
from pyanalyzer.store._keys import (
    _ENTRIES,
    Entry,
    EntryInfo,
    Key,
    _matches,
    canonical_json,
    default_path,
)

FORMAT = "pyanalyzer-store"
FORMAT_VERSION = 2
"""Store format: 1 was the single HDF5 file, 2 the folder of entry files."""

MARKER = "format.json"
"""The file that marks a folder as a store (written before the folder gets its name)."""

_SCRATCH = "scratch"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


# ---- the store --------------------------------------------------------------------------------


class StoreTransaction:
    """Changes staged beside the store and applied when the ``with`` block ends normally.

    Obtained from :meth:`Store.transaction`; valid only inside its ``with`` block. A put writes
    its entry to a temp file at once; a removal is recorded. Reads see the staged changes.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._puts: dict[Key, tuple[Path, Path, Entry]] = {}
        self._removes: set[Key] = set()

    @property
    def changed(self) -> bool:
        """Whether the block staged any change."""
        return bool(self._puts or self._removes)

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
        """Stage one entry; see :meth:`Store.put`."""
        if not overwrite and key in self:
            raise StoreError(f"entry {key} already exists in {self._store.path}")
        tmp, final, entry = self._store._stage(
            key, arrays, params=params, model_file=model_file, preprocessing=preprocessing,
            extra_attrs=extra_attrs,
        )  # fmt: skip
        old = self._puts.pop(key, None)
        if old is not None:
            _unlink(old[0])
        self._puts[key] = (tmp, final, entry)
        self._removes.discard(key)
        return entry

    def get(self, key: Key) -> Entry | None:
        """The entry as this transaction sees it (its own staged changes included)."""
        if key in self._puts:
            return _read_entry(self._puts[key][0], self._store.path)
        return None if key in self._removes else self._store.get(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, Key):
            return False
        return key in self._puts or (key not in self._removes and key in self._store)

    def keys(self) -> list[Key]:
        """Every key as this transaction sees it."""
        return sorted((set(self._store._keys()) - self._removes) | set(self._puts))

    def remove(self, key: Key) -> bool:
        """Delete one entry (when the block ends); False if it was not there."""
        staged = self._puts.pop(key, None)
        if staged is not None:
            _unlink(staged[0])
        on_disk = key not in self._removes and key in self._store
        if on_disk:
            self._removes.add(key)
        return staged is not None or on_disk

    def remove_where(
        self,
        model_sha256: str | None = None,
        method: str | None = None,
        prefix: str | None = None,
    ) -> int:
        """Delete the matching entries (see :meth:`Store.remove_where`); their count."""
        keys = [k for k in self.keys() if _matches(k, model_sha256, method, prefix)]
        return sum(self.remove(k) for k in keys)

    def _apply(self) -> None:
        for key, (tmp, final, _) in self._puts.items():
            self._store._publish(key, tmp, final)
        for key in sorted(self._removes):
            self._store.remove(key)

    def _discard(self) -> None:
        for tmp, _, _ in self._puts.values():
            _unlink(tmp)  # gone already once applied
        self._puts.clear()
        self._removes.clear()


class Store:
    """The HDF5 result store (see :mod:`pyanalyzer.store` for layout and guarantees).

    Args:
        path: the store folder (or a format-1 store file, migrated by the first write); None
            means :func:`default_path`. Nothing is created until the first write, then the
            parent folders too. A symlink is followed (and stays a symlink).
        fsync: flush each write to disk before publishing it (survives power loss, not only a
            killed process).

    Raises:
        StoreError: ``path`` is a folder that is neither empty nor a store, or something that
            is neither a folder nor a file (a device, a FIFO...), or an empty string.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool = True) -> None:
        if path is not None and not os.fspath(path).strip():
            raise StoreError("the store path is empty")
        if path is not None and "\0" in os.fspath(path):
            raise StoreError(f"the store path {os.fspath(path)!r} contains a NUL character")
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.fsync = fsync
        self._root: Path | None = None  # the store folder, once seen
        self._write_checked = False  # check_writable() passed once
        if os.path.lexists(self.path):
            self._layout()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ---- where the store is -------------------------------------------------------------------
    def _real(self) -> Path:
        return Path(os.path.realpath(self.path))

    def _layout(self) -> tuple[str, Path]:
        """``("dir", folder)``, ``("v1", file)`` (not opened yet) or ``("none", path)``."""
        if self._root is not None:
            return "dir", self._root
        real = self._real()
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            backup = _backup(real)
            return ("v1", backup) if backup.is_file() else ("none", real)
        except OSError as exc:
            raise StoreError(f"cannot read the store {self.path}: {exc.strerror}") from exc
        if stat.S_ISREG(mode):
            return "v1", real
        if not stat.S_ISDIR(mode):
            raise StoreError(
                f"the store path {self.path} is a {_file_kind(mode)}, not a store folder"
            )
        try:
            marker = json.loads((real / MARKER).read_text("utf-8"))
        except FileNotFoundError:
            if any(not _TEMP_NAME.fullmatch(n) for n in os.listdir(real)):
                raise StoreError(
                    f"{self.path} is a folder but not a pyanalyzer store (it is not empty and"
                    f" has no {MARKER})"
                ) from None
            return "none", real
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the store {self.path}: bad {MARKER} ({exc})") from exc
        if not isinstance(marker, dict) or marker.get("format") != FORMAT:
            raise StoreError(f"{self.path} is a folder but not a pyanalyzer store ({MARKER})")
        version = marker.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has store format {version}; this pyanalyzer reads up to"
                f" {FORMAT_VERSION}"
            )
        self._root = real
        return "dir", real

    def _check_v1(self, f: h5py.File) -> None:
        fmt = f.attrs.get("format")
        if (fmt.decode() if isinstance(fmt, bytes) else fmt) != FORMAT:
            raise StoreError(f"{self.path} is an HDF5 file but not a pyanalyzer store")
        version = int(f.attrs.get("format_version", 0))
        if version != 1:
            raise StoreError(
                f"{self.path} is a single-file store of format {version}; this pyanalyzer"
                " reads format 1 files (and format 2 folders)"
            )

    @contextlib.contextmanager
    def _source(self) -> Iterator[Path | h5py.File | None]:
        """What to read: the store folder, the open format-1 file, or None (no store)."""
        for _ in range(5):
            kind, where = self._layout()
            if kind != "v1":
                yield where if kind == "dir" else None
                return
            try:
                f = h5py.File(where, "r", locking=False)
            except OSError as exc:
                if not where.is_file():
                    continue  # migrated meanwhile: look again
                raise StoreError(
                    f"cannot read the store {self.path}: not an HDF5 file or corrupt ({exc})"
                ) from exc
            try:
                self._check_v1(f)
                yield f
            finally:
                f.close()
            return
        raise StoreError(f"the store {self.path} keeps changing under this process")

    # ---- reading ------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the store exists (a store folder, or a format-1 file)."""
        return self.path.is_file() or (self.path / MARKER).is_file()

    def get(self, key: Key, names: Any = None) -> Entry | None:
        """The entry under ``key`` with its arrays loaded, or None.

        Args:
            names: load only these arrays (an iterable of names); None loads all.
        """
        wanted = None if names is None else set(names)
        with self._source() as src:
            if isinstance(src, Path):
                return _read_entry(src / _ENTRIES / key.relpath, self.path, wanted)
            g = None if src is None else _v1_group(src, key)
            return None if g is None else _load_entry(g, wanted)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, Key):
            return False
        with self._source() as src:
            if isinstance(src, Path):
                return (src / _ENTRIES / key.relpath).is_file()
            return src is not None and _v1_group(src, key) is not None

    def entries(self) -> list[EntryInfo]:
        """Every entry, sorted by model digest, method and parameters digest.

        Reads the attributes only of entries the index does not know yet (see
        :mod:`pyanalyzer.store`); deletes orphan temp files of dead writers on the way.
        """
        with self._source() as src:
            if src is None:
                return []
            if isinstance(src, Path):
                infos = self._list(src)
            else:
                infos = [EntryInfo(_key_of(g), **_summary(g)) for g in _v1_groups(src)]
        return sorted(infos, key=lambda i: i.key)

    def _list(self, root: Path) -> list[EntryInfo]:
        index = _Index(root)
        try:
            known = index.load()
            infos, fresh = [], []
            for key, rel, de in _walk(root / _ENTRIES, sweep=True):
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                sig = (st.st_size, st.st_mtime_ns, st.st_ino)
                row = known.pop(rel, None)
                summary = None
                if row is not None and row[0] == sig:
                    with contextlib.suppress(ValueError):
                        summary = json.loads(row[1])
                if summary is None:
                    summary = _read_summary(Path(de.path), self.path)
                    if summary is None:
                        continue  # removed meanwhile
                    fresh.append((rel, sig, json.dumps(summary)))
                infos.append(EntryInfo(key, **summary))
            index.update(fresh, list(known))
        finally:
            index.close()
        return infos

    def _keys(self) -> list[Key]:
        """Every key, from names alone (no entry file is opened)."""
        with self._source() as src:
            if isinstance(src, Path):
                return sorted(k for k, _, _ in _walk(src / _ENTRIES, sweep=False))
            return [] if src is None else sorted(_key_of(g) for g in _v1_groups(src))

    # ---- writing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        real = self._real()
        fd = os.open(real.with_name(real.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def check_writable(self) -> None:
        """Check, without writing anything, that a write could succeed (what a command that
        will store results checks before it starts).

        Raises:
            StoreError: one line: the path is a device, a FIFO, a foreign or corrupt store; the
                store (folder or format-1 file) or the folder it would be created in is not
                writable (a read-only mount, no permission, or no write bit even for root);
                the path leads through a symlink to a missing target whose parent folder is
                missing too (no folders are created behind a dangling symlink).
        """
        kind, where = self._layout()
        if kind == "dir":
            for folder in (where, where / _ENTRIES):
                if folder.is_dir() and not is_writable(folder):
                    raise StoreError(f"the store {self.path} is read-only")
            self._write_checked = True
            return
        if kind == "v1":
            with self._source():
                pass  # a corrupt or foreign file fails here
            if not is_writable(where):
                raise StoreError(
                    f"the store {self.path} is read-only (a single-file store of an earlier"
                    " version, which the first write converts to a folder)"
                )
            if not is_writable(where.parent):
                raise StoreError(
                    f"cannot write to the store {self.path}: its folder {where.parent} is not"
                    " writable (the first write converts the file to a folder)"
                )
            self._write_checked = True
            return
        self._check_creatable(where)
        self._write_checked = True

    def _check_creatable(self, real: Path) -> None:
        """A missing store at ``real`` (the resolved path) can be created."""
        lexical = Path(os.path.abspath(self.path))
        here = lexical
        while not os.path.lexists(here):
            here = here.parent
        if here.is_symlink() and not here.exists() and not real.parent.is_dir():
            raise StoreError(
                f"cannot create the store {self.path}: {here} is a symlink to"
                f" {os.readlink(here)}, which does not exist"
            )
        here = real.parent
        while not os.path.lexists(here):
            here = here.parent
        if not here.is_dir():
            raise StoreError(f"cannot create the store {self.path}: {here} is not a folder")
        if not is_writable(here):
            raise StoreError(f"cannot create the store {self.path}: {here} is not writable")

    def _writable_root(self) -> Path:
        """The store folder, created (or migrated from a format-1 file) first if needed."""
        if not self._write_checked:
            self.check_writable()
        kind, where = self._layout()
        if kind == "dir":
            return where
        try:
            if kind == "none":
                self._create(where)
            else:
                with self._source():
                    pass  # a corrupt or foreign file fails here, before the lock file is made
                with self._locked():
                    kind, where = self._layout()  # another process may have migrated it
                    if kind == "v1":
                        self._migrate(where)
        except OSError as exc:
            raise StoreError(f"cannot write to the store {self.path}: {exc}") from exc
        kind, where = self._layout()
        if kind != "dir":
            raise StoreError(f"cannot create the store {self.path}")
        return where

    def _init_folder(self, folder: Path) -> None:
        text = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION}) + "\n"
        write_text(folder / MARKER, text, fsync=self.fsync)  # atomic: never seen half-written
        (folder / _ENTRIES).mkdir(exist_ok=True)

    def _create(self, real: Path) -> None:
        """Create the store folder: built complete under a temp name, then renamed into place,
        so that no process ever sees a store folder without its marker."""
        real.parent.mkdir(parents=True, exist_ok=True)
        _sweep(real.parent, prefix=f".{real.name}.")  # temp folders of dead creators
        tmp = temp_sibling(real)
        tmp.mkdir()
        try:
            self._init_folder(tmp)
            try:
                os.rename(tmp, real)  # also replaces an empty folder
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if not (real / MARKER).exists():  # a folder holding only temp files
                    self._init_folder(real)
            if self.fsync:
                fsync_path(real.parent, directory=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _migrate(self, src: Path) -> None:
        """Copy a format-1 file into a new store folder that then takes its place (called
        under the lock; see :mod:`pyanalyzer.store`)."""
        real = self._real()
        _sweep(real.parent, prefix=f".{real.name}.")  # what dead migrators left
        tmp = temp_sibling(real)
        tmp.mkdir()
        try:
            try:
                fin = h5py.File(src, "r", locking=False)
            except OSError as exc:
                raise StoreError(
                    f"cannot read the store {self.path}: not an HDF5 file or corrupt ({exc})"
                ) from exc
            with fin:
                self._check_v1(fin)
                self._init_folder(tmp)
                for g in _v1_groups(fin):
                    try:
                        dst = tmp / _ENTRIES / _key_of(g).relpath
                    except UserInputError as exc:
                        raise StoreError(f"{self.path}: bad entry {g.name} ({exc})") from exc
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with h5py.File(dst, "w", libver=_LIBVER, locking=False) as fout:
                        for name, value in g.attrs.items():
                            fout.attrs[name] = value
                        if isinstance(g.get(_ARRAYS), h5py.Group):
                            fin.copy(g[_ARRAYS], fout, _ARRAYS)  # raw chunks, filters kept
                        else:
                            fout.create_group(_ARRAYS)
                    if self.fsync:
                        fsync_path(dst)
            if self.fsync:
                for folder, _, _ in os.walk(tmp):
                    fsync_path(folder, directory=True)
            if src != real or not _exchange(tmp, real):
                if src == real:
                    os.replace(real, _backup(real))
                os.rename(tmp, real)
                _unlink(_backup(real))
            if self.fsync:
                fsync_path(real.parent, directory=True)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                _unlink(tmp)  # the old file, exchanged out

    def _new_temp(self, key: Key) -> tuple[Path, Path]:
        """(an empty temp file, the entry's final path), creating the entry's folders.

        A concurrent removal may prune a folder between two steps: then start again.
        """
        for _ in range(100):
            root = self._writable_root()
            final = root / _ENTRIES / key.relpath
            folder = root
            try:
                for part in Path(_ENTRIES, key.relpath).parts[:-1]:
                    folder = folder / part
                    try:
                        os.mkdir(folder)
                    except FileExistsError:
                        continue
                    if self.fsync:
                        fsync_path(folder.parent, directory=True)
                _sweep_if_touched(folder)
                tmp = temp_sibling(final, ".h5")
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return tmp, final
            except FileNotFoundError:
                if not root.is_dir():
                    self._root = None  # the store was deleted: create it again
                    self._write_checked = False
            except OSError as exc:  # a read-only folder inside the store, a full disk...
                raise StoreError(
                    f"cannot write to the store {self.path}: {exc.strerror or exc}"
                ) from exc
        raise StoreError(f"cannot write to the store {self.path}: its folders keep vanishing")

    def _stage(
        self,
        key: Key,
        arrays: Mapping[str, Any],
        *,
        params: Any,
        model_file: str | os.PathLike[str],
        preprocessing: Any,
        extra_attrs: Mapping[str, Any] | None,
        overwrite: bool = True,
    ) -> tuple[Path, Path, Entry]:
        """Write an entry to a temp file beside its final path; (temp, final, entry)."""
        params_json = canonical_json(params)
        if hashlib.sha256(params_json.encode("ascii")).hexdigest() != key.params_sha256:
            raise UserInputError(
                f"key {key} does not match the given parameters (use Key.make with the same"
                " parameters)"
            )
        for name in arrays:
            _check_array(_check_array_name(name), arrays[name])
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
        tmp, final = self._new_temp(key)
        try:
            if not overwrite and final.exists():
                raise StoreError(f"entry {key} already exists in {self.path}")
            _write_entry_file(tmp, attrs, arrays)
            if self.fsync:
                fsync_path(tmp)
        except BaseException:
            _unlink(tmp)
            raise
        entry = Entry(
            key=key,
            arrays={n: np.asarray(arrays[n]) for n in sorted(arrays)},
            params=json.loads(params_json),
            version=__version__,
            created=attrs["created"],
            model_file=model_file,
            preprocessing=json.loads(attrs["preprocessing"]),
            extra=json.loads(attrs["extra"]),
        )
        return tmp, final, entry

    def _publish(self, key: Key, tmp: Path, final: Path, overwrite: bool = True) -> None:
        """Rename a staged entry into place (without ``overwrite``: fail if it exists)."""
        if overwrite:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)  # atomic "create unless it exists"
            except FileExistsError:
                raise StoreError(f"entry {key} already exists in {self.path}") from None
            except OSError:  # no hard links on this file system
                if final.exists():
                    raise StoreError(f"entry {key} already exists in {self.path}") from None
                os.replace(tmp, final)
            _unlink(tmp)
        if self.fsync:
            fsync_path(final.parent, directory=True)
        _note_folder(final.parent)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """Several changes applied together when the block ends normally.

        Puts are written to temp files as the block runs and renamed into place at its end,
        then the removals are done: an exception in the block applies nothing and leaves no
        temp file. The apply step is atomic per entry, in that order, so a crash during it
        (rare: only renames and unlinks) may leave some changes done, but never half an entry,
        and a checkpoint removed in the block is removed only after the final result is in::

            with store.transaction() as tx:
                tx.put(key, arrays, params=params, model_file=model.path.name)
                tx.remove(key.partial())

        Other writers are not blocked, nor isolated from: the block sees their changes.

        Raises:
            StoreError: the store is corrupt or not a pyanalyzer store, or its folder is not
                writable.
        """
        with self._source():
            pass  # a corrupt or foreign store fails before the block runs
        tx = StoreTransaction(self)
        try:
            yield tx
            tx._apply()
        finally:
            tx._discard()

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
        """Write one entry atomically; it costs what it writes, whatever the store holds.

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
        tmp, final, entry = self._stage(
            key, arrays, params=params, model_file=model_file, preprocessing=preprocessing,
            extra_attrs=extra_attrs, overwrite=overwrite,
        )  # fmt: skip
        try:
            self._publish(key, tmp, final, overwrite)
        finally:
            _unlink(tmp)  # gone already once published
        return entry

    def remove(self, key: Key) -> bool:
        """Delete one entry; False if there was none."""
        if key not in self:
            return False
        root = self._writable_root()  # migrates a format-1 file first
        final = root / _ENTRIES / key.relpath
        try:
            os.unlink(final)
        except FileNotFoundError:
            return False
        if self.fsync:
            fsync_path(final.parent, directory=True)
        _prune(final.parent, root / _ENTRIES)
        return True

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
        keys = [k for k in self._keys() if _matches(k, model_sha256, method, prefix)]
        return sum(self.remove(k) for k in keys)

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        return self.remove_where()

    def compact(self) -> None:
        """Tidy the store: delete orphan temp files and empty folders, vacuum the index.

        A format-1 file is migrated. Writes never need this; it only reclaims what killed
        writers left behind.
        """
        if self._layout()[0] == "none":
            return
        root = self._writable_root()
        _sweep(root.parent, prefix=f".{root.name}.")
        _sweep(root)
        entries = root / _ENTRIES
        for folder, _, _ in os.walk(entries, topdown=False):
            _sweep(folder)
            if folder != os.fspath(entries):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only when empty
        with contextlib.suppress(OSError):
            os.rmdir(root / _SCRATCH)
        self._list(root)  # drops index rows of files that are gone
        _Index(root).close(vacuum=True)

    # ---- scratch space ------------------------------------------------------------------------
    def scratch_dir(self, key: Key) -> Path:
        """A folder for large temporary files of the computation of ``key`` (created now):
        ``<store>/scratch/<model[:16]>-<params[:16]>-<method with _ for />/``."""
        self._writable_root()
        folder = self.path / _SCRATCH / _scratch_name(key)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def remove_scratch(self, key: Key) -> None:
        """Delete the scratch folder of ``key`` (if any)."""
        kind, root = self._layout()
        if kind == "dir":
            shutil.rmtree(root / _SCRATCH / _scratch_name(key), ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(root / _SCRATCH)
