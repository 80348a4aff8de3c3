"""The CLI's boundary: every command checks all its input before it creates anything, says
what is wrong in exactly one line (exit 2), routes warnings through logging, and cleans the
temporary folders of killed runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx_factory as fac
import pytest
from cli_helpers import run_cli
from PIL import Image

from pyanalyzer.store import Key, Store

# ---- a table of bad inputs for every command -----------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return fac.tiny_cnn(tmp_path_factory.mktemp("model"))


def _png(path: Path, size: int = 32) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _store_with_entry(path: Path) -> None:
    key = Key.make("a" * 64, "dissect", {"q": 1})
    Store(path).put(key, {"x": np.arange(3)}, params={"q": 1}, model_file="m.onnx")
    Store(path).entries()  # the listing index exists before the command runs


def _read_only(path: Path) -> None:
    for p in (path, *path.rglob("*")):
        if p.is_dir():
            p.chmod(0o555)


def _setup(t: Path) -> None:
    """What the bad inputs refer to: a file, a FIFO, images, stores of every kind."""
    (t / "afile").write_text("not a folder")
    os.mkfifo(t / "fifo")
    _png(t / "img.png")
    (t / "imgs").mkdir()
    _png(t / "imgs" / "a.png")
    (t / "emptydir").mkdir()
    (t / "foreign").mkdir()
    (t / "foreign" / "notes.txt").write_text("mine")
    (t / "bad.h5").write_bytes(b"not hdf5 at all" * 10)
    (t / "link").symlink_to(t / "gone" / "deeper" / "store")
    np.save(t / "dirs.npy", np.ones((2, 8), np.float32))
    _store_with_entry(t / "store")
    _store_with_entry(t / "rostore")
    _read_only(t / "rostore")
    (t / "ro").mkdir()
    _read_only(t / "ro")


DISSECT = ["dissect", "{m}", "--layer", "conv1", "--out", "{t}/out", "--n-images", "4",
           "--no-progress"]  # fmt: skip
DECONV = ["deconv", "{m}", "--layer", "relu1", "--out", "{t}/out", "--no-progress"]
ACTMAX = ["actmax", "{m}", "--layer", "conv1", "--out", "{t}/out", "--steps", "2", "--no-progress"]
INVERT = ["invert", "{m}", "--image", "{t}/img.png", "--layer", "conv1", "--out", "{t}/out",
          "--steps", "2", "--no-progress"]  # fmt: skip
TRAIN = ["invert", "train", "{m}", "--layer", "conv1", "--epochs", "1", "--no-progress"]

BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    # the command line itself
    "no command": ([], "pyanalyzer needs a command"),
    "unknown command": (["frobnicate"], "No such command"),
    "unknown global option": (["--frob"], "No such option"),
    "info without model": (["info"], "Missing argument 'MODEL'"),
    "info missing model": (["info", "{t}/nope.onnx"], "does not exist"),
    "info unknown layer": (["info", "{m}", "--layer", "nope", "--no-parity"], "no layer"),
    "NUL in an argument": (["concepts", "synth", "--out", "{t}/c\0x"], "NUL character"),
    "info bad preset": (["info", "{m}", "--preprocess", "vgg"], "Invalid value"),
    "info scale nan": (["info", "{m}", "--scale", "nan"], "finite number"),
    "doctor bad option": (["doctor", "--frob"], "No such option"),
    # dissect
    "dissect store /dev/null": ([*DISSECT, "--store", "/dev/null"], "character device"),
    "dissect store in /proc": ([*DISSECT, "--store", "/proc/pyanalyzer-x/s"], "not writable"),
    "dissect store fifo": ([*DISSECT, "--store", "{t}/fifo"], "FIFO"),
    "dissect store read-only": ([*DISSECT, "--store", "{t}/rostore"], "read-only"),
    "dissect store under read-only": ([*DISSECT, "--store", "{t}/ro/s"], "not writable"),
    "dissect store dangling link": ([*DISSECT, "--store", "{t}/link"], "does not exist"),
    "dissect store foreign folder": ([*DISSECT, "--store", "{t}/foreign"], "not a pyanalyzer"),
    "dissect store corrupt file": ([*DISSECT, "--store", "{t}/bad.h5"], "corrupt"),
    "dissect store empty": ([*DISSECT, "--store", ""], "empty"),
    "dissect quantile nan": ([*DISSECT, "--quantile", "nan"], "finite number"),
    "dissect quantile text": ([*DISSECT, "--quantile", "abc"], "finite number"),
    "dissect quantile 2": ([*DISSECT, "--quantile", "2"], "quantile"),
    "dissect iou inf": ([*DISSECT, "--iou-threshold", "inf"], "finite number"),
    "dissect iou 1": ([*DISSECT, "--iou-threshold", "1"], "IoU threshold"),
    "dissect seed -1": ([*DISSECT, "--seed", "-1"], "--seed"),
    "dissect n-images 0": ([*DISSECT, "--n-images", "0"], "--n-images"),
    "dissect checkpoint -1": ([*DISSECT, "--checkpoint-every", "-1"], "--checkpoint-every"),
    "dissect checkpoint nan": ([*DISSECT, "--checkpoint-every", "nan"], "finite number >= 0"),
    "dissect checkpoint inf": ([*DISSECT, "--checkpoint-every", "inf"], "finite number >= 0"),
    "dissect batch 0": ([*DISSECT, "--batch-size", "0"], "batch size"),
    "dissect top-k 0": ([*DISSECT, "--top-k", "0"], "top-k"),
    "dissect device": ([*DISSECT, "--device", "tpu"], "--device"),
    "dissect unknown layer": ([*DISSECT[:3], "nope", *DISSECT[4:]], "no layer"),
    "dissect net2vec unknown": ([*DISSECT, "--net2vec", "bogus"], "no concept named 'bogus'"),
    "dissect dataset missing": ([*DISSECT, "--dataset", "{t}/nods"], "nods"),
    "dissect out is a file": ([*DISSECT[:4], "--out", "{t}/afile"], "afile"),
    "dissect out read-only": ([*DISSECT[:4], "--out", "{t}/ro/out"], "not writable"),
    "dissect out in /proc": ([*DISSECT[:4], "--out", "/proc/pyanalyzer-x/o"], "not writable"),
    "dissect out empty": ([*DISSECT[:4], "--out", ""], "empty path"),
    "dissect without out": (DISSECT[:4], "Missing option '--out'"),
    # deconv
    "deconv without unit": (DECONV, "Missing option '--units' / '--unit'"),
    "deconv unit 999": ([*DECONV, "--unit", "999"], "out of range"),
    "deconv image and images": (
        [*DECONV, "--unit", "0", "--image", "{t}/img.png", "--images", "{t}/imgs"],
        "not both",
    ),
    "deconv image missing": ([*DECONV, "--unit", "0", "--image", "{t}/no.png"], "does not exist"),
    "deconv image not an image": ([*DECONV, "--unit", "0", "--image", "{t}/afile"], "afile"),
    "deconv images missing": ([*DECONV, "--unit", "0", "--images", "{t}/nodir"], "does not exist"),
    "deconv images empty": ([*DECONV, "--unit", "0", "--images", "{t}/emptydir"], "no images"),
    "deconv n-images 0": ([*DECONV, "--unit", "0", "--n-images", "0"], "--n-images"),
    "deconv top-k 0": ([*DECONV, "--unit", "0", "--top-k", "0"], "must be >= 1"),
    "deconv store /dev/null": ([*DECONV, "--unit", "0", "--store", "/dev/null"], "device"),
    "deconv store read-only": ([*DECONV, "--unit", "0", "--store", "{t}/rostore"], "read-only"),
    "deconv out is a file": ([*DECONV[:4], "--unit", "0", "--out", "{t}/afile"], "afile"),
    "deconv mode": ([*DECONV, "--unit", "0", "--mode", "all"], "--mode"),
    # actmax
    "actmax units 999": ([*ACTMAX, "--units", "999"], "out of range"),
    "actmax steps 0": ([*ACTMAX, "--steps", "0"], "steps"),
    "actmax seed -1": ([*ACTMAX, "--seed", "-1"], "seed"),
    "actmax size 3": ([*ACTMAX, "--size", "3"], "size"),
    "actmax batch 0": ([*ACTMAX, "--batch-size", "0"], "batch size"),
    "actmax regularizers": ([*ACTMAX, "--regularizers", "bogus"], "bogus"),
    "actmax direction alone": ([*ACTMAX, "--direction", "{t}/dirs.npy"], "--objective direction"),
    "actmax direction missing": (
        [*ACTMAX, "--objective", "direction", "--direction", "{t}/no.npy"],
        "no.npy",
    ),
    "actmax direction without file": ([*ACTMAX, "--objective", "direction"], "--direction FILE"),
    "actmax color pixel": (
        [*ACTMAX, "--param", "pixel", "--color-from", "{t}/imgs"],
        "--color-from applies",
    ),
    "actmax color missing": ([*ACTMAX, "--color-from", "{t}/nodir"], "does not exist"),
    "actmax color and bad units": (
        [*ACTMAX, "--color-from", "{t}/imgs", "--units", "99"],
        "out of range",
    ),
    "actmax reference missing": ([*ACTMAX, "--reference", "{t}/nodir"], "does not exist"),
    "actmax store /dev/null": ([*ACTMAX, "--store", "/dev/null"], "device"),
    "actmax out is a file": ([*ACTMAX[:4], "--out", "{t}/afile", "--steps", "2"], "afile"),
    # invert
    "invert image missing": ([*INVERT[:2], "--image", "{t}/no.png", *INVERT[4:]], "no.png"),
    "invert unknown layer": ([*INVERT[:5], "nope", *INVERT[6:]], "no layer"),
    "invert jitter -1": ([*INVERT, "--jitter", "-1"], "jitter"),
    "invert steps 0": ([*INVERT[:-3], "--steps", "0"], "steps"),
    "invert seed -1": ([*INVERT, "--seed", "-1"], "seed"),
    "invert upconv with steps": ([*INVERT, "--method", "upconv"], "--steps"),
    "invert upconv untrained": ([*INVERT[:-3], "--method", "upconv"], "no decoder trained"),
    "invert store /dev/null": ([*INVERT, "--store", "/dev/null"], "device"),
    "invert store read-only": ([*INVERT, "--store", "{t}/rostore"], "read-only"),
    "invert out is a file": ([*INVERT[:6], "--out", "{t}/afile", "--steps", "2"], "afile"),
    "invert without args": (["invert"], "pyanalyzer invert needs a command"),
    # invert train
    "train unknown layer": ([*TRAIN[:4], "nope", *TRAIN[5:]], "no layer"),
    "train epochs 0": ([*TRAIN[:-3], "--epochs", "0"], "epochs"),
    "train seed -1": ([*TRAIN, "--seed", "-1"], "seed"),
    "train images missing": ([*TRAIN, "--images", "{t}/nodir"], "does not exist"),
    "train store /dev/null": ([*TRAIN, "--store", "/dev/null"], "device"),
    "train store read-only": ([*TRAIN, "--store", "{t}/rostore"], "read-only"),
    # cache
    "cache without command": (["cache"], "pyanalyzer cache needs a command"),
    "cache ls /dev/null": (["cache", "ls", "--store", "/dev/null"], "device"),
    "cache ls corrupt": (["cache", "ls", "--store", "{t}/bad.h5"], "corrupt"),
    "cache ls foreign": (["cache", "ls", "--store", "{t}/foreign"], "not a pyanalyzer"),
    "cache rm empty key": (["cache", "rm", "--store", "{t}/store", ""], "--all"),
    "cache rm blank key": (["cache", "rm", "--store", "{t}/store", "  "], "--all"),
    "cache rm empty model": (["cache", "rm", "--store", "{t}/store", "--model", ""], "--all"),
    "cache rm empty method": (["cache", "rm", "--store", "{t}/store", "--method", ""], "--all"),
    "cache rm all and key": (["cache", "rm", "--store", "{t}/store", "--all", "aa"], "alone"),
    "cache rm nothing": (["cache", "rm", "--store", "{t}/store"], "say what to remove"),
    "cache rm no match": (["cache", "rm", "--store", "{t}/store", "ffff"], "no store entry"),
    "cache rm model not hex": (["cache", "rm", "--store", "{t}/store", "--model", "x"], "sha256"),
    "cache rm read-only": (["cache", "rm", "--store", "{t}/rostore", "--all"], "read-only"),
    "cache rm /dev/null": (["cache", "rm", "--store", "/dev/null", "--all"], "device"),
    # concepts
    "concepts without command": (["concepts"], "pyanalyzer concepts needs a command"),
    "synth n-images 0": (["concepts", "synth", "--out", "{t}/c", "--n-images", "0"], "n_images"),
    "synth size 8": (["concepts", "synth", "--out", "{t}/c", "--size", "8"], "size"),
    "synth seed -1": (["concepts", "synth", "--out", "{t}/c", "--seed", "-1"], "seed"),
    "synth out in /proc": (["concepts", "synth", "--out", "/proc/pyanalyzer-x"], "not writable"),
    "synth out read-only": (["concepts", "synth", "--out", "{t}/ro/c"], "not writable"),
    "synth out is a file": (["concepts", "synth", "--out", "{t}/afile"], "afile"),
    "synth out not empty": (["concepts", "synth", "--out", "{t}/foreign"], "not empty"),
    "build images missing": (
        [
            "concepts",
            "build",
            "--images",
            "{t}/nodir",
            "--masks",
            "{t}/imgs",
            "--labels",
            "{t}/afile",
            "--out",
            "{t}/c",
        ],
        "nodir",
    ),  # fmt: skip
    "concepts info missing": (["concepts", "info", "{t}/nodir"], "nodir"),
}


def _tree(root: Path) -> list[str]:
    """Every path under ``root`` (symlinks not followed), with its kind and size."""
    out = []
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = Path(folder, name)
            st = p.lstat()
            out.append(f"{p.relative_to(root)} {oct(st.st_mode)} {st.st_size}")
    return sorted(out)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_nothing_created(capsys, tmp_path, monkeypatch, model, case):
    args, expected = BAD_INPUTS[case]
    _setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYANALYZER_STORE", str(tmp_path / "default-store"))
    before, model_before = _tree(tmp_path), _tree(model.parent)
    argv = [a.format(m=model, t=tmp_path) for a in args]
    try:
        code, out, err = run_cli(capsys, *argv)
        after = _tree(tmp_path)
    finally:
        for q in (*(tmp_path / "rostore").rglob("*"), tmp_path / "rostore", tmp_path / "ro"):
            if q.is_dir():
                q.chmod(0o755)  # so that pytest can remove them
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and expected in err, err
    assert out == ""
    assert after == before  # nothing created (nor removed)
    assert _tree(model.parent) == model_before
    assert not Path("/dev/concepts").exists()


def test_usage_hint_only_on_a_terminal(capsys, monkeypatch):
    import pyanalyzer.cli as cli_mod

    code, _, err = run_cli(capsys, "info", "--preprocess", "vgg", "x.onnx")
    assert code == 2 and err.count("\n") == 1 and "Try" not in err
    monkeypatch.setattr(cli_mod, "_stderr_is_tty", lambda: True)
    code, _, err = run_cli(capsys, "info", "--preprocess", "vgg", "x.onnx")
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2 and lines[0].startswith("error: Invalid value")
    assert lines[1] == "Try 'pyanalyzer info --help' for help."


# ---- warnings --------------------------------------------------------------------------------


def _noisy_load(real, *, fail: str | None = None, parity: bool = False):
    """``load_model`` that first warns as onnx2torch, torch and a parity check would."""

    def load(*args, **kwargs):
        from pyanalyzer.errors import ModelError, ParityWarning

        warnings.warn("converting Transpose: an operator is deprecated", UserWarning, stacklevel=2)
        warnings.warn("TypedStorage is deprecated", DeprecationWarning, stacklevel=2)
        if parity:
            warnings.warn("m.onnx: onnxruntime and torch disagree: relu1 off", ParityWarning, 2)
        if fail:
            raise ModelError(fail)
        return real(*args, **kwargs)

    return load


def test_library_warnings_hidden_unless_verbose(capsys, monkeypatch, model):
    import pyanalyzer.model as model_pkg

    monkeypatch.setattr(model_pkg, "load_model", _noisy_load(model_pkg.load_model, fail="broken"))
    code, out, err = run_cli(capsys, "info", str(model))
    assert code == 2 and err == "error: broken\n"
    code, out, err = run_cli(capsys, "--verbose", "info", str(model))
    assert code == 2 and err.splitlines()[-1] == "error: broken"
    assert "warning: UserWarning: converting Transpose" in err
    assert "warning: DeprecationWarning: TypedStorage is deprecated" in err
    # -v is the group's option and does not stick to later runs in the same process
    code, out, err = run_cli(capsys, "info", str(model))
    assert code == 2 and err == "error: broken\n"


def test_parity_warning_one_line_on_success_only(capsys, monkeypatch, model):
    import pyanalyzer.model as model_pkg

    real = model_pkg.load_model
    monkeypatch.setattr(model_pkg, "load_model", _noisy_load(real, parity=True))
    code, out, err = run_cli(capsys, "info", str(model), "--no-parity", "--json")
    assert code == 0 and out.startswith("{")
    assert err == "warning: m.onnx: onnxruntime and torch disagree: relu1 off\n"
    code, out, err = run_cli(capsys, "info", str(model), "--no-parity", "--layer", "nope")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: no layer"), err


# ---- temporary folders of killed runs --------------------------------------------------------

OLD = time.time() - 3 * 3600  # older than every age limit but the 24-hour one


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _age(path: Path, when: float = OLD) -> Path:
    for q in (*path.rglob("*"), path) if path.is_dir() else (path,):
        os.utime(q, (when, when), follow_symlinks=False)
    return path


def _temp_dir(path: Path, mb: float = 0.1, when: float = OLD) -> Path:
    path.mkdir()
    (path / "images").mkdir()
    (path / "images" / "0.png").write_bytes(b"\0" * int(mb * 2**20))
    return _age(path, when)


@pytest.fixture()
def live_pid():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p.pid
    p.kill()
    p.wait()


def test_killed_runs_leftovers_are_swept_by_the_next_run(capsys, tmp_path, live_pid, model):
    dead = _dead_pid()
    out, store = tmp_path / "out", tmp_path / "store"
    _png(tmp_path / "img.png")
    out.mkdir()
    half_png = out / f".relu1_unit0000_deconv.png.tmp-{dead}-00ff00ff.png"
    half_png.write_bytes(b"half a png")
    stale = [
        _temp_dir(tmp_path / f".out.tmp-{dead}-0badc0de"),  # an atomic folder of a dead run
        _temp_dir(tmp_path / "out.tmp-0123abcd"),  # a dataset folder written without a pid
        _age(half_png),  # a PNG being written when its run was killed
    ]
    kept = [
        _temp_dir(tmp_path / f".out.tmp-{live_pid}-0badc0de"),  # its writer still runs
        _temp_dir(tmp_path / f".out.tmp-{dead}-1badc0de", when=time.time()),  # just written
        _temp_dir(tmp_path / "other.tmp-0123abcd"),  # not the output folder's
        _temp_dir(out / ".tmp-abcd_123"),  # a report work folder, but deconv writes none
        _temp_dir(tmp_path / "out.tmp-4567abcd", when=time.time() - 60),  # no pid, recent
    ]
    code, _, err = run_cli(capsys, "deconv", str(model), "--layer", "relu1", "--unit", "0",
                           "--image", str(tmp_path / "img.png"), "--out", str(out),
                           "--store", str(store), "--no-progress")  # fmt: skip
    assert code == 0, err
    assert [p for p in stale if os.path.lexists(p)] == []
    assert all(p.exists() for p in kept)
    assert (out / "relu1_unit0000_deconv.png").is_file()


def test_dissect_sweeps_dataset_and_report_leftovers(capsys, tmp_path, live_pid, model):
    dead = _dead_pid()
    store, out = tmp_path / "store", tmp_path / "report"
    concepts = tmp_path / "concepts"
    concepts.mkdir()
    out.mkdir()
    name = "synth-n6-s32-seed0"
    stale = [
        _temp_dir(concepts / f"{name}.tmp-89abcdef", mb=1),  # the dataset writer's temp
        _temp_dir(concepts / f".{name}.tmp-{dead}-89abcdef"),
        _temp_dir(out / ".tmp-k2j_9x0a"),  # the report writer's hidden work folder
        _temp_dir(tmp_path / f".report.tmp-{dead}-1234abcd"),
    ]
    live = _temp_dir(concepts / f".{name}.tmp-{live_pid}-89abcdef")
    code, _, err = run_cli(capsys, "dissect", str(model), "--layer", "conv2", "--out", str(out),
                           "--n-images", "6", "--store", str(store), "--no-progress")  # fmt: skip
    assert code == 0, err
    assert [p for p in stale if p.exists()] == []
    assert live.exists()
    assert (concepts / name / "index.csv").is_file() and (out / "index.html").is_file()


def test_concepts_synth_sweeps_its_output_leftovers(capsys, tmp_path):
    dead = _dead_pid()
    stale = [
        _temp_dir(tmp_path / "c.tmp-0011aabb"),
        _temp_dir(tmp_path / f".c.tmp-{dead}-ab12cd34"),
    ]
    code, out, err = run_cli(capsys, "concepts", "synth", "--out", str(tmp_path / "c"),
                             "--n-images", "3", "--size", "16")  # fmt: skip
    assert code == 0, err
    assert [p for p in stale if p.exists()] == [] and (tmp_path / "c" / "index.csv").is_file()


# ---- no temporary folder after a handled error -------------------------------------------------


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.startswith(".old-")]


def test_dataset_writer_failing_midway_leaves_nothing(capsys, tmp_path, monkeypatch):
    from pyanalyzer.data import synthetic
    from pyanalyzer.errors import UserInputError

    real = synthetic.render

    def render(i, *args, **kwargs):
        if i == 2:
            raise UserInputError("scene 2 cannot be drawn")
        return real(i, *args, **kwargs)

    monkeypatch.setattr(synthetic, "render", render)
    target = tmp_path / "new" / "deeper" / "c"
    code, _, err = run_cli(capsys, "concepts", "synth", "--out", str(target), "--n-images", "5",
                           "--size", "16")  # fmt: skip
    assert code == 2 and err == "error: scene 2 cannot be drawn\n"
    assert list(tmp_path.iterdir()) == []  # nor the folders that were to hold it


def test_report_writer_failing_midway_leaves_no_temp(capsys, tmp_path, monkeypatch, model):
    import pyanalyzer.report.dissection as report_mod

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report_mod, "write_layer_html", broken)
    out = tmp_path / "a" / "report"
    code, _, err = run_cli(capsys, "dissect", str(model), "--layer", "conv1", "--out", str(out),
                           "--n-images", "4", "--store", str(tmp_path / "s"),
                           "--no-progress")  # fmt: skip
    assert code == 1 and err.splitlines()[-1].startswith("internal error: RuntimeError: disk"), err
    assert _temps(tmp_path) == []
    assert not (tmp_path / "a").exists()  # the empty folders it made are gone too


def test_sigterm_removes_the_temporary_folder(tmp_path):
    env = dict(os.environ, PYANALYZER_STORE=str(tmp_path / "s"), PYANALYZER_PROGRESS="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyanalyzer", "concepts", "synth", "--out", str(tmp_path / "c"),
         "--n-images", "20000", "--size", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        p.is_dir() and any(p.rglob("*.png")) for p in tmp_path.glob("c.tmp-*")
    ):
        time.sleep(0.05)
    assert list(tmp_path.glob("c.tmp-*")), "the dataset writer never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err == "terminated\n", err
    assert list(tmp_path.iterdir()) == []


def test_other_libraries_log_records_only_with_verbose(capsys, monkeypatch, model):
    import logging

    import pyanalyzer.model as model_pkg

    real = model_pkg.load_model

    def chatty(*args, **kwargs):
        logging.getLogger("onnx2torch.converter").warning("Transpose is converted by hand")
        return real(*args, **kwargs)

    monkeypatch.setattr(model_pkg, "load_model", chatty)
    code, _, err = run_cli(capsys, "info", str(model), "--no-parity", "--layer", "nope")
    assert code == 2 and err.count("\n") == 1, err
    code, _, err = run_cli(capsys, "-v", "info", str(model), "--no-parity", "--layer", "nope")
    assert "warning: onnx2torch.converter: Transpose is converted by hand" in err
    assert err.splitlines()[-1].startswith("error: no layer")


def test_only_pyanalyzer_temp_names_are_judged(tmp_path, live_pid):
    from pyanalyzer._io import is_stale_temp, sweep_stale_temps

    dead = _dead_pid()

    def old_file(path: Path) -> Path:
        path.write_text("mine")
        return _age(path)

    users = [  # look like temps, but are no names pyanalyzer makes: never removed
        old_file(tmp_path / "notes.tmp-2024-draft"),
        old_file(tmp_path / f".notes.tmp-{dead}-draft"),
        old_file(tmp_path / "plan.tmp-0123abcd"),  # a file, where pyanalyzer makes folders
        _temp_dir(tmp_path / ".tmp-settings"),  # a .tmp-* folder outside a report folder
    ]
    own = old_file(tmp_path / f".x.png.tmp-{os.getpid()}-0123abcd.png")
    assert not any(is_stale_temp(p) for p in [*users, own])
    assert is_stale_temp(tmp_path / ".tmp-settings", work_dirs=True)
    assert not is_stale_temp(_temp_dir(tmp_path / f".y.tmp-{live_pid}-0123abcd"))
    assert is_stale_temp(_temp_dir(tmp_path / f".y.tmp-{dead}-0123abcd"))
    assert not is_stale_temp(tmp_path / f".y.tmp-{dead}-0123abcd", target="z")
    assert sweep_stale_temps(tmp_path) == [tmp_path / f".y.tmp-{dead}-0123abcd"]
    assert sweep_stale_temps(tmp_path / "missing") == []
