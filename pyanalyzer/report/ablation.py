"""Files that report a unit ablation (:class:`~pyanalyzer.methods.ablation.AblationResult`).

One run writes, into one folder::

    index.html      per class the units it relies on most (with their dissection labels when a
                    dissection of the layer is stored), the sets ablated together, and every
                    unit's effect (self-contained: inline CSS, no script, no network)
    units.csv       per unit: label, flipped fraction, accuracy drop, the class it hurts most,
                    and the mean change of every class's score and probability
    classes.csv     per class and rank: the unit, its class accuracy drop and score change
    summary.json    the result's summary

Unit numbers are channel indices (0-based), as in the Python API and ``--units``.
"""

from __future__ import annotations

import csv
import html
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer._io import replace_path, write_bytes, write_json

if TYPE_CHECKING:
    from pyanalyzer.methods.ablation import AblationResult

__all__ = ["write_ablation"]

_FILES = {
    "units": "units.csv",
    "classes": "classes.csv",
    "summary": "summary.json",
    "index": "index.html",
}  # in the order they are moved into place

_CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:12px;color:#222}
h1{font-size:1.4em;overflow-wrap:anywhere}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;display:block;overflow-x:auto;max-width:100%}
th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
.neg{color:#b00}.pos{color:#070}.muted{color:#777}
p.note{color:#555;font-size:.9em;max-width:70ch}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _f(x: float, digits: int = 3) -> str:
    return f"{x:+.{digits}f}" if np.isfinite(x) else "–"


def _signed(x: float, digits: int = 3) -> str:
    cls = "neg" if x < 0 else "pos" if x > 0 else "muted"
    return f'<span class="{cls}">{_f(x, digits)}</span>'


def _label(result: AblationResult, u: int) -> str:
    lab = result.unit_labels.get(int(u))
    if not lab or not lab.get("concept"):
        return ""
    return f"{lab['concept']} ({lab['iou']:.2f}{', detector' if lab.get('detector') else ''})"


def _csv(rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _units_csv(r: AblationResult) -> bytes:
    head = ["unit", "concept", "flipped", "accuracy", "accuracy_drop", "most_hurt_class"]
    head += [f"score_change:{c}" for c in r.class_names]
    head += [f"prob_change:{c}" for c in r.class_names]
    rows: list[list[Any]] = [head]
    for i, u in enumerate(r.units):
        hurt = int(np.argmin(r.class_delta_score[i])) if len(r.class_names) else 0
        rows.append(
            [int(u), _label(r, u), f"{r.flipped[i]:.6g}", f"{r.accuracy[i]:.6g}",
             f"{r.accuracy_drop[i]:.6g}", r.class_names[hurt]]
            + [f"{v:.6g}" for v in r.delta_score[i]]
            + [f"{v:.6g}" for v in r.delta_prob[i]]
        )  # fmt: skip
    return _csv(rows)


def _classes_csv(r: AblationResult, per_class: int) -> bytes:
    rows: list[list[Any]] = [
        ["class", "rank", "unit", "concept", "class_accuracy_drop", "class_score_change"]
    ]
    for k, name in enumerate(r.class_names):
        for rank, i in enumerate(r.ranking(k)[:per_class], 1):
            u = int(r.units[i])
            rows.append(
                [name, rank, u, _label(r, u), f"{r.class_accuracy_drop[i, k]:.6g}",
                 f"{r.class_delta_score[i, k]:.6g}"]
            )  # fmt: skip
    return _csv(rows)


def _html(r: AblationResult, model_name: str, per_class: int) -> str:
    labelled = r.labels_source != "predicted"
    acc_word = "accuracy" if labelled else "agreement with the intact model"
    parts = [
        f"<h1>Unit ablation: {_e(model_name)}, layer {_e(r.alias)}</h1>",
        f"<p>{len(r.units)} unit(s) of <code>{_e(r.layer)}</code> ablated one at a time "
        f"(set to zero) on {r.n_images} image(s); output <code>{_e(r.output)}</code>. "
        f"Intact {acc_word}: {r.base_accuracy:.3f}.</p>",
        '<p class="note">Classes of the images: '
        + {
            "given": "the labels given.",
            "synthetic": "the synthetic scenes' own classes.",
            "predicted": "the intact model's top-1 (no labels given): accuracies are "
            "agreement with the intact model.",
        }.get(r.labels_source, _e(r.labels_source))
        + " A unit's importance to a class is the drop of that class's "
        + acc_word
        + " when the unit is ablated, then the drop of its score on its images. "
        + ("Labels come from the stored dissection of this layer." if r.unit_labels else "")
        + "</p>",
        "<h2>What each class relies on</h2>",
        "<table><thead><tr><th>class</th><th>images</th><th>intact</th>"
        "<th>units, most important first</th></tr></thead><tbody>",
    ]
    for k, name in enumerate(r.class_names):
        cells = []
        for i in r.ranking(k)[:per_class]:
            u = int(r.units[i])
            lab = r.unit_labels.get(u, {}).get("concept")
            cells.append(
                f"{u}{f' ({_e(lab)})' if lab else ''} "
                f"<span class='muted'>[{_f(-r.class_accuracy_drop[i, k], 2)} acc, "
                f"{_f(r.class_delta_score[i, k], 2)} score]</span>"
            )
        parts.append(
            f"<tr><td>{_e(name)}</td><td>{int(r.class_images[k])}</td>"
            f"<td>{r.base_class_accuracy[k]:.3f}</td>"
            f"<td style='text-align:left;white-space:normal'>{', '.join(cells)}</td></tr>"
        )
    parts.append("</tbody></table>")
    if r.sets:
        parts += [
            "<h2>Units ablated together</h2>",
            "<table><thead><tr><th>set</th><th>units</th><th>flipped</th>"
            f"<th>{_e(acc_word)} change</th><th>its class's change</th></tr></thead><tbody>",
        ]
        for j, s in enumerate(r.sets):
            cl = s.get("class")
            own = (
                _signed(r.set_class_accuracy[j, cl] - r.base_class_accuracy[cl])
                if cl is not None
                else "–"
            )
            parts.append(
                f"<tr><td>{_e(s['name'])}</td><td>{_e(', '.join(map(str, s['units'])))}</td>"
                f"<td>{r.set_flipped[j]:.3f}</td>"
                f"<td>{_signed(r.set_accuracy[j] - r.base_accuracy)}</td><td>{own}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts += [
        "<h2>Every unit</h2>",
        "<table><thead><tr><th>unit</th><th>concept</th><th>flipped</th>"
        f"<th>{_e(acc_word)} change</th><th>class hurt most</th><th>its score change</th>"
        "</tr></thead><tbody>",
    ]
    order = np.argsort(-r.flipped, kind="stable")
    for i in order:
        hurt = int(np.argmin(r.class_delta_score[i]))
        parts.append(
            f"<tr><td>{int(r.units[i])}</td><td>{_e(_label(r, int(r.units[i])))}</td>"
            f"<td>{r.flipped[i]:.3f}</td><td>{_signed(-r.accuracy_drop[i])}</td>"
            f"<td>{_e(r.class_names[hurt])}</td>"
            f"<td>{_signed(r.class_delta_score[i, hurt])}</td></tr>"
        )
    parts.append("</tbody></table>")
    body = "\n".join(parts)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Ablation of {_e(r.alias)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_ablation(
    result: AblationResult,
    out_dir: str | os.PathLike[str],
    *,
    model: Any = None,
    extra: dict[str, Any] | None = None,
    per_class: int = 10,
) -> dict[str, Path]:
    """Write the ablation report into ``out_dir`` (see the module); every file is written into
    a hidden temporary folder first and moved into place, ``index.html`` last.

    Returns:
        ``{"index", "units", "classes", "summary"}`` → path.
    """
    name = Path(str(getattr(model, "path", "") or "model")).name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=out))
    try:
        write_bytes(tmp / "units.csv", _units_csv(result))
        write_bytes(tmp / "classes.csv", _classes_csv(result, per_class))
        write_json(tmp / "summary.json", {**(extra or {}), **result.summary()})
        write_bytes(tmp / "index.html", _html(result, name, per_class).encode())
        paths = {}
        for key, fname in _FILES.items():
            replace_path(tmp / fname, out / fname)
            paths[key] = out / fname
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
