"""What a model comparison produces: per layer pair the correlations, the matching and both
dissections' labels (:class:`LayerComparison`), the output agreement (:class:`OutputAgreement`)
and the whole (:class:`ComparisonResult`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyanalyzer.analysis import Result

__all__ = ["ComparisonResult", "LayerComparison", "OutputAgreement"]


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


@dataclass
class LayerComparison:
    """One layer pair: A's layer against B's, matched units and their dissection labels.

    Units are channel indices (0-based) of their layer. A unit's *label* is its best concept
    when it is a detector (best IoU above ``iou_threshold``), else none (0).

    Attributes:
        layer_a, alias_a, layer_b, alias_b: the layers (ONNX names and aliases).
        size_a, size_b: their spatial sizes (H, W); B's maps were resized to ``size_a`` when
            they differ (:attr:`resized`).
        correlation: float64 ``[U_A, U_B]``, the Pearson correlation of every pair over every
            image and position; NaN on the rows/columns of constant units.
        matched_a, matched_b: int64 ``[K]``, the matching (A's unit ``matched_a[k]`` with B's
            ``matched_b[k]``), by A's unit.
        constant_a, constant_b: bool ``[U]``, units constant over the dataset (unmatched).
        best_a, iou_a, detector_a: A's dissection: best concept (int64, 0 = none), its IoU
            (float64) and whether the unit is a detector (bool), ``[U_A]`` each; ``*_b`` B's.
        concept_names, concept_category, categories: the concept dataset's labels (as in
            :class:`~pyanalyzer.methods.dissection.LayerDissection`).
        iou_threshold: the dissections' threshold.
    """

    layer_a: str
    alias_a: str
    layer_b: str
    alias_b: str
    size_a: tuple[int, int]
    size_b: tuple[int, int]
    correlation: np.ndarray
    matched_a: np.ndarray
    matched_b: np.ndarray
    constant_a: np.ndarray
    constant_b: np.ndarray
    best_a: np.ndarray
    iou_a: np.ndarray
    detector_a: np.ndarray
    best_b: np.ndarray
    iou_b: np.ndarray
    detector_b: np.ndarray
    concept_names: list[str]
    concept_category: np.ndarray
    categories: list[str]
    iou_threshold: float

    @property
    def units_a(self) -> int:
        return int(self.correlation.shape[0])

    @property
    def units_b(self) -> int:
        return int(self.correlation.shape[1])

    @property
    def resized(self) -> bool:
        """Whether B's maps were resized to A's spatial size before correlating."""
        return tuple(self.size_a) != tuple(self.size_b)

    @property
    def match_correlation(self) -> np.ndarray:
        """float64 ``[K]``: the correlation of each matched pair."""
        return self.correlation[self.matched_a, self.matched_b]

    @property
    def label_a(self) -> np.ndarray:
        """int64 ``[U_A]``: each unit's label (best concept of a detector, else 0)."""
        return np.where(self.detector_a, self.best_a, 0)

    @property
    def label_b(self) -> np.ndarray:
        return np.where(self.detector_b, self.best_b, 0)

    @property
    def unmatched_a(self) -> np.ndarray:
        """int64: A's units without a partner (the wider layer's surplus, constant units)."""
        return np.setdiff1d(np.arange(self.units_a), self.matched_a)

    @property
    def unmatched_b(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.units_b), self.matched_b)

    def detector_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """int64 ``[C]`` twice: detectors of each concept in A and in B."""
        c = len(self.concept_names)
        return (
            np.bincount(self.best_a[self.detector_a], minlength=c)[:c].astype(np.int64),
            np.bincount(self.best_b[self.detector_b], minlength=c)[:c].astype(np.int64),
        )

    @property
    def gained(self) -> list[int]:
        """Concepts with a detector in B and none in A, by number."""
        a, b = self.detector_counts()
        return [int(c) for c in np.flatnonzero((b > 0) & (a == 0))]

    @property
    def lost(self) -> list[int]:
        """Concepts with a detector in A and none in B, by number."""
        a, b = self.detector_counts()
        return [int(c) for c in np.flatnonzero((a > 0) & (b == 0))]

    @property
    def changed(self) -> np.ndarray:
        """int64: positions in the matching whose two units' labels differ."""
        la = self.label_a[self.matched_a]
        lb = self.label_b[self.matched_b]
        return np.flatnonzero(la != lb).astype(np.int64)

    def _name(self, concept: int) -> str | None:
        return self.concept_names[concept] if concept else None

    def _category(self, concept: int) -> str | None:
        g = int(self.concept_category[concept]) if concept else -1
        return self.categories[g] if 0 <= g < len(self.categories) else None

    def summary(self) -> dict[str, Any]:
        """The pair's numbers (JSON-ready; units are 0-based channels)."""
        corr = self.match_correlation
        la, lb = self.label_a, self.label_b
        count_a, count_b = self.detector_counts()
        changed = []
        for k in self.changed:
            ua, ub = int(self.matched_a[k]), int(self.matched_b[k])
            changed.append({
                "unit_a": ua, "unit_b": ub, "correlation": float(corr[k]),
                "label_a": self._name(int(la[ua])), "iou_a": float(self.iou_a[ua]),
                "label_b": self._name(int(lb[ub])), "iou_b": float(self.iou_b[ub]),
            })  # fmt: skip
        concepts = [
            {"concept": self.concept_names[c], "category": self._category(int(c)),
             "detectors_a": int(count_a[c]), "detectors_b": int(count_b[c])}
            for c in np.flatnonzero((count_a > 0) | (count_b > 0))
        ]  # fmt: skip
        return {
            "layer_a": self.layer_a,
            "alias_a": self.alias_a,
            "layer_b": self.layer_b,
            "alias_b": self.alias_b,
            "units_a": self.units_a,
            "units_b": self.units_b,
            "size_a": list(self.size_a),
            "size_b": list(self.size_b),
            "resized": self.resized,
            "matched": len(self.matched_a),
            "mean_correlation": _mean(corr),
            "median_correlation": _median(corr),
            "same_index": int((self.matched_a == self.matched_b).sum()),
            "detectors_a": int(self.detector_a.sum()),
            "detectors_b": int(self.detector_b.sum()),
            "iou_threshold": self.iou_threshold,
            "gained": [self.concept_names[c] for c in self.gained],
            "lost": [self.concept_names[c] for c in self.lost],
            "changed": changed,
            "concepts": concepts,
            "unmatched_a": [int(u) for u in self.unmatched_a],
            "unmatched_b": [int(u) for u in self.unmatched_b],
            "constant_a": [int(u) for u in np.flatnonzero(self.constant_a)],
            "constant_b": [int(u) for u in np.flatnonzero(self.constant_b)],
            "matches": [
                {"unit_a": int(a), "unit_b": int(b), "correlation": float(r)}
                for a, b, r in zip(self.matched_a, self.matched_b, corr, strict=True)
            ],
        }


_PAIR_ARRAYS = ("correlation", "matched_a", "matched_b", "constant_a", "constant_b", "best_a",
                "iou_a", "detector_a", "best_b", "iou_b", "detector_b")  # fmt: skip


@dataclass
class OutputAgreement:
    """How often the two models' outputs agree on the dataset's images.

    Attributes:
        output_a, output_b: the outputs compared (ONNX names).
        images: images seen.
        agree: images on which both models' top-1 classes are the same.
        abs_sum: the sum over images and classes of |p_A - p_B| (probabilities).
        count_a, count_b: int64 ``[K]``, images each model puts in each class (top-1).
        both: int64 ``[K]``, images both models put in the class.
        probabilities: ``"softmax"`` (of the outputs) or ``"output"`` (a Softmax output, as it
            is), per model.
        class_names: the classes' names (model A's metadata), or None.
    """

    output_a: str
    output_b: str
    images: int
    agree: int
    abs_sum: float
    count_a: np.ndarray
    count_b: np.ndarray
    both: np.ndarray
    probabilities: tuple[str, str]
    class_names: list[str] | None = None

    @property
    def classes(self) -> int:
        return int(len(self.count_a))

    @property
    def top1_agreement(self) -> float:
        """The fraction of images with the same top-1 class."""
        return self.agree / self.images if self.images else float("nan")

    @property
    def mean_abs_diff(self) -> float:
        """Mean |p_A - p_B| over images and classes."""
        return self.abs_sum / (self.images * self.classes) if self.images else float("nan")

    def per_class(self) -> list[dict[str, Any]]:
        """Per class that either model predicts: images in it by A, by B, by both, and the
        agreement ``both / (A + B - both)`` (1 when the two models put the same images in it)."""
        rows = []
        for c in range(self.classes):
            a, b, both = int(self.count_a[c]), int(self.count_b[c]), int(self.both[c])
            either = a + b - both
            name = self.class_names[c] if self.class_names else None
            rows.append({"class": c, "name": name, "a": a, "b": b, "both": both,
                         "agreement": both / either if either else None})  # fmt: skip
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "output_a": self.output_a,
            "output_b": self.output_b,
            "images": self.images,
            "classes": self.classes,
            "top1_agreement": self.top1_agreement,
            "mean_abs_prob_diff": self.mean_abs_diff,
            "probabilities": list(self.probabilities),
            "per_class": self.per_class(),
        }


@dataclass
class ComparisonResult(Result):
    """A comparison of model B with model A (:class:`Comparison`).

    Attributes:
        layers: one :class:`LayerComparison` per layer pair, in the order given.
        outputs: the output agreement, or None when the outputs are not class vectors of the
            same length (``outputs_note`` says why).
        model_a, model_b: ``{"file", "sha256", "preprocessing"}`` of each model.
        images: images of the concept dataset compared on.
        quantile, iou_threshold: the dissections' parameters.
        timings: seconds per stage (dissect_a, dissect_b, correlate).
    """

    layers: list[LayerComparison]
    outputs: OutputAgreement | None
    outputs_note: str
    model_a: dict[str, Any]
    model_b: dict[str, Any]
    images: int
    quantile: float
    iou_threshold: float
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> LayerComparison:
        return self.layers[index]

    def summary(self) -> dict[str, Any]:
        """Both models, per layer pair :meth:`LayerComparison.summary`, and the output
        agreement (None, with ``outputs_note``, when the outputs are not class vectors)."""
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "same_model": self.model_a.get("sha256") == self.model_b.get("sha256")
            and self.model_a.get("preprocessing") == self.model_b.get("preprocessing"),
            "images": self.images,
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "layers": [r.summary() for r in self.layers],
            "outputs": None if self.outputs is None else self.outputs.summary(),
            "outputs_note": self.outputs_note,
            "timings": self.timings,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for i, r in enumerate(self.layers):
            for name in _PAIR_ARRAYS:
                arrays[f"pair{i}/{name}"] = np.asarray(getattr(r, name))
        if self.layers:
            first = self.layers[0]
            arrays["concept_names"] = np.array(first.concept_names, dtype=str)
            arrays["categories"] = np.array(first.categories, dtype=str)
            arrays["concept_category"] = np.asarray(first.concept_category, np.int64)
        if self.outputs is not None:
            for name in ("count_a", "count_b", "both"):
                arrays[f"outputs/{name}"] = np.asarray(getattr(self.outputs, name))
        return arrays

    def to_meta(self) -> dict[str, Any]:
        out = self.outputs
        return {
            "pairs": [
                {"layer_a": r.layer_a, "alias_a": r.alias_a, "layer_b": r.layer_b,
                 "alias_b": r.alias_b, "size_a": list(r.size_a), "size_b": list(r.size_b)}
                for r in self.layers
            ],
            "outputs": None if out is None else {
                "output_a": out.output_a, "output_b": out.output_b, "images": out.images,
                "agree": out.agree, "abs_sum": out.abs_sum,
                "probabilities": list(out.probabilities), "class_names": out.class_names,
            },
            "outputs_note": self.outputs_note,
            "model_a": self.model_a,
            "model_b": self.model_b,
            "images": self.images,
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "timings": self.timings,
        }  # fmt: skip

    @classmethod
    def from_stored(
        cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> ComparisonResult:
        names = [str(x) for x in arrays["concept_names"]]
        categories = [str(x) for x in arrays["categories"]]
        concept_category = np.asarray(arrays["concept_category"])
        threshold = float(meta["iou_threshold"])
        layers = [
            LayerComparison(
                layer_a=p["layer_a"],
                alias_a=p["alias_a"],
                layer_b=p["layer_b"],
                alias_b=p["alias_b"],
                size_a=tuple(p["size_a"]),
                size_b=tuple(p["size_b"]),
                **{name: np.asarray(arrays[f"pair{i}/{name}"]) for name in _PAIR_ARRAYS},
                concept_names=names,
                concept_category=concept_category,
                categories=categories,
                iou_threshold=threshold,
            )  # fmt: skip
            for i, p in enumerate(meta["pairs"])
        ]
        out = meta["outputs"]
        outputs = None
        if out is not None:
            outputs = OutputAgreement(
                output_a=out["output_a"], output_b=out["output_b"], images=int(out["images"]),
                agree=int(out["agree"]), abs_sum=float(out["abs_sum"]),
                count_a=np.asarray(arrays["outputs/count_a"]),
                count_b=np.asarray(arrays["outputs/count_b"]),
                both=np.asarray(arrays["outputs/both"]),
                probabilities=(str(out["probabilities"][0]), str(out["probabilities"][1])),
                class_names=out["class_names"],
            )  # fmt: skip
        return cls(
            layers=layers,
            outputs=outputs,
            outputs_note=str(meta["outputs_note"]),
            model_a=dict(meta["model_a"]),
            model_b=dict(meta["model_b"]),
            images=int(meta["images"]),
            quantile=float(meta["quantile"]),
            iou_threshold=threshold,
            timings=dict(meta.get("timings", {})),
        )
