"""Atomic file-system writes, shared by the store, the datasets and the report writers.

Every file pyanalyzer writes is first written under a temporary name in the destination's own
folder and renamed into place (``os.replace`` is atomic on one file system), so a reader never
sees half a file and a crash leaves either the old file or the new one. Temporary names start
with a dot and carry ``.tmp-<pid>-<random>``, so that a later writer can tell orphans of dead
processes (:func:`is_orphan_temp`).

Temporary folders of a run that was killed (a half-written dataset, a half-written report) are
found again by :func:`sweep_stale_temps`, which the command line runs in the folders it writes
into; :func:`check_dir_creatable` and :func:`is_writable` check a destination before anything
is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyanalyzer.errors import UserInputError

__all__ = [
    "atomic_dir",
    "atomic_path",
    "check_dir_creatable",
    "fsync_path",
    "is_orphan_temp",
    "is_stale_temp",
    "is_writable",
    "pid_alive",
    "replace_path",
    "staged_dir",
    "sweep_stale_temps",
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
    renaming the old one aside first (under a :func:`temp_sibling` name, which
    :func:`sweep_stale_temps` recognises should the process die right then), then removing it
    (a folder cannot be replaced in one rename). If the second rename fails, the old folder is
    put back."""
    s, d = Path(src), Path(dst)
    if not s.is_dir():
        os.replace(s, d)
        return
    aside = None
    if os.path.lexists(d):
        aside = temp_sibling(d)
        os.replace(d, aside)
    try:
        os.replace(s, d)
    except BaseException:
        if aside is not None:
            with contextlib.suppress(OSError):
                os.replace(aside, d)
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                aside.unlink()


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


# ---- checking destinations before writing ----------------------------------------------------


def is_writable(path: str | os.PathLike[str]) -> bool:
    """Whether this process may create files in the folder (or rewrite the file) ``path``.

    False on a read-only mount, without write permission, and also for root when the path has
    no write bit at all (root could write, but someone made it read-only on purpose; /proc and
    /sys look like that too).
    """
    try:
        st = os.stat(path)
        vfs = os.statvfs(path)
    except OSError:
        return False
    if vfs.f_flag & os.ST_RDONLY:
        return False
    need = os.W_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
    if not os.access(path, need):
        return False
    return not (os.geteuid() == 0 and not st.st_mode & 0o222)


def check_dir_creatable(
    path: str | os.PathLike[str], what: str, *, error: type[Exception] = UserInputError
) -> list[Path]:
    """Check, without creating anything, that the folder ``path`` exists and is writable or can
    be created; returns the folders that a ``mkdir(parents=True)`` would create, outermost
    first (empty when ``path`` exists).

    Args:
        path: the folder.
        what: what it is, for the messages (``"output folder"``).
        error: the exception class raised.

    Raises:
        error: one line: an empty path, a path that is a file (or a device, a broken
            symlink...), or a folder that cannot be written or created.
    """
    text = os.fspath(path)
    if not text.strip():
        raise error(f"the {what} is an empty path")
    if "\0" in text:
        raise error(f"the {what} {text!r} contains a NUL character")
    p = Path(os.path.abspath(text))
    missing: list[Path] = []
    here = p
    while not os.path.lexists(here):
        missing.append(here)
        here = here.parent
    if here.is_symlink() and not here.exists():
        target = os.readlink(here)
        raise error(
            f"cannot use the {what} {text}: {here} is a symlink to {target}, which does not exist"
        )
    if not here.is_dir():
        if here == p:
            raise error(f"the {what} {text} exists and is not a folder")
        raise error(f"cannot create the {what} {text}: {here} is not a folder")
    if not is_writable(here):
        if here == p:
            raise error(f"the {what} {text} is not writable")
        raise error(f"cannot create the {what} {text}: {here} is not writable")
    return missing[::-1]


# ---- temporary files and folders of killed runs ------------------------------------------------

PID_TEMP_GRACE = 60.0
"""A temp of a dead writer is left alone while anything in it is younger than this (seconds):
a writer in another PID namespace (a container sharing the folder) still writing is seen."""

PID_TEMP_MAX_AGE = 24 * 3600.0
"""A temp untouched this long is stale even if a process with its pid exists (pid reuse, NFS)."""

UNOWNED_TEMP_MAX_AGE = 3600.0
"""Temps whose names carry no pid are stale when nothing in them changed for this long."""

# ``.<name>.tmp-<pid>-<8 hex>[.<ext>]`` (temp_sibling), ``<name>.tmp-<pid>-<8 hex>`` (a
# dataset being written, visible on purpose), or ``.tmp-<pid>-<8 chars>`` (a
# ``tempfile.mkdtemp(prefix=f".tmp-{pid}-")`` folder).
_PID_TEMP = re.compile(
    r"(?:\.(?:(?P<base>.+)\.)?|(?P<visible>[^.].*)\.)tmp-(?P<pid>\d+)-[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?"
)
# ``<name>.tmp-<8 hex>``: a temp folder named without its writer's pid.
_HEX_TEMP = re.compile(r"(?P<base>.+)\.tmp-[0-9a-f]{8}")
# ``tempfile.mkdtemp(prefix=".tmp-")``: the hidden work folder of a dissection report.
_MKDTEMP = re.compile(r"\.tmp-[a-z0-9_]{8}")


def _temp_kind(name: str) -> tuple[str, str | None, int | None] | None:
    """(kind, the name it stands for or None, the writer's pid or None), or None for a name
    that is no temp of pyanalyzer's."""
    m = _PID_TEMP.fullmatch(name)
    if m is not None:
        return "pid", m.group("base") or m.group("visible"), int(m.group("pid"))
    m = _HEX_TEMP.fullmatch(name)
    if m is not None:
        return "hex", m.group("base").removeprefix("."), None
    if _MKDTEMP.fullmatch(name):
        return "mkdtemp", None, None
    return None


def _newest_change(path: Path, now: float, young: float) -> float:
    """The age in seconds of the most recent modification in ``path`` (a file, or a folder and
    everything in it, symlinks not followed; by mtime, which every write and every file
    added or removed moves on); stops early at one younger than ``young``."""
    st = os.lstat(path)
    newest = st.st_mtime
    if now - newest < young or not stat.S_ISDIR(st.st_mode):
        return now - newest
    stack = [os.fspath(path)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for de in it:
                with contextlib.suppress(OSError):
                    s = de.stat(follow_symlinks=False)
                    newest = max(newest, s.st_mtime)
                    if now - newest < young:
                        return now - newest
                    if stat.S_ISDIR(s.st_mode):
                        stack.append(de.path)
    return now - newest


def is_stale_temp(
    path: str | os.PathLike[str],
    *,
    target: str | None = None,
    work_dirs: bool = False,
    grace: float = PID_TEMP_GRACE,
    max_age: float = PID_TEMP_MAX_AGE,
    unowned_max_age: float = UNOWNED_TEMP_MAX_AGE,
) -> bool:
    """Whether ``path`` is a temporary file or folder of a pyanalyzer writer that is gone.

    A name carrying its writer's pid (:func:`temp_sibling`: ``.<name>.tmp-<pid>-<8 hex>``) is
    stale when that process no longer exists and nothing in it changed for ``grace`` seconds,
    or when nothing in it changed for ``max_age``; the current process's own temps never are.
    A folder named without a pid (``<name>.tmp-<8 hex>``; with ``work_dirs`` also the hidden
    ``.tmp-<8 chars>`` folders of :func:`tempfile.mkdtemp`) is stale when nothing in it
    changed for ``unowned_max_age`` seconds.

    Args:
        target: only temps that stand for this name (``out`` for ``.out.tmp-1-0123abcd`` or
            ``out.tmp-0123abcd``): for folders that are not pyanalyzer's own, such as the
            parent of an output folder.
        work_dirs: also judge ``.tmp-<8 chars>`` folders (only where pyanalyzer makes them: in a
            dissection report's folder).
    """
    p = Path(path)
    kind = _temp_kind(p.name)
    if kind is None or p.is_symlink():
        return False
    what, base, pid = kind
    if what == "mkdtemp" and (not work_dirs or target is not None):
        return False
    if what != "pid" and not p.is_dir():  # only pid-named temps are files too
        return False
    if target is not None and base != target:
        return False
    try:
        now = time.time()
        if pid is None:
            return _newest_change(p, now, unowned_max_age) >= unowned_max_age
        if pid == os.getpid():
            return False
        age = _newest_change(p, now, grace)
        return age >= max_age or (age >= grace and not pid_alive(pid))
    except OSError:  # gone meanwhile, or unreadable: not ours to judge
        return False


def sweep_stale_temps(
    folder: str | os.PathLike[str], *, target: str | None = None, work_dirs: bool = False
) -> list[Path]:
    """Remove the stale temporary files and folders (:func:`is_stale_temp`, with ``target``
    and ``work_dirs``) directly in ``folder``: what killed runs left. Returns what was
    removed; a missing or unreadable folder is no error."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if _temp_kind(name) is None:
            continue
        p = Path(folder, name)
        if not is_stale_temp(p, target=target, work_dirs=work_dirs):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:  # swept by another run meanwhile, or not ours to remove
            continue
        removed.append(p)
    return removed
