"""The CLI's contract: output, JSON, exit codes, one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx_factory as fac
import pytest
from cli_helpers import run_cli


def test_version_and_module_entry_point():
    from pyanalyzer import __version__

    r = subprocess.run(
        [sys.executable, "-m", "pyanalyzer", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and __version__ in r.stdout


def test_info_json_layers(capsys, tmp_path):
    path = fac.tiny_cnn(tmp_path)
    code, out, err = run_cli(capsys, "info", str(path), "--json")
    assert code == 0, err
    data = json.loads(out)
    names = [layer["name"] for layer in data["layers"]]
    for key in ("name", "alias", "op", "channels", "height", "width"):
        assert all(key in layer for layer in data["layers"])
    # Graph order: the order in which nodes produce them in the ONNX file.
    import onnx

    order = [o for n in onnx.load(path).graph.node for o in n.output]
    assert names == sorted(names, key=order.index)
    assert data["parity"]["ok"] and data["opset"] == 13
    assert data["input"]["layout"] == "nchw" and data["preprocessing"]["input_size"] == [32, 32]


def test_info_table_and_flags(capsys, tmp_path):
    path = fac.tiny_cnn(tmp_path)
    code, out, _ = run_cli(capsys, "info", str(path), "--preprocess", "caffe", "--std", "2,2,2")
    assert code == 0
    assert "bgr" in out and "[2, 2, 2]" in out and "conv1" in out and "parity" in out


def test_doctor(capsys):
    code, out, _ = run_cli(capsys, "doctor", "--json")
    data = json.loads(out)
    assert (
        code == 0 and data["_core"] == "loaded" and "CPUExecutionProvider" in data["ort providers"]
    )


BAD_MODELS = {
    "missing": (lambda d: d / "nope.onnx", "does not exist"),
    "directory": (lambda d: d, "is a directory"),
    "empty": (fac.empty_file, "is empty"),
    "random bytes": (fac.random_bytes, "not an ONNX model"),
    "truncated": (fac.truncated, "not an ONNX model"),
    "invalid graph": (fac.invalid_graph, "not a valid ONNX model"),
    "no image input": (fac.not_image_model, "no image-like input"),
    "17 channels": (fac.odd_channels, "no image-like input"),
    "external ../": (
        lambda d: fac.external_data_outside(d, kind="parent"),
        "outside the model's folder",
    ),
    "external absolute": (lambda d: fac.external_data_outside(d, kind="absolute"), "absolute path"),
    "external passwd": (lambda d: fac.external_data_outside(d, kind="passwd"), "absolute path"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_models_exit_2_one_line(capsys, tmp_path, case):
    make, msg = BAD_MODELS[case]
    d = tmp_path / "m"
    d.mkdir()
    path = make(d)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, err = run_cli(capsys, "info", str(path))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and msg in err, err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--std", "0,1,1"], "std must be positive"),
        (["--mean", "1,2"], "mean has 2 values"),
        (["--input-size", "64x64"], "contradicts the model input"),
        (["--layout", "nhwc"], "contradicts the model input"),
        (["--scale", "0"], "scale must be"),
        (["--mean", "a,b,c"], "not a comma-separated list"),
    ],
)
def test_impossible_preprocessing_exit_2(capsys, tmp_path, flags, msg):
    path = fac.tiny_cnn(tmp_path)
    code, out, err = run_cli(capsys, "info", str(path), *flags)
    assert code == 2 and err.count("\n") == 1 and msg in err, err


def test_unknown_layer_suggests_closest(capsys, tmp_path):
    path = fac.tiny_cnn(tmp_path)
    code, out, err = run_cli(capsys, "info", str(path), "--layer", "conv22", "--no-parity")
    assert code == 2 and "did you mean 'conv2'" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "info", str(path), "--layer", "relu2", "--json", "--no-parity")
    assert code == 0 and [x["alias"] for x in json.loads(out)["layers"]] == ["relu2"]


def test_usage_error_exit_2(capsys):
    code, _, err = run_cli(capsys, "info", "--preprocess", "vgg", "x.onnx")
    assert code == 2 and "Invalid value" in err and err.count("\n") == 1
    assert err.startswith("error: ") and "Usage:" not in err and "Try " not in err
    code, _, err = run_cli(capsys, "no-such-command")
    assert code == 2 and err == "error: No such command 'no-such-command'.\n"
    code, out, err = run_cli(capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "needs a command" in err


def test_usage_error_through_real_process_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pyanalyzer", "dissect", "m.onnx", "--layer", "x", "--out",
         str(tmp_path / "o"), "--checkpoint-every", "nan"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (
        "error: Invalid value for '--checkpoint-every': must be a finite number >= 0, got 'nan'\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_bad_model_through_real_process(tmp_path):
    path = fac.random_bytes(tmp_path)
    env = dict(os.environ, PYANALYZER_STORE=str(tmp_path / "s.h5"))
    r = subprocess.run(
        [sys.executable, "-m", "pyanalyzer", "info", str(path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert not (tmp_path / "s.h5").exists()


def test_cache_ls_and_rm(capsys, tmp_path):
    import numpy as np

    from pyanalyzer.store import Key, Store

    store_path = tmp_path / "store.h5"
    store = Store(store_path)
    sha_a, sha_b = "a" * 64, "b" * 64
    for sha, method in ((sha_a, "dissect"), (sha_a, "actmax"), (sha_b, "dissect")):
        key = Key.make(sha, method, {"layer": "conv1"})
        store.put(key, {"x": np.arange(4)}, params={"layer": "conv1"}, model_file=f"{sha[0]}.onnx")
    code, out, _ = run_cli(capsys, "cache", "ls", "--store", str(store_path), "--json")
    listed = json.loads(out)
    assert code == 0 and len(listed) == 3
    assert {e["method"] for e in listed} == {"dissect", "actmax"}
    code, out, _ = run_cli(capsys, "cache", "rm", "--store", str(store_path), "--method", "actmax")
    assert code == 0 and "removed 1 entry" in out
    code, out, _ = run_cli(capsys, "cache", "rm", "--store", str(store_path), "bbbbbbbb")
    assert code == 0 and "removed 1 entry" in out
    assert [e.key.model_sha256 for e in Store(store_path).entries()] == [sha_a]
    code, _, err = run_cli(capsys, "cache", "rm", "--store", str(store_path), "cccc")
    assert code == 2 and "no store entry matches" in err
    code, _, err = run_cli(capsys, "cache", "rm", "--store", str(store_path))
    assert code == 2 and "say what to remove" in err
    # An empty or blank key (an unset shell variable) never means "everything".
    for args in ([""], ["  "], ["--model", ""], ["--method", " "]):
        code, out, err = run_cli(capsys, "cache", "rm", "--store", str(store_path), *args)
        assert code == 2 and err.count("\n") == 1 and "--all" in err and out == "", err
    assert [e.key.model_sha256 for e in Store(store_path).entries()] == [sha_a]
    code, out, _ = run_cli(capsys, "cache", "rm", "--store", str(store_path), "--all")
    assert code == 0 and Store(store_path).entries() == []


def test_cache_rm_model_by_prefix_or_file(capsys, tmp_path):
    import numpy as np

    from pyanalyzer.store import Key, Store, file_sha256

    model = fac.tiny_cnn(tmp_path)
    sha = file_sha256(model)
    store_path = tmp_path / "store"
    store = Store(store_path)
    for m, method in ((sha, "dissect"), (sha, "actmax"), ("f" * 64, "dissect")):
        key = Key.make(m, method, {"l": 1})
        store.put(key, {"x": np.arange(2)}, params={"l": 1})
    args = ["cache", "rm", "--store", str(store_path)]
    code, out, _ = run_cli(capsys, *args, "--model", sha[:8], "--method", "actmax")
    assert code == 0 and "removed 1 entry" in out
    code, out, _ = run_cli(capsys, *args, "--model", str(model))
    assert code == 0 and "removed 1 entry" in out
    assert [e.key.model_sha256 for e in Store(store_path).entries()] == ["f" * 64]


def test_cache_rm_read_only_store_removes_nothing(capsys, tmp_path):
    import numpy as np

    from pyanalyzer.store import Key, Store

    store_path = tmp_path / "store"
    key = Key.make("a" * 64, "dissect", {"l": 1})
    Store(store_path).put(key, {"x": np.arange(2)}, params={"l": 1})
    folders = [store_path, *[p for p in store_path.rglob("*") if p.is_dir()]]
    for p in folders:
        p.chmod(0o555)
    try:
        code, out, err = run_cli(capsys, "cache", "rm", "--store", str(store_path), "--all")
        assert code == 2 and err == f"error: the store {store_path} is read-only\n" and out == ""
        code, out, err = run_cli(capsys, "cache", "ls", "--store", str(store_path))
        assert code == 0 and "1 entry" in out  # listing a read-only store is fine
    finally:
        for p in folders:
            p.chmod(0o755)
    assert Store(store_path).get(key) is not None


def test_cache_on_corrupt_store_exit_2(capsys, tmp_path):
    bad = tmp_path / "store.h5"
    bad.write_bytes(b"not hdf5 at all")
    code, _, err = run_cli(capsys, "cache", "ls", "--store", str(bad))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["info", "dissect", "cache"])
def test_commands_without_gradients_do_not_import_torch(command, default_model, tmp_path):
    """info --no-parity, dissect (with its report) and cache run without torch or onnx2torch."""
    import subprocess
    import sys

    store = str(tmp_path / "store")
    args = {
        "info": ["info", str(default_model), "--no-parity"],
        "dissect": ["dissect", str(default_model), "--layer", "relu6", "--n-images", "20",
                    "--out", str(tmp_path / "d"), "--store", store, "--no-progress"],
        "cache": ["cache", "ls", "--store", store],
    }[command]  # fmt: skip
    code = (
        "import sys\nfrom pyanalyzer.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    rc = e.code\n"
        "print('RC', rc, 'torch' in sys.modules, 'onnx2torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "RC 0 False False", out.stderr[-2000:]
