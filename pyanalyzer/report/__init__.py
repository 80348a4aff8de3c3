"""Report writers: every analysis' result to files (PNG montages, HTML, CSV, JSON).

Results are written here, never by the front ends: the CLI, the service and the atlas call
:func:`write_result` (or a writer of one module) with a result and a folder.

======================================  =================================================
result                                  writer
======================================  =================================================
dissection (``DissectionResult``)        :func:`~.dissection.write_dissection`
projections (``ProjectionResult``)       :func:`~.deconv.write_projections`
top-k patches (``TopPatchesResult``)     :func:`~.patches.write_patches`
activation maximization                 :func:`~.actmax.write_actmax`
inversion (``InversionResult``)          :func:`~.inversion.write_inversion`
the model atlas (``AtlasResult``)         :func:`~.atlas.write_atlas` (a static site)
unit ablation (``AblationResult``)       :func:`~.ablation.write_ablation`
formulas (``CompositionalResult``)        :func:`~.compositional.write_compositional`
model comparison (``ComparisonResult``)  :func:`~.compare.write_comparison`
======================================  =================================================

Writers import their method's result types, never the other way round; the montage helpers
(:mod:`.montage`) are shared by all.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from pyanalyzer.report.dissection import (
    header_text,
    write_dissection_report,
    write_layer_html,
    write_summary_json,
    write_tally_csv,
)
from pyanalyzer.report.montage import grid, overlay_mask, save_png, upscale

__all__ = [
    "grid",
    "has_writer",
    "header_text",
    "overlay_mask",
    "save_png",
    "upscale",
    "write_dissection_report",
    "write_layer_html",
    "write_result",
    "write_summary_json",
    "write_tally_csv",
]

# result class name -> (writer module, writer function, context arguments it takes)
_WRITERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "DissectionResult": ("dissection", "write_dissection", ("model", "dataset", "extra")),
    "ProjectionResult": ("deconv", "write_projections", ()),
    "TopPatchesResult": ("patches", "write_patches", ("source",)),
    "ActmaxResult": ("actmax", "write_actmax", ()),
    "InversionResult": ("inversion", "write_inversion", ()),
    "AtlasResult": ("atlas", "write_atlas", ("model", "dataset", "source")),
    "AblationResult": ("ablation", "write_ablation", ("model", "extra")),
    "CompositionalResult": ("compositional", "write_compositional", ()),
    "ComparisonResult": ("compare", "write_comparison", ("extra",)),
}


def has_writer(result: Any) -> bool:
    """Whether a result has a report writer (a trained decoder, e.g., has none: it lives in
    the store)."""
    return type(result).__name__ in _WRITERS


def write_result(result: Any, out_dir: str | os.PathLike[str], **context: Any) -> Any:
    """Write any analysis result to ``out_dir`` with its writer (see the module's table).

    Args:
        result: a result of an analysis.
        out_dir: the folder (created if needed).
        **context: what a writer needs beyond the result: ``source`` (the scanned images) for
            top-k patches; ``model``, ``dataset`` and ``extra`` for a dissection report;
            ``model``, ``dataset`` (and ``source`` when it is not the dataset) for an atlas.
            Arguments a writer does not take are ignored.

    Returns:
        what the writer returns (the paths written).

    Raises:
        TypeError: a result without a writer.
    """
    name = type(result).__name__
    if name not in _WRITERS:
        raise TypeError(f"no report writer for {name}")
    module, function, takes = _WRITERS[name]
    writer = getattr(importlib.import_module(f"pyanalyzer.report.{module}"), function)
    kwargs = {k: v for k, v in context.items() if k in takes}
    if name == "TopPatchesResult":
        return writer(result, Path(out_dir), kwargs.pop("source"), **kwargs)
    return writer(result, Path(out_dir), **kwargs)
