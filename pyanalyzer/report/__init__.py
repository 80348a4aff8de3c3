"""Report writers: PNG montages shared by every method, and the HTML/CSV/JSON reports."""

from __future__ import annotations

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
    "header_text",
    "overlay_mask",
    "save_png",
    "upscale",
    "write_dissection_report",
    "write_layer_html",
    "write_summary_json",
    "write_tally_csv",
]
