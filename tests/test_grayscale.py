"""Single-channel (grayscale) models through every command of the CLI, in-process.

Three gray models of the factory: ``[N, 1, 28, 28]`` (torch, NCHW), ``[N, 28, 28, 1]`` (NHWC, as
Keras exports MNIST) and ``[N, 1, H, W]`` with a symbolic size, run at a non-square 20x24 (so
that a height/width swap anywhere shows in the files' sizes). Every command must exit 0 and
write PNGs that open at the size the model's input implies, in gray (R = G = B) where the
content is the model's own view. The images given are RGB, RGBA and gray files: the
preprocessing brings each to one channel.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_factory as fac
import pytest
from cli_helpers import run_cli
from PIL import Image

from pyanalyzer.data import synthetic


@dataclass(frozen=True)
class Gray:
    path: Path
    flags: tuple[str, ...]  # the preprocessing flags the model needs
    size: tuple[int, int]  # (H, W) of the model input
    images: Path  # a folder of RGB, RGBA and gray files
    image: Path  # one RGB file

    def args(self, *more: str) -> list[str]:
        return [str(self.path), *self.flags, *more]


_KINDS = {
    "nchw": (fac.channels1, (), (28, 28)),
    "nhwc": (fac.gray_nhwc, (), (28, 28)),
    "dynamic": (fac.gray_dynamic, ("--input-size", "20x24"), (20, 24)),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gray_images")
    for i in range(4):
        Image.fromarray(synthetic.render(i, seed=5, size=40).image).save(d / f"rgb{i}.png")
    scene = Image.fromarray(synthetic.render(7, seed=5, size=48).image)
    scene.convert("L").save(d / "gray.png")
    scene.convert("RGBA").save(d / "rgba.png")
    return d


@pytest.fixture(scope="module", params=list(_KINDS))
def gray(request, tmp_path_factory, images) -> Gray:
    build, flags, size = _KINDS[request.param]
    path = build(tmp_path_factory.mktemp(f"gray_{request.param}"))
    return Gray(path, flags, size, images, images / "rgb1.png")


def _png(path: Path) -> np.ndarray:
    """The PNG's pixels (it must open), uint8 [H, W, C] or [H, W]."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


def _is_gray(a: np.ndarray) -> bool:
    return a.ndim == 2 or bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _tile(size: tuple[int, int], min_side: int = 128) -> tuple[int, int]:
    """(H, W) of an input-sized image enlarged for a montage (report.montage.upscale)."""
    f = max(1, math.ceil(min_side / min(size)))
    return size[0] * f, size[1] * f


def _grid_width(cols: int, tile_w: int, pad: int = 2) -> int:
    return cols * (tile_w + pad) + pad


def test_info(capsys, gray):
    code, out, err = run_cli(capsys, "info", *gray.args())
    assert code == 0, err
    h, w = gray.size
    assert "1ch" in out and "gray" in out and f"{h}x{w}" in out


def test_dissect_default_synthetic_concepts(capsys, gray, tmp_path):
    # The default concept scenes are RGB; the preprocessing makes them gray for the model.
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "dissect", *gray.args(
        "--layer", "relu2", "--n-images", "16", "--batch-size", "8", "--out", str(out_dir),
        "--store", str(tmp_path / "s.h5"), "--no-progress",
    ))  # fmt: skip
    assert code == 0, err
    for name in ("index.html", "relu2.html", "relu2_tally.csv", "summary.json"):
        assert (out_dir / name).is_file(), name
    json.loads((out_dir / "summary.json").read_text())
    strips = sorted((out_dir / "relu2_units").glob("*.png"))
    assert strips
    h, w = gray.size
    tile_w = max(1, round(w * 112 / h))  # each top image 112 px high, at the input's aspect
    for p in strips:
        a = _png(p)
        assert a.ndim == 3 and a.shape[2] == 3
        assert (a.shape[1] - 2) % (tile_w + 2) == 0 and a.shape[0] > 112, (p.name, a.shape)


@pytest.mark.parametrize(
    "objective, extra",
    [
        ("channel", ()),
        ("channel", ("--param", "pixel", "--regularizers", "yosinski2")),
        ("neuron", ()),
        ("class", ()),
        ("direction", ()),
    ],
)
def test_actmax_every_objective(capsys, gray, tmp_path, objective, extra):
    args = ["--objective", objective, "--steps", "2", *extra]
    if objective == "direction":
        directions = tmp_path / "dirs.npy"
        np.save(directions, np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32))
        args += ["--layer", "relu2", "--direction", str(directions)]
    elif objective == "class":
        args += ["--units", "0-1"]  # the class scores: no layer needed
    else:
        args += ["--layer", "relu2", "--units", "0-1"]
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "actmax", *gray.args(*args, "--out", str(out_dir),
                             "--store", str(tmp_path / "s.h5"), "--no-progress"))  # fmt: skip
    assert code == 0, err
    alias = "fc1" if objective == "class" else "relu2"
    h, w = gray.size
    for u in (0, 1):
        a = _png(out_dir / f"{alias}_{objective}_unit{u:04d}.png")
        assert a.shape[:2] == (h, w) and _is_gray(a)
    montage = _png(out_dir / f"{alias}_{objective}.png")
    assert montage.shape[1] == _grid_width(2, _tile((h, w))[1]) and _is_gray(montage)


def test_actmax_colour_decorrelation_is_refused_in_one_line(capsys, gray, tmp_path):
    code, _, err = run_cli(capsys, "actmax", *gray.args(
        "--layer", "relu2", "--units", "0", "--steps", "2", "--color-from", str(gray.images),
        "--out", str(tmp_path / "out"), "--store", str(tmp_path / "s.h5"), "--no-progress",
    ))  # fmt: skip
    assert code == 2 and "gray" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("method", ["deconv", "guided", "saliency"])
def test_deconv_on_an_image(capsys, gray, tmp_path, method):
    out_dir = tmp_path / "out"
    for name in ("rgb1.png", "gray.png"):  # an RGB and a gray file, both made gray
        code, out, err = run_cli(capsys, "deconv", *gray.args(
            "--layer", "relu2", "--unit", "0-1", "--image", str(gray.images / name),
            "--method", method, "--out", str(out_dir / name), "--store", str(tmp_path / "s.h5"),
            "--no-progress",
        ))  # fmt: skip
        assert code == 0, err
        th, tw = _tile(gray.size)
        for u in (0, 1):
            pair = _png(out_dir / name / f"relu2_unit{u:04d}_{method}.png")  # image, projection
            assert pair.shape[1] == _grid_width(2, tw) and pair.shape[0] > th and _is_gray(pair)
        layer = _png(out_dir / name / f"relu2_{method}.png")  # the image and both units
        assert layer.shape[1] == _grid_width(3, tw) and _is_gray(layer)


@pytest.mark.parametrize("source", ["folder", "synthetic"])
def test_deconv_top_patches(capsys, gray, tmp_path, source):
    args = ["--images", str(gray.images)] if source == "folder" else ["--n-images", "6"]
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "deconv", *gray.args(
        "--layer", "relu2", "--unit", "0-1", *args, "--top-k", "3", "--method", "guided",
        "--out", str(out_dir), "--store", str(tmp_path / "s.h5"), "--no-progress",
    ))  # fmt: skip
    assert code == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["relu2.png", "relu2_unit0000.png", "relu2_unit0001.png"]
    for name in names:  # gray patches beside gray projections, black captions
        a = _png(out_dir / name)
        assert a.ndim == 3 and min(a.shape[:2]) > 16 and _is_gray(a), name


def test_invert_train_then_every_method(capsys, gray, tmp_path):
    store = str(tmp_path / "s.h5")
    code, out, err = run_cli(capsys, "invert", "train", *gray.args(
        "--layer", "relu2", "--images", str(gray.images), "--epochs", "1", "--store", store,
        "--no-progress",
    ))  # fmt: skip
    assert code == 0, err
    h, w = gray.size
    th, tw = _tile(gray.size)
    for method in ("optim", "upconv", "both"):
        out_dir = tmp_path / method
        code, out, err = run_cli(capsys, "invert", *gray.args(
            "--image", str(gray.image), "--layer", "relu2", "--layer", "relu1", "--method",
            method, "--steps", "2", "--out", str(out_dir), "--store", store, "--no-progress",
        ) if method == "optim" else gray.args(
            "--image", str(gray.image), "--layer", "relu2", "--method", method, "--out",
            str(out_dir), "--store", store, "--no-progress",
        ))  # fmt: skip
        assert code == 0, err
        methods = ("optim", "upconv") if method == "both" else (method,)
        layers = ("relu2", "relu1") if method == "optim" else ("relu2",)
        for m in methods:
            for alias in layers:
                recon = _png(out_dir / f"{alias}_{m}.png")
                assert recon.shape == (h, w), (m, alias, recon.shape)  # a gray PNG
        strip = _png(out_dir / "inversion.png")  # per method: the original, then each layer
        assert strip.shape[1] == _grid_width(1 + len(layers), tw) and _is_gray(strip)
        assert strip.shape[0] > len(methods) * th
        metrics = json.loads((out_dir / "metrics.json").read_text())
        assert set(metrics) == set(methods)


def test_invert_train_on_the_default_scenes(capsys, gray, tmp_path, monkeypatch):
    from pyanalyzer.data import defaults

    monkeypatch.setattr(defaults, "TRAINING_IMAGES", 8)  # the RGB synthetic scenes, few
    code, out, err = run_cli(capsys, "invert", "train", *gray.args(
        "--layer", "relu2", "--epochs", "1", "--store", str(tmp_path / "s.h5"), "--no-progress",
    ))  # fmt: skip
    assert code == 0, err
    assert "8 synthetic scenes" in out


def test_report_helpers_take_one_channel_images(tmp_path):
    from pyanalyzer.report import grid, overlay_mask, save_png

    one = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    assert grid([one, one[..., 0]], cols=2).shape == (3 + 4, 2 * (4 + 2) + 2, 3)
    assert overlay_mask(one, np.ones((3, 4), bool), outline=False).shape == (3, 4, 3)
    a = _png(save_png(tmp_path / "g.png", one))
    assert a.shape == (3, 4) and (a == one[..., 0]).all()


def test_grey_arrays_in_the_python_api(tmp_path):
    import numpy as np

    import pyanalyzer as pa
    from pyanalyzer.data.images import model_images

    spec = pa.load_model(
        fac.tiny_cnn(tmp_path, channels=1, size=28), check_parity=False
    ).preprocessing
    batch = np.zeros((5, 28, 28), np.uint8)
    assert model_images(batch, spec).shape == (5, 28, 28, 1)  # [N, H, W] is a batch of greys
    assert model_images(batch[0], spec).shape == (1, 28, 28, 1)  # [H, W] is one grey image
    assert model_images(batch[..., None], spec).shape == (5, 28, 28, 1)
    with pytest.raises(pa.UserInputError, match=r"\(the model's input size, grey\)"):
        model_images(np.zeros((2, 28, 28, 3), np.uint8), spec)
