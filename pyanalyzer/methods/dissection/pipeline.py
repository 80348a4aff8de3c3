"""Network dissection: align every unit of a layer with the concepts of a Broden dataset.

Bau, Zhou, Khosla, Oliva & Torralba, "Network Dissection: Quantifying Interpretability of
Deep Visual Representations", CVPR 2017 (and NetDissect-Lite).

One forward pass (onnxruntime) over the dataset feeds two stages, so that dissection costs
little more than the forward pass itself:

1. every batch's activations are spilled to a memory-mapped file beside the store (a run
   without a store, which nothing could resume, keeps them in memory instead when they take at
   most :func:`in_memory_limit`) and merged into an exact per-unit top-k (C++ core), which
   gives each unit's threshold at the top ``quantile`` once all images are seen — exact, not a
   sketch;
2. the spilled maps are read back batch by batch, upsampled bilinearly to the segmentation
   size and counted against the concept labels (the C++/CUDA tally).

Peak memory is one batch plus the top-k state, whatever the dataset size (plus the maps of a
run held in memory, at most :func:`in_memory_limit`). Progress is
checkpointed through the store's one cache path (a checkpoint entry plus the spill files in the
run's scratch folder), so a killed run started again resumes from the last checkpoint and ends
with identical results; the finished result replaces the checkpoint.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, Field, WithJsonSchema

from pyanalyzer import _backend
from pyanalyzer._progress import progress_bar
from pyanalyzer.analysis import Analysis, Choice, Float, Int, Layers, Params, Result
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.dissection.net2vec import net2vec, net2vec_split
from pyanalyzer.methods.dissection.result import DissectionResult, LayerDissection

if TYPE_CHECKING:
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.model.graph import LayerInfo
    from pyanalyzer.store import Checkpoint

__all__ = [
    "Dissection",
    "DissectionParams",
    "Net2Vec",
    "Net2VecParams",
    "Net2VecResults",
    "concept_number",
    "thresholds_from_topk",
    "topk_size",
]


IN_MEMORY_MAX = 512 * 2**20
"""The most activations (bytes, all layers) a dissection holds in memory instead of spilling
them (:func:`in_memory_limit`)."""


def in_memory_limit() -> int:
    """Bytes of activations a dissection that nothing could resume (no store) keeps in memory
    rather than in its spill files: :data:`IN_MEMORY_MAX`, or a quarter of the memory budget
    (:func:`pyanalyzer.budget.memory_budget`) when that is less."""
    from pyanalyzer.budget import memory_budget

    return min(IN_MEMORY_MAX, memory_budget() // 4)


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
    """One layer's running state: the spilled activations, the exact top-k (pass 1) and the
    counts and top images (pass 2)."""

    name: str
    alias: str
    shape: tuple[int, int, int]  # U, h, w
    topk: np.ndarray
    intersection: np.ndarray
    unit_area_cat: np.ndarray
    unit_area: np.ndarray
    top_values: np.ndarray
    top_images: np.ndarray
    spill: np.ndarray | None = None  # a np.memmap of the spill file, or memory (see compute)

    @classmethod
    def fresh(
        cls, info: LayerInfo, n: int, quantile: float, concepts: int, categories: int, top_k: int
    ) -> _LayerState:
        u, h, w = int(info.channels or 0), int(info.height or 0), int(info.width or 0)
        return cls(
            name=info.name,
            alias=info.alias,
            shape=(u, h, w),
            topk=_backend.topk_empty(u, topk_size(n * h * w, quantile)),
            intersection=np.zeros((u, concepts), np.int64),
            unit_area_cat=np.zeros((u, categories), np.int64),
            unit_area=np.zeros(u, np.int64),
            top_values=np.full((u, top_k), -np.inf, np.float32),
            top_images=np.full((u, top_k), -1, np.int64),
        )

    @property
    def acts(self) -> np.ndarray:
        """The spill (opened by the analysis before either pass runs)."""
        if self.spill is None:  # pragma: no cover - an internal ordering error
            raise RuntimeError(f"the spill of {self.alias} is not open")
        return self.spill


_TALLY = ("intersection", "unit_area_cat", "unit_area", "top_values", "top_images")
"""The per-layer arrays of pass 2 (checkpointed with it)."""


def concept_number(dataset: BrodenDataset | Sequence[str], concept: int | str) -> int:
    """A concept of ``dataset`` (or of a list of label names, by number) by label number or
    name, as its number.

    Raises:
        UserInputError: no such label (with the closest names as suggestions).
    """
    names = list(dataset) if isinstance(dataset, Sequence) else list(dataset.names)
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


def _check_concepts(value: Any) -> list[int | str]:
    if isinstance(value, str | int):
        value = [value]
    out: list[int | str] = []
    for c in value:
        if isinstance(c, bool) or not isinstance(c, str | int | np.integer):
            raise UserInputError(f"concepts are names or label numbers, got {c!r}")
        out.append(int(c) if isinstance(c, int | np.integer) else c)
    return out


Concepts = Annotated[
    list[int | str],
    BeforeValidator(_check_concepts),
    WithJsonSchema(
        {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}
    ),
]


class DissectionParams(Params):
    """Parameters of :class:`Dissection`."""

    title: ClassVar[str] = "dissect"

    layers: Layers = Field(description="Layers to dissect (aliases or ONNX names).")
    quantile: Annotated[
        float, Float("quantile", low=0.0, high=1.0, low_open=True, high_open=True)
    ] = Field(0.005, description="Top fraction of each unit's activations that counts as firing.")
    iou_threshold: Annotated[float, Float("IoU threshold", low=0.0, high=1.0, high_open=True)] = (
        Field(0.04, description="A unit is a detector when its best IoU exceeds this.")
    )
    top_k: Annotated[int, Int("top-k", 1)] = Field(
        10, description="Strongest images kept per unit."
    )
    net2vec: Concepts = Field(
        default_factory=list,
        description="Concepts (names or label numbers) for which to learn a Net2Vec filter "
        "combination on every dissected layer (Fong & Vedaldi 2018).",
    )
    batch_size: Annotated[int, Int("batch size", 1)] = Field(
        64, description="Images per forward pass."
    )
    device: Annotated[str, Choice("device", _backend.DEVICES)] = Field(
        "auto",
        description="Where the IoU tally (pyanalyzer's kernels) and the Net2Vec training "
        "(torch) run: auto (CUDA where available), cpu or cuda.",
    )


class Dissection(Analysis[DissectionParams, DissectionResult]):
    """Dissect layers of a model against a Broden-format concept dataset (Bau et al. 2017).

    Parameters (:class:`DissectionParams`): ``layers``; ``quantile`` (the top fraction of
    each unit's activations that counts as firing, NetDissect's 0.005); ``iou_threshold``
    (0.04); ``top_k`` (strongest images kept per unit for the report); ``net2vec``
    (concepts for Net2Vec on every layer); ``batch_size`` and ``device`` (where the tally and
    the Net2Vec training run: auto, cpu or cuda), which do not change the result.

    :meth:`run` takes the :class:`~pyanalyzer.data.broden.BrodenDataset` and returns a
    :class:`DissectionResult` (one :class:`LayerDissection` per layer, in the order given).
    """

    method: ClassVar[str] = "dissect"
    inputs: ClassVar[str] = "concepts"
    params_type: ClassVar[type[Params]] = DissectionParams
    result_type: ClassVar[type[Result]] = DissectionResult
    key_excludes: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})
    summary_line: ClassVar[str] = (
        "Network dissection: align every unit with the concepts of a Broden-format dataset by "
        "IoU (Bau et al., CVPR 2017), with Net2Vec filter combinations (Fong & Vedaldi 2018)."
    )

    def check(self) -> None:
        self.infos = [self.model.spatial_layer(n) for n in self.params.layers]
        if len({i.name for i in self.infos}) != len(self.infos):
            raise UserInputError("a layer was given twice")
        _backend.kernels(self.params.device)  # fail now if CUDA was asked for and is missing
        if self.params.net2vec:  # and where Net2Vec trains (torch: imported for it anyway)
            from pyanalyzer.model.gradient import torch_device

            torch_device(self.params.device)
        self.timings: dict[str, float] = {}
        self.resumed_from: tuple[int, int] | None = None
        self._check_memory(None)  # the batch now; prepare() adds the dataset's state

    def _check_memory(self, ds: BrodenDataset | None) -> None:
        """Refuse, before anything runs, a dissection whose batch (and, given the dataset, its
        running state) exceeds the memory budget (:mod:`pyanalyzer.budget`)."""
        from pyanalyzer import budget

        p, infos = self.params, self.infos
        names = ", ".join(i.alias for i in infos)
        if ds is None:
            estimate = budget.dissection_bytes(self.model, infos, batch=p.batch_size)
            budget.check(
                f"dissecting {names} in batches of {p.batch_size} images",
                estimate,
                advice="use a smaller --batch-size or fewer layers",
            )
            return
        n = len(ds)
        sh, sw = ds.seg_size
        estimate = budget.dissection_bytes(
            self.model, infos, batch=p.batch_size, images=n,
            topk=[topk_size(n * int(i.height or 1) * int(i.width or 1), p.quantile) for i in infos],
            top_k=p.top_k, concepts=ds.num_labels, categories=len(ds.categories),
            seg=(ds.max_channels, ds.max_image_labels, sh, sw),
        )  # fmt: skip
        budget.check(
            f"dissecting {names} over {n} images in batches of {p.batch_size}",
            estimate,
            advice="use a smaller --batch-size, fewer layers or a smaller --quantile",
        )

    def _check_disk(self, n: int) -> None:
        """Refuse a dissection whose spill files (every image's maps, float32) would not fit
        the store's file system, before anything is written."""
        from pyanalyzer import budget

        names = ", ".join(i.alias for i in self.infos)
        folder = self.store.path if self.store is not None else tempfile.gettempdir()
        budget.check_disk(
            f"the activations of {names} over {n} images (dissection's spill files)",
            budget.dissection_spill_bytes(self.infos, n),
            folder,
            advice="dissect fewer layers at once or use a smaller dataset",
        )

    def resolved(self) -> dict[str, Any]:
        out = super().resolved()
        out["layers"] = [i.name for i in self.infos]
        return out

    def prepare(self, inputs: BrodenDataset | None) -> BrodenDataset:
        if inputs is None:
            raise UserInputError("give the concept dataset to dissect against")
        if len(inputs) == 0:
            raise UserInputError("the concept dataset has no images")
        self.concepts = [concept_number(inputs, c) for c in self.params.net2vec]
        self._check_memory(inputs)
        self.activations = "spill"
        """How pass 2 gets the activations: read back from the spill files ("spill"), from
        memory ("memory", chosen when the run starts: nothing could resume it, as there is no
        store to checkpoint into, and they take at most :func:`in_memory_limit`), by the
        forward pass again ("recompute", when the disk budget has no room for them), or by the
        forward pass again on the GPU, where the CUDA kernels read them without a copy to the
        host ("device": onnxruntime-gpu's CUDA provider and the CUDA kernels chosen)."""
        if self.executor is None and not self.concepts and self._device_resident():
            self.activations = "device"
        elif self.executor is None:
            from pyanalyzer.budget import BudgetError

            try:
                self._check_disk(len(inputs))
            except BudgetError:
                if self.concepts:  # Net2Vec reads every activation again: it needs the spill
                    raise
                self.activations = "recompute"
        return inputs

    def _device_resident(self) -> bool:
        """Whether the activations can stay on the GPU: the forward pass runs on
        onnxruntime's CUDA provider and the tally on the CUDA kernels (device auto or cuda).
        Recomputing the forward pass there costs less than a copy of every map to the host
        and the disk and back."""
        fwd = self.model.forward
        if "CUDAExecutionProvider" not in fwd.providers or not _backend.uses_cuda(
            self.params.device
        ):
            return False
        return fwd.bound_device([i.name for i in self.infos])[0] == "cuda"

    def identify(self, inputs: BrodenDataset) -> Any:
        return {"dataset": inputs.digest, "net2vec": self.concepts}

    # ---- running -----------------------------------------------------------------------------
    def compute(self, inputs: BrodenDataset, checkpoint: Checkpoint) -> DissectionResult:
        if self.executor is not None or self.activations in ("recompute", "device"):
            return self._compute_sharded(inputs, checkpoint)
        ds = inputs
        # Decode (or find cached) every label map first: a defective PNG is reported before
        # anything is written.
        ds.prepare_cache(progress=self.progress)
        self.top_k = int(min(self.params.top_k, len(ds)))
        n, q = len(ds), self.params.quantile
        states = [
            _LayerState.fresh(i, n, q, len(ds.names), len(ds.categories), self.top_k)
            for i in self.infos
        ]
        t0 = time.perf_counter()
        phase, start = 1, 0
        resumed = self._resume(ds, checkpoint, states)
        if resumed is not None:
            phase, start = resumed
        from pyanalyzer.budget import dissection_spill_bytes

        if not checkpoint.persistent and dissection_spill_bytes(self.infos, n) <= in_memory_limit():
            # Writing the spill costs about as much as the rest of the dissection's own work
            # (page-cache pages allocated and written back); it is there for checkpoints
            # and for memory, and neither applies.
            self.activations = "memory"
        for st in states:
            st.spill = self._open_spill(checkpoint, st, n, fresh=resumed is None)
        if phase == 1:
            self._phase1(ds, checkpoint, states, start)
            phase, start = 2, 0
            self._checkpoint(checkpoint, states, phase, start, force=True)
        self.timings["forward"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        layers = self._phase2(ds, checkpoint, states, start)
        self.timings["tally"] = time.perf_counter() - t1
        if self.concepts:
            t2 = time.perf_counter()
            for st, r in zip(states, layers, strict=True):
                spill = st.acts

                def acts_of(idx: np.ndarray, spill: np.ndarray = spill) -> np.ndarray:
                    return np.asarray(spill[idx], dtype=np.float32)

                found = net2vec_on(
                    ds, acts_of, r.thresholds, self.concepts, self.params.batch_size,
                    device=self.params.device,
                )  # fmt: skip
                r.extra["net2vec"] = [x.to_dict() for x in found]
            self.timings["net2vec"] = time.perf_counter() - t2
        for st in states:
            st.spill = None  # the scratch folder goes with the stored result
        return DissectionResult(layers=layers, timings=dict(self.timings))

    def _compute_sharded(self, ds: BrodenDataset, checkpoint: Checkpoint) -> DissectionResult:
        """The two passes over shards on :attr:`executor` (:mod:`.shards`), or here without
        a spill (recomputing the forward pass, on the GPU when the activations stay there):
        the same result as the local path, bit for bit; each finished shard is
        checkpointed."""
        import hashlib
        import os

        from pyanalyzer import budget
        from pyanalyzer.executor import LocalExecutor
        from pyanalyzer.methods.dissection import shards as sh

        # no executor: the local engine recomputing (no room for the spill, or on the GPU)
        ex = self.executor if self.executor is not None else LocalExecutor()
        p = self.params
        if self.concepts:
            raise UserInputError(
                "--net2vec runs on the local engine only (it reads every activation again)"
            )
        ds.prepare_cache(progress=self.progress)
        n, q = len(ds), p.quantile
        self.top_k = int(min(p.top_k, n))
        layers = sh.layers_of(self.infos)
        sizes = {i.alias: int(i.height or 1) * int(i.width or 1) for i in self.infos}
        ks = tuple(topk_size(n * sizes[a], q) for _, a in layers)
        c, g = len(ds.names), len(ds.categories)
        meta, state = checkpoint.meta, checkpoint.state
        if state is not None and meta.get("sharded") and meta.get("images") == n:
            shards = [sh.Shard(*x) for x in meta["plan"]]
            done1, done2 = list(meta["done1"]), list(meta["done2"])
            arrays = {k: np.array(v) for k, v in state.items()}
            self.resumed_from = (2 if len(done1) == len(shards) else 1, len(done1) + len(done2))
        else:
            shards = sh.plan(n, p.batch_size, ex.workers)
            done1, done2 = [], []
            arrays = {"concept_area": np.zeros(c, np.int64)}
            for (_, alias), k, info in zip(layers, ks, self.infos, strict=True):
                u = int(info.channels or 0)
                arrays[f"{alias}/topk"] = _backend.topk_empty(u, k)
                arrays[f"{alias}/intersection"] = np.zeros((u, c), np.int64)
                arrays[f"{alias}/unit_area_cat"] = np.zeros((u, g), np.int64)
                arrays[f"{alias}/unit_area"] = np.zeros(u, np.int64)
                arrays[f"{alias}/top_values"] = np.full((u, self.top_k), -np.inf, np.float32)
                arrays[f"{alias}/top_images"] = np.full((u, self.top_k), -1, np.int64)
        run = hashlib.sha256(
            f"{self.model.sha256} {ds.digest} {layers} {p.batch_size}".encode()
        ).hexdigest()[:16]
        estimate = budget.dissection_spill_bytes(self.infos, n)
        if self.executor is not None:
            self.activations = sh.spill_mode(estimate)
        spill_dir = (
            os.path.join(tempfile.gettempdir(), "pyanalyzer-spill", run)
            if self.activations == "spill"
            else None
        )
        self.shards, self.engine = len(shards), ex.engine

        def save() -> None:
            checkpoint.save(arrays, {
                "sharded": True, "phase": 0, "images": n, "done1": done1, "done2": done2,
                "plan": [[x.index, x.start, x.stop] for x in shards],
            }, force=True)  # fmt: skip

        t0 = time.perf_counter()
        jobs1 = [sh.Pass1(x, layers, ks, p.batch_size, spill_dir, p.device) for x in shards
                 if x.index not in done1]  # fmt: skip

        def merged1(i: int, states: dict[str, np.ndarray]) -> None:
            for _, alias in layers:
                key = f"{alias}/topk"
                arrays[key] = _backend.topk_merge_states(arrays[key], states[alias])
            done1.append(jobs1[i].shard.index)
            save()

        ex.map(sh.pass1, self.model, ds, jobs1, merged1, label="dissect: forward",
               progress=self.progress)  # fmt: skip
        thresholds = tuple(
            thresholds_from_topk(arrays[f"{alias}/topk"], n * sizes[alias], q)
            for _, alias in layers
        )
        self.timings["forward"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        jobs2 = [sh.Pass2(x, layers, thresholds, p.batch_size, self.top_k, p.device, spill_dir)
                 for x in shards if x.index not in done2]  # fmt: skip

        def merged2(i: int, counts: dict[str, np.ndarray]) -> None:
            arrays["concept_area"] = arrays["concept_area"] + counts["concept_area"]
            for _, alias in layers:
                for name in ("intersection", "unit_area_cat", "unit_area"):
                    key = f"{alias}/{name}"
                    arrays[key] = arrays[key] + counts[key]
                tv, ti = f"{alias}/top_values", f"{alias}/top_images"
                arrays[tv], arrays[ti] = sh.merge_top(
                    arrays[tv], arrays[ti], counts[tv], counts[ti], self.top_k
                )
            done2.append(jobs2[i].shard.index)
            save()

        ex.map(sh.pass2, self.model, ds, jobs2, merged2, label="dissect: tally",
               progress=self.progress)  # fmt: skip
        self.timings["tally"] = time.perf_counter() - t1
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)  # a worker on this machine's leftovers
        return DissectionResult(
            layers=[
                LayerDissection(
                    layer=name,
                    alias=alias,
                    thresholds=thr,
                    intersection=arrays[f"{alias}/intersection"],
                    unit_area_cat=arrays[f"{alias}/unit_area_cat"],
                    unit_area=arrays[f"{alias}/unit_area"],
                    concept_area=arrays["concept_area"],
                    concept_names=list(ds.names),
                    concept_category=ds.concept_category.astype(np.int64),
                    categories=list(ds.categories),
                    top_images=arrays[f"{alias}/top_images"],
                    top_values=arrays[f"{alias}/top_values"],
                    quantile=p.quantile,
                    iou_threshold=p.iou_threshold,
                    n_images=n,
                )  # fmt: skip
                for (name, alias), thr in zip(layers, thresholds, strict=True)
            ],
            timings=dict(self.timings),
        )

    def _open_spill(
        self, checkpoint: Checkpoint, st: _LayerState, n: int, fresh: bool
    ) -> np.ndarray:
        u, h, w = st.shape
        if self.activations == "memory":
            return np.empty((n, u, h, w), np.float32)
        path = checkpoint.scratch() / f"{st.alias}.f32"
        expected = n * u * h * w * 4
        reuse = not fresh and path.is_file() and path.stat().st_size == expected
        mode: Literal["r+", "w+"] = "r+" if reuse else "w+"
        return np.memmap(str(path), dtype="float32", mode=mode, shape=(n, u, h, w))

    def _phase1(
        self, ds: BrodenDataset, checkpoint: Checkpoint, states: list[_LayerState], start: int
    ) -> None:
        n = len(ds)
        names = [st.name for st in states]
        for idx, outs in self.model.forward.iter_layers(
            ds, names, batch_size=self.params.batch_size, start=start,
            progress=self.progress, label="dissect: forward",
        ):  # fmt: skip
            for st in states:
                acts = np.ascontiguousarray(outs[st.name], dtype=np.float32)  # NCHW
                if not np.isfinite(acts).all():
                    raise UserInputError(
                        f"layer {st.alias} produced NaN or infinite activations on images "
                        f"{idx.start}..{idx.stop - 1}"
                    )
                st.acts[idx.start : idx.stop] = acts
                st.topk = _backend.topk_merge(st.topk, acts)
            self._checkpoint(checkpoint, states, 1, idx.stop if idx.stop < n else n)

    def _phase2(
        self, ds: BrodenDataset, checkpoint: Checkpoint, states: list[_LayerState], start: int
    ) -> list[LayerDissection]:
        p = self.params
        n = len(ds)
        c = len(ds.names)
        thresholds = {}
        for st in states:
            u, h, w = st.shape
            thresholds[st.name] = thresholds_from_topk(st.topk, n * h * w, p.quantile)
        concept_area = self._resumed_concept_area
        if concept_area is None or start == 0:
            concept_area = np.zeros(c, np.int64)
        batches = range(start, n, p.batch_size)
        # Unused label numbers (category -1) never occur in the labels: any category will do.
        concept_cat = np.ascontiguousarray(np.maximum(ds.concept_category, 0), dtype=np.int32)
        with progress_bar(len(batches), label="dissect: tally", enabled=self.progress) as bar:
            for s in batches:
                idx = np.arange(s, min(n, s + p.batch_size))
                seg, image_labels, image_cats = ds.segmentation_batch(idx)
                for i, st in enumerate(states):
                    acts = np.ascontiguousarray(st.acts[idx[0] : idx[-1] + 1])
                    # Concept areas do not depend on the layer: the first layer counts them.
                    area = concept_area if i == 0 else np.zeros(c, np.int64)
                    counts = _backend.TallyCounts(
                        st.intersection, st.unit_area_cat, st.unit_area, area
                    )
                    _backend.tally(
                        acts, thresholds[st.name], seg, image_labels, concept_cat, image_cats,
                        counts, device=p.device,
                    )  # fmt: skip
                    self._merge_top(st, acts, idx)
                bar.update(1)
                self._checkpoint(checkpoint, states, 2, int(idx[-1]) + 1, concept_area=concept_area)
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
                quantile=p.quantile,
                iou_threshold=p.iou_threshold,
                n_images=n,
            )  # fmt: skip
            for st in states
        ]

    def _merge_top(self, st: _LayerState, acts: np.ndarray, idx: np.ndarray) -> None:
        """Keep each unit's ``top_k`` images by maximum activation (ties: lower index first)."""
        from pyanalyzer.methods.dissection.shards import merge_top

        peak = _backend.map_peaks(acts).T  # [U, B]
        st.top_values, st.top_images = merge_top(
            st.top_values, st.top_images, peak, np.broadcast_to(idx, peak.shape), self.top_k
        )

    # ---- checkpoints -------------------------------------------------------------------------
    def _checkpoint(
        self,
        checkpoint: Checkpoint,
        states: list[_LayerState],
        phase: int,
        next_batch: int,
        *,
        force: bool = False,
        concept_area: np.ndarray | None = None,
    ) -> None:
        arrays: dict[str, np.ndarray] = {}
        if concept_area is not None:
            arrays["concept_area"] = concept_area
        for st in states:
            arrays[f"{st.alias}/topk"] = st.topk
            if phase == 2:
                for name in _TALLY:
                    arrays[f"{st.alias}/{name}"] = getattr(st, name)
        meta = {"phase": phase, "next": next_batch}
        if checkpoint.due(force):
            for st in states:  # the spill is on disk before the checkpoint that relies on it
                if isinstance(st.spill, np.memmap):
                    st.spill.flush()
            checkpoint.save(arrays, meta, force=True)

    def _resume(
        self, ds: BrodenDataset, checkpoint: Checkpoint, states: list[_LayerState]
    ) -> tuple[int, int] | None:
        self._resumed_concept_area: np.ndarray | None = None
        state = checkpoint.state
        if state is None:
            return None
        n = len(ds)
        for st in states:
            path = checkpoint.scratch() / f"{st.alias}.f32"
            u, h, w = st.shape
            if not path.is_file() or path.stat().st_size != n * u * h * w * 4:
                return None  # the spill is gone: start over
        phase, nxt = int(checkpoint.meta["phase"]), int(checkpoint.meta["next"])
        if "concept_area" in state:
            self._resumed_concept_area = np.array(state["concept_area"])
        for st in states:
            st.topk = np.array(state[f"{st.alias}/topk"])
            if phase == 2:
                for name in _TALLY:
                    setattr(st, name, np.array(state[f"{st.alias}/{name}"]))
        self.resumed_from = (phase, nxt)
        return phase, nxt


def net2vec_on(
    ds: BrodenDataset,
    acts_of: Any,
    thresholds: np.ndarray,
    concepts: Sequence[int],
    batch_size: int,
    device: str = "cpu",
) -> list[Any]:
    """Net2Vec for ``concepts`` on one layer of ``ds`` (``acts_of(indices)`` gives the layer's
    NCHW activations), with the dataset's train/held-out split (:func:`net2vec_split`),
    trained on ``device`` (:func:`~.net2vec.net2vec`)."""
    return net2vec(
        acts_of, ds.segmentation_batch, n_images=len(ds), concepts=concepts,
        concept_names=list(ds.names), concept_category=np.asarray(ds.concept_category),
        thresholds=thresholds, is_train=net2vec_split(ds), batch_size=batch_size,
        device=device,
    )  # fmt: skip


# ---- Net2Vec on its own ----------------------------------------------------------------------


class Net2VecParams(Params):
    """Parameters of :class:`Net2Vec`."""

    title: ClassVar[str] = "net2vec"

    layer: str = Field(description="Layer (alias or ONNX name) whose filters are combined.")
    concepts: Concepts = Field(description="Concepts (names or label numbers).")
    quantile: Annotated[
        float, Float("quantile", low=0.0, high=1.0, low_open=True, high_open=True)
    ] = Field(0.005, description="The single units' firing quantile (their dissection thresholds).")
    batch_size: Annotated[int, Int("batch size", 1)] = Field(
        64, description="Images per forward pass."
    )
    device: Annotated[str, Choice("device", _backend.DEVICES)] = Field(
        "auto",
        description="Where the training (torch) and the dissection's tally run: auto (CUDA "
        "where available), cpu or cuda. Not part of the result's key.",
    )


@dataclass(frozen=True)
class Net2VecResults(Result):
    """Net2Vec on one layer: per concept the learned combination and its held-out set IoU
    beside the best single unit's.

    Attributes:
        layer, alias: the layer.
        weights: float32 ``[K, U]``: each concept's filter weights (on raw activations).
        concepts: per concept, :meth:`~.net2vec.Net2VecResult.to_dict` (name, set IoU, best
            unit and its IoU, image counts, the largest weights).
    """

    layer: str
    alias: str
    weights: np.ndarray
    concepts: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        return {"layer": self.layer, "alias": self.alias, "concepts": self.concepts}


class Net2Vec(Analysis[Net2VecParams, Net2VecResults]):
    """Net2Vec (Fong & Vedaldi, CVPR 2018): concepts as learned combinations of a layer's
    filters, compared with the best single unit on held-out images.

    The single units are thresholded at their dissection thresholds, taken from a
    :class:`Dissection` of the layer (from the store when one was run with the same quantile).
    ``dissect --net2vec`` computes the same while it dissects.

    :meth:`run` takes the :class:`~pyanalyzer.data.broden.BrodenDataset`.
    """

    method: ClassVar[str] = "net2vec"
    inputs: ClassVar[str] = "concepts"
    params_type: ClassVar[type[Params]] = Net2VecParams
    result_type: ClassVar[type[Result]] = Net2VecResults
    key_excludes: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})
    summary_line: ClassVar[str] = (
        "Net2Vec: concepts as learned combinations of filters (Fong & Vedaldi, CVPR 2018)."
    )

    def check(self) -> None:
        self.info = self.model.spatial_layer(self.params.layer)
        if not self.params.concepts:
            raise UserInputError("give at least one concept")
        from pyanalyzer.model.gradient import torch_device

        _backend.kernels(self.params.device)  # fail now if CUDA was asked for and is missing
        torch_device(self.params.device)

    def resolved(self) -> dict[str, Any]:
        out = super().resolved()
        out["layer"] = self.info.name
        return out

    def prepare(self, inputs: BrodenDataset | None) -> BrodenDataset:
        if inputs is None or len(inputs) == 0:
            raise UserInputError("give a concept dataset with images")
        self.numbers = [concept_number(inputs, c) for c in self.params.concepts]
        return inputs

    def identify(self, inputs: BrodenDataset) -> Any:
        return {"dataset": inputs.digest, "concepts": self.numbers}

    def compute(self, inputs: BrodenDataset, checkpoint: Checkpoint) -> Net2VecResults:
        p, ds, model = self.params, inputs, self.model
        dissection = Dissection(
            model, layers=[self.info.name], quantile=p.quantile, batch_size=p.batch_size,
            device=p.device, store=self.store, progress=self.progress,
        )  # fmt: skip
        thresholds = dissection.run(ds)[0].thresholds
        spec = model.preprocessing

        def acts_of(idx: np.ndarray) -> np.ndarray:
            x = spec.normalize(np.stack([ds.pixels(int(i), spec) for i in idx]))
            return np.asarray(model.forward.run(x, [self.info.name])[self.info.name], np.float32)

        found = net2vec_on(ds, acts_of, thresholds, self.numbers, p.batch_size, device=p.device)
        return Net2VecResults(
            layer=self.info.name,
            alias=self.info.alias,
            weights=np.stack([r.weights for r in found]).astype(np.float32),
            concepts=[r.to_dict() for r in found],
        )
