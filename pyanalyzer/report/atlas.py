"""The model atlas as a static site (:class:`~pyanalyzer.methods.atlas.AtlasResult`).

One folder per model::

    index.html                         the model card, the layer table, the inversion strips
    atlas.css, atlas.js                the style sheet and the layer pages' sorting/filtering
    atlas.json                         the manifest: model, layers and units, settings, numbers
    samples/<i>.png                    the sample images of the inversion strips
    layers/<alias>/index.html          every unit of the layer as a card
    layers/<alias>/inversion-<i>.png   sample ``i`` reconstructed from the layer
    layers/<alias>/units/<n>.html      one page per unit (``n``: the channel, from 0)
    layers/<alias>/img/<n>/            actmax.png, patch-<r>.png, proj-<r>.png, mask-<r>.png

Pages open from ``file://`` with no network: no external asset, every image local with alt
text, the script optional (without it the cards stay in unit order, all shown). Layer pages of
large layers load quickly by *lazy loading*: every image has ``loading="lazy"`` and its size,
and cards off screen are skipped by layout (``content-visibility: auto``), so a page of 2,048
cards fetches the images of the first screen only.

The site is written into a hidden temporary folder inside ``out_dir`` and moved into place by
renames (layer folders first, ``index.html`` last): a failure or an interruption leaves the
previous site whole. Writing the same result again gives the same bytes (no dates in pages).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pyanalyzer._io import replace_path, sweep_stale_temps, write_bytes
from pyanalyzer.errors import UserInputError
from pyanalyzer.report.atlas_assets import CSS, JS
from pyanalyzer.report.montage import _as_rgb, overlay_mask

if TYPE_CHECKING:
    from pyanalyzer.methods.atlas import AtlasLayer, AtlasResult
    from pyanalyzer.model.forward import ImageSource

__all__ = ["FORMAT", "MANIFEST", "read_manifest", "unit_page", "write_atlas"]

FORMAT = "pyanalyzer.atlas"
MANIFEST = "atlas.json"
MASKS_SHOWN = 5
"""Top images of the dissection shown with the unit's mask on a unit page."""
CONCEPTS_SHOWN = 5
"""Concepts listed on a unit page, best IoU first."""


def _e(text: Any) -> str:
    """HTML-escape any value (layer, concept and file names come from users' files)."""
    return html.escape(str(text), quote=True)


def _stem(alias: str) -> str:
    """A layer's folder name: its alias with characters other than ``A-Za-z0-9._-`` as ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", alias).strip(".") or "layer"
    return stem


def unit_page(alias: str, unit: int) -> str:
    """The permalink of a unit's page, relative to the site's root."""
    return f"layers/{_stem(alias)}/units/{int(unit)}.html"


def read_manifest(site: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of the atlas site in ``site``, or None when the folder is missing or empty.

    Raises:
        UserInputError: the folder holds something that is not an atlas site, or a manifest
            that cannot be read.
    """
    folder = Path(site)
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise UserInputError(f"{site} is not a folder")
    path = folder / MANIFEST
    if not path.is_file():
        visible = [n for n in os.listdir(folder) if not n.startswith(".")]
        if visible:
            raise UserInputError(
                f"{site} is not empty and holds no atlas ({MANIFEST} is missing): give a new "
                "or empty folder, or an atlas site to extend"
            )
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserInputError(f"cannot read the atlas manifest {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserInputError(f"{path} is not an atlas manifest (format {FORMAT!r})")
    return doc


# ---- images --------------------------------------------------------------------------------


def _image_name(source: Any, index: int) -> str:
    """An image's name in its source (a file name), or "image N"."""
    name = getattr(source, "name", None)
    if callable(name):
        try:
            return str(name(int(index)))
        except (IndexError, KeyError, OSError):
            pass
    return f"image {int(index)}"


def _png(path: Path, image: np.ndarray) -> tuple[int, int]:
    """Save uint8 ``[H, W]`` or ``[H, W, C]`` as PNG (deterministic bytes); returns (w, h)."""
    img = Image.fromarray(_as_rgb(np.asarray(image), "image"))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return img.width, img.height


def _img(src: str, alt: str, size: tuple[int, int], *, lazy: bool = True, cls: str = "") -> str:
    w, h = size
    pixel = " px" if max(w, h) < 160 else ""
    klass = f' class="{(cls + pixel).strip()}"' if (cls + pixel).strip() else ""
    loading = ' loading="lazy" decoding="async"' if lazy else ""
    return f'<img src="{_e(src)}" alt="{_e(alt)}" width="{w}" height="{h}"{loading}{klass}>'


# ---- pages ---------------------------------------------------------------------------------


def _page(title: str, body: str, root: str, *, script: bool = False) -> str:
    js = f'\n<script src="{root}atlas.js" defer></script>' if script else ""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{_e(title)}</title>\n<link rel="stylesheet" href="{root}atlas.css">{js}\n'
        f"</head>\n<body>\n{body}\n<footer>Written by pyanalyzer atlas.</footer>\n"
        "</body>\n</html>\n"
    )


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "–"


class _Site:
    """Writes one atlas into a folder (see :func:`write_atlas`)."""

    def __init__(
        self,
        result: AtlasResult,
        root: Path,
        model: Any,
        dataset: Any,
        source: ImageSource,
        progress: bool,
    ):
        self.result = result
        self.root = root
        self.model = model
        self.dataset = dataset
        self.source = source
        self.progress = progress
        self.settings: dict[str, Any] = {}
        self.model_name = Path(str(result.model.get("path", "model"))).name
        self.stems = {layer.alias: _stem(layer.alias) for layer in result.layers}
        if len(set(self.stems.values())) != len(self.stems):
            raise UserInputError(f"layer folders would collide: {sorted(self.stems)}")

    # ---- helpers ---------------------------------------------------------------------------
    def _source_name(self, index: int) -> str:
        return _image_name(self.source, index)

    def _crumbs(self, root: str, *parts: tuple[str, str | None]) -> str:
        items = [f'<a href="{root}index.html">Atlas of {_e(self.model_name)}</a>']
        for text, href in parts:
            items.append(f'<a href="{_e(href)}">{_e(text)}</a>' if href else _e(text))
        return f'<nav class="crumbs" aria-label="breadcrumbs">{" › ".join(items)}</nav>'

    # ---- the whole site --------------------------------------------------------------------
    def write(self) -> int:
        from pyanalyzer._progress import progress_bar

        write_bytes(self.root / "atlas.css", CSS.encode())
        write_bytes(self.root / "atlas.js", JS.encode())
        self.sample_sizes = self._samples()
        pages = 1
        total = sum(len(layer.units) for layer in self.result.layers)
        with progress_bar(total, label="atlas pages", enabled=self.progress) as bar:
            for layer in self.result.layers:
                pages += self._layer(layer, bar)
        write_bytes(self.root / "index.html", self._index().encode())
        write_bytes(self.root / MANIFEST, self._manifest().encode())
        return pages

    def _samples(self) -> list[tuple[int, int]]:
        spec = self.model.preprocessing
        sizes = []
        for i, index in enumerate(self.result.samples):
            sizes.append(
                _png(self.root / "samples" / f"{i}.png", self.source.pixels(int(index), spec))
            )
        return sizes

    # ---- the index -------------------------------------------------------------------------
    def _index(self) -> str:
        r, m = self.result, self.result.model
        inp = m.get("input", {})
        shape = ", ".join(str(d) for d in inp.get("shape", []))
        sources: dict[str, list[str]] = {}
        for key, origin in (m.get("preprocessing_source") or {}).items():
            sources.setdefault(str(origin), []).append(str(key))
        origin = "; ".join(f"{k}: {', '.join(v)}" for k, v in sources.items()) or "defaults"
        classes = m.get("class_names") or []
        class_text = (
            f"{len(classes)}: {', '.join(classes[:20])}" + (f" (+{len(classes) - 20} more)"
            if len(classes) > 20 else "")
            if classes else "not named in the model"
        )  # fmt: skip
        ds = r.dataset
        src = r.source
        source_text = (
            f"the concept dataset's images ({src['images']})"
            if src.get("kind") == "dataset"
            else f"{_e(src.get('kind'))}, {src['images']} images"
        )
        facts = [
            ("file", f"<code>{_e(self.model_name)}</code>"),
            ("sha256", f"<code>{_e(m.get('sha256', ''))}</code>"),
            (
                "producer",
                _e(f"{m.get('producer') or '?'}; IR {m.get('ir_version')}, opset {m.get('opset')}"),
            ),  # fmt: skip
            (
                "input",
                _e(
                    f"{inp.get('name')} [{shape}] {inp.get('layout')}, "
                    f"{inp.get('channels')} channel(s), {inp.get('dtype')}"
                ),
            ),  # fmt: skip
            ("preprocessing", _e(m.get("preprocessing_text", ""))),
            ("preprocessing from", _e(origin)),
            ("parity", _e(m.get("parity_text") or "not checked")),
            ("classes", _e(class_text)),
            (
                "concept dataset",
                _e(
                    f"{ds['name']}: {ds['images']} images, categories "
                    f"{', '.join(ds['categories']) or '–'}"
                ),
            ),  # fmt: skip
            ("patches and samples from", source_text),
        ]
        card = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
        rows = []
        for layer in r.layers:
            info, d = layer.info, layer.dissection
            stem = self.stems[layer.alias]
            det = layer.detectors
            labels = Counter(
                d.concept_names[int(b)] for b in layer.best_concept[det] if int(b)
            ).most_common(3)
            top = ", ".join(f"{_e(name)} ({n})" for name, n in labels) or "–"
            size = (
                f"{info.channels} × {info.height} × {info.width}"
                if info.height is not None else f"{info.channels}"
            )  # fmt: skip
            rows.append(
                f'<tr><td><a href="layers/{stem}/index.html">{_e(layer.alias)}</a></td>'
                f"<td><code>{_e(info.name)}</code></td><td>{_e(info.op)}</td><td>{size}</td>"
                f'<td class="num">{len(layer.units)}</td>'
                f'<td class="num">{int(det.sum())}/{d.units}</td>'
                f'<td class="num">{len({int(b) for b in layer.best_concept[det]})}</td>'
                f"<td>{top}</td></tr>"
            )
        table = (
            '<div class="scroll"><table><thead><tr><th>layer</th><th>ONNX name</th><th>op</th>'
            '<th>map (C × H × W)</th><th class="num">units shown</th>'
            '<th class="num">detectors</th><th class="num">concepts</th>'
            "<th>most frequent detector labels</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table></div>"
        )
        body = (
            f"<header><h1>Atlas of {_e(self.model_name)}</h1>"
            '<p class="muted">What each unit prefers (activation maximization), what it '
            "detects (network dissection), where it fires (top image patches with their "
            "projections) and what each layer keeps of an image (inversion).</p></header>\n"
            f'<main><h2>The model</h2><dl class="facts">{card}</dl>\n'
            f'<h2>Layers</h2><p class="muted">A detector is a unit whose best IoU exceeds the '
            f"dissection's threshold.</p>{table}\n{self._inversion_table()}</main>"
        )
        return _page(f"Atlas of {self.model_name}", body, "")

    def _inversion_table(self) -> str:
        r = self.result
        layers = [layer for layer in r.layers if layer.inversion is not None]
        if not layers or not len(r.samples):
            return ""
        head = "".join(f"<th>{_e(layer.alias)}</th>" for layer in layers)
        rows = []
        for i, index in enumerate(r.samples):
            name = self._source_name(int(index))
            cells = [
                f"<td>{_img(f'samples/{i}.png', f'sample image {i}: {name}', self.sample_sizes[i])}</td>"
            ]
            for layer in layers:
                assert layer.inversion is not None
                err = float(layer.inversion.feature_error[i, 0])
                cells.append(
                    "<td>"
                    + _img(
                        f"layers/{self.stems[layer.alias]}/inversion-{i}.png",
                        f"sample image {i} reconstructed from {layer.alias}",
                        self.sample_sizes[i],
                    )
                    + f'<div class="muted">feature error {_fmt(err)}</div></td>'
                )
            rows.append(f"<tr>{''.join(cells)}</tr>")
        return (
            '<h2>What each layer keeps</h2><p class="muted">Sample images reconstructed from '
            "each layer's features by regularised optimisation (Mahendran &amp; Vedaldi 2015); "
            "the feature error is ‖Φ(x̂) − Φ(x)‖ / ‖Φ(x)‖.</p>"
            f'<div class="scroll"><table><thead><tr><th>original</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    # ---- a layer ---------------------------------------------------------------------------
    def _layer(self, layer: AtlasLayer, bar: Any) -> int:
        stem = self.stems[layer.alias]
        folder = self.root / "layers" / stem
        provider = self._masks(layer)
        cards = []
        for pos, u in enumerate(layer.units):
            prev_u = layer.units[pos - 1] if pos > 0 else None
            next_u = layer.units[pos + 1] if pos + 1 < len(layer.units) else None
            thumbs = self._unit(layer, u, folder, provider, prev_u, next_u)
            cards.append(self._card(layer, u, thumbs))
            bar.update(1)
        inversion = self._layer_inversion(layer, folder)
        write_bytes(folder / "index.html", self._layer_page(layer, cards, inversion).encode())
        return 1 + len(layer.units)

    def _masks(self, layer: AtlasLayer) -> Callable[[int], Sequence[Any]]:
        from pyanalyzer.methods.dissection.visual import unit_image_provider

        d = layer.dissection
        keep = np.full_like(d.top_images, -1)
        keep[layer.units] = d.top_images[layer.units]
        import dataclasses

        only_shown = dataclasses.replace(d, top_images=keep)  # masks of the shown units only
        return unit_image_provider(self.model, self.dataset, only_shown, shown=MASKS_SHOWN)

    def _unit(
        self,
        layer: AtlasLayer,
        u: int,
        folder: Path,
        masks: Callable[[int], Sequence[Any]],
        prev_u: int | None,
        next_u: int | None,
    ) -> dict[str, tuple[str, tuple[int, int]]]:
        """Write a unit's images and page; returns the card's thumbnails (src, size)."""
        alias, d, patches = layer.alias, layer.dissection, layer.patches
        img_dir = folder / "img" / str(u)
        row = layer.actmax_index(u)
        actmax_size = _png(img_dir / "actmax.png", layer.actmax.images[row])
        thumbs = {"actmax": (f"img/{u}/actmax.png", actmax_size)}

        # the top-k patches beside their projections
        figures = []
        projections = patches.projections.get(u)
        for j in range(patches.count(u)):
            index = int(patches.images[u, j])
            try:
                top, left, bottom, right = patches.box(u, j)
            except UserInputError:  # no receptive field: the whole image
                top, left, bottom, right = 0, 0, *patches.spec.input_size
            image = self.source.pixels(index, patches.spec)
            cut = image[top:bottom, left:right]
            size = _png(img_dir / f"patch-{j}.png", cut)
            if j == 0:
                thumbs["patch"] = (f"img/{u}/patch-0.png", size)
            name = self._source_name(index)
            pair = _img(f"../img/{u}/patch-{j}.png", f"patch {j + 1} of {alias} unit {u}: "
                        f"{name}", size)  # fmt: skip
            if projections is not None and j < len(projections):
                proj = projections[j][top:bottom, left:right]
                _png(img_dir / f"proj-{j}.png", proj)
                pair += _img(
                    f"../img/{u}/proj-{j}.png",
                    f"{patches.projection} projection of {alias} unit {u} on patch {j + 1}",
                    size,
                )
            value = float(patches.values[u, j])
            figures.append(
                f'<figure data-rank="{j}" data-value="{value!r}" data-image="{index}">'
                f'<div class="pair">{pair}</div><figcaption>{j + 1}. {_e(name)}, activation '
                f"{value:.4g}</figcaption></figure>"
            )

        # the unit's masks over its top images of the dissection
        mask_figs = []
        for j, (rgb, mask, peak) in enumerate(masks(u)):
            size = _png(img_dir / f"mask-{j}.png", overlay_mask(_as_rgb(rgb, "image"), mask))
            index = int(d.top_images[u, j])
            shown = _image_name(self.dataset, index)
            mask_figs.append(
                f'<figure data-rank="{j}" data-image="{index}">'
                + _img(
                    f"../img/{u}/mask-{j}.png", f"where {alias} unit {u} fires on {shown}", size
                )  # fmt: skip
                + f"<figcaption>{_e(shown)}, peak {peak:.4g}</figcaption></figure>"
            )

        concepts = layer.top_concepts(u, CONCEPTS_SHOWN)
        rows = "".join(
            f'<tr data-concept="{_e(name)}" data-iou="{iou!r}"><td>{_e(name)}</td>'
            f'<td>{_e(cat)}</td><td class="num">{iou:.4f}</td></tr>'
            for name, cat, iou in concepts
        )
        concept_table = (
            '<div class="scroll"><table class="concepts"><thead><tr><th>concept</th>'
            f'<th>category</th><th class="num">IoU</th></tr></thead><tbody>{rows}</tbody>'
            "</table></div>"
            if concepts
            else '<p class="muted">It overlaps no concept of the dataset.</p>'
        )
        best = int(layer.best_concept[u])
        label = d.concept_names[best] if best else None
        iou = float(layer.best_iou[u])
        detector = bool(layer.detectors[u])
        title = f"{alias} unit {u}" + (f": {label}" if label else "")
        nav = ['<nav class="pager" aria-label="units">']
        nav.append(f'<a href="{prev_u}.html" rel="prev">← unit {prev_u}</a>' if prev_u is not None
                   else "<span></span>")  # fmt: skip
        nav.append('<a href="../index.html">all units</a>')
        nav.append(f'<a href="{next_u}.html" rel="next">unit {next_u} →</a>' if next_u is not None
                   else "<span></span>")  # fmt: skip
        nav.append("</nav>")
        reached = float(layer.actmax.reached[row])
        start = float(layer.actmax.start[row])
        top_value = float(patches.values[u, 0]) if patches.count(u) else float("nan")
        verdict = (
            f'<span class="badge">detector</span> IoU {iou:.4f} with {_e(label)}'
            if detector
            else (f"best IoU {iou:.4f} ({_e(label)}), under the threshold "
                  f"{d.iou_threshold:g}" if label else "no concept")
        )  # fmt: skip
        body = (
            "<header>"
            + self._crumbs("../../../", (alias, "../index.html"), (f"unit {u}", None))
            + f"<h1>{_e(title)}</h1>"
            + f'<p id="summary" data-unit="{u}" data-iou="{iou!r}" data-label="{_e(label or "")}" '
            f'data-detector="{int(detector)}" data-threshold="{float(d.thresholds[u])!r}" '
            f'data-actmax="{reached!r}">{verdict}; activation threshold '
            f"{float(d.thresholds[u]):.4g} (the top {d.quantile:g} of its activations)</p>"
            + "".join(nav)
            + "</header>\n<main>"
            + "<h2>What it prefers</h2>"
            + '<div class="figs"><figure class="big">'
            + _img(
                f"../img/{u}/actmax.png",
                f"the image that maximises {alias} unit {u}",
                actmax_size,
                lazy=False,
            )  # fmt: skip
            + f"<figcaption>channel mean {reached:.4g} (start {start:.4g}); "
            f"{int(layer.actmax.curve.shape[0])} steps</figcaption></figure></div>"
            + f"<h2>What it detects</h2>{concept_table}"
            + f"<h2>Where it fires: top {len(figures)} patches"
            + (
                ""
                if patches.projection == "none"
                else f" and their {_e(patches.projection)} projections"
            )  # fmt: skip
            + "</h2>"
            + f'<p class="muted">Over {patches.n_images} images; strongest activation '
            f"{_fmt(top_value, 4)}.</p>"
            + f'<div class="figs" id="patches">{"".join(figures)}</div>'
            + "<h2>Its masks over its top images</h2>"
            + '<p class="muted">Where the unit exceeds its threshold on the concept dataset '
            "images that excite it most (the masks the IoU is computed from).</p>"
            + f'<div class="figs" id="masks">{"".join(mask_figs)}</div>'
            + "".join(nav)
            + "</main>"
        )
        write_bytes(folder / "units" / f"{u}.html", _page(title, body, "../../../").encode())
        return thumbs

    def _card(self, layer: AtlasLayer, u: int, thumbs: Mapping[str, Any]) -> str:
        d = layer.dissection
        best = int(layer.best_concept[u])
        label = d.concept_names[best] if best else ""
        cat = d.categories[int(d.concept_category[best])] if best else ""
        iou = float(layer.best_iou[u])
        detector = bool(layer.detectors[u])
        src, size = thumbs["actmax"]
        images = [
            f'<a href="units/{u}.html">'
            + _img(src, f"the image that maximises {layer.alias} unit {u}", size)
            + "</a>"
        ]
        if "patch" in thumbs:
            src, size = thumbs["patch"]
            images.append(
                f'<a href="units/{u}.html">'
                + _img(src, f"the image patch that excites {layer.alias} unit {u} most", size)
                + "</a>"
            )
        concept = (
            f'<div class="concept">{_e(label)} <span class="muted">({_e(cat)})</span></div>'
            if label
            else '<div class="concept none">no concept</div>'
        )
        badge = ' <span class="badge">detector</span>' if detector else ""
        return (
            f'<article class="card" id="unit-{u}" data-unit="{u}" data-iou="{iou!r}" '
            f'data-label="{_e(label)}" data-category="{_e(cat)}" data-detector="{int(detector)}">'
            f'<div class="thumbs">{"".join(images)}</div>'
            f'<div class="name"><a href="units/{u}.html">unit {u}</a>{badge}</div>'
            f'{concept}<div class="iou">IoU {iou:.3f}</div></article>'
        )

    def _layer_inversion(self, layer: AtlasLayer, folder: Path) -> str:
        inv = layer.inversion
        if inv is None:
            return ""
        recon = inv.uint8()[:, 0]
        figures = []
        for i in range(len(recon)):
            _png(folder / f"inversion-{i}.png", recon[i])
            name = self._source_name(int(self.result.samples[i]))
            size = self.sample_sizes[i]
            figures.append(
                '<figure><div class="pair">'
                + _img(f"../../samples/{i}.png", f"sample image {i}: {name}", size)
                + _img(
                    f"inversion-{i}.png", f"sample image {i} reconstructed from {layer.alias}", size
                )  # fmt: skip
                + f"</div><figcaption>{_e(name)}: feature error "
                f"{_fmt(float(inv.feature_error[i, 0]))}</figcaption></figure>"
            )
        return (
            '<h2>What the layer keeps</h2><p class="muted">Each sample image beside its '
            "reconstruction from this layer's features (Mahendran &amp; Vedaldi 2015).</p>"
            f'<div class="strip">{"".join(figures)}</div>'
        )

    def _layer_page(self, layer: AtlasLayer, cards: list[str], inversion: str) -> str:
        d, info = layer.dissection, layer.info
        cats = sorted({d.categories[int(d.concept_category[int(layer.best_concept[u])])]
                       for u in layer.units if int(layer.best_concept[u])})  # fmt: skip
        options = "".join(f'<option value="{_e(c)}">{_e(c)}</option>' for c in cats)
        det = layer.detectors
        toolbar = (
            '<div class="toolbar" id="toolbar" hidden>'
            '<label>Sort by <select id="sort"><option value="unit">unit</option>'
            '<option value="iou">IoU, highest first</option><option value="label">label</option>'
            "</select></label>"
            '<label>Concept category <select id="category"><option value="">all</option>'
            f"{options}</select></label>"
            '<label><input type="checkbox" id="detectors"> detectors only</label>'
            f'<span id="count" aria-live="polite">{len(cards)} of {len(cards)} units shown</span>'
            "</div>"
        )
        size = f"{info.channels} × {info.height} × {info.width}" if info.height else ""
        body = (
            "<header>"
            + self._crumbs("../../", (layer.alias, None))
            + f'<h1>{_e(layer.alias)} <span class="muted">({_e(info.op)} {size}, '
            f"<code>{_e(info.name)}</code>)</span></h1>"
            + f"<p>{int(det.sum())} of {d.units} units are detectors (IoU &gt; "
            f"{d.iou_threshold:g}), covering {len({int(b) for b in layer.best_concept[det]})} "
            f"concepts; {len(layer.units)} unit(s) shown. Each card: the image the unit "
            "prefers, the patch that excites it most, its best concept.</p></header>\n"
            f"<main>{toolbar}"
            f'<div class="units" id="units">{"".join(cards)}</div>{inversion}</main>'
        )
        return _page(f"{layer.alias}: atlas of {self.model_name}", body, "../../", script=True)

    # ---- the manifest ----------------------------------------------------------------------
    def _manifest(self) -> str:
        from pyanalyzer.report.dissection_data import jsonable

        r = self.result
        doc = {
            "format": FORMAT,
            "version": 1,
            "model": {"file": self.model_name, "sha256": r.model.get("sha256")},
            "layers": [
                {
                    "alias": layer.alias,
                    "name": layer.info.name,
                    "folder": f"layers/{self.stems[layer.alias]}",
                    "units": [int(u) for u in layer.units],
                }
                for layer in r.layers
            ],
            "params": r.params,
            "settings": self.settings,
            # the numbers, without which parts this run computed (the same site either way)
            "summary": {k: v for k, v in r.summary().items() if k != "parts"},
        }
        return json.dumps(jsonable(doc), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def write_atlas(
    result: AtlasResult,
    out_dir: str | os.PathLike[str],
    *,
    model: Any,
    dataset: Any,
    source: ImageSource | None = None,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the atlas site of ``result`` into ``out_dir`` (see the module).

    Args:
        result: an :class:`~pyanalyzer.methods.atlas.AtlasResult`.
        out_dir: the site's folder: new, empty, or an atlas site of the same model (its pages
            are replaced; layer folders the result does not hold are removed).
        model: the model (the masks are drawn from its activations on the top images).
        dataset: the concept dataset the atlas was built on.
        source: the image source of the patches and samples (default: the dataset).
        settings: free-form, kept in the manifest (the CLI keeps its options there, so that
            extending a site reuses them).
        progress: a progress bar over the unit pages.

    Returns:
        ``{"index": Path, "pages": int, "files": int}``.

    Raises:
        UserInputError: ``out_dir`` holds something else, or the atlas of another model.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    sha = result.model.get("sha256")
    if manifest is not None and manifest.get("model", {}).get("sha256") != sha:
        raise UserInputError(
            f"{out_dir} holds the atlas of another model "
            f"({manifest.get('model', {}).get('file')}); give another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out, work_dirs=True)
    # the pid in the name lets the next run remove this folder at once if we are killed
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=out))
    try:
        site = _Site(result, tmp, model, dataset, source if source is not None else dataset,
                     progress)  # fmt: skip
        site.settings = dict(settings or {})
        pages = site.write()
        (out / "layers").mkdir(exist_ok=True)
        stems = set(site.stems.values())
        for stem in sorted(stems):
            replace_path(tmp / "layers" / stem, out / "layers" / stem)
        for old in sorted((out / "layers").iterdir()):
            if old.name not in stems and not old.name.startswith("."):
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
        samples = tmp / "samples"
        if samples.is_dir():
            replace_path(samples, out / "samples")
        elif (out / "samples").is_dir():
            shutil.rmtree(out / "samples", ignore_errors=True)
        for name in ("atlas.css", "atlas.js", MANIFEST, "index.html"):
            replace_path(tmp / name, out / name)
        files = sum(len(f) for _, _, f in os.walk(out))
        return {"index": out / "index.html", "pages": pages, "files": files}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
