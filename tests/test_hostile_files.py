"""Files that are not what they claim: FIFOs and devices as models, images and tables, image
headers of decompression bombs, invalid UTF-8 and nested JSON in models, crafted Broden CSVs,
absurd node attributes and input shapes, requests that would fill the disk.

Every case: a UserInputError subclass with one line from the API and, through the CLI, exit code
2 with exactly one line on stderr and nothing written in --out or --store. Cases that could
block (FIFOs) run the CLI in a subprocess with a timeout, and the API under a guard that
unblocks a stuck reader.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import pyanalyzer as pa
from pyanalyzer import budget
from pyanalyzer.data.broden import BrodenDataset, build_dataset, synth_dataset
from pyanalyzer.data.images import MAX_IMAGE_PIXELS, ImageFiles, load_image
from pyanalyzer.errors import ImageError, ModelError, PreprocessingError, UserInputError
from pyanalyzer.methods.actmax import color_correlation_from_images
from pyanalyzer.model.preprocessing import PreprocessSpec

REPO = Path(__file__).resolve().parent.parent


# ---- helpers --------------------------------------------------------------------------------


def _refused(call: Callable[[], Any], error: type[UserInputError] = UserInputError) -> str:
    """``call()`` must raise ``error`` (a UserInputError) with a one-line message."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning or the like on the way
        with pytest.raises(error) as info:
            call()
    assert isinstance(info.value, UserInputError)
    text = str(info.value)
    assert text and "\n" not in text, text
    return text


def _refused_fifo(call: Callable[[], Any], fifo: Path, error: type[UserInputError]) -> str:
    """:func:`_refused` in a thread; if it blocks on ``fifo``, the FIFO is opened for writing
    and closed (the reader gets end-of-file) and the test fails instead of hanging."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["text"] = _refused(call, error)
        except BaseException as exc:  # reported below
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(10)
        pytest.fail(f"reading {fifo} blocked")
    if "error" in out:
        raise out["error"]
    return out["text"]


def _cli(capsys, *args: str) -> str:
    """Run the CLI in-process: exit code 2 and one stderr line, which is returned."""
    code, _, err = run_cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    return lines[0]


def _cli_subprocess(*args: str, timeout: float = 120) -> str:
    """Run ``python -m pyanalyzer ARGS`` with a timeout (a FIFO must not hang the test)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pyanalyzer", *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"pyanalyzer {' '.join(args)} did not finish in {timeout} s")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    return lines[0]


def _outputs(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    out, store = tmp_path / "out", tmp_path / "store"
    return out, store, ["--out", str(out), "--store", str(store), "--no-progress"]


def _nothing_written(out: Path, store: Path) -> None:
    assert not out.exists(), list(out.rglob("*"))
    assert not store.exists(), list(store.rglob("*"))


def _conv_model(dims: list[Any], pads: tuple[int, ...] = (1, 1, 1, 1)) -> onnx.ModelProto:
    """Input ``x`` of ``dims`` -> Conv ``c1`` (3 -> 4 channels, 3x3) -> Relu ``r1``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])
    w = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=list(pads), name="c1"),
        helper.make_node("Relu", ["c"], ["y"], name="r1"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model.producer_name = "hostile-test"
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _png_header(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose IHDR declares ``width x height`` (Pillow's open reads only it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def concept_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "ds"
    synth_dataset(root, n_images=3, size=16, progress=False)
    return root


@pytest.fixture
def dataset(concept_set, tmp_path) -> Path:
    """A private copy of a 3-scene synthetic Broden set, to be damaged by the test."""
    return Path(shutil.copytree(concept_set, tmp_path / "ds"))


# ---- files that are not regular files ------------------------------------------------------


def test_fifo_as_model(tmp_path, capsys):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    text = _refused_fifo(lambda: pa.load_model(fifo, check_parity=False), fifo, ModelError)
    assert "named pipe (FIFO)" in text and str(fifo) in text
    out, store, flags = _outputs(tmp_path)
    line = _cli_subprocess("actmax", str(fifo), "--layer", "conv1", *flags)
    assert "named pipe (FIFO)" in line
    _nothing_written(out, store)


def test_fifo_as_image_mask_and_table(tmp_path, default_model, dataset):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    text = _refused_fifo(lambda: load_image(fifo), fifo, ImageError)
    assert "named pipe (FIFO)" in text
    out, store, flags = _outputs(tmp_path)
    line = _cli_subprocess(
        "deconv", str(default_model), "--layer", "relu5", "--units", "0", "--image", str(fifo),
        *flags,
    )  # fmt: skip
    assert "named pipe (FIFO)" in line
    _nothing_written(out, store)
    # a segmentation PNG and a CSV of a Broden dataset
    png = dataset / "images" / "synth" / "000001_color.png"
    png.unlink()
    os.mkfifo(png)
    text = _refused_fifo(
        lambda: BrodenDataset(dataset, cache_dir=tmp_path / "c"), png, UserInputError
    )
    assert "000001_color.png" in text and "not a regular file" in text
    png.unlink()
    label = dataset / "label.csv"
    label.unlink()
    os.mkfifo(label)
    text = _refused_fifo(
        lambda: BrodenDataset(dataset, cache_dir=tmp_path / "c"), label, UserInputError
    )
    assert "label.csv" in text and "named pipe (FIFO)" in text


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_symlink_to_dev_zero_as_model_and_external_data(tmp_path, capsys):
    link = tmp_path / "zero.onnx"
    link.symlink_to("/dev/zero")
    text = _refused(lambda: pa.load_model(link, check_parity=False), ModelError)
    assert "character device" in text
    out, store, flags = _outputs(tmp_path)
    assert "character device" in _cli(capsys, "actmax", str(link), "--layer", "conv1", *flags)
    _nothing_written(out, store)
    # external data that is a device
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save_model(
        _conv_model(["N", 3, 32, 32]), folder / "m.onnx", save_as_external_data=True,
        all_tensors_to_one_file=True, location="w.bin", size_threshold=0,
    )  # fmt: skip
    (folder / "w.bin").unlink()
    (folder / "w.bin").symlink_to("/dev/zero")
    text = _refused(lambda: pa.load_model(folder / "m.onnx", check_parity=False), ModelError)
    assert "w.bin" in text and "outside the model's folder" in text  # it resolves to /dev
    (folder / "w.bin").unlink()
    os.mkfifo(folder / "w.bin")  # inside the folder, but not a regular file
    path = folder / "m.onnx"
    text = _refused_fifo(
        lambda: pa.load_model(path, check_parity=False), folder / "w.bin", ModelError
    )
    assert "w.bin" in text and "named pipe (FIFO)" in text


def test_image_named_like_a_folder_is_refused(tmp_path):
    (tmp_path / "dir.png").mkdir()
    assert "is a directory" in _refused(lambda: load_image(tmp_path / "dir.png"), ImageError)


# ---- decompression bombs -------------------------------------------------------------------


@pytest.mark.parametrize("side", [20000, 12000])  # Pillow's own error; pyanalyzer's limit
def test_bomb_png_header_through_every_image_path(tmp_path, side, default_model, capsys):
    assert side * side > MAX_IMAGE_PIXELS
    bomb = _png_header(tmp_path / "bomb.png", side, side)
    text = _refused(lambda: load_image(bomb), ImageError)
    assert "bomb.png" in text and str(MAX_IMAGE_PIXELS) in text
    spec = PreprocessSpec(input_size=(64, 64))
    _refused(lambda: color_correlation_from_images(ImageFiles([bomb]), spec), ImageError)
    # through the CLI: one image, and a --color-from folder
    out, store, flags = _outputs(tmp_path)
    line = _cli(
        capsys, "deconv", str(default_model), "--layer", "relu5", "--units", "0",
        "--image", str(bomb), *flags,
    )  # fmt: skip
    assert "bomb.png" in line
    _nothing_written(out, store)
    folder = tmp_path / "colors"
    folder.mkdir()
    shutil.copy(bomb, folder / "a.png")
    line = _cli(
        capsys, "actmax", str(default_model), "--layer", "relu5", "--units", "0",
        "--color-from", str(folder), *flags,
    )  # fmt: skip
    assert "a.png" in line
    _nothing_written(out, store)


def test_bomb_as_broden_segmentation_and_mask(tmp_path, dataset, default_model, capsys):
    png = dataset / "images" / "synth" / "000001_color.png"
    _png_header(png, 20000, 20000)
    ds = BrodenDataset(dataset, cache_dir=tmp_path / "cache")
    text = _refused(lambda: ds.segmentation(1), UserInputError)
    assert "000001_color.png" in text and "index.csv line 3" in text
    _refused(lambda: ds.prepare_cache(progress=False))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    out, store, flags = _outputs(tmp_path)
    line = _cli(
        capsys, "dissect", str(default_model), "--dataset", str(dataset), "--layer", "relu5",
        *flags,
    )  # fmt: skip
    assert "000001_color.png" in line
    _nothing_written(out, store)
    # a mask of concepts build
    images, masks = tmp_path / "voc" / "images", tmp_path / "voc" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    _png_header(masks / "a.png", 20000, 20000)
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    built = tmp_path / "built"
    text = _refused(
        lambda: build_dataset(images, masks, tmp_path / "classes.txt", built, progress=False)
    )
    assert "mask" in text and "a.png" in text
    assert not built.exists()


# ---- strings and JSON in models ------------------------------------------------------------

_STRING_FIELDS = {
    # ModelProto fields: producer_name = 2, metadata_props = 14 (key = 1, value = 2),
    # graph = 7 > node = 1 > name = 3. Appended fields override (scalars) or add (repeated).
    "producer name": (_field(2, b"py\xff\xfe"), "model.producer_name"),
    "metadata key": (_field(14, _field(1, b"\xc3\x28") + _field(2, b"v")), "metadata_props"),
    "metadata value": (_field(14, _field(1, b"k") + _field(2, b"\xe2\x82")), "metadata_props"),
    "node name": (_field(7, _field(1, _field(3, b"\xff\xffc1"))), "model.graph.node"),
}


@pytest.mark.parametrize("where", list(_STRING_FIELDS))
def test_invalid_utf8_strings_in_a_model(tmp_path, where, capsys):
    extra, field = _STRING_FIELDS[where]
    path = tmp_path / "bad.onnx"
    path.write_bytes(_conv_model(["N", 3, 32, 32]).SerializeToString() + extra)
    text = _refused(lambda: pa.load_model(path, check_parity=False), ModelError)
    assert "not valid UTF-8" in text and field in text
    out, store, flags = _outputs(tmp_path)
    assert "not valid UTF-8" in _cli(capsys, "actmax", str(path), "--layer", "conv1", *flags)
    _nothing_written(out, store)


def test_deeply_nested_preprocessing_json(tmp_path, capsys):
    deep = "[" * 10000 + "]" * 10000
    model = _conv_model(["N", 3, 32, 32])
    helper.set_model_props(model, {"pyanalyzer.preprocessing": deep})
    path = _save(model, tmp_path / "deep.onnx")
    text = _refused(lambda: pa.load_model(path, check_parity=False), PreprocessingError)
    assert "pyanalyzer.preprocessing" in text and "nested" in text
    out, store, flags = _outputs(tmp_path)
    assert "nested" in _cli(capsys, "actmax", str(path), "--layer", "conv1", *flags)
    _nothing_written(out, store)
    # the same in a JSON sidecar, and class names (ignored, not fatal)
    plain = _save(_conv_model(["N", 3, 32, 32]), tmp_path / "side.onnx")
    plain.with_name("side.onnx.json").write_text('{"preprocessing": ' + deep + "}")
    assert "nested" in _refused(lambda: pa.load_model(plain, check_parity=False))
    named = _conv_model(["N", 3, 32, 32])
    helper.set_model_props(named, {"pyanalyzer.class_names": deep})
    assert pa.load_model(_save(named, tmp_path / "n.onnx"), check_parity=False).class_names is None


# ---- crafted Broden CSVs ---------------------------------------------------------------------


def _replace_cell(path: Path, line: int, column: str, value: str) -> None:
    rows = path.read_text().splitlines()
    header = rows[0].split(",")
    cells = rows[line - 1].split(",")
    cells[header.index(column)] = value
    rows[line - 1] = ",".join(cells)
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    "file, column, value, match",
    [
        ("label.csv", "number", str(10**11), "number must be at most 65535"),
        ("c_color.csv", "code", str(10**12), "code must be at most 65535"),
        ("index.csv", "sh", str(10**8), "segmentation size 100000000x8"),
        ("index.csv", "iw", str(10**8), "image size 16x100000000"),
        ("index.csv", "sw", str(10**12), "sw must be at most"),
        ("index.csv", "ih", "9" * 5000, "malformed number"),
        ("category.csv", "first", "999", "'color' has first label 999 after its last"),
    ],
)
def test_crafted_broden_numbers(
    tmp_path, dataset, file, column, value, match, default_model, capsys
):
    _replace_cell(dataset / file, 2, column, value)
    if file == "index.csv" and column == "sh":  # every row: one segmentation size
        for line in (3, 4):
            _replace_cell(dataset / file, line, column, value)
    text = _refused(lambda: BrodenDataset(dataset, cache_dir=tmp_path / "cache"))
    assert match in text and file in text
    assert match in _cli(capsys, "concepts", "info", str(dataset))
    out, store, flags = _outputs(tmp_path)
    line = _cli(
        capsys, "dissect", str(default_model), "--dataset", str(dataset), "--layer", "relu5",
        *flags,
    )  # fmt: skip
    assert match in line
    _nothing_written(out, store)


@pytest.mark.parametrize("fmt", ["JPEG", "BMP"])
def test_segmentation_that_is_not_a_png(tmp_path, dataset, fmt, default_model, capsys):
    # Pillow opens either by its content; a JPEG's codes are lossy, so neither is a label map
    mask = sorted((dataset / "images").rglob("*_color.png"))[1]
    Image.open(mask).convert("RGB").save(mask, format=fmt)
    match = f"it holds a {fmt} image, not a PNG"
    ds = BrodenDataset(dataset, cache_dir=tmp_path / "cache")
    assert match in _refused(lambda: ds.validate())
    assert match in _cli(capsys, "concepts", "info", str(dataset), "--check")
    out, store, flags = _outputs(tmp_path)
    line = _cli(
        capsys, "dissect", str(default_model), "--dataset", str(dataset), "--layer", "relu5",
        *flags,
    )  # fmt: skip
    assert match in line and mask.name in line
    _nothing_written(out, store)


def test_broden_arrays_are_checked_against_the_budget(tmp_path, dataset):
    ds = BrodenDataset(dataset, cache_dir=tmp_path / "cache")
    with budget.budget_override(1000):
        assert "concept label maps" in _refused(lambda: ds.segmentation_batch([0, 1, 2]))
        assert "label cache" in _refused(lambda: ds.prepare_cache(progress=False))
    assert not (tmp_path / "cache").exists()


# ---- the model's own shapes and attributes -----------------------------------------------------


def test_conv_with_pads_of_100000(tmp_path, capsys):
    path = _save(_conv_model(["N", 3, 32, 32], pads=(100000,) * 4), tmp_path / "pads.onnx")
    text = _refused(lambda: pa.load_model(path, check_parity=False), ModelError)
    assert "node 'c1' (Conv) has pads value 100000" in text
    out, store, flags = _outputs(tmp_path)
    assert "'c1'" in _cli(capsys, "actmax", str(path), "--layer", "conv1", *flags)
    _nothing_written(out, store)


def test_conv_whose_output_exceeds_the_budget(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(budget.ENV_VAR, "8G")
    path = _save(_conv_model(["N", 3, 32, 32], pads=(30000,) * 4), tmp_path / "big.onnx")
    text = _refused(lambda: pa.load_model(path, check_parity=False), budget.BudgetError)
    assert "'c' of node 'c1' (Conv), is [1, 4, 60030, 60030]" in text and "8 GiB" in text
    out, store, flags = _outputs(tmp_path)
    assert "60030" in _cli(capsys, "actmax", str(path), "--layer", "conv1", *flags)
    _nothing_written(out, store)


def _resized_weight(model: onnx.ModelProto, how: str) -> onnx.ModelProto:
    """The conv weight (4x3x3x3 floats) made to disagree with its dims, or a Constant node's."""
    w = model.graph.initializer[0]
    if how == "raw dims":  # 432 bytes of data for shape [1]
        w.dims[:] = [1]
    elif how == "huge dims":
        w.dims[:] = [2**31, 4, 3, 3]
    elif how == "float_data":  # typed field: 108 values, 1 too few
        values = numpy_helper.to_array(w).ravel()[:-1]
        w.ClearField("raw_data")
        w.float_data[:] = values.tolist()
    else:  # a Constant node feeding the conv's bias with 3 floats for shape [4]
        bias = numpy_helper.from_array(np.zeros(4, np.float32), "b")
        bias.raw_data = bias.raw_data[:12]
        const = helper.make_node("Constant", [], ["b"], value=bias, name="bias")
        model.graph.node.insert(0, const)
        model.graph.node[1].input.append("b")
    return model


@pytest.mark.parametrize("how", ["raw dims", "huge dims", "float_data", "constant"])
def test_weights_whose_data_disagrees_with_their_shape(tmp_path, how, capsys):
    # onnx's checker passes these; numpy's reshape or onnxruntime's multi-line error would not
    path = _save(_resized_weight(_conv_model(["N", 3, 32, 32]), how), tmp_path / "w.onnx")
    text = _refused(lambda: pa.load_model(path, check_parity=False), ModelError)
    name = "'b'" if how == "constant" else "'w'"
    assert f"tensor {name} holds" in text and "needs" in text, text
    out, store, flags = _outputs(tmp_path)
    assert "needs" in _cli(capsys, "actmax", str(path), "--layer", "conv1", *flags)
    _nothing_written(out, store)


@pytest.mark.parametrize(
    "attribute, value", [("strides", 0), ("kernel_shape", -3), ("dilations", 2**20)]
)
def test_absurd_attributes_name_the_node(tmp_path, attribute, value):
    model = _conv_model(["N", 3, 32, 32])
    node = model.graph.node[0]
    node.attribute.append(helper.make_attribute(attribute, [value, value]))
    path = _save(model, tmp_path / "attr.onnx")
    text = _refused(lambda: pa.load_model(path, check_parity=False), ModelError)
    assert f"node 'c1' (Conv) has {attribute} value {value}" in text


@pytest.mark.parametrize("dims", [[1, 3, -5, 32], [1, 3, 32, 0], [-1, 3, 32, 32]])
def test_negative_or_zero_input_dims(tmp_path, dims, capsys):
    path = _save(_conv_model(dims), tmp_path / "dims.onnx")
    text = _refused(lambda: pa.load_model(path, check_parity=False), ModelError)
    assert "input 'x' declares size" in text and "must be positive" in text
    out, store, flags = _outputs(tmp_path)
    assert "must be positive" in _cli(capsys, "actmax", str(path), "--layer", "conv1", *flags)
    _nothing_written(out, store)


# ---- requests that would fill the disk -----------------------------------------------------


@pytest.mark.parametrize(
    "args, match",
    [
        (["--n-images", str(10**12)], "at most 1000000 scenes"),
        (["--size", "100000"], "at most 4096 pixels"),
        (["--n-images", "1000000", "--size", "4096"], "of disk"),
    ],
)
def test_synthetic_concepts_bounded_before_writing(tmp_path, capsys, args, match):
    out = tmp_path / "synth"
    if "of disk" in match and shutil.disk_usage(tmp_path).free > budget.synthetic_disk_bytes(
        10**6, 4096
    ):
        pytest.skip("this disk has room for 80 TB")
    assert match in _cli(capsys, "concepts", "synth", "--out", str(out), *args)
    assert not out.exists() and not list(tmp_path.glob("synth.tmp-*"))


def test_dissect_default_concepts_bounded(tmp_path, default_model, capsys):
    out, store, flags = _outputs(tmp_path)
    line = _cli(
        capsys, "dissect", str(default_model), "--layer", "relu5", "--n-images", str(10**12),
        *flags,
    )  # fmt: skip
    assert "at most 1000000 scenes" in line
    _nothing_written(out, store)
