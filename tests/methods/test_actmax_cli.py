"""`pyanalyzer actmax`: PNGs, the store, one-line errors."""

from __future__ import annotations

import pytest
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
