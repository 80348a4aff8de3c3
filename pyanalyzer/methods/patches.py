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

With ``projection`` set, each chosen unit's top activations are also projected back to pixels
(:class:`~pyanalyzer.methods.deconvnet.Projector`): DeconvNet, guided backprop or saliency, on
the ``device`` parameter's torch device (the walk and its unpooling kernel; only the finished
images come back to the host). The whole result is cached: a second run answers from the store
without scanning an image.
The montages are drawn by :mod:`pyanalyzer.report.patches`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from pyanalyzer._backend import DEVICES
from pyanalyzer._checks import check_int
from pyanalyzer.analysis import Analysis, Choice, Int, Params, Result, Units
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.deconvnet import METHODS, Projector
from pyanalyzer.model.graph import LayerInfo
from pyanalyzer.model.preprocessing import PreprocessSpec
from pyanalyzer.model.receptive import ReceptiveField, crop_box, receptive_field
from pyanalyzer.units import select_units

if TYPE_CHECKING:
    from pyanalyzer.executor import Executor
    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Checkpoint

PROJECT_BATCH = 16
"""Top images projected back to pixels together (one reverse walk)."""

__all__ = ["TopPatches", "TopPatchesParams", "TopPatchesResult", "merge_topk", "rgb"]

_NO_IMAGE = np.iinfo(np.int64).max  # sorts after every real image index


def rgb(img: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img.astype(np.uint8, copy=False)


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
class TopPatchesResult(Result):
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
        projection: how the top activations were projected back to pixels (``"deconv"``,
            ``"guided"``, ``"saliency"``), or ``"none"``.
        projections: per projected unit, uint8 ``[count, H, W, 3]`` at the model's input size,
            one per filled slot (:meth:`~pyanalyzer.methods.deconvnet.Projection.images`);
            the montages cut them at each patch's box.
    """

    layer: LayerInfo
    values: np.ndarray
    images: np.ndarray
    positions: np.ndarray
    field: ReceptiveField | None
    field_error: str | None
    spec: PreprocessSpec
    n_images: int
    projection: str = "none"
    projections: dict[int, np.ndarray] = dc_field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    @property
    def units(self) -> int:
        return int(self.values.shape[0])

    def count(self, unit: int) -> int:
        """How many of ``unit``'s k slots hold an image."""
        return int((self.images[self.check_unit(unit)] >= 0).sum())

    def check_unit(self, unit: int) -> int:
        """``unit`` as an index of this result (UserInputError when out of range)."""
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
        u = self.check_unit(unit)
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
        image = rgb(source.pixels(int(self.images[unit, rank]), spec))
        if image.shape[:2] != tuple(spec.input_size):
            raise UserInputError(
                f"the source gave an image of {list(image.shape[:2])} pixels, "
                f"not the model's input size {list(spec.input_size)}"
            )
        return image[top:bottom, left:right].copy()

    # ---- summary and store -----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Per unit: the top values, their images and positions, and the receptive field."""
        return {
            "layer": self.layer.name,
            "alias": self.layer.alias,
            "k": self.k,
            "images_scanned": self.n_images,
            "projection": self.projection,
            "receptive_field": None if self.field is None else self.field.to_dict(),
            "receptive_field_error": self.field_error,
            "units": [
                {
                    "unit": u,
                    "values": [float(v) for v in self.values[u, : self.count(u)]],
                    "images": [int(i) for i in self.images[u, : self.count(u)]],
                    "positions": [[int(y), int(x)] for y, x in self.positions[u, : self.count(u)]],
                }
                for u in range(self.units)
            ],
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"values": self.values, "images": self.images, "positions": self.positions}
        for u, p in self.projections.items():
            out[f"projections/{int(u):04d}"] = p
        return out

    def to_meta(self) -> dict[str, Any]:
        return {
            "layer": {**self.layer.to_dict(), "index": self.layer.index},
            "field": None if self.field is None else self.field.to_dict(),
            "field_error": self.field_error,
            "spec": self.spec.to_dict(),
            "n_images": self.n_images,
            "projection": self.projection,
        }

    @classmethod
    def from_stored(
        cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> TopPatchesResult:
        prefix = "projections/"
        return cls(
            layer=LayerInfo.from_dict(meta["layer"]),
            values=np.asarray(arrays["values"]),
            images=np.asarray(arrays["images"]),
            positions=np.asarray(arrays["positions"]),
            field=None if meta["field"] is None else ReceptiveField.from_dict(meta["field"]),
            field_error=meta["field_error"],
            spec=PreprocessSpec.from_dict(meta["spec"]),
            n_images=int(meta["n_images"]),
            projection=str(meta["projection"]),
            projections={
                int(k[len(prefix) :]): np.asarray(v)
                for k, v in arrays.items()
                if k.startswith(prefix)
            },
        )


class TopPatchesParams(Params):
    """Parameters of :class:`TopPatches`."""

    title: ClassVar[str] = "patches"

    layer: str = Field(description="Layer (alias or ONNX name) of a spatial map.")
    k: Annotated[int, Int("k", 1)] = Field(
        9, description="Activations kept per unit, one per image (9)."
    )
    units: Units = Field("all", description="Units whose top activations are projected.")
    projection: Annotated[str, Choice("projection", (*METHODS, "none"))] = Field(
        "none",
        description="Project each top activation back to pixels: deconv, guided, saliency, or "
        "none (the scan only).",
    )
    batch_size: Annotated[int, Int("batch_size", 1)] = Field(
        32, description="Images per forward pass."
    )
    device: Annotated[str, Choice("device", DEVICES)] = Field(
        "auto",
        description="Where the projections run (torch and the unpooling kernel): auto (CUDA "
        "when available, else the CPU), cpu or cuda. The scan runs on the forward engine.",
    )


class TopPatches(Analysis[TopPatchesParams, TopPatchesResult]):
    """Find each unit's k strongest activations over an image source (Zeiler & Fergus 2014),
    and optionally project them back to pixels.

    :meth:`run` takes the image source to scan (default: synthetic scenes,
    :data:`~pyanalyzer.data.defaults.PATCH_IMAGES` of them).

    Raises:
        LayerNotFoundError: no such layer.
        UserInputError: the layer is not a spatial map, ``k``/``batch_size`` < 1, units out of
            range, an empty source; GradientUnavailableError when projections are asked for
            and the model has no torch twin; BackendUnavailableError when they are asked for
            with ``device="cuda"`` and CUDA is unavailable.
    """

    method: ClassVar[str] = "patches"
    inputs: ClassVar[str] = "image-source"
    params_type: ClassVar[type[Params]] = TopPatchesParams
    result_type: ClassVar[type[Result]] = TopPatchesResult
    key_excludes: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})
    summary_line: ClassVar[str] = (
        "Top-k image patches per unit, with their DeconvNet/guided/saliency projections "
        "(Zeiler & Fergus, ECCV 2014, Fig. 2)."
    )

    def check(self) -> None:
        p = self.params
        self.layer = self.model.spatial_layer(p.layer)
        self.units = select_units(p.units, int(self.layer.channels or 0))
        self.projector = (
            None if p.projection == "none" else Projector(self.model, p.projection, p.device)
        )
        self.model.forward.check_batch([self.layer.name], p.batch_size)
        if self.projector is not None:
            from pyanalyzer import budget

            budget.check(
                f"projecting the top patches of {self.layer.alias}, {PROJECT_BATCH} at a time",
                budget.projection_bytes(self.model, self.layer, batch=PROJECT_BATCH),
            )

    def resolved(self) -> dict[str, Any]:
        out = super().resolved()
        out["layer"] = self.layer.name
        out["units"] = self.units if self.projector is not None else None
        return out

    def prepare(self, inputs: ImageSource | None) -> ImageSource:
        if inputs is None:
            from pyanalyzer.data.defaults import PATCH_IMAGES, SyntheticImages

            return SyntheticImages.for_model(self.model.preprocessing, PATCH_IMAGES)
        if len(inputs) == 0:
            raise UserInputError("the image source is empty: there is nothing to scan")
        return inputs

    def identify(self, inputs: ImageSource) -> Any:
        from pyanalyzer.data.images import source_identity

        return source_identity(inputs)

    def project_unit(self, source: ImageSource, unit: int, ids: list[int]) -> np.ndarray:
        """uint8 ``[len(ids), H, W, 3]``: ``unit``'s strongest activation on each image
        projected back to pixels, :data:`PROJECT_BATCH` images at a time."""
        assert self.projector is not None
        spec = self.model.preprocessing
        views: list[np.ndarray] = []
        for s in range(0, len(ids), PROJECT_BATCH):
            chunk = ids[s : s + PROJECT_BATCH]
            x = spec.normalize(np.stack([source.pixels(i, spec) for i in chunk]))
            views.extend(self.projector.project(x, self.layer.name, unit, mode="max").images())
        h, w = spec.input_size
        return np.stack(views) if views else np.zeros((0, h, w, 3), np.uint8)

    def compute(self, inputs: ImageSource, checkpoint: Checkpoint) -> TopPatchesResult:
        if self.projector is not None and self.store is not None:
            # the scan is its own store entry (the same for every choice of units), so that
            # projecting more units of a layer does not scan the images again
            result = TopPatches(
                self.model, self.params.replace(projection="none"), store=self.store,
                progress=self.progress, checkpoint_every=self.checkpoint_every,
                executor=self.executor,
            ).run(inputs)  # fmt: skip
        else:
            result = scan(
                self.model, self.layer, inputs, self.params.k, self.params.batch_size,
                self.progress, self.executor,
                checkpoint if self.projector is None else None,
            )  # fmt: skip
        if self.projector is None:
            return result
        projections: dict[int, np.ndarray] = {}
        jobs = [(self.params, u, [int(i) for i in result.images[u] if i >= 0])
                for u in self.units]  # fmt: skip
        if self.executor is None:
            for job in jobs:
                projections[job[1]] = self.project_unit(inputs, job[1], job[2])
        else:
            prefix = "projections/"
            if checkpoint.state is not None and checkpoint.meta.get("projected"):
                for key, views in checkpoint.state.items():  # the units a stopped run finished
                    if key.startswith(prefix) and int(key[len(prefix) :]) in self.units:
                        projections[int(key[len(prefix) :])] = np.asarray(views)
            left = [job for job in jobs if job[1] not in projections]

            def done(i: int, views: np.ndarray) -> None:
                projections[left[i][1]] = views
                if len(projections) < len(jobs):
                    checkpoint.save({f"{prefix}{u:04d}": v for u, v in projections.items()},
                                    {"projected": sorted(projections)})  # fmt: skip

            self.executor.map(project_shard, self.model, inputs, left, done,
                              label=f"projections {self.layer.alias}",
                              progress=self.progress)  # fmt: skip
            projections = {u: projections[u] for u in self.units}  # in unit order
        return TopPatchesResult(
            layer=result.layer, values=result.values, images=result.images,
            positions=result.positions, field=result.field, field_error=result.field_error,
            spec=result.spec, n_images=result.n_images, projection=self.params.projection,
            projections=projections,
        )  # fmt: skip


def project_shard(
    model: Model, source: ImageSource, job: tuple[TopPatchesParams, int, list[int]]
) -> np.ndarray:
    """A worker's shard: one unit's top images projected (:meth:`TopPatches.project_unit`)."""
    import torch

    params, unit, ids = job
    torch.set_num_threads(max(1, int(model.forward.threads or torch.get_num_threads())))
    analysis = TopPatches(model, params.replace(units=[unit]), progress=False)
    return analysis.project_unit(source, unit, ids)


def scan(
    model: Model,
    layer: LayerInfo,
    source: ImageSource,
    k: int,
    batch_size: int = 32,
    progress: bool = True,
    executor: Executor | None = None,
    checkpoint: Checkpoint | None = None,
) -> TopPatchesResult:
    """One forward pass over ``source``: each unit's ``k`` strongest activations, at most one
    per image, and the layer's receptive field (no projection). With an ``executor``, the
    source is scanned in shards of whole batches whose candidates are merged: the same
    result; with a ``checkpoint`` too, the finished shards are saved in it, and a run
    started again scans only the others."""
    n = len(source)
    if executor is None:
        values, images, positions = scan_topk(model, layer, source, k, batch_size, progress)
    else:
        from pyanalyzer.executor import batch_shards

        units = int(layer.channels or 0)
        state: list[np.ndarray] = [
            np.full((units, k), -np.inf, np.float32),
            np.full((units, k), -1, np.int64),
            np.full((units, k, 2), -1, np.int64),
        ]

        shards = batch_shards(n, batch_size, executor.workers)
        finished: list[int] = []
        if checkpoint is not None and checkpoint.state is not None:
            meta = checkpoint.meta
            if meta.get("shards") == [[x.start, x.stop] for x in shards]:
                state[:] = [np.array(checkpoint.state[a]) for a in ("values", "images",
                                                                    "positions")]  # fmt: skip
                finished = list(meta["done"])
        jobs = [(layer.name, k, batch_size, x) for x in shards if x.index not in finished]

        def merged(i: int, part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
            state[:] = merge_topk(state[0], state[1], state[2], *part)
            finished.append(jobs[i][3].index)
            if checkpoint is not None and len(finished) < len(shards):
                checkpoint.save(
                    {"values": state[0], "images": state[1], "positions": state[2]},
                    {"shards": [[x.start, x.stop] for x in shards], "done": finished},
                )

        executor.map(scan_shard, model, source, jobs, merged,
                     label=f"top patches {layer.alias}", progress=progress)  # fmt: skip
        values, images, positions = state
    try:
        rf, error = receptive_field(model, layer.name), None
    except UserInputError as exc:
        rf, error = None, str(exc)
    return TopPatchesResult(
        layer=layer, values=values, images=images, positions=positions, field=rf,
        field_error=error, spec=model.preprocessing, n_images=n,
    )  # fmt: skip


def scan_shard(
    model: Model, source: ImageSource, job: tuple[str, int, int, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A worker's shard of :func:`scan`: the top-k candidates of images
    ``shard.start..shard.stop-1`` (image indices of the whole source)."""
    from pyanalyzer.executor import SourceRange

    name, k, batch_size, shard = job
    layer = model.spatial_layer(name)
    part = SourceRange(source, shard.start, shard.stop)
    values, images, positions = scan_topk(model, layer, part, k, batch_size, progress=False)
    return values, np.where(images >= 0, images + shard.start, images), positions


def scan_topk(
    model: Model,
    layer: LayerInfo,
    source: ImageSource,
    k: int,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The forward pass of :func:`scan`: ``values [U, k]``, ``images [U, k]``, ``positions
    [U, k, 2]``."""
    units = int(layer.channels or 0)
    values = np.full((units, k), -np.inf, np.float32)
    images = np.full((units, k), -1, np.int64)
    positions = np.full((units, k, 2), -1, np.int64)
    for idx, outs in model.forward.iter_layers(
        source, [layer.name], batch_size=batch_size, progress=progress,
        label=f"top patches {layer.alias}",
    ):  # fmt: skip
        a = np.asarray(outs[layer.name])  # [B, C, h, w] (the engine hands out NCHW)
        b, c, h, w = a.shape
        flat = a.reshape(b, c, h * w).astype(np.float32, copy=False)
        arg = flat.argmax(axis=2)  # the first maximum in raster order (NaN wins argmax...)
        best = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
        if np.isnan(best).any():  # ... so only then: NaN never wins
            flat = np.where(np.isnan(flat), -np.inf, flat)
            arg = flat.argmax(axis=2)
            best = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
        new_pos = np.stack([arg // w, arg % w], axis=-1).astype(np.int64)
        new_img = np.broadcast_to(np.asarray(idx, np.int64)[:, None], (b, c))
        values, images, positions = merge_topk(
            values, images, positions, best.T, np.ascontiguousarray(new_img.T),
            new_pos.transpose(1, 0, 2),
        )  # fmt: skip
    return values, images, positions
