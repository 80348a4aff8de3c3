"""Directions in a layer's channel space, for the direction objective (Olah et al. 2017)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pyanalyzer.errors import UserInputError

__all__ = ["as_directions", "load_directions"]


def as_directions(directions: Any) -> np.ndarray:
    """Directions in a layer's channel space as float32 ``[K, C]`` (a vector is one row).

    Raises:
        UserInputError: not a non-empty finite vector or matrix, or an all-zero row.
    """
    try:
        d = np.asarray(directions, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserInputError("directions must be numbers: a vector or a [K, C] matrix") from None
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2 or d.size == 0:
        raise UserInputError(
            f"directions must be a vector over the layer's channels or a [K, C] matrix, "
            f"got shape {list(np.shape(directions))}"
        )
    if not np.isfinite(d).all():
        raise UserInputError("directions must be finite (they have NaN or infinite entries)")
    zero = np.flatnonzero(~d.any(axis=1))
    if zero.size:
        raise UserInputError(f"direction {int(zero[0])} is all zeros: it has nothing to maximise")
    return np.ascontiguousarray(d)


def load_directions(path: str | os.PathLike[str]) -> np.ndarray:
    """Read directions from a ``.npy`` file (a vector ``[C]`` or a matrix ``[K, C]``) or from a
    text file (one direction per line, numbers separated by commas or spaces).

    Raises:
        UserInputError: a missing or unreadable file, or contents :func:`as_directions` refuses.
    """
    from pyanalyzer import budget
    from pyanalyzer._checks import open_regular, regular_file

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise UserInputError(f"direction file {p} does not exist or is not a file")
    size = regular_file(p, "a direction file (.npy or text)").st_size
    # float32 [K, C] and the parsed form: text takes ~20 times its size as Python floats.
    budget.check(f"reading direction file {p} ({budget.format_bytes(size)})", 20 * size)
    try:
        if p.suffix.lower() == ".npy":
            with open_regular(p, "a direction file (.npy)") as fh:
                _check_npy_header(fh, p, size)
                fh.seek(0)
                data = np.load(fh, allow_pickle=False)
        else:
            with open_regular(p, "a direction file (text)") as fh:
                raw = fh.read()
            text = raw.decode("utf-8").replace(",", " ")
            rows = [line.split() for line in text.splitlines() if line.split()]
            widths = {len(r) for r in rows}
            if len(widths) > 1:
                raise ValueError(f"its lines have different lengths ({sorted(widths)})")
            data = np.asarray([[float(v) for v in r] for r in rows], np.float64)
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as e:
        raise UserInputError(f"cannot read direction file {p}: {e}") from None
    return as_directions(data)


def _check_npy_header(fh: Any, path: Path, size: int) -> None:
    """Refuse a ``.npy`` whose header declares more data than the file holds (np.load would
    allocate the declared array first)."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(fh)
        else:
            shape, _, dtype = npy.read_array_header_2_0(fh)
    except (ValueError, EOFError, SyntaxError, TypeError) as e:
        raise UserInputError(f"cannot read direction file {path}: not a .npy array ({e})") from None
    declared = int(np.prod(shape, dtype=object)) * int(np.dtype(dtype).itemsize)
    if declared > size:
        raise UserInputError(
            f"cannot read direction file {path}: its header declares shape {list(shape)} "
            f"({declared} bytes) but the file has {size} bytes"
        )
