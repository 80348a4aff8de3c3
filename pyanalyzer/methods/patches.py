"""Top-k image patches per unit: the image regions that excite a unit most.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, Fig. 2:
for each unit (channel) of a layer, the k strongest activations over a dataset, at most one per
image, each shown as the image patch under the unit's receptive field beside its DeconvNet
projection.

One forward pass (onnxruntime) streams the image source in batches; for every image the
maximum of each unit's map (and where it is) is a candidate, and a running per-unit top-k is
merged batch by batch, so memory stays at one batch plus ``[units, k]``. The receptive field
comes from the ONNX graph (:mod:`pyanalyzer.model.receptive`).

Ordering is deterministic: by value (descending), ties by image index (ascending); within an
image, the first maximum in raster order (lowest row, then lowest column).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pyanalyzer._checks import check_int
from pyanalyzer.errors import UserInputError
from pyanalyzer.model.receptive import ReceptiveField, crop_box, receptive_field
from pyanalyzer.report.montage import grid, save_png

if TYPE_CHECKING:
    from pyanalyzer.data.images import ImageSource
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.model.model import Model
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = ["TopPatches", "TopPatchesResult"]

_NO_IMAGE = np.iinfo(np.int64).max  # sorts after every real image index


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img.astype(np.uint8, copy=False)


def _enlarge(img: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def merge_topk(
    values: np.ndarray,
    images: np.ndarray,
    positions: np.ndarray,
    new_values: np.ndarray,
    new_images: np.ndarray,
    new_positions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge candidates into a per-unit top-k state.

    Args:
        values, images, positions: the state, ``[U, k]``, ``[U, k]``, ``[U, k, 2]``;
            empty slots hold ``-inf`` and image ``-1``.
        new_values, new_images, new_positions: candidates, ``[U, B]``, ``[U, B]``,
            ``[U, B, 2]``.

    Returns:
        The new state: the k best of both by value (descending), ties by image index.
    """
    k = values.shape[1]
    v = np.concatenate([values, new_values], axis=1)
    im = np.concatenate([images, new_images], axis=1)
    pos = np.concatenate([positions, new_positions], axis=1)
    key_v = np.where(np.isnan(v), -np.inf, v)
    key_i = np.where(im < 0, _NO_IMAGE, im)
    order = np.lexsort((key_i, -key_v), axis=-1)[:, :k]
    return (
        np.take_along_axis(v, order, axis=1),
        np.take_along_axis(im, order, axis=1),
        np.take_along_axis(pos, order[..., None], axis=1),
    )


@dataclass
class TopPatchesResult:
    """The k strongest activations of each unit of a layer, one per image at most.

    Attributes:
        layer: the layer.
        values: float32 ``[U, k]``, each unit's maxima over its best images, descending
            (``-inf`` where fewer than k images were scanned).
        images: int64 ``[U, k]``, index in the image source (``-1`` for empty slots).
        positions: int64 ``[U, k, 2]``, ``(y, x)`` of the maximum in the layer's map.
        field: the layer's receptive field, or None when the graph has an op without a
            geometry rule on the way (``field_error`` says which).
        field_error: why ``field`` is None.
        spec: the preprocessing the model used: the pixels its fields refer to.
        n_images: how many images were scanned.
    """

    layer: LayerInfo
    values: np.ndarray
    images: np.ndarray
    positions: np.ndarray
    field: ReceptiveField | None
    field_error: str | None
    spec: PreprocessSpec
    n_images: int

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    @property
    def units(self) -> int:
        return int(self.values.shape[0])

    def count(self, unit: int) -> int:
        """How many of ``unit``'s k slots hold an image."""
        return int((self.images[self._unit(unit)] >= 0).sum())

    def _unit(self, unit: int) -> int:
        u = check_int("unit", unit, 0)
        if u >= self.units:
            raise UserInputError(
                f"unit {u} is out of range: layer {self.layer.alias} has {self.units} units"
            )
        return u

    def box(self, unit: int, rank: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the patch in the model's input pixels.

        Raises:
            UserInputError: the layer has no receptive field, or the slot is empty.
        """
        u = self._unit(unit)
        j = check_int("rank", rank, 0)
        if j >= self.k or self.images[u, j] < 0:
            raise UserInputError(
                f"unit {u} has {self.count(u)} top images; rank {j} does not exist"
            )
        if self.field is None:
            raise UserInputError(
                f"no patches for layer {self.layer.alias}: it has no receptive field "
                f"({self.field_error})"
            )
        h, w = self.spec.input_size
        y, x = (int(v) for v in self.positions[u, j])
        return crop_box(self.field, y, x, h, w)

    def patch(
        self, unit: int, rank: int, source: ImageSource, spec: PreprocessSpec | None = None
    ) -> np.ndarray:
        """The image region under the receptive field of the ``rank``-th best activation.

        Args:
            unit: the unit (channel).
            rank: 0 for the strongest activation.
            source: the image source that was scanned.
            spec: the preprocessing (default: the one of the run), which brings each image
                to the model's input size: the patch is cut from what the model saw.

        Returns:
            uint8 ``[h, w, 3]``, the receptive field clamped to the image.
        """
        top, left, bottom, right = self.box(unit, rank)
        spec = spec or self.spec
        image = _rgb(source.pixels(int(self.images[unit, rank]), spec))
        if image.shape[:2] != tuple(spec.input_size):
            raise UserInputError(
                f"the source gave an image of {list(image.shape[:2])} pixels, "
                f"not the model's input size {list(spec.input_size)}"
            )
        return image[top:bottom, left:right].copy()

    def montage(
        self,
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
        u = self._unit(unit)
        n = self.count(u)
        spec = spec or self.spec
        if projections is not None and len(projections) != n:
            raise UserInputError(
                f"got {len(projections)} projections for the {n} patches of unit {u}"
            )
        patches = [self.patch(u, j, source, spec) for j in range(n)]
        biggest = max(min(p.shape[:2]) for p in patches)
        factor = max(1, math.ceil(min_side / max(biggest, 1)))
        tiles = []
        for j, p in enumerate(patches):
            tile = _enlarge(p, factor)
            proj = projections[j] if projections is not None else None
            if proj is not None:
                proj = _enlarge(self._fit_projection(u, j, proj, p.shape[:2], spec), factor)
                h = max(tile.shape[0], proj.shape[0])
                side = np.full((h, tile.shape[1] + pad + proj.shape[1], 3), 255, np.uint8)
                side[: tile.shape[0], : tile.shape[1]] = tile
                side[: proj.shape[0], tile.shape[1] + pad :] = proj
                tile = side
            tiles.append(tile)
        labels = [f"{self.values[u, j]:.3g}" for j in range(n)] if captions else None
        ncols = cols if cols is not None else math.ceil(math.sqrt(self.k))
        return grid(tiles, check_int("cols", ncols, 1), pad=pad, labels=labels)

    def _fit_projection(self, u, j, proj, patch_hw, spec) -> np.ndarray:
        proj = np.asarray(proj)
        if proj.dtype != np.uint8 or proj.ndim not in (2, 3):
            raise UserInputError(
                f"projection {j} of unit {u} must be uint8 [h, w, 3] or [h, w], got "
                f"{proj.dtype} {list(proj.shape)}"
            )
        proj = _rgb(proj)
        if proj.shape[:2] == tuple(patch_hw):
            return proj
        if proj.shape[:2] == tuple(spec.input_size):
            top, left, bottom, right = self.box(u, j)
            return proj[top:bottom, left:right]
        raise UserInputError(
            f"projection {j} of unit {u} is {list(proj.shape[:2])}: it must be the patch's "
            f"size {list(patch_hw)} or the model's input size {list(spec.input_size)}"
        )

    def layer_montage(
        self,
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
        units = list(range(self.units)) if units is None else [self._unit(u) for u in units]
        if not units:
            raise UserInputError("no units to show")
        projections = projections or {}
        blocks = [
            self.montage(u, source, spec, projections.get(u), min_side=min_side) for u in units
        ]
        ncols = cols if cols is not None else math.ceil(math.sqrt(len(units)))
        labels = [f"{self.layer.alias} unit {u}" for u in units]
        return grid(blocks, check_int("cols", ncols, 1), pad=pad, labels=labels)

    def save(
        self,
        directory: str | os.PathLike[str],
        source: ImageSource,
        units: Sequence[int] | None = None,
        spec: PreprocessSpec | None = None,
        projections: Mapping[int, Sequence[np.ndarray | None]] | None = None,
        *,
        min_side: int = 64,
    ) -> list[Path]:
        """Write ``<alias>_unit<NNNN>.png`` per unit and ``<alias>.png`` for the layer.

        Returns:
            The files written, the layer montage last.
        """
        directory = Path(directory)
        units = list(range(self.units)) if units is None else [self._unit(u) for u in units]
        projections = projections or {}
        alias = self.layer.alias
        written = [
            save_png(
                directory / f"{alias}_unit{u:04d}.png",
                self.montage(u, source, spec, projections.get(u), min_side=min_side),
            )
            for u in units
        ]
        layer = self.layer_montage(units, source, spec, projections, min_side=min_side)
        written.append(save_png(directory / f"{alias}.png", layer))
        return written


class TopPatches:
    """Find each unit's k strongest activations over an image source (Zeiler & Fergus 2014).

    Args:
        model: the loaded model.
        layer: a spatial layer, by ONNX name or alias.
        k: activations kept per unit (9 in the paper), at most one per image.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Raises:
        LayerNotFoundError: no such layer.
        UserInputError: the layer is not a spatial map, or ``k``/``batch_size`` < 1.
    """

    def __init__(
        self,
        model: Model,
        layer: str,
        *,
        k: int = 9,
        batch_size: int = 32,
        progress: bool = True,
    ):
        self.model = model
        self.layer = model.spatial_layer(layer)
        self.k = check_int("k", k, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.progress = progress

    def run(self, source: ImageSource) -> TopPatchesResult:
        """Scan ``source`` and keep the top k per unit.

        Raises:
            UserInputError: the source is empty.
        """
        n = len(source)
        if n == 0:
            raise UserInputError("the image source is empty: there is nothing to scan")
        layer = self.layer
        units, k = int(layer.channels or 0), self.k
        values = np.full((units, k), -np.inf, np.float32)
        images = np.full((units, k), -1, np.int64)
        positions = np.full((units, k, 2), -1, np.int64)
        for idx, outs in self.model.forward.iter_layers(
            source,
            [layer.name],
            batch_size=self.batch_size,
            progress=self.progress,
            label=f"top patches {layer.alias}",
        ):
            a = np.asarray(outs[layer.name])
            if layer.layout == "nhwc":
                a = a.transpose(0, 3, 1, 2)
            b, c, h, w = a.shape
            flat = a.reshape(b, c, h * w).astype(np.float32, copy=False)
            flat = np.where(np.isnan(flat), -np.inf, flat)  # NaN never wins
            arg = flat.argmax(axis=2)  # the first maximum in raster order
            best = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
            new_pos = np.stack([arg // w, arg % w], axis=-1).astype(np.int64)
            new_img = np.broadcast_to(np.asarray(idx, np.int64)[:, None], (b, c))
            values, images, positions = merge_topk(
                values,
                images,
                positions,
                best.T,
                np.ascontiguousarray(new_img.T),
                new_pos.transpose(1, 0, 2),
            )
        try:
            field, error = receptive_field(self.model, layer.name), None
        except UserInputError as exc:
            field, error = None, str(exc)
        return TopPatchesResult(
            layer=layer,
            values=values,
            images=images,
            positions=positions,
            field=field,
            field_error=error,
            spec=self.model.preprocessing,
            n_images=n,
        )
