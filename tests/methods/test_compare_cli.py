"""`pyanalyzer compare`: the report files, the store, progress lines, one-line errors that
write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_cli
from compare_helpers import permute_channels

from pyanalyzer.data.broden import synth_dataset
from pyanalyzer.store import Store


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_model):
    d = tmp_path_factory.mktemp("compare-cli")
    perm = np.random.default_rng(5).permutation(128)
    permuted = permute_channels(default_model, d / "permuted.onnx", "conv4_1", perm)
    return {
        "ds": synth_dataset(d / "ds", n_images=48, size=64, progress=False),
        "permuted": permuted,
        "perm": perm,
    }


def _args(default_model, setup, tmp_path, *extra):
    return ["compare", str(default_model), str(setup["permuted"]), "--dataset", str(setup["ds"]),
            "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store"), *extra]  # fmt: skip


def test_compare_writes_the_page_and_json_and_reuses_the_store(
    capsys, monkeypatch, default_model, setup, tmp_path
):
    monkeypatch.setenv("PYANALYZER_PROGRESS", "1")  # the progress lines, as on a terminal
    args = _args(default_model, setup, tmp_path, "--layer", "relu6", "--layer", "relu5:relu6",
                 "--batch-size", "16", "--json")  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    for step in ("compare [1/3] model A (default.onnx): dissecting relu6, relu5\n",
                 "compare [2/3] model B (permuted.onnx): dissecting relu6\n",
                 "compare [3/3] correlating units and outputs over 48 images"):  # fmt: skip
        assert step in err
    doc = json.loads(out)  # stdout holds the JSON document only
    assert doc["method"] == "compare" and doc["from_store"] is False
    assert sorted(doc["files"]) == sorted(str(tmp_path / "out" / n) for n in
                                          ("index.html", "summary.json"))  # fmt: skip
    relu6, cross = doc["summary"]["layers"]
    inv = np.argsort(setup["perm"])
    assert [m["unit_b"] for m in relu6["matches"]] == inv.tolist()
    assert relu6["mean_correlation"] == pytest.approx(1, abs=1e-9)
    assert cross["resized"] is True and cross["size_b"] == [8, 8]
    assert doc["summary"]["outputs"]["top1_agreement"] == 1.0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["format"] == "pyanalyzer.compare.summary"
    assert summary["layers"] == doc["summary"]["layers"]
    assert summary["extra"]["model_b"].endswith("permuted.onnx")
    page = (tmp_path / "out" / "index.html").read_text()
    assert "default.onnx vs permuted.onnx" in page and 'name="viewport"' in page
    assert "resized bilinearly" in page and "<script" not in page
    methods = sorted({e.key.method for e in Store(tmp_path / "store").entries()})
    assert methods == ["compare", "dissect"]
    monkeypatch.setenv("PYANALYZER_PROGRESS", "0")
    code, out, err = run_cli(capsys, *args[:-1])  # again, human lines
    assert code == 0 and err == "", err
    lines = out.splitlines()
    same = int((np.argsort(setup["perm"]) == np.arange(128)).sum())
    assert lines[0].startswith(
        f"relu6 vs relu6: 128 units matched (A 128, B 128; {same} to the same index), mean r 1.000"
    )
    assert lines[1].startswith("relu5 vs relu6 (B resized 8x8 -> 16x16): 64 units matched")
    assert lines[2].startswith("outputs: top-1 agreement 100.0% over 48 images")
    assert lines[3].startswith("answered from the store; report in")


def test_same_file_twice_without_store(capsys, default_model, setup, tmp_path):
    args = ["compare", str(default_model), str(default_model), "--dataset", str(setup["ds"]),
            "--layer", "relu5", "--out", str(tmp_path / "out"), "--store",
            str(tmp_path / "store"), "--no-store", "--no-progress", "--json"]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    doc = json.loads(out)
    (layer,) = doc["summary"]["layers"]
    assert layer["same_index"] == 64 and layer["gained"] == layer["lost"] == layer["changed"] == []
    assert doc["summary"]["same_model"] is True
    assert not (tmp_path / "store").exists()  # --no-store: nothing stored


@pytest.mark.parametrize(
    ("models", "extra", "message"),
    [
        ("permuted", ["--layer", "relu66"], "model A (default.onnx): no layer named 'relu66'"),
        ("permuted", ["--layer", "relu5:relu66"], "model B (permuted.onnx): no layer named"),
        ("tiny64", ["--layer", "relu5"], "'relu5' was given for both models but model B"),
        ("tiny32", ["--layer", "relu5"], "different input sizes: model A (default.onnx) 64x64, "
                                         "model B (tiny_cnn_op13_dyn_nchw_32_c3.onnx) 32x32"),
        ("permuted", ["--layer", "fc1"], "not a spatial feature map"),
        ("permuted", ["--layer", "relu5", "--batch-size", "0"], "batch size must be >= 1"),
        ("permuted", ["--layer", "relu5", "--quantile", "2"], "quantile must be in (0, 1)"),
        ("missing", ["--layer", "relu5"], "missing.onnx"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    capsys, default_model, setup, tmp_path, models, extra, message
):
    from onnx_factory import tiny_cnn

    other = {
        "permuted": setup["permuted"],
        "tiny64": tiny_cnn(tmp_path / "m", size=64),
        "tiny32": tiny_cnn(tmp_path / "m", size=32),
        "missing": tmp_path / "missing.onnx",
    }[models]
    args = ["compare", str(default_model), str(other), "--dataset", str(setup["ds"]),
            "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store"), *extra]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert out == "" and not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


def test_compare_does_not_import_torch(default_model, setup, tmp_path):
    """Like dissect, compare needs no gradients: neither torch nor onnx2torch is imported."""
    import subprocess
    import sys

    args = ["compare", str(default_model), str(setup["permuted"]), "--layer", "relu6",
            "--dataset", str(setup["ds"]), "--out", str(tmp_path / "o"), "--store",
            str(tmp_path / "store"), "--no-progress"]  # fmt: skip
    code = (
        "import sys\nfrom pyanalyzer.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    rc = e.code\n"
        "print('RC', rc, 'torch' in sys.modules, 'onnx2torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "RC 0 False False", out.stderr[-2000:]
