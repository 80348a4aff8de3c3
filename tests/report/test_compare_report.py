"""The comparison report (:mod:`pyanalyzer.report.compare`) on a hand-made result: the numbers
of summary.json and the page, hostile names escaped, the same bytes twice, other files left
alone, and in a real browser at 375 px: no request leaves the page and nothing is wider than
the window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyanalyzer.methods.compare import ComparisonResult, LayerComparison, OutputAgreement
from pyanalyzer.report import has_writer, write_result
from pyanalyzer.report.compare import write_comparison
from pyanalyzer.report.dissection_data import jsonable

SCRIPT = "<script>alert(1)</script>"
NAMES = ["-", "car", SCRIPT, "wheel", "red"]
CATEGORY = np.array([-1, 0, 0, 1, 2])
CATEGORIES = ["object", "part", "color"]


def make_result() -> ComparisonResult:
    """A: 3 units (car, <script>, nothing), B: 4 units (car, wheel, nothing, constant); the
    matching pairs A0-B0 (car, kept), A1-B1 (<script> became wheel), A2-B2 (nothing)."""
    corr = np.array(
        [[0.9, 0.1, 0.0, np.nan], [0.2, 0.7, -0.1, np.nan], [0.0, 0.1, 0.4, np.nan]]
    )  # fmt: skip
    layer = LayerComparison(
        layer_a="/a/relu<5>", alias_a="relu5", layer_b="/b/relu5", alias_b="relu5",
        size_a=(16, 16), size_b=(8, 8), correlation=corr,
        matched_a=np.array([0, 1, 2]), matched_b=np.array([0, 1, 2]),
        constant_a=np.zeros(3, bool), constant_b=np.array([False, False, False, True]),
        best_a=np.array([1, 2, 4]), iou_a=np.array([0.3, 0.2, 0.01]),
        detector_a=np.array([True, True, False]),
        best_b=np.array([1, 3, 0, 0]), iou_b=np.array([0.25, 0.1, 0.0, 0.0]),
        detector_b=np.array([True, True, False, False]),
        concept_names=NAMES, concept_category=CATEGORY, categories=CATEGORIES,
        iou_threshold=0.04,
    )  # fmt: skip
    outputs = OutputAgreement(
        output_a="logits", output_b="logits", images=10, agree=8, abs_sum=1.4,
        count_a=np.array([5, 5, 0]), count_b=np.array([7, 3, 0]), both=np.array([5, 3, 0]),
        probabilities=("softmax", "softmax"), class_names=["cat", SCRIPT, "dog"],
    )  # fmt: skip
    card = {"file": "a.onnx", "sha256": "0" * 64, "preprocessing": {}, "class_names": None}
    return ComparisonResult(
        layers=[layer], outputs=outputs, outputs_note="",
        model_a=card, model_b={**card, "file": f"{SCRIPT}.onnx", "sha256": "1" * 64},
        images=10, quantile=0.005, iou_threshold=0.04,
    )  # fmt: skip


def test_the_layer_numbers():
    s = make_result().summary()
    (layer,) = s["layers"]
    assert layer["gained"] == ["wheel"] and layer["lost"] == [SCRIPT]
    assert layer["changed"] == [
        {"unit_a": 1, "unit_b": 1, "correlation": 0.7, "label_a": SCRIPT, "iou_a": 0.2,
         "label_b": "wheel", "iou_b": 0.1},
    ]  # fmt: skip
    assert layer["unmatched_b"] == [3] and layer["constant_b"] == [3]
    assert layer["mean_correlation"] == pytest.approx((0.9 + 0.7 + 0.4) / 3)
    assert layer["resized"] is True
    out = s["outputs"]
    assert out["top1_agreement"] == 0.8 and out["mean_abs_prob_diff"] == pytest.approx(1.4 / 30)
    assert [r["agreement"] for r in out["per_class"]] == [5 / 7, 3 / 5, None]


def test_files(tmp_path):
    result = make_result()
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert has_writer(result)
    paths = write_result(result, out, extra={"model_a": "/x/a.onnx", "run": 1}, model=None)
    assert set(paths) == {"summary", "index"}
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "mine.txt", "summary.json"]
    doc = json.loads((out / "summary.json").read_text())
    assert doc == {
        "format": "pyanalyzer.compare.summary", "version": 1,
        "extra": {"model_a": "/x/a.onnx", "run": 1}, **jsonable(result.summary()),
    }  # fmt: skip
    page = (out / "index.html").read_text()
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "/a/relu&lt;5&gt;" in page and "resized bilinearly" in page
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_comparison(result, out, extra={"model_a": "/x/a.onnx", "run": 1})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the same bytes


def test_page_in_a_browser_at_375_px(tmp_path):
    from report.conftest import offline_page

    paths = write_comparison(make_result(), tmp_path / "out")
    with offline_page(paths["index"]) as (page, external):
        width = page.evaluate("document.documentElement.scrollWidth")
        text = page.inner_text("body")
    assert external == [] and width <= 375, width
    assert "80.0%" in text and "wheel" in text and SCRIPT in text  # shown as text, not run
