"""`pyanalyzer invert`: the strip, metrics, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_cli
from PIL import Image

from pyanalyzer.data import synthetic


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(synthetic.render(2, seed=8, size=64).image).save(path)
    return path


def test_invert_optim_strip_and_metrics(capsys, default_model, image, tmp_path):
    code, out, err = run_cli(capsys, "invert", str(default_model), "--image", str(image), "--layer",
                             "relu2", "--layer", "relu4", "--steps", "20", "--out", str(tmp_path / "o"),
                             "--store", str(tmp_path / "s.h5"), "--no-progress")  # fmt: skip
    assert code == 0, err
    strip = np.asarray(Image.open(tmp_path / "o" / "inversion.png"))
    assert strip.ndim == 3 and strip.shape[1] > strip.shape[0]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert set(metrics["optim"]) == {"relu2", "relu4"}


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--image", "BAD", "--layer", "relu2"], "cannot read image"),
        (["--layer", "relu2", "--method", "upconv"], "no decoder trained"),
        (
            ["--layer", "relu2", "--layer", "relu4", "--method", "both"],
            "no decoder trained for relu2, relu4 of this model",
        ),
        (["--layer", "relu22"], "did you mean"),
    ],
)
def test_invert_bad_input(capsys, default_model, image, tmp_path, extra, msg):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    extra = [str(bad) if e == "BAD" else e for e in extra]
    if "--image" not in extra:
        extra = ["--image", str(image), *extra]
    code, _, err = run_cli(capsys, "invert", str(default_model), *extra, "--out",
                           str(tmp_path / "o"), "--store", str(tmp_path / "s.h5"))  # fmt: skip
    assert code == 2 and msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.h5").exists()
    if "no decoder" in msg:  # the suggested command trains into the store that was named
        assert f"--layer relu2 --store {tmp_path / 's.h5'}`" in err


def test_invert_train_then_upconv_and_both(capsys, default_model, image, tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(synthetic.render(i % 7, seed=i, size=64).image).save(folder / f"{i}.png")
    store = str(tmp_path / "s.h5")
    code, out, err = run_cli(capsys, "invert", "train", str(default_model), "--layer", "relu4",
                             "--images", str(folder), "--epochs", "2", "--store", store,
                             "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "decoder for relu4 ready" in out and "6 images (files), 2 epochs" in out
    assert "trained in" in out
    code, out, err = run_cli(capsys, "invert", str(default_model), "--image", str(image),
                             "--layer", "relu4", "--method", "both", "--steps", "5",
                             "--out", str(tmp_path / "o"), "--store", store, "--no-progress")  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert set(metrics) == {"optim", "upconv"} and set(metrics["upconv"]) == {"relu4"}
    assert (tmp_path / "o" / "relu4_upconv.png").is_file()
    # a second training request answers from the store
    code, out, err = run_cli(capsys, "invert", "train", str(default_model), "--layer", "relu4",
                             "--images", str(folder), "--epochs", "2", "--store", store,
                             "--no-progress")  # fmt: skip
    assert code == 0 and "loaded from the store" in out, err


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--layer", "relu4", "--images", "{missing}"], "does not exist"),
        (["--layer", "relu4", "--images", "{empty}"], "holds no images"),
        (["--layer", "relu44"], "did you mean"),
        (["--layer", "relu4", "--epochs", "0"], "epochs"),
    ],
)
def test_invert_train_bad_input(capsys, default_model, tmp_path, extra, msg):
    (tmp_path / "empty").mkdir()
    extra = [e.format(missing=tmp_path / "nope", empty=tmp_path / "empty") for e in extra]
    code, _, err = run_cli(capsys, "invert", "train", str(default_model), *extra,
                           "--store", str(tmp_path / "s.h5"))  # fmt: skip
    assert code == 2 and msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "s.h5").exists()


def test_invert_cli_vector_layer_and_upconv_refuses_optim_options(capsys, default_model, image,
                                                                   tmp_path):  # fmt: skip
    code, out, err = run_cli(capsys, "invert", str(default_model), "--image", str(image),
                             "--layer", "fc1", "--steps", "5", "--out", str(tmp_path / "o"),
                             "--store", str(tmp_path / "s.h5"), "--no-progress")  # fmt: skip
    assert code == 0 and "optim  fc1" in out, err
    code, _, err = run_cli(capsys, "invert", str(default_model), "--image", str(image),
                           "--layer", "relu2", "--method", "upconv", "--steps", "0", "--seed",
                           "3", "--out", str(tmp_path / "o2"), "--store",
                           str(tmp_path / "s2.h5"))  # fmt: skip
    assert code == 2 and "--steps, --seed apply to --method optim or both" in err, err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "s2.h5").exists()


def test_invert_device_option(capsys, default_model, image, tmp_path):
    # documented in the group's help and in each form's options
    for args in (["invert", "--help"], ["invert", str(default_model), "--help"],
                 ["invert", "train", "--help"]):  # fmt: skip
        code, out, _ = run_cli(capsys, *args)
        assert code == 0 and "--device" in out and "cuda" in out, args
    # --device reaches both methods and the training; it is not part of what the store keys
    folder = tmp_path / "train"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(synthetic.render(i, seed=i, size=64).image).save(folder / f"{i}.png")
    store = ["--store", str(tmp_path / "s.h5"), "--no-progress"]
    train = ["invert", "train", str(default_model), "--layer", "relu4", "--images", str(folder),
             "--epochs", "1", *store]  # fmt: skip
    code, out, err = run_cli(capsys, *train, "--device", "cpu")
    assert code == 0 and "trained in" in out, err
    code, out, err = run_cli(capsys, *train)  # auto: found whatever the device
    assert code == 0 and "loaded from the store" in out, err
    both = ["invert", str(default_model), "--image", str(image), "--layer", "relu4", "--method",
            "both", "--steps", "3", "--json", *store]  # fmt: skip
    code, out, err = run_cli(capsys, *both, "--device", "cpu", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert json.loads(out)["from_store"] == {"optim": False, "upconv": False}
    code, out, err = run_cli(capsys, *both, "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert json.loads(out)["from_store"] == {"optim": True, "upconv": True}
    assert (tmp_path / "a" / "metrics.json").read_text() == (
        tmp_path / "b" / "metrics.json"
    ).read_text()
