"""Network dissection in shards, for an :class:`~pyanalyzer.executor.Executor` (Ray).

The dataset is cut into contiguous shards of whole batches (so that every forward batch holds
the same images as in a local run, and onnxruntime computes the same floats). Two passes:

1. :func:`pass1` runs a shard forward and returns each layer's exact per-unit top-k of its
   activations; the driver merges them (:func:`~pyanalyzer._backend.topk_merge_states`) into
   exactly the state a local run reaches, hence the same thresholds.
2. :func:`pass2` counts the shard against the concept labels at those thresholds (the C++
   tally) and returns the integer counts and the shard's strongest images per unit; the driver
   sums the counts and merges the top images (ties by image index, as locally).

Only top-k candidates and counts travel, never activations. Between the passes a worker keeps
its shard's activations on its own disk when the disk budget allows (``spill``: pass 2 reads
them back, or recomputes them when they are not on the worker that gets the shard), or
recomputes the forward pass (``recompute``). The forward pass leaves the maps where
onnxruntime computed them (:meth:`~pyanalyzer.model.forward.ForwardEngine.iter_bound`): on a GPU
(onnxruntime-gpu) with the CUDA kernels chosen, the top-k merge and the tally read them there,
and only top-k rows, counts and per-map peaks come back to the host. The driver checkpoints every
finished shard in the store, so a killed worker costs its shard and a killed driver, started
again, skips the finished shards. Results are bitwise identical to the local engine's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer import _backend
from pyanalyzer import executor as _executor
from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.model.forward import BoundMaps
    from pyanalyzer.model.model import Model

__all__ = ["Shard", "ShardRange", "merge_top", "pass1", "pass2", "plan", "spill_mode"]

Shard = _executor.Shard
ShardRange = _executor.SourceRange


def plan(n: int, batch_size: int, workers: int) -> list[Shard]:
    """Contiguous shards of whole batches (:func:`pyanalyzer.executor.batch_shards`)."""
    return _executor.batch_shards(n, batch_size, workers)


def spill_mode(estimate: int, folder: str | os.PathLike[str] | None = None) -> str:
    """``"spill"`` when ``estimate`` bytes of activations fit the free space of ``folder``
    (default: the temp folder) with a margin, else ``"recompute"``."""
    where = Path(folder or tempfile.gettempdir())
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return "recompute"
    return "spill" if estimate * 1.25 < free else "recompute"


@dataclasses.dataclass(frozen=True)
class Pass1:
    """What :func:`pass1` does with a shard."""

    shard: Shard
    layers: tuple[tuple[str, str], ...]  # (ONNX name, alias)
    k: tuple[int, ...]
    batch_size: int
    spill_dir: str | None
    device: str = "auto"  # where the top-k merge runs (:func:`pyanalyzer._backend.kernels`)


@dataclasses.dataclass(frozen=True)
class Pass2:
    """What :func:`pass2` does with a shard."""

    shard: Shard
    layers: tuple[tuple[str, str], ...]
    thresholds: tuple[np.ndarray, ...]
    batch_size: int
    top_k: int
    device: str
    spill_dir: str | None


def _spill_path(spill_dir: str, alias: str, shard: Shard) -> Path:
    return Path(spill_dir) / f"{alias}-{shard.start}-{shard.stop}.f32"


def _forward(model: Model, ds: Any, job: Pass1 | Pass2) -> Any:
    """The shard's maps batch by batch (:class:`~pyanalyzer.model.forward.BoundMaps`), left
    where onnxruntime computed them."""
    s = job.shard
    names = [name for name, _ in job.layers]
    view = ShardRange(ds, s.start, s.stop)
    for idx, outs in model.forward.iter_bound(view, names, batch_size=job.batch_size,
                                              progress=False):  # fmt: skip
        yield range(s.start + idx.start, s.start + idx.stop), outs


def _resident(maps: BoundMaps, device: str) -> bool:
    """Whether the kernels read these maps where they are: on the GPU, with the CUDA kernels
    chosen by ``device``."""
    return maps.device == "cuda" and _backend.uses_cuda(device)


def _check_finite(maps: BoundMaps | np.ndarray, alias: str, idx: range) -> None:
    if isinstance(maps, np.ndarray):
        bad = not np.isfinite(maps).all()
    else:
        bad = _backend.find_nan_device(maps.ptr, maps.size, finite=True, device=maps.device_id) >= 0
    if bad:
        raise UserInputError(
            f"layer {alias} produced NaN or infinite activations on images "
            f"{idx.start}..{idx.stop - 1}"
        )


def pass1(model: Model, ds: BrodenDataset, job: Pass1) -> dict[str, np.ndarray]:
    """A shard's per-layer exact top-k (``{alias: float32 [U, k]}``); its activations are
    spilled to ``job.spill_dir`` when given."""
    states: dict[str, np.ndarray] = {}
    spills: dict[str, np.memmap] = {}
    s = job.shard
    for (name, alias), k in zip(job.layers, job.k, strict=True):
        info = model.layer(name)
        u, h, w = int(info.channels or 0), int(info.height or 0), int(info.width or 0)
        states[alias] = _backend.topk_empty(u, k)
        if job.spill_dir is not None:
            Path(job.spill_dir).mkdir(parents=True, exist_ok=True)
            tmp = _spill_path(job.spill_dir, alias, s).with_suffix(".partial")
            spills[alias] = np.memmap(str(tmp), dtype="float32", mode="w+",
                                      shape=(s.stop - s.start, u, h, w))  # fmt: skip
    for idx, outs in _forward(model, ds, job):
        for name, alias in job.layers:
            maps = outs[name]
            if alias not in spills and _resident(maps, job.device):
                _check_finite(maps, alias, idx)
                states[alias] = _backend.topk_merge_device(
                    states[alias], maps.ptr, maps.shape, maps.device_id
                )
                continue
            acts = maps.numpy()
            _check_finite(acts, alias, idx)
            states[alias] = _backend.topk_merge(states[alias], acts, device=job.device)
            if alias in spills:
                spills[alias][idx.start - s.start : idx.stop - s.start] = acts
    for alias, mm in spills.items():
        mm.flush()
        del mm
        tmp = _spill_path(job.spill_dir or "", alias, s).with_suffix(".partial")
        os.replace(tmp, _spill_path(job.spill_dir or "", alias, s))
    return states


def _acts(model: Model, ds: Any, job: Pass2) -> Any:
    """The shard's activations batch by batch: host arrays from the spill when this worker
    has it, else the forward pass again (:class:`~pyanalyzer.model.forward.BoundMaps`)."""
    s = job.shard
    spills = {}
    if job.spill_dir is not None:
        for name, alias in job.layers:
            path = _spill_path(job.spill_dir, alias, s)
            info = model.layer(name)
            shape = (s.stop - s.start, int(info.channels or 0), int(info.height or 0),
                     int(info.width or 0))  # fmt: skip
            if path.is_file() and path.stat().st_size == 4 * math.prod(shape):
                spills[alias] = np.memmap(str(path), dtype="float32", mode="r", shape=shape)
    if len(spills) == len(job.layers):
        for b in range(s.start, s.stop, job.batch_size):
            e = min(s.stop, b + job.batch_size)
            yield (
                range(b, e),
                {
                    name: np.ascontiguousarray(spills[alias][b - s.start : e - s.start])
                    for name, alias in job.layers
                },
            )
        for _, alias in job.layers:  # read once: the file is no longer needed
            _spill_path(job.spill_dir or "", alias, s).unlink(missing_ok=True)
        return
    yield from _forward(model, ds, job)


def merge_top(
    values: np.ndarray, images: np.ndarray, new_values: np.ndarray, new_images: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's ``k`` strongest images of both (by value, ties by lower image index).

    ``values`` and ``images`` are a previous result (rows in that order, ``-inf`` padded);
    only the units that one of the new images enters are sorted again."""
    if values.shape[1] == k and k > 0:
        last_value, last_image = values[:, -1:], images[:, -1:]
        enters = (new_values > last_value) | (
            (new_values == last_value) & (new_images < last_image)
        )
        rows = np.flatnonzero(enters.any(axis=1))
        if len(rows) < len(values):  # the other units keep their images
            out_values, out_images = values.copy(), images.copy()
            if len(rows):
                out_values[rows], out_images[rows] = _merge_rows(
                    values[rows], images[rows], new_values[rows], new_images[rows], k
                )
            return out_values, out_images
    return _merge_rows(values, images, new_values, new_images, k)


def _merge_rows(
    values: np.ndarray, images: np.ndarray, new_values: np.ndarray, new_images: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    vals = np.concatenate([values, new_values], axis=1)
    ids = np.concatenate([images, new_images], axis=1)
    order = np.lexsort((ids, -vals), axis=1)[:, :k]
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(ids, order, axis=1)


def pass2(model: Model, ds: BrodenDataset, job: Pass2) -> dict[str, np.ndarray]:
    """A shard's counts at the given thresholds: per layer ``<alias>/intersection``,
    ``/unit_area_cat``, ``/unit_area``, ``/top_values``, ``/top_images``, and
    ``concept_area`` (the labels' pixel counts, the same for every layer)."""
    c = len(ds.names)
    g = len(ds.categories)
    concept_cat = np.ascontiguousarray(np.maximum(ds.concept_category, 0), dtype=np.int32)
    out: dict[str, np.ndarray] = {"concept_area": np.zeros(c, np.int64)}
    for (_, alias), thr in zip(job.layers, job.thresholds, strict=True):
        u = int(thr.shape[0])
        out[f"{alias}/intersection"] = np.zeros((u, c), np.int64)
        out[f"{alias}/unit_area_cat"] = np.zeros((u, g), np.int64)
        out[f"{alias}/unit_area"] = np.zeros(u, np.int64)
        out[f"{alias}/top_values"] = np.full((u, job.top_k), -np.inf, np.float32)
        out[f"{alias}/top_images"] = np.full((u, job.top_k), -1, np.int64)
    for idx, outs in _acts(model, ds, job):
        ids = np.arange(idx.start, idx.stop)
        seg, image_labels, image_cats = ds.segmentation_batch(ids)
        for i, ((name, alias), thr) in enumerate(zip(job.layers, job.thresholds, strict=True)):
            maps = outs[name]
            area = out["concept_area"] if i == 0 else np.zeros(c, np.int64)
            counts = _backend.TallyCounts(
                out[f"{alias}/intersection"], out[f"{alias}/unit_area_cat"],
                out[f"{alias}/unit_area"], area,
            )  # fmt: skip
            if not isinstance(maps, np.ndarray) and _resident(maps, job.device):
                peaks = np.empty(maps.shape[:2], np.float32)
                _backend.tally_device(maps.ptr, maps.shape, thr, seg, image_labels, concept_cat,
                                      image_cats, counts, peaks=peaks,
                                      device=maps.device_id)  # fmt: skip
                peak = peaks.T  # [U, B]
            else:
                acts = maps if isinstance(maps, np.ndarray) else maps.numpy()
                _backend.tally(acts, thr, seg, image_labels, concept_cat, image_cats, counts,
                               device=job.device)  # fmt: skip
                peak = _backend.map_peaks(acts).T  # [U, B]
            out[f"{alias}/top_values"], out[f"{alias}/top_images"] = merge_top(
                out[f"{alias}/top_values"], out[f"{alias}/top_images"], peak,
                np.broadcast_to(ids, peak.shape), job.top_k,
            )  # fmt: skip
    return out


def layers_of(infos: Sequence[Any]) -> tuple[tuple[str, str], ...]:
    return tuple((i.name, i.alias) for i in infos)
