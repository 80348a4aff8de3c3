"""The dissection report: montage helpers, tally.csv, summary.json, HTML pages, a real browser.

The layer under test (conftest.make_result) has 4 units and 6 concepts in 3 categories. IoU =
intersect / (unit area over the concept's category + concept area - intersect):

    unit 1 (channel 0): car 30/(60+100-30)=30/130, wheel 20/(60+40-20)=20/80,
                        red 5/(90+200-5)=5/285                   -> best wheel 0.25
    unit 2 (channel 1): <script> 20/(40+50-20)=20/70, blue 10/(50+80-10)=10/120
                                                                  -> best <script> 0.2857
    unit 3 (channel 2): car 1/(10+100-1)=1/109                    -> best car 0.0092 (< 0.04)
    unit 4 (channel 3): car 10/(80+100-10)=10/170, wheel 30/(40+40-30)=30/50,
                        blue 30/(80+80-30)=30/130                 -> best wheel 0.6

so 3/4 units are detectors, covering 2 concepts (wheel twice, <script> once): part 2,
object 1, color 0.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyanalyzer.methods.dissection.result import LayerDissection
from pyanalyzer.report import (
    grid,
    header_text,
    overlay_mask,
    save_png,
    upscale,
    write_dissection_report,
    write_layer_html,
    write_summary_json,
    write_tally_csv,
)

# Concepts (0 = unlabelled) and their categories; concept 2's name is hostile on purpose.
SCRIPT = "<script>alert(1)</script>"
NAMES = ["-", "car", SCRIPT, "wheel", "window", "red", "blue"]
CATEGORY_OF = [0, 0, 0, 1, 1, 2, 2]
CATEGORIES = ["object", "part", "color"]


def make_result(alias: str = "conv3") -> LayerDissection:
    """4 units, 6 concepts in 3 categories; the IoUs are worked out in test_dissection_report."""
    return LayerDissection(
        layer=f"/features/{alias}/Relu_output_0",
        alias=alias,
        thresholds=np.array([0.5, 1.25, 2.0, 0.125], dtype=np.float32),
        intersection=np.array(
            [
                [0, 30, 0, 20, 0, 5, 0],
                [0, 0, 20, 0, 0, 0, 10],
                [0, 1, 0, 0, 0, 0, 0],
                [0, 10, 0, 30, 0, 0, 30],
            ],
            dtype=np.int64,
        ),
        unit_area_cat=np.array(
            [[60, 60, 90], [40, 20, 50], [10, 10, 10], [80, 40, 80]], dtype=np.int64
        ),
        unit_area=np.array([100, 60, 12, 120], dtype=np.int64),
        concept_area=np.array([0, 100, 50, 40, 30, 200, 80], dtype=np.int64),
        concept_names=list(NAMES),
        concept_category=np.array(CATEGORY_OF, dtype=np.int64),
        categories=list(CATEGORIES),
        top_images=np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1]], dtype=np.int64),
        top_values=np.array(
            [[3.0, 2.0, 1.0], [4.0, 3.5, 3.0], [2.5, 2.4, 2.3], [1.0, 0.5, 0.25]],
            dtype=np.float32,
        ),
        quantile=0.005,
        iou_threshold=0.04,
        n_images=3,
    )


def make_unit_images(k: int = 3, size: tuple[int, int] = (24, 32), empty=()) -> Callable:
    """``unit_images(channel)``: k random images with a rectangle mask that moves with the unit."""

    def unit_images(u: int):
        if u in empty:
            return []
        rng = np.random.default_rng(u)
        out = []
        for i in range(k):
            rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            mask = np.zeros(size, dtype=bool)
            mask[2 + u : 12 + u, 4 + 2 * i : 20 + 2 * i] = True
            out.append((rgb, mask, float(k - i) + u / 10))
        return out

    return unit_images


HEADER = "3/4 units covering 2 concepts with IoU \u2265 0.04"

# unit -> (category, label, score, {cat: (label, truth, activation, intersect, iou)})
EXPECTED = {
    4: (
        "part",
        "wheel",
        30 / 50,
        {
            "object": ("car", 100, 80, 10, 10 / 170),
            "part": ("wheel", 40, 40, 30, 30 / 50),
            "color": ("blue", 80, 80, 30, 30 / 130),
        },
    ),
    2: (
        "object",
        SCRIPT,
        20 / 70,
        {
            "object": (SCRIPT, 50, 40, 20, 20 / 70),
            "part": ("", 0, 20, 0, 0.0),
            "color": ("blue", 80, 50, 10, 10 / 120),
        },
    ),
    1: (
        "part",
        "wheel",
        20 / 80,
        {
            "object": ("car", 100, 60, 30, 30 / 130),
            "part": ("wheel", 40, 60, 20, 20 / 80),
            "color": ("red", 200, 90, 5, 5 / 285),
        },
    ),
    3: (
        "object",
        "car",
        1 / 109,
        {
            "object": ("car", 100, 10, 1, 1 / 109),
            "part": ("", 0, 10, 0, 0.0),
            "color": ("", 0, 10, 0, 0.0),
        },
    ),
}


# ------------------------------------------------------------------------------------------
# montage helpers


def test_overlay_mask_dims_outside_and_outlines_boundary():
    rgb = np.full((6, 6, 3), 200, dtype=np.uint8)
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:5, 1:5] = True

    plain = overlay_mask(rgb, mask, alpha=0.5, outline=False)
    assert plain.shape == (6, 6, 3) and plain.dtype == np.uint8
    assert (plain[mask] == 200).all() and (plain[~mask] == 100).all()

    drawn = overlay_mask(rgb, mask, color=(1, 2, 3), alpha=0.5, outline=True, thickness=1)
    ring = mask.copy()
    ring[2:4, 2:4] = False
    assert (drawn[ring] == [1, 2, 3]).all()
    assert (drawn[2:4, 2:4] == 200).all() and (drawn[~mask] == 100).all()
    assert (rgb == 200).all()  # input untouched


def test_overlay_mask_border_is_not_a_boundary_and_grey_is_accepted():
    grey = np.full((5, 5), 50, dtype=np.uint8)
    out = overlay_mask(grey, np.ones((5, 5), dtype=bool), alpha=1.0)
    assert out.shape == (5, 5, 3) and (out == 50).all()
    assert (overlay_mask(grey, np.zeros((5, 5), dtype=bool), alpha=1.0) == 0).all()


def test_overlay_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="mask"):
        overlay_mask(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="uint8"):
        overlay_mask(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), bool))


def test_grid_layout_and_labels():
    a = np.full((4, 5, 3), 10, dtype=np.uint8)
    b = np.full((2, 3, 3), 20, dtype=np.uint8)
    out = grid([a, a, a, b], cols=3, pad=2, bg=255)
    # cells 4x5; 2 rows, 3 columns, pad around and between
    assert out.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2, 3)
    assert (out[2:6, 2:7] == 10).all() and (out[2:6, 16:21] == 10).all()
    assert (out[8:10, 2:5] == 20).all() and (out[10:12, 2:7] == 255).all()
    assert (out[:2] == 255).all() and (out[:, :2] == 255).all()

    wide = np.full((4, 30, 3), 10, dtype=np.uint8)
    labelled = grid([wide, b], cols=2, labels=["3.5", "a long label, cut to fit"])
    assert labelled.shape[1] == 2 * 32 + 2 and labelled.shape[0] > 2 + 4 + 6
    assert (labelled[2 + 4 :, 2:32] < 128).any()  # text under the first tile
    assert (labelled[2 + 4 :, 34:64] < 128).any()  # and the second's, cut
    assert (labelled[:, 64:] == 255).all()  # not beyond its cell
    with pytest.raises(ValueError):
        grid([], cols=2)
    with pytest.raises(ValueError):
        grid([a], cols=1, labels=["x", "y"])


def test_upscale_nearest_integer_factor():
    m = np.arange(49, dtype=np.float32).reshape(7, 7)
    up = upscale(m, min_side=128)
    assert up.shape == (133, 133)  # factor ceil(128 / 7) = 19
    assert (up[:19, :19] == 0).all() and (up[-19:, -19:] == 48).all()
    big = np.zeros((200, 300, 3), np.uint8)
    assert upscale(big) is big


def test_save_png_round_trip_leaves_no_temporary(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = save_png(tmp_path / "sub" / "a.png", img)
    assert (np.asarray(Image.open(path)) == img).all()
    save_png(path, img[:, :, 0])  # overwrite in place
    assert np.asarray(Image.open(path)).shape == (5, 7)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]


# ------------------------------------------------------------------------------------------
# tally.csv and summary.json


def test_tally_csv_matches_netdissect_columns_and_hand_ious(tmp_path):
    path = write_tally_csv(tmp_path / "conv3_tally.csv", make_result())
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        rows = list(reader)
    expected_header = ["unit", "category", "label", "score"]
    for cat in CATEGORIES:
        expected_header += [f"{cat}-{k}" for k in ("label", "truth", "activation", "intersect")]
        expected_header.append(f"{cat}-iou")
    assert header == expected_header
    # sorted by score, highest first; units 1-based
    assert [int(r["unit"]) for r in rows] == [4, 2, 1, 3]
    for row in rows:
        cat, label, score, per_cat = EXPECTED[int(row["unit"])]
        assert (row["category"], row["label"]) == (cat, label)
        assert float(row["score"]) == pytest.approx(score, rel=1e-12)
        for c, (lab, truth, act, inter, iou) in per_cat.items():
            assert row[f"{c}-label"] == lab
            assert int(row[f"{c}-truth"]) == truth
            assert int(row[f"{c}-activation"]) == act
            assert int(row[f"{c}-intersect"]) == inter
            assert float(row[f"{c}-iou"]) == pytest.approx(iou, rel=1e-12)


def test_summary_json(tmp_path):
    extra = {
        "model_file": tmp_path / "m.onnx",
        "sha256": "ab" * 32,
        "timings": {"tally": np.float64(1.5), "bad": float("nan")},
        "net2vec": {"wheel": np.array([0.5, 0.25])},
    }
    path = write_summary_json(tmp_path / "summary.json", [make_result()], extra)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "pyanalyzer.dissection.summary" and doc["version"] == 1
    assert doc["extra"] == {
        "model_file": str(tmp_path / "m.onnx"),
        "sha256": "ab" * 32,
        "timings": {"tally": 1.5, "bad": None},
        "net2vec": {"wheel": [0.5, 0.25]},
    }
    (layer,) = doc["layers"]
    assert layer["alias"] == "conv3" and layer["units"] == 4 and layer["detectors"] == 3
    assert layer["unique_concepts"] == 2 and layer["header"] == HEADER
    assert layer["detectors_per_category"] == {"object": 1, "part": 2, "color": 0}
    recs = layer["unit_records"]
    assert [r["unit"] for r in recs] == [1, 2, 3, 4]
    assert [r["channel"] for r in recs] == [0, 1, 2, 3]
    assert [r["label"] for r in recs] == ["wheel", SCRIPT, "car", "wheel"]
    assert [r["detector"] for r in recs] == [True, True, False, True]
    for r in recs:
        assert r["iou"] == pytest.approx(EXPECTED[r["unit"]][2], rel=1e-12)
    assert [r["threshold"] for r in recs] == [0.5, 1.25, 2.0, 0.125]


def test_header_threshold_format():
    r = make_result()
    assert header_text(r) == HEADER
    r.iou_threshold = np.float32(0.04)
    assert header_text(r).endswith("IoU \u2265 0.04")
    r.iou_threshold = 0.035
    assert header_text(r).endswith("IoU \u2265 0.035")


# ------------------------------------------------------------------------------------------
# the layer page


def _svg_bars(page: str, chart: str) -> dict[str, int]:
    m = re.search(rf'<svg[^>]*data-chart="{chart}".*?</svg>', page, re.S)
    assert m, f"no {chart} chart"
    root = ET.fromstring(m.group(0))  # inline SVG must be well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    bars = {}
    for g in root.iter(f"{ns}g"):
        count = g.find(f"{ns}text[@class='count']")
        assert int(count.text) == int(g.get("data-count"))
        bars[g.get("data-label")] = int(g.get("data-count"))
    return bars


def test_layer_html(tmp_path):
    path = write_layer_html(
        tmp_path / "conv3.html", make_result(), make_unit_images(), "tiny<model>.onnx"
    )
    page = path.read_text(encoding="utf-8")
    assert f'id="layerinfo">{HEADER}</p>' in page
    assert _svg_bars(page, "category") == {"object": 1, "part": 2, "color": 0}
    assert _svg_bars(page, "concept") == {SCRIPT: 1, "wheel": 2}
    # escaping: the hostile concept name and model name appear only escaped
    assert SCRIPT not in page and "tiny<model>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # ours, the optional image check
    # no network: nothing refers to http(s)
    assert not re.search(r"(src|href)=\"https?:", page)
    # detectors by IoU, then the others in a collapsed section
    units = [int(u) for u in re.findall(r'data-unit="(\d+)"', page)]
    assert units == [4, 2, 1, 3]
    assert page.index('<details id="others">') < page.index('data-unit="3"')
    # images: relative paths to decodable PNG strips, one per unit
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == [f"conv3_units/unit_{u:04d}.png" for u in (4, 2, 1, 3)]
    for src in srcs:
        img = np.asarray(Image.open(tmp_path / src))
        assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] >= 112
        assert img.std() > 10


def test_layer_html_units_without_images(tmp_path):
    path = write_layer_html(
        tmp_path / "l.html", make_result(), make_unit_images(empty=(1,)), "m", top_k_shown=2
    )
    page = path.read_text(encoding="utf-8")
    assert page.count('class="noimages"') == 1
    assert sorted(p.name for p in (tmp_path / "l_units").iterdir()) == [
        "unit_0001.png",
        "unit_0003.png",
        "unit_0004.png",
    ]
    nothing = write_layer_html(tmp_path / "n.html", make_result(), None, "m")
    assert nothing.read_text().count('class="noimages"') == 4
    assert not (tmp_path / "n_units").exists()


# ------------------------------------------------------------------------------------------
# the whole report


def _report(out: Path, aliases=("conv3", "fc<6>"), **kw):
    results = [make_result(a) for a in aliases]
    return write_dissection_report(
        out, results, lambda alias: make_unit_images(), {"model_file": "/x/tiny.onnx"}, **kw
    )


def test_report_files_and_links(tmp_path):
    out = tmp_path / "report"
    paths = _report(out, aliases=("conv3", "fc<6>", "index"))
    assert paths["index"] == out / "index.html" and paths["summary"] == out / "summary.json"
    assert paths["fc<6>/html"] == out / "fc_6.html"
    assert paths["index/html"] == out / "index_layer.html"  # never overwrites index.html
    assert paths["conv3/tally"] == out / "conv3_tally.csv"
    assert paths["conv3/units"] == out / "conv3_units"
    for p in paths.values():
        assert p.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    index = paths["index"].read_text(encoding="utf-8")
    for href in re.findall(r'href="([^"]+)"', index):
        assert (out / href).exists(), href
    assert index.count(HEADER) == 3 and "tiny.onnx" in index
    assert "fc&lt;6&gt;" in index and "<6>" not in index


def test_report_replaces_old_report_atomically(tmp_path):
    out = tmp_path / "report"
    _report(out)
    (out / "conv3_units" / "stale.png").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")

    def broken(alias):
        raise RuntimeError("boom")

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RuntimeError, match="boom"):
        write_dissection_report(out, [make_result("conv3")], broken, {})
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # a failed run changes nothing
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    _report(out)
    assert not (out / "conv3_units" / "stale.png").exists()  # the folder was replaced
    assert (out / "notes.txt").read_text() == "mine"  # other files are left alone
    with pytest.raises(ValueError, match="distinct"):
        write_dissection_report(out, [make_result(), make_result()], None, {})


# ------------------------------------------------------------------------------------------
# a real browser (Chromium, headless): skipped when none is installed


def test_browser_renders_report(tmp_path, browser):
    out = tmp_path / "report"
    paths = _report(out)
    dom = browser(paths["conv3/html"], "--dump-dom").stdout
    assert f'id="layerinfo">{HEADER}</p>' in dom
    body = re.search(r"<body[^>]*>", dom).group(0)
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body).group(1))
    broken = int(re.search(r'data-images-broken="(\d+)"', body).group(1))
    assert broken == 0 and loaded >= 3  # the three detectors' strips (others load lazily)
    assert "<script>alert" not in dom.replace("<script>\naddEventListener", "")

    index_dom = browser(paths["index"], "--dump-dom").stdout
    assert index_dom.count(HEADER) == 2
    assert 'data-images-broken="0"' in index_dom

    shot = tmp_path / "shot.png"
    browser(paths["conv3/html"], f"--screenshot={shot}", "--window-size=1200,1000")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (1000, 1200)
    # not blank: text, bars and unit images give many distinct colours
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200
