"""Files of a network inversion: the strip of one image reconstructed from each layer, each
reconstruction, and ``metrics.json``.

The strip is the survey's figure (Qin et al., "How convolutional neural networks see the world",
2018, after Mahendran & Vedaldi, CVPR 2015, Fig. 6, and Dosovitskiy & Brox, CVPR 2016, Fig. 5):
one row per method, the original first, then the reconstruction from each layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pyanalyzer._io import write_json
from pyanalyzer.methods.inversion.result import InversionResult
from pyanalyzer.report.montage import grid, save_png, upscale

__all__ = ["strip", "write_inversion"]


def _plane(a: np.ndarray) -> np.ndarray:
    """``[H, W, 1]`` grey as ``[H, W]`` (what PNG writers and grids take)."""
    return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a


def strip(
    original: np.ndarray,
    rows: Sequence[tuple[str, InversionResult]],
    *,
    image: int = 0,
    min_side: int = 128,
) -> np.ndarray:
    """Draw the sweep: per row ``(method, result)``, the original then each layer's image.

    Args:
        original: uint8 ``[H, W, C]``.
        rows: results whose layers are the columns (all with the same layers).
        image: which image of the results to show.
        min_side: tiles are enlarged (nearest neighbour) to at least this side.

    Returns:
        uint8 ``[h, w, 3]``.
    """

    def tile(a: np.ndarray) -> np.ndarray:
        a = _plane(a)
        return upscale(a, min_side)

    tiles: list[np.ndarray] = []
    labels: list[str] = []
    cols = 1 + max(len(r.aliases) for _, r in rows)
    several = len(rows) > 1
    for method, result in rows:
        tiles.append(tile(original))
        labels.append(f"original ({method})" if several else "original")
        recon = result.uint8()[image]
        for j, alias in enumerate(result.aliases):
            tiles.append(tile(recon[j]))
            labels.append(alias)
        for _ in range(cols - 1 - len(result.aliases)):  # keep the rows aligned
            tiles.append(np.full_like(tiles[-1], 255))
            labels.append("")
    return grid(tiles, cols=cols, labels=labels)


def write_inversion(
    results: InversionResult | Mapping[str, InversionResult],
    out_dir: str | os.PathLike[str],
    *,
    min_side: int = 128,
) -> list[Path]:
    """Write the strip (``inversion.png``; ``inversion_<i>.png`` per image when there are
    several), each reconstruction (``<alias>_<method>.png``, or ``..._<i>.png``) and
    ``metrics.json`` (method → layer alias → mean feature and pixel error).

    Args:
        results: one result, or several by method (``{"optim": ..., "upconv": ...}``, one strip
            row each, in that order); all of the same images.
        out_dir: the folder (created if needed).
        min_side: tile size in the strip.

    Returns:
        the paths written, ``metrics.json`` last.
    """
    if isinstance(results, InversionResult):
        results = {results.method: results}
    rows = list(results.items())
    out = Path(out_dir)
    originals = rows[0][1].originals
    n = len(originals)
    written: list[Path] = []
    for i in range(n):
        suffix = "" if n == 1 else f"_{i}"
        pic = strip(originals[i], rows, image=i, min_side=min_side)
        written.append(save_png(out / f"inversion{suffix}.png", pic))
        for method, result in rows:
            recon = result.uint8()[i]
            for j, alias in enumerate(result.aliases):
                written.append(save_png(out / f"{alias}_{method}{suffix}.png", _plane(recon[j])))
    written.append(write_json(out / "metrics.json", {m: r.errors() for m, r in rows}))
    return written
