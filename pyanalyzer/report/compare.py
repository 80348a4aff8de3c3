"""Files that report a model comparison (:class:`~pyanalyzer.methods.compare.ComparisonResult`).

One comparison writes, into one folder::

    index.html      one self-contained page (inline CSS and SVG, no script, nothing fetched):
                    the output agreement (top-1, mean |p_A - p_B|, per class), then per layer
                    pair the matching (a histogram of the matched units' correlations), the
                    concepts gained and lost, the matched units whose label changed, the
                    detectors per concept in A and B, the unmatched units and every match
    summary.json    ``ComparisonResult.summary()`` with the run's free-form ``extra``

Units are channel indices (0-based), as in ``summary.json`` and the Python API. Both files are
written atomically (:mod:`pyanalyzer._io`), ``index.html`` last; the same result gives the same
bytes (no date is written). The page reads at 375 px wide: wide tables scroll sideways in their
own box.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyanalyzer._io import write_bytes
from pyanalyzer.methods.compare import ComparisonResult, LayerComparison
from pyanalyzer.report.dissection_data import fmt_threshold, jsonable

__all__ = [
    "comparison_html",
    "write_comparison",
    "write_comparison_html",
    "write_comparison_json",
]


def _e(text: Any) -> str:
    """HTML-escape any value (layer, concept and file names come from users' files)."""
    return html.escape(str(text), quote=True)


def _r(value: float | None, digits: int = 3) -> str:
    return "\u2013" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "\u2013" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font-family: Arial, Helvetica, sans-serif; font-size: 14px; margin: 0 auto 24px;
  padding: 0 24px; max-width: 1100px; background: #f4f4f4; color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; }
h2 { font-size: 18px; margin: 0 0 8px; overflow-wrap: anywhere; }
h3 { font-size: 15px; margin: 14px 0 6px; }
a { color: #1a4fa0; }
code { background: #e8e8e8; padding: 0 3px; overflow-wrap: anywhere; }
.models p { margin: 4px 0; overflow-wrap: anywhere; }
.tag { display: inline-block; min-width: 1.6em; text-align: center; font-weight: bold;
  color: white; border-radius: 3px; padding: 0 4px; margin-right: 4px; }
.tag.a { background: #4B4CBF; }
.tag.b { background: #D92E2B; }
.params { color: #555; margin: 4px 0 12px; }
section.card { background: white; padding: 10px 14px; margin: 14px 0; box-shadow: 0 2px 6px #bbb;
  max-width: 100%; }
.stats { display: flex; flex-wrap: wrap; gap: 8px 22px; margin: 6px 0; }
.stat .value { font-size: 20px; font-weight: bold; display: block; }
.stat .what { color: #555; font-size: 12px; }
.note { color: #8a5a00; background: #fff6dd; padding: 4px 8px; }
.chips { display: flex; flex-wrap: wrap; gap: 4px; margin: 2px 0 6px; }
.chip { border-radius: 10px; padding: 1px 9px; font-size: 13px; }
.chip.gained { background: #d9f2da; }
.chip.lost { background: #f8d6d5; }
.none { color: #888; font-style: italic; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; background: white; font-size: 13px; }
td, th { padding: 3px 9px; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; height: 9px; background: #4B4CBF; vertical-align: middle; }
svg.hist { width: 100%; max-width: 520px; height: auto; display: block; }
svg.hist text { font-family: Arial, Helvetica, sans-serif; fill: #222; }
details > summary { cursor: pointer; font-weight: bold; margin: 10px 0 6px; }
p.units { overflow-wrap: anywhere; font-family: monospace; }
@media (max-width: 600px) {
  body { padding: 0 10px; }
  section.card { padding: 8px 8px; }
  .stat .value { font-size: 17px; }
}
"""


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )


def _stat(value: str, what: str, cls: str = "") -> str:
    return (
        f'<div class="stat{" " + cls if cls else ""}"><span class="value">{_e(value)}</span>'
        f'<span class="what">{_e(what)}</span></div>'
    )


def _table(head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[Any]], cls: str) -> str:
    """A table in a sideways-scrolling box; ``head`` = (title, numeric) per column; cells are
    escaped unless given as ``("html", text)``."""

    def cell(value: Any, numeric: bool) -> str:
        inner = value[1] if isinstance(value, tuple) and value[0] == "html" else _e(value)
        return f'<td class="num">{inner}</td>' if numeric else f"<td>{inner}</td>"

    th = "".join(f'<th class="num">{_e(t)}</th>' if n else f"<th>{_e(t)}</th>" for t, n in head)
    body = "".join(
        "<tr>" + "".join(cell(v, n) for v, (_, n) in zip(row, head, strict=True)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table class="{_e(cls)}"><tr>{th}</tr>{body}</table></div>'


def _histogram(values: np.ndarray, *, bins: int = 20) -> str:
    """Matched units per correlation bin over [-1, 1], as inline SVG (each bar a
    ``<g class="bin" data-low=... data-count=...>``)."""
    counts, edges = np.histogram(np.clip(values, -1, 1), bins=bins, range=(-1.0, 1.0))
    width, height, left, base = 420, 110, 28, 92
    bar = (width - left - 8) / bins
    peak = max(int(counts.max()) if len(counts) else 0, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" '
        'aria-label="matched units per correlation">',
        f'<line x1="{left}" y1="{base}" x2="{width - 8}" y2="{base}" stroke="#999"/>',
    ]
    for i, count in enumerate(counts):
        h = 78 * int(count) / peak
        x = left + i * bar
        parts.append(
            f'<g class="bin" data-low="{edges[i]:.2f}" data-count="{int(count)}">'
            f"<title>r in [{edges[i]:.1f}, {edges[i + 1]:.1f}): {int(count)} units</title>"
            f'<rect x="{x + 1:.1f}" y="{base - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
            'fill="#4B4CBF"/></g>'
        )
    for tick in (-1.0, -0.5, 0.0, 0.5, 1.0):
        x = left + (tick + 1) / 2 * (width - left - 8)
        parts.append(
            f'<text x="{x:.1f}" y="{base + 14}" font-size="11" text-anchor="middle">{tick:g}</text>'
        )
    parts.append(
        f'<text x="2" y="12" font-size="11">{peak}</text>'
        f'<text x="{width - 8}" y="12" font-size="11" text-anchor="end">'
        "matched units per correlation</text></svg>"
    )
    return "".join(parts)


def _chips(names: Sequence[str], cls: str) -> str:
    if not names:
        return '<span class="none">none</span>'
    return (
        '<div class="chips">'
        + "".join(f'<span class="chip {cls}">{_e(n)}</span>' for n in names)
        + "</div>"
    )


def _units(units: Sequence[int]) -> str:
    return ", ".join(str(u) for u in units) if units else "none"


def _outputs_html(result: ComparisonResult) -> str:
    out = result.outputs
    if out is None:
        return (
            '<section class="card" id="outputs"><h2>Outputs</h2>'
            f'<p class="note">Not compared: {_e(result.outputs_note)}.</p></section>'
        )
    probs = (
        "softmax of the outputs"
        if out.probabilities == ("softmax", "softmax")
        else f"A: {out.probabilities[0]}, B: {out.probabilities[1]}"
    )
    rows = []
    for row in out.per_class():
        if not (row["a"] or row["b"]):
            continue
        agreement = row["agreement"]
        width = 0 if agreement is None else round(60 * agreement)
        label = row["name"] if row["name"] is not None else f"class {row['class']}"
        rows.append(
            (
                label,
                row["a"],
                row["b"],
                row["both"],
                ("html", f'<span class="bar" style="width:{width}px"></span> {_pct(agreement)}'),
            )
        )
    head = [("class (top-1)", False), ("A", True), ("B", True), ("both", True),
            ("agreement", True)]  # fmt: skip
    return "".join(
        [
            '<section class="card" id="outputs"><h2>Outputs</h2>',
            '<div class="stats">',
            _stat(_pct(out.top1_agreement), "top-1 agreement", "top1"),
            _stat(_r(out.mean_abs_diff, 4), "mean |p_A \u2212 p_B|", "mad"),
            _stat(str(out.images), "images"),
            _stat(str(out.classes), "classes"),
            "</div>",
            f'<p class="params">{_e(out.output_a)} (A) against {_e(out.output_b)} (B); '
            f"probabilities: {_e(probs)}. Per class: images each model puts in it, and "
            "agreement = both / either.</p>",
            _table(head, rows, "classes"),
            "</section>",
        ]
    )


def _layer_html(i: int, r: LayerComparison) -> str:
    s = r.summary()
    corr = r.match_correlation
    title = f"{r.alias_a} \u2194 {r.alias_b}"
    parts = [
        f'<section class="card layer" id="pair-{i}" data-layer-a="{_e(r.alias_a)}" '
        f'data-layer-b="{_e(r.alias_b)}"><h2>{_e(title)}</h2>',
        f'<p class="params">A: <code>{_e(r.layer_a)}</code> {r.units_a} units '
        f"{r.size_a[0]}\u00d7{r.size_a[1]} \u00b7 B: <code>{_e(r.layer_b)}</code> {r.units_b} "
        f"units {r.size_b[0]}\u00d7{r.size_b[1]}</p>",
    ]
    if r.resized:
        parts.append(
            f'<p class="note">B\'s maps ({r.size_b[0]}\u00d7{r.size_b[1]}) were resized '
            f"bilinearly to A's size ({r.size_a[0]}\u00d7{r.size_a[1]}) before correlating.</p>"
        )
    parts += [
        '<div class="stats">',
        _stat(f"{s['matched']}", f"matched of {r.units_a} / {r.units_b}", "matched"),
        _stat(_r(s["mean_correlation"]), "mean r", "mean"),
        _stat(_r(s["median_correlation"]), "median r", "median"),
        _stat(f"{s['detectors_a']} \u2192 {s['detectors_b']}", "detectors A \u2192 B"),
        _stat(str(len(s["changed"])), "labels changed", "changed"),
        "</div>",
    ]
    if len(corr):
        parts.append(_histogram(corr))
    parts += [
        f"<h3>Concepts gained ({len(s['gained'])})</h3>",
        _chips(s["gained"], "gained"),
        f"<h3>Concepts lost ({len(s['lost'])})</h3>",
        _chips(s["lost"], "lost"),
    ]
    changed_rows = [
        (c["unit_a"], c["label_a"] or "\u2013", _r(c["iou_a"]), c["unit_b"],
         c["label_b"] or "\u2013", _r(c["iou_b"]), _r(c["correlation"]))
        for c in s["changed"]
    ]  # fmt: skip
    parts.append(f"<h3>Matched units whose label changed ({len(changed_rows)})</h3>")
    if changed_rows:
        head = [("unit A", True), ("label A", False), ("IoU A", True), ("unit B", True),
                ("label B", False), ("IoU B", True), ("r", True)]  # fmt: skip
        parts.append(_table(head, changed_rows, "changed"))
    else:
        parts.append('<p class="none">none</p>')
    concept_rows = [
        (c["concept"], c["category"] or "", c["detectors_a"], c["detectors_b"])
        for c in s["concepts"]
    ]
    parts.append(f"<h3>Detectors per concept ({len(concept_rows)} concepts)</h3>")
    if concept_rows:
        head = [("concept", False), ("category", False), ("A", True), ("B", True)]
        parts.append(_table(head, concept_rows, "concepts"))
    else:
        parts.append('<p class="none">no detectors in either model</p>')
    parts += [
        f'<h3>Unmatched units</h3><p class="units">A: {_e(_units(s["unmatched_a"]))}<br>'
        f"B: {_e(_units(s['unmatched_b']))}</p>",
    ]
    if s["constant_a"] or s["constant_b"]:
        parts.append(
            '<p class="note">Constant over the dataset (no correlation, not matched): '
            f"A {_e(_units(s['constant_a']))}; B {_e(_units(s['constant_b']))}.</p>"
        )
    match_rows = [(m["unit_a"], m["unit_b"], _r(m["correlation"])) for m in s["matches"]]
    parts += [
        f"<details><summary>Every match ({len(match_rows)})</summary>",
        _table([("unit A", True), ("unit B", True), ("r", True)], match_rows, "matches"),
        "</details></section>",
    ]
    return "\n".join(parts)


def _name(card: dict[str, Any], extra: dict[str, Any], key: str) -> str:
    given = extra.get(key)
    if isinstance(given, str) and given:
        return Path(given).name
    return str(card.get("file") or "model")


def comparison_html(result: ComparisonResult, extra: dict[str, Any] | None = None) -> str:
    """The page (see the module)."""
    extra = dict(extra or {})
    name_a = _name(result.model_a, extra, "model_a")
    name_b = _name(result.model_b, extra, "model_b")
    same = result.summary()["same_model"]
    body = [
        f"<header><h1>Model comparison: {_e(name_a)} vs {_e(name_b)}</h1>",
        '<div class="models">',
        f'<p><span class="tag a">A</span>{_e(name_a)} \u00b7 sha256 '
        f"<code>{_e(str(result.model_a.get('sha256', ''))[:16])}</code></p>",
        f'<p><span class="tag b">B</span>{_e(name_b)} \u00b7 sha256 '
        f"<code>{_e(str(result.model_b.get('sha256', ''))[:16])}</code>"
        + (" (the same model)" if same else "")
        + "</p></div>",
        f'<p class="params">{result.images} images \u00b7 top quantile {result.quantile:g} '
        f"\u00b7 IoU threshold {fmt_threshold(result.iou_threshold)} \u00b7 units are channel "
        'indices (0-based) \u00b7 <a href="summary.json">summary.json</a></p></header>',
        _outputs_html(result),
        *(_layer_html(i, r) for i, r in enumerate(result.layers)),
    ]
    return _page(f"{name_a} vs {name_b}: model comparison", "\n".join(body))


def write_comparison_json(
    path: str | os.PathLike[str], result: ComparisonResult, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``summary.json`` (atomically): ``{"format": "pyanalyzer.compare.summary",
    "version": 1, "extra": extra, **result.summary()}``; NaN becomes null."""
    doc = {
        "format": "pyanalyzer.compare.summary",
        "version": 1,
        "extra": jsonable(dict(extra or {})),
        **jsonable(result.summary()),
    }
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return write_bytes(path, text.encode("utf-8"))


def write_comparison_html(
    path: str | os.PathLike[str], result: ComparisonResult, extra: dict[str, Any] | None = None
) -> Path:
    """Write the page (atomically)."""
    return write_bytes(path, comparison_html(result, extra).encode("utf-8"))


def write_comparison(
    result: ComparisonResult,
    out_dir: str | os.PathLike[str],
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the report of a comparison into ``out_dir`` (created if needed; other files in it
    are left alone).

    Args:
        result: the comparison.
        out_dir: the folder.
        extra: run information for ``summary.json``; ``model_a`` and ``model_b`` (file paths)
            name the models on the page (default: the result's file names).

    Returns:
        ``{"summary": summary.json, "index": index.html}`` (written in that order).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = write_comparison_json(out / "summary.json", result, extra)
    index = write_comparison_html(out / "index.html", result, extra)
    return {"summary": summary, "index": index}
