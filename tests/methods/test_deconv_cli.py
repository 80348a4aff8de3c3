"""`pyanalyzer deconv`: PNGs, store reuse, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import run_cli
from PIL import Image

from pyanalyzer.data import synthetic
from pyanalyzer.store import Store
from pyanalyzer.units import parse_units


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    for i in range(12):
        Image.fromarray(synthetic.render(i, seed=3, size=64).image).save(d / f"{i:02d}.png")
    return d


def test_patches_and_projections_from_a_folder(
    capsys, default_model, folder, tmp_path, monkeypatch
):
    store = tmp_path / "s.h5"
    args = ["deconv", str(default_model), "--layer", "relu6", "--unit", "0-2", "--images",
            str(folder), "--top-k", "4", "--out", str(tmp_path / "out"), "--store", str(store),
            "--no-progress"]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["relu6.png", "relu6_unit0000.png", "relu6_unit0001.png", "relu6_unit0002.png"]
    # two entries: the scan (kept on its own, the same for any units) and the projections
    assert [e.key.method for e in Store(store).entries()] == ["patches", "patches"]
    first = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    # The rerun answers from the store: no image is scanned (no forward pass at all) and
    # nothing is projected again; the files are the same.
    from pyanalyzer.methods.deconvnet import Projector
    from pyanalyzer.model.forward import ForwardEngine

    passes = []
    real_run = ForwardEngine.run

    def counting_run(self, *a, **k):
        passes.append(1)
        return real_run(self, *a, **k)

    def refuse(*a, **k):
        raise AssertionError("projected again")

    monkeypatch.setattr(ForwardEngine, "run", counting_run)
    monkeypatch.setattr(Projector, "project", refuse)
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "(from the store)" in out, err
    assert passes == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == first


def test_single_image_each_method(capsys, default_model, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(synthetic.render(1, seed=4, size=80).image).save(img)
    for method in ("deconv", "guided", "saliency"):
        code, _, err = run_cli(capsys, "deconv", str(default_model), "--layer", "relu5", "--unit",
                               "3", "--image", str(img), "--method", method, "--out",
                               str(tmp_path / "o"), "--store", str(tmp_path / "s.h5"))  # fmt: skip
        assert code == 0, err
        png = np.asarray(Image.open(tmp_path / "o" / f"relu5_unit0003_{method}.png"))
        assert png.ndim == 3 and png.std() > 0


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--unit", "128"], "out of range"),
        (["--unit", "x-y"], "expected N, A-B"),
        (["--layer", "fc1"], "not a spatial feature map"),
        (["--layer", "relu66"], "did you mean"),
        (["--image", "BAD"], "cannot read image"),
        (["--image", "MISSING"], "does not exist"),
        (["--top-k", "0"], "k must be >= 1"),
    ],
)
def test_bad_input_exit_2_nothing_written(capsys, default_model, tmp_path, extra, msg):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    extra = [
        str(bad) if e == "BAD" else str(tmp_path / "nope.png") if e == "MISSING" else e
        for e in extra
    ]
    args = [
        "deconv",
        str(default_model),
        "--out",
        str(tmp_path / "o"),
        "--store",
        str(tmp_path / "s.h5"),
    ]
    if "--layer" not in extra:
        args += ["--layer", "relu6"]
    if "--unit" not in extra:
        args += ["--unit", "1"]
    if "--image" not in extra:
        args += ["--image", str(tmp_path / "ok.png")]
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    code, out, err = run_cli(capsys, *args, *extra)
    assert code == 2 and msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.h5").exists()


def test_parse_units():
    assert parse_units("3", 8) == [3]
    assert parse_units("1-3,6", 8) == [1, 2, 3, 6]
    assert parse_units("all", 4) == [0, 1, 2, 3]
