"""Files of a compositional-explanations run on its own (the ``compose`` analysis; ``dissect
--compositional`` shows the same formulas inside the dissection report instead).

    <alias>_formulas.csv    per explained unit: its best formula and IoU, the best single
                            concept by the same IoU, and the dissection's label and IoU
    summary.json            the result's summary

Units are 1-based in ``unit`` (as the dissection's CSV) with the 0-based ``channel`` beside.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pyanalyzer._io import write_bytes, write_json

if TYPE_CHECKING:
    from pyanalyzer.methods.dissection.compositional import CompositionalResult

__all__ = ["write_compositional"]

_FIELDS = (
    "unit", "channel", "formula", "length", "iou", "single", "single_iou", "netdissect_label",
    "netdissect_iou",
)  # fmt: skip


def write_compositional(
    result: CompositionalResult, out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write ``<alias>_formulas.csv`` per layer and ``summary.json`` into ``out_dir`` (each
    file written atomically).

    Returns:
        ``{"<alias>/formulas": path, ..., "summary": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for layer in result:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_FIELDS, lineterminator="\n")
        writer.writeheader()
        for rec in layer.summary()["unit_records"]:
            writer.writerow({k: "" if rec[k] is None else rec[k] for k in _FIELDS})
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", layer.alias)
        paths[f"{layer.alias}/formulas"] = write_bytes(
            out / f"{stem}_formulas.csv", buf.getvalue().encode()
        )
    paths["summary"] = write_json(out / "summary.json", result.summary())
    return paths
