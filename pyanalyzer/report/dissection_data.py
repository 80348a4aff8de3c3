"""The data files of a dissection report: NetDissect-Lite's ``tally.csv`` and ``summary.json``,
and the one-line summary of a layer (see :mod:`pyanalyzer.report.dissection`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer._io import write_bytes

if TYPE_CHECKING:
    from pyanalyzer.methods.dissection.compositional import LayerComposition
    from pyanalyzer.methods.dissection.result import LayerDissection

__all__ = [
    "FORMULA_FIELDS",
    "composition_for",
    "fmt_threshold",
    "formula_cells",
    "header_text",
    "jsonable",
    "unit_order",
    "write_summary_json",
    "write_tally_csv",
]


def fmt_threshold(t: float) -> str:
    """0.04 -> '0.04' (NetDissect's %.2f) unless that would round the value away."""
    s = f"{t:.2f}"
    return s if math.isclose(float(s), t, rel_tol=1e-6, abs_tol=0.0) else f"{t:g}"


def header_text(result: LayerDissection) -> str:
    """NetDissect's one-line layer summary: "X/Y units covering Z concepts with IoU ≥ t".

    X = detectors, Y = units, Z = distinct concepts among the detectors' labels.
    """
    s = result.summary()
    return (
        f"{s['detectors']}/{s['units']} units covering {s['unique_concepts']} concepts "
        f"with IoU \u2265 {fmt_threshold(float(result.iou_threshold))}"
    )


# --------------------------------------------------------------------------------------------
# tally.csv


def _tally_fields(categories: Sequence[str]) -> list[str]:
    fields = ["unit", "category", "label", "score"]
    for cat in categories:
        fields += [f"{cat}-label", f"{cat}-truth", f"{cat}-activation", f"{cat}-intersect"]
        fields.append(f"{cat}-iou")
    return fields


FORMULA_FIELDS = (
    "formula", "formula-length", "formula-score", "formula-single", "formula-single-score",
)  # fmt: skip
"""The columns a compositional explanation appends to ``tally.csv`` (none of them can be a
category's ``<cat>-label/truth/activation/intersect/iou``)."""


def composition_for(
    compositional: Sequence[LayerComposition] | None, result: LayerDissection
) -> LayerComposition | None:
    """The compositional explanations of ``result``'s layer among ``compositional``, or None."""
    for comp in compositional or ():
        if comp.layer == result.layer:
            return comp
    return None


def formula_cells(comp: LayerComposition | None, channel: int) -> dict[str, Any] | None:
    """A unit's compositional explanation as the CSV's :data:`FORMULA_FIELDS` (None when the
    unit was not explained): its formula, length and IoU over all pixels (Mu & Andreas), and
    the best single concept by the same IoU."""
    i = comp.index_of(channel) if comp is not None else None
    if comp is None or i is None:
        return None
    single = int(comp.single_concept[i])
    return {
        "formula": comp.text(i),
        "formula-length": int(comp.length[i]),
        "formula-score": float(comp.iou[i]),
        "formula-single": comp.concept_names[single] if single else "",
        "formula-single-score": float(comp.single_iou[i]),
    }


def unit_order(result: LayerDissection) -> np.ndarray:
    """Channels by best IoU, highest first; ties by channel (a stable sort)."""
    return np.argsort(-result.best_iou, kind="stable")


def _tally_rows(
    result: LayerDissection, comp: LayerComposition | None = None
) -> list[dict[str, Any]]:
    best = result.best_concept
    score = result.best_iou
    per_cat = [result.best_in_category(g) for g in range(len(result.categories))]
    rows = []
    for u in unit_order(result):
        u = int(u)
        b = int(best[u])
        row: dict[str, Any] = {
            "unit": u + 1,
            "category": result.categories[int(result.concept_category[b])] if b else "",
            "label": result.concept_names[b] if b else "",
            "score": float(score[u]),
        }
        for g, cat in enumerate(result.categories):
            c = int(per_cat[g][0][u])
            row[f"{cat}-label"] = result.concept_names[c] if c else ""
            row[f"{cat}-truth"] = int(result.concept_area[c]) if c else 0
            row[f"{cat}-activation"] = int(result.unit_area_cat[u, g])
            row[f"{cat}-intersect"] = int(result.intersection[u, c]) if c else 0
            row[f"{cat}-iou"] = float(per_cat[g][1][u])
        if comp is not None:
            row.update(formula_cells(comp, u) or dict.fromkeys(FORMULA_FIELDS, ""))
        rows.append(row)
    return rows


def write_tally_csv(
    path: str | os.PathLike, result: LayerDissection, compositional: LayerComposition | None = None
) -> Path:
    """Write NetDissect-Lite's ``tally.csv`` for one layer (atomically).

    Columns, exactly as NetDissect-Lite's ``FeatureOperator.tally`` writes them:
    ``unit,category,label,score`` then, for each category in ``result.categories`` order,
    ``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou``.

    - ``unit``: 1-based (channel + 1), as NetDissect-Lite.
    - ``category``, ``label``, ``score``: the unit's best concept over all categories, its
      category and its IoU (``best_concept``, ``best_iou``).
    - ``<cat>-label``: the best concept within that category; ``<cat>-truth``: its pixel count
      (``concept_area``); ``<cat>-activation``: the unit's pixel count over images labelled in
      that category (``unit_area_cat``); ``<cat>-intersect``: ``intersection`` of the unit and
      that concept; ``<cat>-iou``: their IoU = intersect / (activation + truth - intersect).

    Rows are sorted by ``score``, highest first (NetDissect-Lite's order), ties by unit.
    Counts are written as integers and IoUs with full float precision. Where a unit matches
    nothing (IoU 0), labels and categories are empty and truth and intersect are 0 (NetDissect
    would print an arbitrary label with IoU 0).

    With ``compositional`` (the layer's compositional explanations, Mu & Andreas 2020), the
    columns :data:`FORMULA_FIELDS` follow: ``formula`` (e.g. ``(grass OR field) AND NOT sky``;
    empty when no formula overlaps the unit), ``formula-length``, ``formula-score`` (its IoU
    over all pixels of all images), ``formula-single`` and ``formula-single-score`` (the best
    single concept by that same IoU; ``score`` is NetDissect's, with per-category
    denominators). Units the explanations do not cover have these cells empty.
    """
    fields = _tally_fields(result.categories)
    if compositional is not None:
        fields += FORMULA_FIELDS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_tally_rows(result, compositional))
    return write_bytes(path, buf.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------------------------
# summary.json


def jsonable(value: Any) -> Any:
    """Plain JSON values from numpy scalars/arrays, paths, sets, tuples; NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _unit_records(
    result: LayerDissection, comp: LayerComposition | None = None
) -> list[dict[str, Any]]:
    best = result.best_concept
    score = result.best_iou
    det = result.detectors
    records = []
    for u in range(result.units):
        b = int(best[u])
        records.append(
            {
                "unit": u + 1,
                "channel": u,
                "label": result.concept_names[b] if b else None,
                "category": result.categories[int(result.concept_category[b])] if b else None,
                "iou": float(score[u]),
                "threshold": float(result.thresholds[u]),
                "detector": bool(det[u]),
            }
        )
        if comp is not None:
            cells = formula_cells(comp, u)
            records[-1].update(
                {
                    "formula": cells["formula"] or None if cells else None,
                    "formula_length": cells["formula-length"] if cells else None,
                    "formula_iou": cells["formula-score"] if cells else None,
                    "formula_single": cells["formula-single"] or None if cells else None,
                    "formula_single_iou": cells["formula-single-score"] if cells else None,
                }
            )
    return records


def _layer_summary(result: LayerDissection, comp: LayerComposition | None = None) -> dict[str, Any]:
    out = {
        **result.summary(),
        "header": header_text(result),
        "categories": list(result.categories),
        "unit_records": _unit_records(result, comp),
    }
    if comp is not None:
        s = comp.summary()
        out["compositional"] = {k: v for k, v in s.items() if k != "unit_records"}
    return out


def write_summary_json(
    path: str | os.PathLike,
    results: Sequence[LayerDissection],
    extra: dict | None = None,
    compositional: Sequence[LayerComposition] | None = None,
) -> Path:
    """Write the run's ``summary.json`` (atomically).

    Layout: ``{"format": "pyanalyzer.dissection.summary", "version": 1, "extra": extra,
    "layers": [...]}``, one entry per layer: ``LayerDissection.summary()`` plus ``header``
    (the page's one-line summary), ``categories`` and ``unit_records``, one per channel in
    channel order: ``unit`` (1-based), ``channel`` (0-based), ``label``, ``category`` (null when
    the unit matches nothing), ``iou``, ``threshold``, ``detector``.

    ``extra`` is free-form (model file, digest, preprocessing, dataset, parameters, timings,
    Net2Vec results...): numpy values, paths and sets are converted; NaN and infinities become
    null so that the file is strict JSON.

    With ``compositional`` (compositional explanations of some of the layers), each such layer
    gains ``compositional`` (the search's parameters and mean IoUs) and its unit records
    ``formula``, ``formula_length``, ``formula_iou``, ``formula_single`` and
    ``formula_single_iou`` (null for units not explained; see :func:`write_tally_csv`).
    """
    doc = {
        "format": "pyanalyzer.dissection.summary",
        "version": 1,
        "extra": jsonable(dict(extra or {})),
        "layers": [jsonable(_layer_summary(r, composition_for(compositional, r))) for r in results],
    }
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# SVG bar charts
