"""Atomic file-system writes, shared by the store, the datasets and the report writers.

Every file pyanalyzer writes is first written under a temporary name in the destination's own
folder and renamed into place (``os.replace`` is atomic on one file system), so a reader never
sees half a file and a crash leaves either the old file or the new one. Temporary names start
with a dot and carry ``.tmp-<pid>-<random>``, so that a later writer can tell orphans of dead
processes (:func:`is_orphan_temp`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_path",
    "fsync_path",
    "is_orphan_temp",
    "pid_alive",
    "replace_path",
    "staged_dir",
    "temp_sibling",
    "write_bytes",
    "write_json",
    "write_text",
]

_TEMP = re.compile(r".*\.tmp-(\d+)-[0-9a-f]+(\.[A-Za-z0-9]+)?$")


def temp_sibling(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """A fresh temporary name next to ``path``: ``<dir>/.<name>.tmp-<pid>-<hex><suffix>``."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphan_temp(path: str | os.PathLike[str], max_age: float = 3600.0) -> bool:
    """Whether ``path`` is a temporary file of :func:`temp_sibling` whose writer is gone (its
    process no longer exists, or the file is older than ``max_age`` seconds)."""
    import time

    p = Path(path)
    m = _TEMP.fullmatch(p.name)
    if m is None:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        age = time.time() - p.stat().st_mtime
    except FileNotFoundError:
        return False
    return not pid_alive(pid) or age > max_age


def fsync_path(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk; folders that cannot be opened are skipped."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, fsync: bool = False, mode: int | None = 0o644
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, the file written there
    replaces ``path`` (an exception, or a killed process, leaves ``path`` untouched).

    Args:
        path: the destination; its folder is created if needed.
        fsync: flush the file and then the folder to disk (survives power loss too).
        mode: permission bits of the new file (None keeps the temporary file's).
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dst, dst.suffix)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, dst)
        if fsync:
            fsync_path(dst.parent, directory=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (UTF-8, ``indent``) to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def replace_path(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move ``src`` onto ``dst`` on the same file system: a file by ``os.replace``; a folder by
    renaming the old one aside first, then removing it (a folder cannot be replaced in one
    rename)."""
    s, d = Path(src), Path(dst)
    if not s.is_dir():
        os.replace(s, d)
        return
    trash = None
    if d.exists():
        trash = Path(tempfile.mkdtemp(prefix=".old-", dir=d.parent))
        os.replace(d, trash / d.name)
    os.replace(s, d)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``out_dir`` when the block succeeds (an
    exception leaves ``out_dir`` as it was and removes the temporary folder)."""
    out = Path(os.path.abspath(os.fspath(out_dir)))
    with staged_dir(out, temp_sibling(out)) as tmp:
        yield tmp


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike[str], tmp: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`atomic_dir` with a temporary folder of the caller's choosing.

    Args:
        out_dir: The destination; its parent folder is created if needed.
        tmp: The temporary folder, created here (it must not exist); a sibling of ``out_dir``
            (the same file system). When the block succeeds it replaces ``out_dir``
            (:func:`replace_path`); in any case it is gone after the block.
    """
    out, work = Path(out_dir), Path(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir()
    try:
        yield work
        replace_path(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
