"""`pyanalyzer actmax`: PNGs, the store, one-line errors."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import run_cli

from pyanalyzer.store import Store


def test_actmax_cli_writes_pngs_and_reuses_the_store(capsys, default_model, tmp_path):
    args = ["actmax", str(default_model), "--layer", "relu6", "--units", "0-1", "--steps", "8",
            "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s.h5"), "--no-progress"]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "relu6_channel.png", "relu6_channel_unit0000.png", "relu6_channel_unit0001.png",
    ]  # fmt: skip
    assert [e.key.method for e in Store(tmp_path / "s.h5").entries()] == ["actmax"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "(from the store)" in out


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--layer", "relu6", "--units", "128"], "out of range"),
        (["--layer", "relu6", "--regularizers", "yosinski9"], "unknown regularizer set"),
        (["--layer", "relu66"], "did you mean"),
        (["--layer", "relu6", "--param", "fft", "--regularizers", "yosinski1"], "pixel"),
        (["--layer", "relu6", "--batch-size", "0"], "batch size must be >= 1, got 0"),
        (
            ["--layer", "relu6", "--units", "-1"],
            "unit -1 is out of range: layer relu6 has units 0..127",
        ),
        (["--layer", "relu4", "--objective", "class"], "class objectives read class scores [N, K]"),
        pytest.param(
            ["--layer", "relu6", "--device", "cuda"],
            "device='cuda' was requested but CUDA is unavailable",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
    ],
)
def test_actmax_bad_input(capsys, default_model, tmp_path, extra, msg):
    code, _, err = run_cli(capsys, "actmax", str(default_model), *extra, "--steps", "2",
                           "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s.h5"))  # fmt: skip
    assert code == 2 and msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.h5").exists()


def test_actmax_cli_direction_objective(capsys, default_model, tmp_path):
    import numpy as np

    dirs = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    np.save(tmp_path / "d.npy", dirs)
    args = ["actmax", str(default_model), "--layer", "relu5", "--objective", "direction",
            "--direction", str(tmp_path / "d.npy"), "--steps", "8", "--out", str(tmp_path / "o"),
            "--store", str(tmp_path / "s.h5"), "--no-progress"]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "2 direction(s), direction" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "relu5_direction.png", "relu5_direction_unit0000.png", "relu5_direction_unit0001.png",
    ]  # fmt: skip
    # other directions in the same file name are another computation, not the stored one
    np.save(tmp_path / "d.npy", -dirs)
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "(from the store)" not in out, err
    assert len(Store(tmp_path / "s.h5").entries()) == 2


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--objective", "direction"], "--objective direction needs --direction FILE"),
        (["--direction", "{d64}"], "--direction is used with --objective direction only"),
        (["--objective", "direction", "--direction", "{d32}"], "the directions have 32 entries"),
        (["--objective", "direction", "--direction", "{d64}", "--units", "3"],
         "direction 3 is out of range: 1 direction(s) were given (0..0)"),
        (["--objective", "direction", "--direction", "{missing}"], "does not exist"),
        (["--objective", "direction", "--direction", "{bad}"], "cannot read direction file"),
    ],
)  # fmt: skip
def test_actmax_cli_bad_directions(capsys, default_model, tmp_path, extra, msg):
    import numpy as np

    np.save(tmp_path / "d64.npy", np.ones(64, np.float32))
    np.save(tmp_path / "d32.npy", np.ones(32, np.float32))
    (tmp_path / "bad.txt").write_text("1 2 x\n")
    files = {"d64": tmp_path / "d64.npy", "d32": tmp_path / "d32.npy",
             "missing": tmp_path / "nope.npy", "bad": tmp_path / "bad.txt"}  # fmt: skip
    extra = [e.format(**files) for e in extra]
    code, _, err = run_cli(capsys, "actmax", str(default_model), "--layer", "relu5", *extra,
                           "--steps", "2", "--out", str(tmp_path / "o"),
                           "--store", str(tmp_path / "s.h5"))  # fmt: skip
    assert code == 2 and msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.h5").exists()


def test_actmax_cli_color_from_a_folder_and_start(capsys, default_model, tmp_path):
    import numpy as np
    from PIL import Image

    import pyanalyzer as pa
    from pyanalyzer.data.images import ImageFolder
    from pyanalyzer.methods.actmax import (
        ActmaxResult,
        color_correlation_from_images,
        mean_color,
    )

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # reddish noise: a colour covariance far from ImageNet's
        px = rng.integers(0, 256, (64, 64, 3))
        px[..., 1:] //= 4
        Image.fromarray(px.astype(np.uint8)).save(folder / f"{i}.png")
    store = tmp_path / "s.h5"
    base = ["actmax", str(default_model), "--layer", "relu6", "--units", "0", "--steps", "4",
            "--out", str(tmp_path / "o"), "--store", str(store), "--no-progress"]  # fmt: skip
    assert run_cli(capsys, *base)[0] == 0
    code, out, err = run_cli(capsys, *base, "--color-from", str(folder), "--start", "mean")
    assert code == 0 and "(from the store)" not in out, err
    m = pa.load_model(default_model, check_parity=False)
    infos = pa.ActivationMaximization.stored(Store(store), m.sha256)  # parameters as resolved
    assert len(infos) == 2 and len(Store(store).entries()) == 2
    custom = next(e for e in infos if e.params["color"] != "imagenet")
    assert custom.params["start"] == "mean" and np.asarray(custom.params["color"]).shape == (3, 3)
    assert np.allclose(custom.params["color"], color_correlation_from_images(
        ImageFolder(folder), pa.load_model(default_model, check_parity=False).preprocessing),
        atol=1e-6)  # fmt: skip
    # the mean start has no noise: "start" is the unit's activation on the plain mean image
    entry = Store(store).get(custom.info.key)
    got = ActmaxResult.from_stored(entry.arrays, entry.extra["result"])
    grey = np.full((1, 64, 64, 3), 255 * np.asarray(mean_color(m.preprocessing)))
    (acts,) = m.forward.run(m.preprocessing.normalize(grey), [m.layer("relu6").name]).values()
    assert np.isclose(got.start[0], acts[0, 0].mean(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--param", "pixel", "--color-from", "{folder}"], "--color-from applies to --param fft"),
        (["--color-from", "{missing}"], "does not exist"),
        (["--start", "zeros"], "Invalid value for '--start'"),
    ],
)
def test_actmax_cli_bad_color_or_start(capsys, default_model, tmp_path, extra, msg):
    (tmp_path / "empty").mkdir()
    extra = [e.format(folder=tmp_path / "empty", missing=tmp_path / "nope") for e in extra]
    code, _, err = run_cli(capsys, "actmax", str(default_model), "--layer", "relu6", *extra,
                           "--steps", "2", "--out", str(tmp_path / "o"),
                           "--store", str(tmp_path / "s.h5"))  # fmt: skip
    assert code == 2 and msg in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.h5").exists()


def test_actmax_cli_interrupted_run_resumes_from_its_last_batch(
    capsys, default_model, tmp_path, monkeypatch
):
    import importlib

    import numpy as np
    from PIL import Image

    render_mod = importlib.import_module("pyanalyzer.methods.actmax.method")  # the caller

    store = tmp_path / "s.h5"
    args = ["actmax", str(default_model), "--layer", "relu6", "--units", "0-5", "--steps", "6",
            "--batch-size", "2", "--store", str(store), "--no-progress"]  # fmt: skip
    real = render_mod.render
    calls = []

    def interrupted(*a, **k):  # Ctrl-C during the third batch
        calls.append(k["keys"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(render_mod, "render", interrupted)
    code, _, err = run_cli(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 130 and err.strip() == "interrupted" and not (tmp_path / "a").exists(), err
    entries = Store(store).entries()
    assert [e.key.method for e in entries] == ["actmax/partial"]
    assert len(Store(store).get(entries[0].key)["pixels"]) == 4  # two batches kept

    calls.clear()
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 0 and "(4 resumed from a checkpoint)" in out, err
    assert calls == [[4, 5]]  # only the missing batch ran
    assert [e.key.method for e in Store(store).entries()] == ["actmax"]  # checkpoint dropped

    # the same images as a run that was never interrupted
    monkeypatch.setattr(render_mod, "render", real)
    code, _, err = run_cli(capsys, *args[:-3], "--store", str(tmp_path / "fresh.h5"),
                           "--no-progress", "--out", str(tmp_path / "b"))  # fmt: skip
    assert code == 0, err
    for u in range(6):
        name = f"relu6_channel_unit{u:04d}.png"
        a = np.asarray(Image.open(tmp_path / "a" / name))
        b = np.asarray(Image.open(tmp_path / "b" / name))
        assert np.array_equal(a, b), name
