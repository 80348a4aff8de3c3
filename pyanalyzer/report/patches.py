"""Montages of top-k patches: each unit's patches beside their projections (Zeiler & Fergus,
ECCV 2014, Fig. 2), per unit and per layer, and the files of a top-patches result."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pyanalyzer._checks import check_int
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.patches import TopPatchesResult, rgb
from pyanalyzer.report.montage import grid, save_png

if TYPE_CHECKING:
    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = ["layer_montage", "montage", "write_patches"]


def _enlarge(img: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def montage(
    result: TopPatchesResult,
    unit: int,
    source: ImageSource,
    spec: PreprocessSpec | None = None,
    projections: Sequence[np.ndarray | None] | None = None,
    *,
    cols: int | None = None,
    min_side: int = 64,
    captions: bool = False,
    pad: int = 2,
) -> np.ndarray:
    """The unit's patches in a grid (Zeiler & Fergus's 3x3 for k = 9).

    Args:
        unit: the unit.
        source, spec: as for :meth:`patch`.
        projections: optional images to show to the right of each patch, one per filled
            slot (None to skip one), uint8 ``[h, w, 3]`` or ``[h, w]``: either the size
            of the patch, or the model's input size (then cut at the same box); the
            DeconvNet projections of each activation, for instance.
        cols: grid columns (default ``ceil(sqrt(k))``).
        min_side: patches are enlarged by a whole factor (nearest neighbour) so that the
            largest is at least this many pixels on its shorter side.
        captions: write each activation's value under it.
        pad: gap in pixels between the cells.

    Returns:
        uint8 ``[H, W, 3]``.
    """
    u = result.check_unit(unit)
    n = result.count(u)
    spec = spec or result.spec
    if projections is not None and len(projections) != n:
        raise UserInputError(f"got {len(projections)} projections for the {n} patches of unit {u}")
    patches = [result.patch(u, j, source, spec) for j in range(n)]
    biggest = max(min(p.shape[:2]) for p in patches)
    factor = max(1, math.ceil(min_side / max(biggest, 1)))
    tiles = []
    for j, p in enumerate(patches):
        tile = _enlarge(p, factor)
        proj = projections[j] if projections is not None else None
        if proj is not None:
            proj = _enlarge(_fit_projection(result, u, j, proj, p.shape[:2], spec), factor)
            h = max(tile.shape[0], proj.shape[0])
            side = np.full((h, tile.shape[1] + pad + proj.shape[1], 3), 255, np.uint8)
            side[: tile.shape[0], : tile.shape[1]] = tile
            side[: proj.shape[0], tile.shape[1] + pad :] = proj
            tile = side
        tiles.append(tile)
    labels = [f"{result.values[u, j]:.3g}" for j in range(n)] if captions else None
    ncols = cols if cols is not None else math.ceil(math.sqrt(result.k))
    return grid(tiles, check_int("cols", ncols, 1), pad=pad, labels=labels)


def _fit_projection(
    result: TopPatchesResult,
    u: int,
    j: int,
    proj: np.ndarray,
    patch_hw: tuple[int, ...],
    spec: PreprocessSpec,
) -> np.ndarray:
    proj = np.asarray(proj)
    if proj.dtype != np.uint8 or proj.ndim not in (2, 3):
        raise UserInputError(
            f"projection {j} of unit {u} must be uint8 [h, w, 3] or [h, w], got "
            f"{proj.dtype} {list(proj.shape)}"
        )
    proj = rgb(proj)
    if proj.shape[:2] == tuple(patch_hw):
        return proj
    if proj.shape[:2] == tuple(spec.input_size):
        top, left, bottom, right = result.box(u, j)
        return proj[top:bottom, left:right]
    raise UserInputError(
        f"projection {j} of unit {u} is {list(proj.shape[:2])}: it must be the patch's "
        f"size {list(patch_hw)} or the model's input size {list(spec.input_size)}"
    )


def layer_montage(
    result: TopPatchesResult,
    units: Sequence[int] | None,
    source: ImageSource,
    spec: PreprocessSpec | None = None,
    projections: Mapping[int, Sequence[np.ndarray | None]] | None = None,
    *,
    cols: int | None = None,
    min_side: int = 64,
    pad: int = 6,
) -> np.ndarray:
    """One montage per unit, tiled with the unit's number under each.

    Args:
        units: the units to show, in order (None: all).
        projections: per unit, as for :meth:`montage`.
        cols: grid columns (default ``ceil(sqrt(len(units)))``).

    Returns:
        uint8 ``[H, W, 3]``.
    """
    units = list(range(result.units)) if units is None else [result.check_unit(u) for u in units]
    if not units:
        raise UserInputError("no units to show")
    projections = projections or {}
    blocks = [
        montage(result, u, source, spec, projections.get(u), min_side=min_side) for u in units
    ]
    ncols = cols if cols is not None else math.ceil(math.sqrt(len(units)))
    labels = [f"{result.layer.alias} unit {u}" for u in units]
    return grid(blocks, check_int("cols", ncols, 1), pad=pad, labels=labels)


def write_patches(
    result: TopPatchesResult,
    directory: str | os.PathLike[str],
    source: ImageSource,
    units: Sequence[int] | None = None,
    spec: PreprocessSpec | None = None,
    projections: Mapping[int, Sequence[np.ndarray | None]] | None = None,
    *,
    min_side: int = 64,
) -> list[Path]:
    """Write ``<alias>_unit<NNNN>.png`` per unit and ``<alias>.png`` for the layer.

    Args:
        result: the top patches.
        directory: the folder (created if needed).
        source: the image source that was scanned (the patches are cut from it).
        units: the units to show (default: those with projections, else all).
        spec: the preprocessing (default: the one of the run).
        projections: per unit, images beside the patches (default: the result's own).
        min_side: patch size in the montages.

    Returns:
        The files written, the layer montage last.
    """
    directory = Path(directory)
    if projections is None:
        projections = {u: list(p) for u, p in result.projections.items()}
    if units is None:
        units = sorted(projections) or list(range(result.units))
    units = [result.check_unit(u) for u in units]
    alias = result.layer.alias
    written = [
        save_png(
            directory / f"{alias}_unit{u:04d}.png",
            montage(result, u, source, spec, projections.get(u), min_side=min_side),
        )
        for u in units
    ]
    layer = layer_montage(result, units, source, spec, projections, min_side=min_side)
    written.append(save_png(directory / f"{alias}.png", layer))
    return written
