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
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"direction file {p} does not exist or is not a file")
    try:
        if p.suffix.lower() == ".npy":
            data = np.load(p, allow_pickle=False)
        else:
            text = p.read_text(encoding="utf-8").replace(",", " ")
            rows = [line.split() for line in text.splitlines() if line.split()]
            widths = {len(r) for r in rows}
            if len(widths) > 1:
                raise ValueError(f"its lines have different lengths ({sorted(widths)})")
            data = np.asarray([[float(v) for v in r] for r in rows], np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot read direction file {p}: {e}") from None
    return as_directions(data)
