"""File-system helpers of the result store: orphan temp files, empty folders, the walk over
entry files, the atomic exchange used by migration, and the SQLite listing index."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from pyanalyzer._io import is_orphan_temp
from pyanalyzer.errors import UserInputError
from pyanalyzer.store._keys import _HEX64, Key

_ORPHAN_AGE = 24 * 3600.0  # a temp file this old is an orphan even if its pid is alive (NFS)
_INDEX = "index.sqlite"
_INDEX_SCHEMA = 1
_INDEX_TIMEOUT = 0.2
_seen: dict[str, int] = {}  # folder -> its mtime_ns after this process's last write


# ---- file-system helpers ----------------------------------------------------------------------


def _unlink(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _sweep(folder: str | os.PathLike[str], *, prefix: str = ".") -> None:
    """Delete orphan temp files (and folders) of dead writers named ``prefix...`` in ``folder``."""
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for de in it:
            if de.name.startswith(prefix) and is_orphan_temp(de.path, _ORPHAN_AGE):
                if de.is_dir(follow_symlinks=False):
                    shutil.rmtree(de.path, ignore_errors=True)
                else:
                    _unlink(de.path)


def _sweep_if_touched(folder: Path) -> None:
    """:func:`_sweep` ``folder`` unless no other process changed it since this one last wrote
    there: a folder's mtime changes with every name added or removed, so only then can it hold
    a new orphan. Keeps a write's cost independent of how many entries share its folder."""
    with contextlib.suppress(OSError):
        if _seen.get(os.fspath(folder)) != os.stat(folder).st_mtime_ns:
            _sweep(folder)


def _note_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        _seen[os.fspath(folder)] = os.stat(folder).st_mtime_ns


def _prune(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents below ``stop`` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): parents are not empty either
            return
        folder = folder.parent


def _walk(entries: Path, *, sweep: bool) -> Iterator[tuple[Key, str, os.DirEntry[str]]]:
    """(key, path below ``entries``, dir entry) of every entry file; only names and one stat."""
    stack: list[tuple[str, list[str]]] = [(os.fspath(entries), [])]
    while stack:
        folder, segs = stack.pop()
        try:
            it = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed meanwhile
        with it:
            for de in it:
                name = de.name
                if name.startswith("."):
                    if sweep and is_orphan_temp(de.path, _ORPHAN_AGE):
                        _unlink(de.path)
                elif de.is_dir(follow_symlinks=False):
                    if segs or _HEX64.match(name):
                        stack.append((de.path, [*segs, name]))
                elif len(segs) >= 2 and name.endswith(".h5") and _HEX64.match(name[:-3]):
                    with contextlib.suppress(UserInputError):
                        key = Key(segs[0], "/".join(segs[1:]), name[:-3])
                        yield key, "/".join([*segs, name]), de


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a))


class _Index:
    """The SQLite listing cache of one store (see :mod:`pyanalyzer.store`); every method fails
    softly: a cache that cannot be read or written is simply not used."""

    def __init__(self, root: Path) -> None:
        self.path = root / _INDEX
        self.con: sqlite3.Connection | None = None
        try:
            con = sqlite3.connect(self.path, timeout=_INDEX_TIMEOUT, isolation_level=None)
        except sqlite3.Error:
            return
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            if con.execute("PRAGMA user_version").fetchone()[0] != _INDEX_SCHEMA:
                con.executescript(
                    "BEGIN IMMEDIATE; DROP TABLE IF EXISTS entries;"
                    " CREATE TABLE entries (path TEXT PRIMARY KEY, size INTEGER,"
                    " mtime_ns INTEGER, ino INTEGER, info TEXT) WITHOUT ROWID;"
                    f" PRAGMA user_version={_INDEX_SCHEMA}; COMMIT;"
                )
            self.con = con
        except sqlite3.Error as exc:
            self._fail(con, exc)

    def _fail(self, con: sqlite3.Connection, exc: sqlite3.Error) -> None:
        con.close()
        self.con = None
        if not isinstance(exc, sqlite3.OperationalError):  # not a database: rebuilt next time
            for suffix in ("", "-wal", "-shm"):
                _unlink(f"{self.path}{suffix}")

    def load(self) -> dict[str, tuple[tuple[int, int, int], str]]:
        if self.con is None:
            return {}
        try:
            rows = self.con.execute("SELECT path, size, mtime_ns, ino, info FROM entries")
            return {r[0]: ((r[1], r[2], r[3]), r[4]) for r in rows}
        except sqlite3.Error as exc:
            self._fail(self.con, exc)
            return {}

    def update(self, fresh: list[tuple[str, tuple[int, int, int], str]], gone: list[str]) -> None:
        if self.con is None or not (fresh or gone):
            return
        try:
            self.con.execute("BEGIN IMMEDIATE")
            self.con.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                [(p, *sig, info) for p, sig, info in fresh],
            )
            self.con.executemany("DELETE FROM entries WHERE path = ?", [(p,) for p in gone])
            self.con.execute("COMMIT")
        except sqlite3.Error:  # busy or read-only: the next listing tries again
            with contextlib.suppress(sqlite3.Error):
                self.con.execute("ROLLBACK")

    def close(self, vacuum: bool = False) -> None:
        if self.con is not None:
            if vacuum:
                with contextlib.suppress(sqlite3.Error):
                    self.con.execute("VACUUM")
            self.con.close()


def _backup(real: Path) -> Path:
    """Where a format-1 file waits while a migration without RENAME_EXCHANGE replaces it."""
    return real.with_name(f".{real.name}.v1-backup")


def _scratch_name(key: Key) -> str:
    return f"{key.model_sha256[:16]}-{key.params_sha256[:16]}-{key.method.replace('/', '_')}"


_TEMP_NAME = re.compile(r"\..*\.tmp-\d+-[0-9a-f]+(\.[A-Za-z0-9]+)?")
