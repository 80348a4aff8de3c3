"""Files of an activation maximization: one PNG per unit and a montage of the layer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pyanalyzer.methods.actmax.method import ActmaxResult
from pyanalyzer.report.montage import grid, save_png, upscale

__all__ = ["write_actmax"]


def write_actmax(
    result: ActmaxResult, out_dir: str | os.PathLike[str], *, min_side: int = 128
) -> list[Path]:
    """Write one PNG per unit (``<alias>_<objective>_unit<NNNN>.png``, at the image size) and
    a montage of the layer (``<alias>_<objective>.png``, tiles enlarged to ``min_side``
    pixels, captioned with the unit, class name and relative activation).

    Returns:
        the paths written, the montage last.
    """
    out = Path(out_dir)
    stem = f"{result.alias}_{result.objective}"
    written = [
        save_png(out / f"{stem}_unit{int(u):04d}.png", img)
        for u, img in zip(result.units, result.images, strict=True)
    ]
    rel = result.relative
    captions = [
        label if rel is None or not np.isfinite(rel[i]) else f"{label} {rel[i]:.2f}x"
        for i, label in enumerate(result.labels)
    ]
    tiles = [upscale(img, min_side) for img in result.images]
    montage = grid(tiles, cols=min(len(tiles), 8), labels=captions)
    written.append(save_png(out / f"{stem}.png", montage))
    return written
