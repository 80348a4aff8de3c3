"""Network dissection: align every unit of a layer with the concepts of a Broden dataset.

Bau, Zhou, Khosla, Oliva & Torralba, "Network Dissection: Quantifying Interpretability of
Deep Visual Representations", CVPR 2017 (and NetDissect-Lite).

One forward pass (onnxruntime) over the dataset feeds two stages, so that dissection costs
little more than the forward pass itself:

1. every batch's activations are spilled to a memory-mapped file beside the store and merged
   into an exact per-unit top-k (C++ core), which gives each unit's threshold at the top
   ``quantile`` once all images are seen — exact, not a sketch;
2. the spilled maps are read back batch by batch, upsampled bilinearly to the segmentation
   size and counted against the concept labels (the C++/CUDA tally).

Peak memory is one batch plus the top-k state, whatever the dataset size. Progress is
checkpointed in the store (a ``dissect/partial`` entry plus the spill files), so a killed run
started again resumes from the last checkpoint and ends with identical results; the finished
result replaces the checkpoint in one store transaction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer import _backend
from pyanalyzer._progress import progress_bar
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.dissection.result import LayerDissection

if TYPE_CHECKING:
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.model.model import Model
    from pyanalyzer.store import Store

METHOD = "dissect"


def topk_size(n_values: int, quantile: float) -> int:
    """How many of the largest values the exact ``1 - quantile`` quantile needs.

    ``numpy.quantile(v, 1 - q)`` (linear) interpolates between the sorted values at
    ``floor(p)`` and ``floor(p) + 1``, ``p = (1 - q)(n - 1)``; both lie in the top
    ``n - floor(p)`` values.
    """
    pos = (1.0 - quantile) * (n_values - 1)
    return max(1, min(n_values, n_values - math.floor(pos)))


def thresholds_from_topk(state: np.ndarray, n_values: int, quantile: float) -> np.ndarray:
    """Per-unit ``numpy.quantile(values, 1 - quantile)`` from an exact top-k state.

    Args:
        state: float32 [U, k], each row the unit's k largest values, descending.
        n_values: how many values each unit had in all.

    Returns:
        float32 [U], computed as numpy does (linear interpolation in float64).
    """
    pos = (1.0 - quantile) * (n_values - 1)
    lo = math.floor(pos)
    frac = pos - lo
    j_lo = n_values - 1 - lo  # index from the top of the ascending position lo
    a = state[:, j_lo].astype(np.float64)
    b = state[:, max(j_lo - 1, 0)].astype(np.float64) if lo + 1 <= n_values - 1 else a
    diff = b - a
    # numpy's _lerp: a + diff*t, or b - diff*(1-t) when t >= 0.5 (monotone and exact at ends)
    out = a + diff * frac if frac < 0.5 else b - diff * (1.0 - frac)
    return out.astype(np.float32)


@dataclass
class _LayerState:
    name: str
    alias: str
    shape: tuple[int, int, int]  # U, h, w
    spill: np.memmap | None = None
    topk: np.ndarray | None = None
    intersection: np.ndarray | None = None
    unit_area_cat: np.ndarray | None = None
    unit_area: np.ndarray | None = None
    top_values: np.ndarray | None = None
    top_images: np.ndarray | None = None


class Dissection:
    """Dissect layers of a model against a Broden-format concept dataset.

    Args:
        model: a loaded :class:`~pyanalyzer.model.model.Model`.
        dataset: a :class:`~pyanalyzer.data.broden.BrodenDataset`.
        quantile: the top fraction of each unit's activations that counts as firing
            (NetDissect: 0.005).
        iou_threshold: a unit is a detector when its best IoU exceeds this (0.04).
        batch_size: images per forward pass.
        top_k: strongest images kept per unit for the report.
        device: where the tally runs: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        store: the result store (answers reruns, holds checkpoints).
        checkpoint_every: seconds between checkpoints (0: after every batch).
        net2vec: concepts (label numbers or names) for which to learn a Net2Vec filter
            combination on every dissected layer (Fong & Vedaldi 2018).
        progress: show progress bars.
    """

    def __init__(
        self,
        model: Model,
        dataset: BrodenDataset,
        *,
        quantile: float = 0.005,
        iou_threshold: float = 0.04,
        batch_size: int = 64,
        top_k: int = 10,
        device: str = "auto",
        store: Store | None = None,
        checkpoint_every: float = 2.0,
        net2vec: Sequence[int | str] = (),
        progress: bool = True,
    ):
        if not (0.0 < quantile < 1.0) or not math.isfinite(quantile):
            raise UserInputError(f"quantile must be in (0, 1), got {quantile}")
        if not (0.0 <= iou_threshold < 1.0):
            raise UserInputError(f"IoU threshold must be in [0, 1), got {iou_threshold}")
        if batch_size < 1:
            raise UserInputError(f"batch size must be at least 1, got {batch_size}")
        if top_k < 1:
            raise UserInputError(f"top-k must be at least 1, got {top_k}")
        if len(dataset) == 0:
            raise UserInputError("the concept dataset has no images")
        _backend.kernels(device)  # fail now if CUDA was asked for and is missing
        self.model = model
        self.dataset = dataset
        self.quantile = float(quantile)
        self.iou_threshold = float(iou_threshold)
        self.batch_size = int(batch_size)
        self.top_k = int(min(top_k, len(dataset)))
        self.device = device
        self.store = store
        self.checkpoint_every = float(checkpoint_every)
        self.progress = progress
        self.net2vec = [self._concept_number(c) for c in net2vec]
        self.from_store = False
        self.timings: dict[str, float] = {}

    def _concept_number(self, concept: int | str) -> int:
        names = list(self.dataset.names)
        if isinstance(concept, int | np.integer) or str(concept).isdigit():
            c = int(concept)
            if 0 < c < len(names) and names[c]:
                return c
            raise UserInputError(f"concept number {c} is not a label of the dataset")
        if concept in names and concept not in ("", "-"):
            return names.index(concept)
        import difflib

        close = difflib.get_close_matches(str(concept), [n for n in names if n], n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UserInputError(f"no concept named {concept!r} in the dataset{hint}")

    # ---- keys --------------------------------------------------------------------------------
    def params(self, layers: Sequence[str]) -> dict[str, Any]:
        """Everything the result depends on (hashed into the store key)."""
        return {
            "layers": [self.model.spatial_layer(n).name for n in layers],
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "top_k": self.top_k,
            "dataset": self.dataset.digest,
            "preprocessing": self.model.preprocessing.to_dict(),
            "net2vec": self.net2vec,
        }

    def _key(self, layers: Sequence[str]):
        from pyanalyzer.store import Key

        return Key.make(self.model.sha256, METHOD, self.params(layers))

    def _spill_path(self, key, alias: str) -> Path:
        assert self.store is not None
        folder = Path(self.store.path).parent / "spill"
        return folder / f"{key.model_sha256[:16]}-{key.params_sha256[:16]}-{alias}.f32"

    # ---- running -----------------------------------------------------------------------------
    def run(self, layers: Sequence[str]) -> list[LayerDissection]:
        """Dissect ``layers`` (aliases or ONNX names); answers from the store when it can.

        Returns:
            one :class:`LayerDissection` per layer, in the order given.
        """
        if not layers:
            raise UserInputError("give at least one layer to dissect")
        infos = [self.model.spatial_layer(n) for n in layers]
        if len({i.name for i in infos}) != len(infos):
            raise UserInputError("a layer was given twice")
        params = self.params(layers)
        key = self._key(layers) if self.store is not None else None
        if key is not None:
            entry = self.store.get(key)
            if entry is not None:
                self.from_store = True
                return [self._from_entry(entry, i.alias) for i in infos]

        # Decode (or find cached) every label map first: a defective PNG is reported before
        # anything is written.
        self.dataset.prepare_cache(progress=self.progress)
        states = [_LayerState(i.name, i.alias, (i.channels, i.height, i.width)) for i in infos]
        try:
            results = self._compute(key, params, states)
        except UserInputError:
            # Bad input (an unreadable image, NaN activations): leave nothing half-written.
            for st in states:
                self._drop_spill(key, st)
            if key is not None and key.partial() in self.store:
                self.store.remove(key.partial())
            raise
        for st in states:
            self._drop_spill(key, st)
        return results

    def _compute(self, key, params, states: list[_LayerState]) -> list[LayerDissection]:
        t0 = time.perf_counter()
        n = len(self.dataset)
        phase, start = 1, 0
        resumed = self._resume(key, states) if key is not None else None
        if resumed is not None:
            phase, start = resumed
        for st in states:
            u, h, w = st.shape
            if st.spill is None:
                st.spill = self._open_spill(key, st, n, fresh=resumed is None)
            if st.topk is None:
                k = topk_size(n * h * w, self.quantile)
                st.topk = _backend.topk_empty(u, k)

        self._checkpoint_t = time.perf_counter()
        if phase == 1:
            self._phase1(key, params, states, start)
            phase, start = 2, 0
            self._checkpoint(key, params, states, phase, start, force=True)
        self.timings["forward"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        results = self._phase2(key, params, states, start)
        self.timings["tally"] = time.perf_counter() - t1
        if self.net2vec:
            t2 = time.perf_counter()
            for st, r in zip(states, results, strict=True):
                r.extra["net2vec"] = [x.to_dict() for x in self._net2vec(st, r)]
            self.timings["net2vec"] = time.perf_counter() - t2
        if key is not None:
            self._save(key, params, results)
        return results

    def _open_spill(self, key, st: _LayerState, n: int, fresh: bool) -> np.memmap:
        u, h, w = st.shape
        if key is None:  # no store: an anonymous temporary file
            import tempfile

            tmp = tempfile.NamedTemporaryFile(prefix="pyanalyzer-spill-", suffix=".f32")
            st._tmp = tmp  # type: ignore[attr-defined]
            return np.memmap(tmp.name, dtype=np.float32, mode="w+", shape=(n, u, h, w))
        path = self._spill_path(key, st.alias)
        path.parent.mkdir(parents=True, exist_ok=True)
        expected = n * u * h * w * 4
        mode = "r+" if (not fresh and path.is_file() and path.stat().st_size == expected) else "w+"
        return np.memmap(path, dtype=np.float32, mode=mode, shape=(n, u, h, w))

    def _drop_spill(self, key, st: _LayerState) -> None:
        st.spill = None
        if key is not None:
            self._spill_path(key, st.alias).unlink(missing_ok=True)

    def _phase1(self, key, params, states: list[_LayerState], start: int) -> None:
        n = len(self.dataset)
        names = [st.name for st in states]
        for idx, outs in self.model.forward.iter_layers(
            self.dataset, names, batch_size=self.batch_size, start=start,
            progress=self.progress, label="dissect: forward",
        ):  # fmt: skip
            for st in states:
                acts = outs[st.name]
                if self.model.layer(st.name).layout == "nhwc":
                    acts = acts.transpose(0, 3, 1, 2)
                acts = np.ascontiguousarray(acts, dtype=np.float32)
                if not np.isfinite(acts).all():
                    raise UserInputError(
                        f"layer {st.alias} produced NaN or infinite activations on images "
                        f"{idx.start}..{idx.stop - 1}"
                    )
                st.spill[idx.start : idx.stop] = acts
                st.topk = _backend.topk_merge(st.topk, acts)
            self._checkpoint(key, params, states, 1, idx.stop if idx.stop < n else n)

    def _phase2(self, key, params, states: list[_LayerState], start: int) -> list[LayerDissection]:
        ds = self.dataset
        n = len(ds)
        c = len(ds.names)
        g = len(ds.categories)
        thresholds = {}
        for st in states:
            u, h, w = st.shape
            thresholds[st.name] = thresholds_from_topk(st.topk, n * h * w, self.quantile)
            if st.intersection is None:
                st.intersection = np.zeros((u, c), np.int64)
                st.unit_area_cat = np.zeros((u, g), np.int64)
                st.unit_area = np.zeros(u, np.int64)
                st.top_values = np.full((u, self.top_k), -np.inf, np.float32)
                st.top_images = np.full((u, self.top_k), -1, np.int64)
        concept_area = getattr(self, "_resumed_concept_area", None)
        if concept_area is None or start == 0:
            concept_area = np.zeros(c, np.int64)
        batches = range(start, n, self.batch_size)
        # Unused label numbers (category -1) never occur in the labels: any category will do.
        concept_cat = np.ascontiguousarray(np.maximum(ds.concept_category, 0), dtype=np.int32)
        with progress_bar(len(batches), label="dissect: tally", enabled=self.progress) as bar:
            for s in batches:
                idx = np.arange(s, min(n, s + self.batch_size))
                seg, image_labels, image_cats = ds.segmentation_batch(idx)
                for i, st in enumerate(states):
                    acts = np.ascontiguousarray(st.spill[idx[0] : idx[-1] + 1])
                    # Concept areas do not depend on the layer: the first layer counts them.
                    area = concept_area if i == 0 else np.zeros(c, np.int64)
                    counts = _backend.TallyCounts(
                        st.intersection, st.unit_area_cat, st.unit_area, area
                    )
                    _backend.tally(
                        acts, thresholds[st.name], seg, image_labels, concept_cat, image_cats,
                        counts, device=self.device,
                    )  # fmt: skip
                    self._merge_top(st, acts, idx)
                bar.update(1)
                self._checkpoint(
                    key, params, states, 2, int(idx[-1]) + 1, concept_area=concept_area
                )
        return [
            LayerDissection(
                layer=st.name,
                alias=st.alias,
                thresholds=thresholds[st.name],
                intersection=st.intersection,
                unit_area_cat=st.unit_area_cat,
                unit_area=st.unit_area,
                concept_area=concept_area,
                concept_names=list(ds.names),
                concept_category=ds.concept_category.astype(np.int64),
                categories=list(ds.categories),
                top_images=st.top_images,
                top_values=st.top_values,
                quantile=self.quantile,
                iou_threshold=self.iou_threshold,
                n_images=n,
            )  # fmt: skip
            for st in states
        ]

    def _net2vec(self, st: _LayerState, r: LayerDissection):
        from pyanalyzer.methods.dissection.net2vec import net2vec

        ds = self.dataset
        n = len(ds)
        splits = [ds.image_split(i) for i in range(n)]
        if "train" in splits and any(s != "train" for s in splits):
            is_train = np.array([s == "train" for s in splits])
        else:  # no split in the dataset: a fixed 70/30 split by index
            is_train = (np.arange(n) % 10) < 7
        spill = st.spill

        def acts_of(idx: np.ndarray) -> np.ndarray:
            return np.asarray(spill[idx], dtype=np.float32)

        return net2vec(
            acts_of, ds.segmentation_batch, n_images=n, concepts=self.net2vec,
            concept_names=list(ds.names), concept_category=np.asarray(ds.concept_category),
            thresholds=r.thresholds, is_train=is_train, batch_size=self.batch_size,
        )  # fmt: skip

    def _merge_top(self, st: _LayerState, acts: np.ndarray, idx: np.ndarray) -> None:
        """Keep each unit's ``top_k`` images by maximum activation (ties: lower index first)."""
        peak = acts.reshape(acts.shape[0], acts.shape[1], -1).max(axis=2).T  # [U, B]
        vals = np.concatenate([st.top_values, peak], axis=1)
        ids = np.concatenate([st.top_images, np.broadcast_to(idx, peak.shape)], axis=1)
        order = np.lexsort((ids, -vals), axis=1)[:, : self.top_k]
        st.top_values = np.take_along_axis(vals, order, axis=1)
        st.top_images = np.take_along_axis(ids, order, axis=1)

    # ---- checkpoints -------------------------------------------------------------------------
    def _checkpoint(
        self, key, params, states, phase: int, next_batch: int, *, force=False, concept_area=None
    ) -> None:
        if key is None:
            return
        now = time.perf_counter()
        if not force and now - self._checkpoint_t < self.checkpoint_every:
            return
        arrays: dict[str, np.ndarray] = {"phase": np.array(phase), "next": np.array(next_batch)}
        if concept_area is not None:
            arrays["concept_area"] = concept_area
        for st in states:
            st.spill.flush()
            arrays[f"{st.alias}/topk"] = st.topk
            if phase == 2 and st.intersection is not None:
                arrays[f"{st.alias}/intersection"] = st.intersection
                arrays[f"{st.alias}/unit_area_cat"] = st.unit_area_cat
                arrays[f"{st.alias}/unit_area"] = st.unit_area
                arrays[f"{st.alias}/top_values"] = st.top_values
                arrays[f"{st.alias}/top_images"] = st.top_images
        self.store.put(
            key.partial(), arrays, params=params, model_file=self.model.path.name,
            preprocessing=self.model.preprocessing.to_dict(),
        )  # fmt: skip
        self._checkpoint_t = now

    def _resume(self, key, states: list[_LayerState]) -> tuple[int, int] | None:
        entry = self.store.get(key.partial())
        if entry is None:
            return None
        n = len(self.dataset)
        for st in states:
            path = self._spill_path(key, st.alias)
            u, h, w = st.shape
            if not path.is_file() or path.stat().st_size != n * u * h * w * 4:
                return None  # the spill is gone: start over
        phase, nxt = int(entry["phase"]), int(entry["next"])
        if "concept_area" in entry:
            self._resumed_concept_area = np.array(entry["concept_area"])
        for st in states:
            st.topk = np.array(entry[f"{st.alias}/topk"])
            if phase == 2 and f"{st.alias}/intersection" in entry:
                st.intersection = np.array(entry[f"{st.alias}/intersection"])
                st.unit_area_cat = np.array(entry[f"{st.alias}/unit_area_cat"])
                st.unit_area = np.array(entry[f"{st.alias}/unit_area"])
                st.top_values = np.array(entry[f"{st.alias}/top_values"])
                st.top_images = np.array(entry[f"{st.alias}/top_images"])
            elif phase == 2:
                nxt = 0
        self.resumed_from = (phase, nxt)
        return phase, nxt

    def _save(self, key, params, results: list[LayerDissection]) -> None:
        arrays: dict[str, np.ndarray] = {}
        for r in results:
            for name in (
                "thresholds", "intersection", "unit_area_cat", "unit_area", "concept_area",
                "concept_category", "top_images", "top_values",
            ):  # fmt: skip
                arrays[f"{r.alias}/{name}"] = getattr(r, name)
        arrays["concept_names"] = np.array(results[0].concept_names, dtype=str)
        arrays["categories"] = np.array(results[0].categories, dtype=str)
        extra = {"n_images": results[0].n_images, "timings": self.timings,
                 "aliases": {r.alias: r.layer for r in results},
                 "net2vec": {r.alias: r.extra.get("net2vec", []) for r in results}}  # fmt: skip
        with self.store.transaction() as tx:
            tx.put(
                key, arrays, params=params, model_file=self.model.path.name,
                preprocessing=self.model.preprocessing.to_dict(), extra_attrs=extra,
            )  # fmt: skip
            tx.remove(key.partial())

    def _from_entry(self, entry, alias: str) -> LayerDissection:
        names = [str(x) for x in entry["concept_names"]]
        extra = entry.extra or {}
        return LayerDissection(
            layer=extra["aliases"][alias], alias=alias,
            thresholds=entry[f"{alias}/thresholds"], intersection=entry[f"{alias}/intersection"],
            unit_area_cat=entry[f"{alias}/unit_area_cat"], unit_area=entry[f"{alias}/unit_area"],
            concept_area=entry[f"{alias}/concept_area"], concept_names=names,
            concept_category=entry[f"{alias}/concept_category"],
            categories=[str(x) for x in entry["categories"]],
            top_images=entry[f"{alias}/top_images"], top_values=entry[f"{alias}/top_values"],
            quantile=self.quantile, iou_threshold=self.iou_threshold,
            n_images=int(extra["n_images"]),
            extra={"net2vec": extra.get("net2vec", {}).get(alias, [])},
        )  # fmt: skip
