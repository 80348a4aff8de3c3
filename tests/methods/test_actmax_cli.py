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
