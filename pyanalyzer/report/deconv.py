"""Files of unit projections on given images: each unit's projection beside the image, and one
montage of the layer (DeconvNet, guided backprop or saliency)."""

from __future__ import annotations

import os
from pathlib import Path

from pyanalyzer.methods.deconvnet import ProjectionResult
from pyanalyzer.report.montage import _as_rgb, grid, save_png, upscale

__all__ = ["write_projections"]


def write_projections(result: ProjectionResult, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write, per image, ``<alias>_unit<NNNN>_<method>.png`` (the image beside the unit's
    projection) for every unit and ``<alias>_<method>.png`` (the image and every unit's
    projection); with several images the names end in ``_<i>``.

    Returns:
        the paths written.
    """
    out = Path(out_dir)
    views = result.images()  # [U, N, H, W, 3]
    alias, method = result.alias, result.method
    written: list[Path] = []
    n = len(result.originals)
    for i in range(n):
        suffix = "" if n == 1 else f"_{i}"
        rgb = _as_rgb(result.originals[i], "image")  # gray models: [H, W, 1]
        tiles = [upscale(rgb)]
        for u, v in zip(result.units, views[:, i], strict=True):
            pair = grid([upscale(rgb), upscale(v)], cols=2, labels=["image", f"unit {u} {method}"])
            written.append(save_png(out / f"{alias}_unit{int(u):04d}_{method}{suffix}.png", pair))
            tiles.append(upscale(v))
        labels = ["image"] + [f"unit {u}" for u in result.units]
        montage = grid(tiles, cols=min(len(tiles), 8), labels=labels)
        written.append(save_png(out / f"{alias}_{method}{suffix}.png", montage))
    return written
