"""Parameter and shape checks shared by the public functions (real exceptions, never
``assert``)."""

from __future__ import annotations

import numbers
import os
import stat
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
from typing_extensions import TypeIs

from pyanalyzer.errors import UserInputError


def is_int(value: object) -> TypeIs[int]:
    """Whether ``value`` is an integer (Python or numpy), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, refusing bools, non-integers and values below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise UserInputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise UserInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_shape(
    name: str,
    value: Any,
    dims: str,
    *,
    note: str = "",
    error: type[UserInputError] = UserInputError,
    **sizes: int,
) -> np.ndarray:
    """``value`` as an array whose shape matches named dimensions, as kornia's
    ``KORNIA_CHECK_SHAPE`` does at its Python boundary.

    Args:
        name: what the value is, for the message (``"images"``).
        value: an array (or anything ``np.asarray`` takes).
        dims: space-separated dimension names, e.g. ``"N H W C"``; a name bound in ``sizes``
            must have that size, a name used twice must have the same size both times, other
            names take any size, and ``N`` (a batch) at least 1.
        note: said after the expected shape, e.g. ``"(the model's input size)"``.
        error: the exception class raised (a :class:`UserInputError` subclass).
        **sizes: required sizes, e.g. ``H=224, W=224, C=3``.

    Returns:
        the value as a numpy array (no copy when it already is one).

    Raises:
        error: one line: ``images must be [N, 64, 64, 3] (note), got shape [2, 32, 32, 3]``.
    """
    arr = np.asarray(value)
    names = dims.split()
    want = ", ".join(str(sizes[d]) if d in sizes else d for d in names)
    fail = error(
        f"{name} must be [{want}]{f' {note}' if note else ''}, got shape {list(arr.shape)}"
    )
    if arr.ndim != len(names):
        raise fail
    seen: dict[str, int] = {}
    for d, size in zip(names, arr.shape, strict=True):
        expected = sizes.get(d, seen.get(d))
        if (expected is not None and size != expected) or (d == "N" and size < 1):
            raise fail
        seen[d] = size
    return arr


_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a plain file")


def _check_stat(
    st: os.stat_result,
    shown: str,
    what: str,
    error: Callable[[str], UserInputError],
    max_bytes: int | None,
) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{shown} is a directory, not {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{shown} is {_kind(st.st_mode)}, not a regular file; {what} must be one")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{shown} is {st.st_size} bytes, more than the {max_bytes} allowed for {what}")


def regular_file(
    path: str | os.PathLike[str],
    what: str,
    *,
    error: Callable[[str], UserInputError] = UserInputError,
    max_bytes: int | None = None,
) -> os.stat_result:
    """Check that ``path`` is a regular file (after resolving symlinks) without opening it.

    A named pipe would block a reader forever, a device (``/dev/zero``, ``/dev/urandom``)
    never ends: files that claim to be models, images, masks or tables must be plain files.

    Args:
        path: the file.
        what: what it should be, for messages (``"an ONNX model file"``).
        error: makes the exception raised from the message (a :class:`UserInputError`
            subclass, or a function that builds one).
        max_bytes: the largest size allowed, or None.

    Returns:
        its ``os.stat`` (of the target, for a symlink).

    Raises:
        error: one line: missing, a directory, not a regular file (named: a FIFO, a device, a
            socket), unreadable, or larger than ``max_bytes``.
    """
    shown = repr(os.fspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{shown} does not exist; expected {what}") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise error(f"cannot read {shown} ({what}): {reason}") from None
    _check_stat(st, shown, what, error, max_bytes)
    return st


def open_regular(
    path: str | os.PathLike[str],
    what: str,
    *,
    error: Callable[[str], UserInputError] = UserInputError,
    max_bytes: int | None = None,
) -> BinaryIO:
    """Open a file for reading in binary mode when it is a regular file (:func:`regular_file`).

    The file is opened without blocking (a FIFO swapped in after a check cannot hang the
    open) and the opened file itself is checked (``fstat``), so what is read is what was
    checked.

    Raises:
        error: as :func:`regular_file`.
    """
    regular_file(path, what, error=error, max_bytes=max_bytes)
    shown = repr(os.fspath(path))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"cannot read {shown} ({what}): {exc.strerror or exc}") from None
    try:
        _check_stat(os.fstat(fd), shown, what, error, max_bytes)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
