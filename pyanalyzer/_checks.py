"""Parameter and shape checks shared by the public functions (real exceptions, never
``assert``)."""

from __future__ import annotations

import numbers
from typing import Any

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
