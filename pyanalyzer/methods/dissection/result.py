"""What a dissection produces for one layer, and the IoU as NetDissect defines it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from pyanalyzer.analysis import Result

_ARRAYS = (
    "thresholds", "intersection", "unit_area_cat", "unit_area", "concept_area",
    "concept_category", "top_images", "top_values",
)  # fmt: skip


@dataclass
class LayerDissection:
    """Network dissection of one layer (Bau et al., CVPR 2017).

    Concept numbers index every ``[C]`` axis (0 = unlabelled, never a label); categories index
    every ``[G]`` axis.

    Attributes:
        layer: the ONNX tensor name; ``alias`` its short name.
        thresholds: float32 [U], each unit's activation at the top ``quantile``.
        intersection: int64 [U, C], pixels where unit u fires and concept c is present
            (image-level concepts count as covering the whole image).
        unit_area_cat: int64 [U, G], pixels where unit u fires, over images labelled in g.
        unit_area: int64 [U], pixels where unit u fires, over all images.
        concept_area: int64 [C], pixels of concept c.
        concept_names: [C] label names; ``concept_category`` int [C] category index of each
            (-1 for 0 and for label numbers the dataset does not use).
        categories: [G] category names.
        top_images: int64 [U, k] dataset indices of each unit's k strongest images (by the
            unit's maximum activation), strongest first; ``top_values`` float32 [U, k].
        quantile, iou_threshold: the parameters used.
        n_images: images dissected.
    """

    layer: str
    alias: str
    thresholds: np.ndarray
    intersection: np.ndarray
    unit_area_cat: np.ndarray
    unit_area: np.ndarray
    concept_area: np.ndarray
    concept_names: list[str]
    concept_category: np.ndarray
    categories: list[str]
    top_images: np.ndarray
    top_values: np.ndarray
    quantile: float
    iou_threshold: float
    n_images: int
    extra: dict = field(default_factory=dict)

    @property
    def units(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def iou(self) -> np.ndarray:
        """float64 [U, C]: |unit ∩ concept| / (|unit over images labelled in the concept's
        category| + |concept| - |unit ∩ concept|), NetDissect's per-category denominator."""
        cat = np.asarray(self.concept_category)
        union_unit = self.unit_area_cat[:, np.maximum(cat, 0)]  # [U, C]
        union = union_unit + self.concept_area[None, :] - self.intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, self.intersection / np.maximum(union, 1), 0.0)
        iou[:, cat < 0] = 0.0  # 0 is "unlabelled"; unused label numbers have no category
        iou[:, 0] = 0.0
        return iou

    @property
    def best_concept(self) -> np.ndarray:
        """int64 [U]: each unit's best concept number, 0 when it matches nothing."""
        iou = self.iou
        best = iou.argmax(axis=1)
        return np.where(iou[np.arange(self.units), best] > 0, best, 0)

    @property
    def best_iou(self) -> np.ndarray:
        """float64 [U]: the IoU of each unit's best concept."""
        return self.iou[np.arange(self.units), self.best_concept]

    @property
    def detectors(self) -> np.ndarray:
        """bool [U]: units whose best IoU exceeds ``iou_threshold``."""
        return self.best_iou > self.iou_threshold

    def best_in_category(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """(concept [U], IoU [U]) of each unit's best concept within category ``g``."""
        mask = self.concept_category == g
        mask[0] = False
        iou = np.where(mask[None, :], self.iou, -1.0)
        best = iou.argmax(axis=1)
        val = iou[np.arange(self.units), best]
        return np.where(val > 0, best, 0), np.maximum(val, 0.0)

    def summary(self) -> dict:
        """Detector counts: per category and unique concepts (JSON-able)."""
        det = self.detectors
        best = self.best_concept
        per_cat: dict[str, int] = {c: 0 for c in self.categories}
        unique: dict[str, set[int]] = {c: set() for c in self.categories}
        for u in np.flatnonzero(det):
            cat = self.categories[int(self.concept_category[best[u]])]
            per_cat[cat] += 1
            unique[cat].add(int(best[u]))
        return {
            "layer": self.layer,
            "alias": self.alias,
            "units": self.units,
            "detectors": int(det.sum()),
            "unique_concepts": int(len({int(b) for b in best[det]})),
            "iou_threshold": self.iou_threshold,
            "quantile": self.quantile,
            "images": self.n_images,
            "detectors_per_category": per_cat,
            "unique_concepts_per_category": {c: len(v) for c, v in unique.items()},
        }


@dataclass
class DissectionResult(Result, Sequence[LayerDissection]):
    """A dissection of several layers: a sequence of :class:`LayerDissection` (in the order
    the layers were given), with the run's timings.

    Attributes:
        layers: one :class:`LayerDissection` per layer.
        timings: seconds per stage (forward, tally, net2vec) of the run that computed it.
    """

    layers: list[LayerDissection]
    timings: dict[str, float] = field(default_factory=dict)

    @overload
    def __getitem__(self, index: int) -> LayerDissection: ...

    @overload
    def __getitem__(self, index: slice) -> list[LayerDissection]: ...

    def __getitem__(self, index: int | slice) -> LayerDissection | list[LayerDissection]:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerDissection]:
        return iter(self.layers)

    def layer(self, alias: str) -> LayerDissection:
        """The dissection of one layer, by alias or ONNX name."""
        for r in self.layers:
            if alias in (r.alias, r.layer):
                return r
        raise KeyError(alias)

    def summary(self) -> dict[str, Any]:
        """Per layer: detectors and concepts (:meth:`LayerDissection.summary`), and the
        Net2Vec results."""
        return {
            "layers": [{**r.summary(), "net2vec": r.extra.get("net2vec", [])} for r in self.layers],
            "timings": self.timings,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for r in self.layers:
            for name in _ARRAYS:
                arrays[f"{r.alias}/{name}"] = np.asarray(getattr(r, name))
        first = self.layers[0]
        arrays["concept_names"] = np.array(first.concept_names, dtype=str)
        arrays["categories"] = np.array(first.categories, dtype=str)
        return arrays

    def to_meta(self) -> dict[str, Any]:
        first = self.layers[0]
        return {
            "aliases": [[r.alias, r.layer] for r in self.layers],
            "n_images": first.n_images,
            "quantile": first.quantile,
            "iou_threshold": first.iou_threshold,
            "timings": self.timings,
            "net2vec": {r.alias: r.extra.get("net2vec", []) for r in self.layers},
        }

    @classmethod
    def from_stored(
        cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> DissectionResult:
        names = [str(x) for x in arrays["concept_names"]]
        categories = [str(x) for x in arrays["categories"]]
        layers = [
            LayerDissection(
                layer=layer,
                alias=alias,
                **{name: np.asarray(arrays[f"{alias}/{name}"]) for name in _ARRAYS},
                concept_names=names,
                categories=categories,
                quantile=float(meta["quantile"]),
                iou_threshold=float(meta["iou_threshold"]),
                n_images=int(meta["n_images"]),
                extra={"net2vec": meta.get("net2vec", {}).get(alias, [])},
            )
            for alias, layer in meta["aliases"]
        ]
        return cls(layers=layers, timings=dict(meta.get("timings", {})))
