"""Files that report a network dissection (Bau et al., "Network Dissection", CVPR 2017).

One dissection run writes, into one folder::

    index.html              the layers, each with its one-line summary, linked
    summary.json            per layer: counts, per-unit labels, plus the run's free-form ``extra``
    <alias>_tally.csv       NetDissect-Lite's tally.csv, column for column
    <alias>.html            one self-contained page per layer (inline CSS and SVG, no network)
    <alias>_units/          unit_0001.png ...: each unit's top images with its mask drawn over

With compositional explanations (Mu & Andreas 2020, :mod:`~pyanalyzer.methods.dissection.
compositional`), each explained unit's card shows its formula and IoU under the single-concept
label, ``tally.csv`` gains the formula columns (:data:`~.dissection_data.FORMULA_FIELDS`) and
``summary.json`` the formula of every unit record.

Unit numbers in the CSV, the pages and the PNG names are 1-based, as in NetDissect-Lite
(``unit = channel + 1``); ``summary.json`` gives both ``unit`` (1-based) and ``channel``
(0-based, the index into the layer's channel axis that the Python API uses).

A unit is a *detector* when ``LayerDissection.detectors`` says so (best IoU above
``iou_threshold``); the page lists detectors first, by IoU, and the other units in a collapsed
section below them.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from pyanalyzer._io import replace_path, write_bytes
from pyanalyzer.report.dissection_data import (
    composition_for,
    fmt_threshold,
    formula_cells,
    header_text,
    jsonable,
    unit_order,
    write_summary_json,
    write_tally_csv,
)
from pyanalyzer.report.montage import _as_rgb, grid, overlay_mask, save_png

if TYPE_CHECKING:
    from pyanalyzer.methods.dissection.compositional import LayerComposition
    from pyanalyzer.methods.dissection.result import LayerDissection

__all__ = [
    "UnitImages",
    "header_text",
    "write_dissection_report",
    "write_layer_html",
    "write_summary_json",
    "write_tally_csv",
]

#: ``unit_images(channel)`` -> up to k ``(rgb uint8 [H, W, 3], mask bool [H, W], activation)``,
#: strongest first; ``channel`` is 0-based.
UnitImages = Callable[[int], Sequence[tuple[np.ndarray, np.ndarray, float]]]

# NetDissect-Lite's bar graph palette: (bar, background) per category.
_PALETTE = [
    ("#4B4CBF", "#B6B6F2"),
    ("#55B05B", "#B6F2BA"),
    ("#50BDAC", "#A5E5DB"),
    ("#D4CF24", "#F2F1B6"),
    ("#F0883B", "#F2CFB6"),
    ("#D92E2B", "#F2B6B6"),
]

_RESERVED_STEMS = {"index", "summary"}


def _e(text: Any) -> str:
    """HTML/XML-escape any value (concept and layer names come from users' files)."""
    return html.escape(str(text), quote=True)


def _svg_bar_chart(
    bars: Sequence[tuple[str, int, str, str]],
    *,
    chart: str,
    bar_width: int,
    gap: int,
    height: int = 120,
    rotate_labels: bool = False,
) -> str:
    """A bar chart as inline SVG; ``bars`` = (label, count, fill colour, tooltip).

    Each bar is a ``<g class="bar" data-label=... data-count=...>`` with its count written above
    it, so the numbers are in the page's text and tests can read them.
    """
    if not bars:
        return f'<p class="nochart" data-chart="{_e(chart)}">No detectors.</p>'
    top = 16  # room for the count above the tallest bar
    left = 8
    font = 11 if not rotate_labels else 10
    if rotate_labels:
        # labels run down-left at 45°: reserve their extent below and left of the bars
        longest = max(min(len(label), 28) for label, *_ in bars)
        label_space = int(longest * font * 0.5 * 0.71) + 12
        left = max(left, label_space - bar_width)
    else:
        label_space = font + 10
    width = left + len(bars) * (bar_width + gap) + 8
    total_h = top + height + label_space
    base = top + height
    peak = max(count for _, count, _, _ in bars) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="barchart" data-chart="{_e(chart)}" '
        f'width="{width}" height="{total_h}" viewBox="0 0 {width} {total_h}" role="img">',
        f'<line x1="{left}" y1="{base}" x2="{width - 8}" y2="{base}" stroke="#999"/>',
    ]
    max_chars = max(1, int((bar_width + gap) / (font * 0.6)))
    for i, (label, count, fill, tip) in enumerate(bars):
        x = left + i * (bar_width + gap) + gap / 2
        h = height * count / peak
        cx = x + bar_width / 2
        parts.append(f'<g class="bar" data-label="{_e(label)}" data-count="{int(count)}">')
        parts.append(f"<title>{_e(tip)}</title>")
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_width}" height="{h:.1f}" '
            f'fill="{_e(fill)}"/>'
        )
        parts.append(
            f'<text class="count" x="{cx:.1f}" y="{base - h - 3:.1f}" font-size="{font}" '
            f'text-anchor="middle">{int(count)}</text>'
        )
        if rotate_labels:
            shown = label if len(label) <= 28 else label[:27] + "\u2026"
            parts.append(
                f'<text class="label" x="{cx + font / 3:.1f}" y="{base + 6}" font-size="{font}" '
                f'text-anchor="end" transform="rotate(-45 {cx + font / 3:.1f} {base + 6})">'
                f"{_e(shown)}</text>"
            )
        else:
            shown = label if len(label) <= max_chars else label[: max_chars - 1] + "\u2026"
            parts.append(
                f'<text class="label" x="{cx:.1f}" y="{base + font + 4}" font-size="{font}" '
                f'text-anchor="middle">{_e(shown)}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _category_chart(result: LayerDissection) -> str:
    per_cat = result.summary()["detectors_per_category"]
    bars = [
        (cat, int(per_cat[cat]), _PALETTE[g % len(_PALETTE)][0], f"{cat}: {per_cat[cat]} units")
        for g, cat in enumerate(result.categories)
    ]
    if not bars:
        return _svg_bar_chart([], chart="category", bar_width=0, gap=0)
    return _svg_bar_chart(bars, chart="category", bar_width=64, gap=24)


def _concept_chart(result: LayerDissection) -> str:
    """Detectors per concept, grouped by category, then by count and best IoU (NetDissect's
    histogram order)."""
    det = result.detectors
    best = result.best_concept
    score = result.best_iou
    counts: dict[int, int] = {}
    top: dict[int, float] = {}
    for u in np.flatnonzero(det):
        c = int(best[u])
        counts[c] = counts.get(c, 0) + 1
        top[c] = max(top.get(c, 0.0), float(score[u]))
    order = sorted(
        counts,
        key=lambda c: (int(result.concept_category[c]), -counts[c], -top[c], c),
    )
    bars = []
    for c in order:
        g = int(result.concept_category[c])
        name = result.concept_names[c]
        cat = result.categories[g]
        tip = f"{name} ({cat}): {counts[c]} units, best IoU {top[c]:.3f}"
        bars.append((name, counts[c], _PALETTE[g % len(_PALETTE)][0], tip))
    return _svg_bar_chart(bars, chart="concept", bar_width=12, gap=4, rotate_labels=True)


# --------------------------------------------------------------------------------------------
# unit strips and the layer page


def _tile(rgb: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """Resize an image to ``size`` pixels high (masks by nearest neighbour, small images too,
    so that tiny inputs stay crisp) and draw the mask over it."""
    rgb = _as_rgb(rgb, "unit image")
    mask = np.asarray(mask).astype(bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"unit mask must be [H, W] = {rgb.shape[:2]}, got shape {mask.shape}")
    h, w = rgb.shape[:2]
    new = (max(1, round(w * size / h)), size)
    if (w, h) != new:
        resample = Image.Resampling.NEAREST if h < size else Image.Resampling.LANCZOS
        rgb = np.asarray(Image.fromarray(rgb).resize(new, resample))
        small = Image.fromarray(mask.astype(np.uint8) * 255)
        mask = np.asarray(small.resize(new, Image.Resampling.NEAREST)) > 127
    return overlay_mask(rgb, mask)


def _unit_strip(items, top_k: int, size: int) -> np.ndarray | None:
    items = list(items)[:top_k]
    if not items:
        return None
    tiles = [_tile(rgb, mask, size) for rgb, mask, _ in items]
    labels = [f"{float(value):.3g}" for _, _, value in items]
    return grid(tiles, cols=top_k, pad=2, bg=255, labels=labels)


_CSS = """
:root { color-scheme: light; }
body { font-family: Arial, Helvetica, sans-serif; font-size: 14px; margin: 0 24px 24px;
  background: #f4f4f4; color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; }
h2 { font-size: 16px; margin: 18px 0 6px; }
a { color: #1a4fa0; }
.layerinfo { font-size: 18px; font-weight: bold; margin: 6px 0; }
.params { color: #555; margin: 2px 0 10px; }
.params code { background: #e8e8e8; padding: 0 3px; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.chart { background: white; padding: 8px 12px; box-shadow: 0 2px 6px #bbb; overflow-x: auto;
  max-width: 100%; }
.chart svg text { font-family: Arial, Helvetica, sans-serif; fill: #222; }
.unitgrid { display: flex; flex-wrap: wrap; gap: 10px; }
.unit { background: white; padding: 6px; box-shadow: 0 2px 6px #bbb; }
.unitlabel { font-weight: bold; font-size: 17px; text-align: center; margin-bottom: 2px; }
.info { display: flex; gap: 14px; color: #333; }
.info .iou { font-weight: bold; }
.cats { color: #666; font-size: 12px; margin: 2px 0 4px; max-width: 620px; }
.formula { font-size: 13px; margin: 2px 0; max-width: 620px; }
.formula .formula-iou { font-weight: bold; margin-left: 8px; }
.lowscore .unitlabel { color: #999; }
.unit img { display: block; }
.noimages { color: #999; font-style: italic; }
details > summary { cursor: pointer; font-size: 16px; font-weight: bold; margin: 18px 0 8px; }
table.layers { border-collapse: collapse; background: white; }
table.layers td, table.layers th { padding: 4px 10px; border-bottom: 1px solid #ddd;
  text-align: left; }
dl.extra { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dl.extra dt { font-weight: bold; }
dl.extra dd { margin: 0; font-family: monospace; white-space: pre-wrap; word-break: break-all; }
"""

# Optional and tiny: marks the body once the page has loaded, so that a headless browser can
# tell whether the images it was given exist. The page works the same without it.
_JS = """
addEventListener('load', function () {
  var ok = 0, bad = 0;
  document.querySelectorAll('img').forEach(function (i) {
    if (i.complete) { if (i.naturalWidth > 0) ok++; else bad++; }
  });
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-images-broken', bad);
});
"""


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )


def _unit_card(
    result: LayerDissection,
    u: int,
    per_cat: list[tuple[np.ndarray, np.ndarray]],
    img_src: str | None,
    img_size: tuple[int, int] | None,
    lazy: bool,
    comp: LayerComposition | None = None,
) -> str:
    b = int(result.best_concept[u])
    iou = float(result.best_iou[u])
    detector = bool(result.detectors[u])
    label = result.concept_names[b] if b else "(none)"
    cat = result.categories[int(result.concept_category[b])] if b else "\u2013"
    cats = []
    for g, name in enumerate(result.categories):
        c, v = int(per_cat[g][0][u]), float(per_cat[g][1][u])
        if c:
            cats.append(f"{_e(name)}: {_e(result.concept_names[c])} {v:.3f}")
    if img_src is None:
        image = '<div class="noimages">no images</div>'
    else:
        w, h = img_size  # type: ignore[misc]
        loading = ' loading="lazy"' if lazy else ""
        image = (
            f'<img src="{_e(img_src)}" width="{w}" height="{h}"{loading}'
            f' alt="top images of unit {u + 1} with its mask">'
        )
    formula = ""
    cells = formula_cells(comp, u)
    if cells is not None:
        single = cells["formula-single"] or "(none)"
        tip = (
            f"compositional explanation (Mu & Andreas 2020), IoU over all pixels; best single "
            f"concept by the same IoU: {single} {cells['formula-single-score']:.3f}"
        )
        formula = (
            f'<div class="formula" title="{_e(tip)}" data-formula-iou='
            f'"{cells["formula-score"]:.6f}"><span class="formula-text">'
            f"{_e(cells['formula'] or '(no formula)')}</span>"
            f'<span class="formula-iou">IoU {cells["formula-score"]:.3f}</span></div>'
        )
    return (
        f'<div class="unit{"" if detector else " lowscore"}" id="unit-{u + 1:04d}" '
        f'data-unit="{u + 1}" data-iou="{iou:.6f}">'
        f'<div class="unitlabel">{_e(label)}</div>{formula}'
        f'<div class="info"><span class="unitnum" title="channel {u}">unit {u + 1}</span>'
        f'<span class="category">({_e(cat)})</span><span class="iou">IoU {iou:.3f}</span>'
        f'<span class="threshold">threshold {float(result.thresholds[u]):.4g}</span></div>'
        f'<div class="cats">{" · ".join(cats) if cats else "&nbsp;"}</div>'
        f"{image}</div>"
    )


def write_layer_html(
    path: str | os.PathLike,
    result: LayerDissection,
    unit_images: UnitImages | None,
    model_name: str,
    top_k_shown: int = 5,
    tile_size: int = 112,
    compositional: LayerComposition | None = None,
) -> Path:
    """Write one layer's page, and its unit strips as PNG files in ``<stem>_units/``.

    The page is self-contained (inline CSS and SVG, no script needed, nothing fetched from the
    network); images are separate files referenced relatively (``<stem>_units/unit_0001.png``),
    which keeps pages small. It shows the header "X/Y units covering Z concepts with IoU ≥ t",
    a bar chart of detectors per category and one per concept, then every detector by IoU
    (highest first): unit (1-based), label, category, IoU, threshold, the best concept of each
    category, and the strip of its top images (caption: the unit's activation). Units that are
    not detectors follow in a collapsed ``<details>`` section, greyed, their images loaded
    lazily. All text is HTML-escaped.

    Args:
        path: the page, e.g. ``out/conv3.html``.
        result: the layer's dissection.
        unit_images: ``unit_images(channel)`` -> up to k ``(rgb uint8 [H, W, 3], mask bool
            [H, W], activation)``, strongest first (the caller computes masks at image size);
            None for a page without images.
        model_name: shown in the title.
        top_k_shown: images per unit.
        tile_size: height in pixels of each image in a strip.
        compositional: the layer's compositional explanations: each explained unit's card
            shows its formula and the formula's IoU (over all pixels) under its label.
    """
    path = Path(path)
    units_dir = path.parent / f"{path.stem}_units"
    per_cat = [result.best_in_category(g) for g in range(len(result.categories))]
    det = result.detectors
    order = [int(u) for u in unit_order(result)]
    cards: dict[int, str] = {}
    for u in order:
        src, size = None, None
        if unit_images is not None:
            strip = _unit_strip(unit_images(u), top_k_shown, tile_size)
            if strip is not None:
                name = f"unit_{u + 1:04d}.png"
                save_png(units_dir / name, strip)
                src = f"{quote(units_dir.name)}/{name}"
                size = (strip.shape[1], strip.shape[0])
        cards[u] = _unit_card(result, u, per_cat, src, size, lazy=not det[u], comp=compositional)
    detectors = [cards[u] for u in order if det[u]]
    others = [cards[u] for u in order if not det[u]]
    t = fmt_threshold(float(result.iou_threshold))
    s = result.summary()
    search = ""
    if compositional is not None:
        search = (
            f" · compositional formulas of up to {compositional.max_length} concepts (beam "
            f"{compositional.beam}), IoU over all pixels"
        )
    body = [
        f"<header><h1>{_e(model_name)} \u2014 {_e(result.alias)}</h1>",
        f'<p class="layerinfo" id="layerinfo">{_e(header_text(result))}</p>',
        f'<p class="params">layer <code>{_e(result.layer)}</code> · {s["images"]} images · '
        f"top quantile {float(result.quantile):g} · IoU threshold {t}{_e(search)} · "
        '<a href="index.html">all layers</a></p></header>',
        '<section class="charts">',
        f'<div class="chart"><h2>Detectors per category</h2>{_category_chart(result)}</div>',
        f'<div class="chart"><h2>Detectors per concept</h2>{_concept_chart(result)}</div>',
        "</section>",
        f'<section id="detectors"><h2>Detectors ({len(detectors)}), by IoU</h2>',
        f'<div class="unitgrid">{"".join(detectors)}</div></section>',
    ]
    if others:
        body += [
            f'<details id="others"><summary>Other units ({len(others)}): best IoU \u2264 {t}'
            "</summary>",
            f'<div class="unitgrid">{"".join(others)}</div></details>',
        ]
    title = f"{model_name} \u2014 {result.alias}: network dissection"
    return write_bytes(path, _page(title, "\n".join(body)).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# the whole report


def _safe_stem(alias: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", alias).strip("._") or "layer"
    return f"{stem}_layer" if stem.lower() in _RESERVED_STEMS else stem


def _index_html(
    model_name: str, results: Sequence[LayerDissection], stems: list[str], extra: dict
) -> str:
    rows = []
    for r, stem in zip(results, stems, strict=True):
        page, tally = quote(f"{stem}.html"), quote(f"{stem}_tally.csv")
        rows.append(
            f'<tr><td><a href="{_e(page)}">{_e(r.alias)}</a></td>'
            f"<td><code>{_e(r.layer)}</code></td>"
            f'<td class="layerinfo-row">{_e(header_text(r))}</td>'
            f'<td><a href="{_e(tally)}">tally.csv</a></td></tr>'
        )
    items = []
    for key, value in jsonable(dict(extra)).items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > 400:
            text = text[:399] + "\u2026"
        items.append(f"<dt>{_e(key)}</dt><dd>{_e(text)}</dd>")
    body = [
        f"<h1>Network dissection \u2014 {_e(model_name)}</h1>",
        '<table class="layers"><tr><th>layer</th><th>tensor</th><th>detectors</th><th></th></tr>',
        *rows,
        "</table>",
        '<p><a href="summary.json">summary.json</a></p>',
    ]
    if items:
        body += ["<h2>Run</h2>", f'<dl class="extra">{"".join(items)}</dl>']
    return _page(f"{model_name}: network dissection", "\n".join(body))


def _model_name(extra: dict) -> str:
    for key in ("model_name", "model"):
        if isinstance(extra.get(key), str) and extra[key]:
            return extra[key]
    if extra.get("model_file"):
        return Path(os.fspath(extra["model_file"])).name
    return "model"


def write_dissection_report(
    out_dir: str | os.PathLike,
    results: Sequence[LayerDissection],
    unit_images_for_layer: Callable[[str], UnitImages | None] | None,
    extra: dict | None = None,
    *,
    model_name: str | None = None,
    top_k_shown: int = 5,
    compositional: Sequence[LayerComposition] | None = None,
) -> dict[str, Path]:
    """Write a whole dissection report into ``out_dir`` (see the module's docstring).

    Everything is first written into a hidden ``out_dir/.tmp-*`` folder, then moved into place
    by renames (unit folders first, ``index.html`` last), so that a failure leaves the previous
    report untouched and a reader never finds a page whose images are missing. Layer files are
    named after the alias, with characters other than ``A-Za-z0-9._-`` replaced by ``_``.

    Args:
        out_dir: the report folder, created if needed; other files in it are left alone.
        results: one dissection per layer; aliases must be distinct.
        unit_images_for_layer: ``f(alias)`` -> that layer's ``unit_images`` (see
            :func:`write_layer_html`), or None (or a None result) for pages without images.
        extra: free-form run information for ``summary.json`` and the index page.
        model_name: title of the pages; default ``extra["model_name"]``, ``extra["model"]``,
            the name of ``extra["model_file"]``, or "model".
        top_k_shown: images per unit.
        compositional: compositional explanations of some of the layers (a
            :class:`~pyanalyzer.methods.dissection.CompositionalResult`), shown beside the
            labels, appended to the CSV and in ``summary.json``; matched by layer name.

    Returns:
        Paths written: ``"index"``, ``"summary"``, and per layer ``"<alias>/html"``,
        ``"<alias>/tally"``, ``"<alias>/units"`` (the last only when images were written).
    """
    extra = dict(extra or {})
    aliases = [r.alias for r in results]
    if len(set(aliases)) != len(aliases):
        raise ValueError(f"layer aliases must be distinct, got {aliases}")
    name = model_name or _model_name(extra)
    stems: list[str] = []
    for alias in aliases:
        stem, n = _safe_stem(alias), 2
        base = stem
        while stem.lower() in {s.lower() for s in stems}:
            stem, n = f"{base}-{n}", n + 1
        stems.append(stem)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets the next run remove this folder at once if we are killed
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=out))
    try:
        for r, stem in zip(results, stems, strict=True):
            images = unit_images_for_layer(r.alias) if unit_images_for_layer else None
            comp = composition_for(compositional, r)
            write_tally_csv(tmp / f"{stem}_tally.csv", r, comp)
            write_layer_html(tmp / f"{stem}.html", r, images, name, top_k_shown=top_k_shown,
                             compositional=comp)  # fmt: skip
        write_summary_json(tmp / "summary.json", results, extra, compositional)
        write_bytes(tmp / "index.html", _index_html(name, results, stems, extra).encode())

        paths: dict[str, Path] = {}
        for r, stem in zip(results, stems, strict=True):
            units = tmp / f"{stem}_units"
            if units.is_dir():
                replace_path(units, out / units.name)
                paths[f"{r.alias}/units"] = out / units.name
            elif (out / units.name).is_dir():  # a stale folder from an earlier report
                shutil.rmtree(out / units.name, ignore_errors=True)
        for r, stem in zip(results, stems, strict=True):
            for key, fname in (("tally", f"{stem}_tally.csv"), ("html", f"{stem}.html")):
                replace_path(tmp / fname, out / fname)
                paths[f"{r.alias}/{key}"] = out / fname
        for key, fname in (("summary", "summary.json"), ("index", "index.html")):
            replace_path(tmp / fname, out / fname)
            paths[key] = out / fname
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_dissection(
    result: Sequence[LayerDissection],
    out_dir: str | os.PathLike,
    *,
    model: Any = None,
    dataset: Any = None,
    extra: dict | None = None,
    top_k_shown: int = 5,
    compositional: Sequence[LayerComposition] | None = None,
) -> dict[str, Path]:
    """Write the report of a dissection (:func:`write_dissection_report`), with each unit's top
    images and masks when the model and the concept dataset are given (they are read again to
    draw them; the numbers all come from ``result``).

    Args:
        result: the dissection (a :class:`~pyanalyzer.methods.dissection.DissectionResult` or
            any sequence of layers).
        out_dir: the report folder.
        model, dataset: the model and the concept dataset it was dissected against.
        extra: run information for ``summary.json`` and the index page.
        top_k_shown: images per unit.
        compositional: compositional explanations of the layers (a
            :class:`~pyanalyzer.methods.dissection.CompositionalResult`) to show beside the
            labels (:func:`write_dissection_report`).
    """
    providers: dict[str, UnitImages] = {}
    if model is not None and dataset is not None:
        from pyanalyzer.methods.dissection.visual import unit_image_provider

        providers = {
            r.alias: unit_image_provider(model, dataset, r, shown=top_k_shown) for r in result
        }
    return write_dissection_report(
        out_dir, list(result), providers.get, extra, top_k_shown=top_k_shown,
        compositional=compositional,
    )  # fmt: skip
