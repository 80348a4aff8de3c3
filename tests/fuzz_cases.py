"""The fuzz suite's cases: hostile models, graphs, images, Broden folders and parameters.

Each family turns a seed (drawn by hypothesis) into one :class:`~fuzz_harness.Case`; the
mutations are seeded ``random.Random`` draws, so a seed names a case exactly. Values that are
valid but expensive (a million steps, a billion images) are refused by the resource bounds;
the generators never ask for long valid runs otherwise: the suite tests the input boundary,
not the speed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import struct
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from fuzz_harness import Case
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "models" / "default.onnx"
STORE = ["--store", "{store}", "--no-progress"]

# ---- values ---------------------------------------------------------------------------------

BAD_INTS = ["-1", "0", "-99999999999999999999", "99999999999999999999", "1e3", "3.5", "", "x",
            "0x10", " 7", "٣", "nan"]  # fmt: skip
BAD_FLOATS = ["nan", "inf", "-inf", "-1", "0", "1e309", "1e-320", "", "x", "2", "1,5"]
BAD_TEXT = ["", " ", "\t", "-", "--", "../../etc", "/dev/null", "/proc/self/mem", "é" * 40,
            "a" * 5000, "relu5\x00", "*", "all all", "0--3", "3-", "-3", ",", "0-99999999999999999999"]  # fmt: skip


def _value(rng: random.Random, kind: str) -> str:
    pool = {"int": BAD_INTS, "float": BAD_FLOATS, "text": BAD_TEXT}[kind]
    if rng.random() < 0.2:  # a small valid value now and then: the case must still be cheap
        return {"int": str(rng.randint(1, 3)), "float": "0.5", "text": "relu5"}[kind]
    return rng.choice(pool)


# ---- models ---------------------------------------------------------------------------------


@cache
def default_bytes() -> bytes:
    return DEFAULT.read_bytes()


@cache
def tiny_models() -> dict[str, bytes]:
    """Small valid models of several shapes (the test factory's), as bytes."""
    import tempfile

    import onnx_factory as fac

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name in ("tiny_cnn", "tf2onnx_style", "caffe_style", "softmax_head"):
            path = getattr(fac, name)(Path(d))
            out[name] = Path(path).read_bytes()
    return out


def _mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    b = bytearray(data)
    how = rng.choice(["flip", "truncate", "insert", "zero", "splice"])
    if how == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        b = b[: rng.randrange(len(b))]
    elif how == "insert":
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif how == "zero":
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 256)] = bytes(min(256, len(b) - i))
    else:
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b = b[:i] + b[j:] + b[i:j]
    return bytes(b), how


def _mutate_proto(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    m = onnx.load_from_string(data)
    how = rng.choice(["input_dims", "attribute", "drop_node", "op_type", "metadata",
                      "initializer_dims", "strings", "outputs"])  # fmt: skip
    g = m.graph
    if how == "input_dims":
        dims = g.input[0].type.tensor_type.shape.dim
        d = dims[rng.randrange(len(dims))]
        v = rng.choice([0, -1, -7, 1, 2, 10**9, 2**62, None])
        d.Clear()
        if v is None:
            d.dim_param = rng.choice(["N", "", "é", "H W"])
        else:
            d.dim_value = v
    elif how == "attribute" and len(g.node):
        node = g.node[rng.randrange(len(g.node))]
        name = rng.choice(["pads", "strides", "kernel_shape", "dilations", "group", "axis",
                           "perm", "alpha", "auto_pad", "shape"])  # fmt: skip
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        value = rng.choice([[100000] * 4, [-1] * 4, [0, 0], [1] * 9, 0, -3, 2**40, 1.5,
                            "SAME_UPPER", "bogus", [3, 1, 2, 0], [0] * 2])  # fmt: skip
        node.attribute.append(helper.make_attribute(name, value))
    elif how == "drop_node" and len(g.node):
        del g.node[rng.randrange(len(g.node))]
    elif how == "op_type" and len(g.node):
        node = g.node[rng.randrange(len(g.node))]
        node.op_type = rng.choice(["Relu", "Softmax", "Loop", "If", "NoSuchOp", "Shrink",
                                   "Identity", "Conv", "MaxPool", "Resize"])  # fmt: skip
    elif how == "metadata":
        depth = rng.choice([1, 50, 5000])
        text = "[" * depth + "]" * depth
        if rng.random() < 0.5:
            text = json.dumps({"scale": rng.choice([0, -1, "x", 1e309, None]), "mean": "1,2"})
        helper.set_model_props(
            m,
            {
                "pyanalyzer.preprocessing": text,
                "pyanalyzer.class_names": rng.choice(["[1", "[]", "{}", "x"]),
            },
        )
    elif how == "initializer_dims" and len(g.initializer):
        t = g.initializer[rng.randrange(len(g.initializer))]
        t.dims[:] = [rng.choice([0, 1, 7, 2**31, 2**40]) for _ in range(max(1, len(t.dims)))]
    elif how == "strings":
        m.producer_name = rng.choice(["é" * 100, "\x00", "x" * 100000])
        if len(g.node):
            with contextlib.suppress(ValueError):  # protobuf refuses a lone surrogate
                g.node[0].name = "\udcff" if rng.random() < 0.1 else "n" * 1000
    else:
        g.output[0].name = rng.choice(["", "nope", g.input[0].name])
    try:
        return m.SerializeToString(), f"proto:{how}"
    except Exception:  # a string the serializer refuses: keep the unmutated bytes
        return data, f"proto:{how} (unserialisable)"


def _invalid_utf8(data: bytes) -> bytes:
    """The model's producer name replaced by bytes that are not UTF-8 (same length)."""
    m = onnx.load_from_string(data)
    m.producer_name = "P" * 12
    raw = m.SerializeToString()
    return raw.replace(b"P" * 12, b"\xff\xfe" * 6, 1)


def model_case(rng: random.Random) -> Case:
    """A mutated model file, read by ``info`` or run by a cheap analysis."""
    source = rng.choice(["default"] * 2 + list(tiny_models()))
    data = default_bytes() if source == "default" else tiny_models()[source]
    r = rng.random()
    if r < 0.4:
        data, how = _mutate_bytes(rng, data)
    elif r < 0.9:
        data, how = _mutate_proto(rng, data)
    else:
        data, how = _invalid_utf8(data), "invalid utf-8"
    command = rng.choice(["info"] * 4 + ["actmax", "dissect", "deconv"])
    model = "{in}/m.onnx"
    args = {
        "info": ["info", model, "--json"] + (["--no-parity"] if rng.random() < 0.5 else []),
        "actmax": ["actmax", model, "--layer", "relu2", "--units", "0", "--steps", "1", "--size",
                   "16", "--out", "{out}", *STORE],
        "dissect": ["dissect", model, "--layer", "relu2", "--n-images", "4", "--out", "{out}",
                    *STORE],
        "deconv": ["deconv", model, "--layer", "relu2", "--units", "0", "--n-images", "2",
                   "--top-k", "1", "--out", "{out}", *STORE],
    }[command]  # fmt: skip
    return Case("models", args, {"m.onnx": data}, note=f"{source} {how}")


# ---- crafted graphs -------------------------------------------------------------------------

_OPS = ["Conv", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "MaxPool", "AveragePool",
        "BatchNormalization", "Transpose", "Add", "Mul", "Softmax", "GlobalAveragePool",
        "Flatten", "Pad", "Resize", "PRelu", "HardSwish", "Elu"]  # fmt: skip


def graph_case(rng: random.Random) -> Case:
    """A small random graph (a chain of ops with random attributes) as the model."""
    c = rng.choice([1, 3, 3, 4])
    h = rng.choice([8, 16, 17, 32])
    nhwc = rng.random() < 0.3
    shape = [rng.choice([1, "N"]), h, h, c] if nhwc else [rng.choice([1, "N"]), c, h, h]
    inits, nodes = [], []
    cur, ch, rank = "x", c, 4
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["t0"], perm=[0, 3, 1, 2]))
        cur = "t0"
    for i in range(rng.randint(1, 5)):
        op = rng.choice(_OPS)
        out = f"v{i}"
        ins, attrs = [cur], {}
        if op == "Conv":
            k = rng.choice([1, 3, 5])
            co = rng.choice([2, 4])
            w = np.random.default_rng(i).normal(size=(co, ch, k, k)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            ins.append(f"w{i}")
            attrs = {"pads": [rng.choice([0, 1, 2, 100000, -1])] * 4,
                     "strides": [rng.choice([1, 2, 0])] * 2}  # fmt: skip
            ch = co
        elif op in ("MaxPool", "AveragePool"):
            attrs = {"kernel_shape": [rng.choice([1, 2, 3, 0])] * 2,
                     "strides": [rng.choice([1, 2])] * 2}  # fmt: skip
        elif op == "LeakyRelu":
            attrs = {"alpha": rng.choice([0.1, -1.0, 1e30])}
        elif op == "Clip":
            for j, v in enumerate((0.0, rng.choice([6.0, -1.0, float("nan")]))):
                inits.append(numpy_helper.from_array(np.array(v, np.float32), f"c{i}_{j}"))
                ins.append(f"c{i}_{j}")
        elif op == "PRelu":
            inits.append(numpy_helper.from_array(np.full((ch, 1, 1), 0.2, np.float32), f"s{i}"))
            ins.append(f"s{i}")
        elif op == "BatchNormalization":
            for j, v in enumerate((1.0, 0.0, 0.0, 1.0)):
                inits.append(numpy_helper.from_array(np.full(ch, v, np.float32), f"b{i}_{j}"))
                ins.append(f"b{i}_{j}")
        elif op == "Transpose":
            attrs = {"perm": rng.choice([[0, 1, 3, 2], [0, 2, 3, 1], [3, 2, 1, 0]])}
        elif op in ("Add", "Mul"):
            ins.append(cur)
        elif op == "Pad":
            inits.append(
                numpy_helper.from_array(
                    np.array([0, 0, 1, 1, 0, 0, rng.choice([1, 9999999]), 1], np.int64), f"p{i}"
                )
            )
            ins.append(f"p{i}")  # fmt: skip
        elif op == "Resize":
            inits.append(numpy_helper.from_array(np.array([], np.float32), f"r{i}"))
            inits.append(
                numpy_helper.from_array(
                    np.array([1, 1, rng.choice([2.0, 0.5, 1000.0]), 2.0], np.float32), f"q{i}"
                )
            )
            ins += [f"r{i}", f"q{i}"]  # fmt: skip
        elif op == "Softmax":
            attrs = {"axis": rng.choice([1, -1, 7])}
        elif op == "Flatten":
            rank = 2
        nodes.append(helper.make_node(op, ins, [out], name=f"node{i}", **attrs))
        cur = out
    g = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [f"d{k}" for k in range(rank)])],
        inits,
    )  # fmt: skip
    opset = rng.choice([11, 13, 17])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    data = model.SerializeToString()
    command = rng.choice(["info", "info", "actmax", "deconv-image"])
    args = {
        "info": ["info", "{in}/g.onnx", "--json"],
        "actmax": ["actmax", "{in}/g.onnx", "--layer", cur, "--units", "0", "--steps", "1",
                   "--size", "16", "--out", "{out}", *STORE],
        "deconv-image": ["deconv", "{in}/g.onnx", "--layer", cur, "--units", "0", "--image",
                         "{in}/x.png", "--method", rng.choice(["deconv", "guided", "saliency"]),
                         "--out", "{out}", *STORE],
    }[command]  # fmt: skip
    img = _png(np.random.default_rng(1).integers(0, 256, (h, h, 3), np.uint8))
    return Case("graphs", args, {"g.onnx": data, "x.png": img}, note=f"{len(nodes)} ops")


# ---- images ---------------------------------------------------------------------------------


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (the data is one empty row)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _image(rng: random.Random) -> tuple[bytes | Callable[[Path], None], str]:
    from PIL import Image

    kind = rng.choice(["valid", "valid", "mode", "truncated", "random", "bomb", "empty",
                       "tiny", "jpeg", "fifo", "devzero"])  # fmt: skip
    size = rng.choice([1, 2, 7, 64, 301])
    arr = np.random.default_rng(rng.randrange(1000)).integers(0, 256, (size, size, 3), np.uint8)
    if kind == "valid":
        return _png(arr), kind
    if kind == "mode":
        img = Image.fromarray(arr).convert(rng.choice(["L", "LA", "P", "RGBA", "I", "F", "1"]))
        buf = io.BytesIO()
        img.save(buf, format="TIFF" if img.mode in ("I", "F") else "PNG")  # PNG has no such modes
        return buf.getvalue(), f"mode {img.mode}"
    if kind == "truncated":
        data = _png(arr)
        return data[: rng.randrange(8, len(data))], kind
    if kind == "random":
        return b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(200)), kind
    if kind == "bomb":
        return _png_header(rng.choice([20000, 65535, 2**31 - 1]), 20000), kind
    if kind == "empty":
        return b"", kind
    if kind == "tiny":
        return _png(arr[:1, :1]), kind
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(arr).convert("CMYK").save(buf, format="JPEG")
        return buf.getvalue(), "jpeg cmyk"
    if kind == "fifo":
        return (lambda p: os.mkfifo(p)), kind
    return (lambda p: os.symlink("/dev/zero", p)), kind


def image_case(rng: random.Random) -> Case:
    """Hostile images through every command that reads images, on the default model."""
    data, how = _image(rng)
    files: dict[str, bytes | Callable[[Path], None]] = {"img/a.png": data}
    if rng.random() < 0.5:
        files["img/b.png"] = _png(np.zeros((64, 64, 3), np.uint8))
    model = str(DEFAULT)
    command = rng.choice(["deconv-image", "invert", "actmax-reference", "patches", "train"])
    args = {
        "deconv-image": ["deconv", model, "--layer", "relu5", "--units", "0", "--image",
                         "{in}/img/a.png", "--out", "{out}", *STORE],
        "invert": ["invert", model, "--image", "{in}/img/a.png", "--layer", "relu2", "--steps",
                   "1", "--out", "{out}", *STORE],
        "actmax-reference": ["actmax", model, "--layer", "relu5", "--units", "0", "--steps", "1",
                             "--reference", "{in}/img", "--out", "{out}", *STORE],
        "patches": ["deconv", model, "--layer", "relu5", "--units", "0", "--images", "{in}/img",
                    "--top-k", "1", "--out", "{out}", *STORE],
        "train": ["invert", "train", model, "--layer", "relu5", "--images", "{in}/img",
                  "--epochs", "1", *STORE],
    }[command]  # fmt: skip
    return Case("images", args, files, note=how)


# ---- Broden folders ------------------------------------------------------------------------


@cache
def broden_files() -> dict[str, bytes]:
    """A valid tiny Broden-format dataset (6 synthetic scenes at 32 px), as files."""
    import tempfile

    from pyanalyzer.data.broden import synth_dataset

    with tempfile.TemporaryDirectory() as d:
        root = synth_dataset(Path(d) / "ds", n_images=6, size=32, progress=False)
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def broden_case(rng: random.Random) -> Case:
    """A Broden folder with one defect: a CSV cell, line or file, or a label PNG."""
    files = dict(broden_files())
    csvs = sorted(k for k in files if k.endswith(".csv"))
    how = rng.choice(["cell", "cell", "line", "truncate", "delete", "png", "header"])
    if how in ("cell", "line", "truncate", "header"):
        name = rng.choice(csvs)
        lines = files[name].decode().split("\n")
        if how == "cell" and len(lines) > 1:
            i = rng.randrange(1, max(2, len(lines) - 1))
            cells = lines[i].split(",")
            j = rng.randrange(len(cells))
            cells[j] = rng.choice(["", "-1", "0", "99999999999", "nan", "x", "é", '"', "1e9",
                                   "4294967296", " ", "../../x.png", "a/b/../../c.png"])  # fmt: skip
            lines[i] = ",".join(cells)
        elif how == "line" and len(lines) > 2:
            i = rng.randrange(1, len(lines) - 1)
            lines.insert(i, lines[i]) if rng.random() < 0.5 else lines.pop(i)
        elif how == "header":
            lines[0] = rng.choice(["", "x,y", lines[0] + ",extra", lines[0].upper()])
        else:
            lines = lines[: rng.randrange(len(lines))]
        files[name] = "\n".join(lines).encode()
        how = f"{how} {name}"
    elif how == "delete":
        victim = rng.choice(sorted(files))
        del files[victim]
        how = f"delete {victim}"
    else:
        pngs = sorted(k for k in files if k.endswith(".png"))
        victim = rng.choice(pngs)
        files[victim] = rng.choice([b"", b"\x89PNG broken", _png_header(20000, 20000),
                                    _png(np.full((9, 9, 3), 255, np.uint8))])  # fmt: skip
        how = f"png {victim}"
    data = {f"ds/{k}": v for k, v in files.items()}
    if rng.random() < 0.5:
        args = ["concepts", "info", "{in}/ds", "--check"]
    else:
        args = ["dissect", str(DEFAULT), "--dataset", "{in}/ds", "--layer", "relu6", "--out",
                "{out}", *STORE]  # fmt: skip
    return Case("broden", args, data, note=how)


# ---- parameters -----------------------------------------------------------------------------

_OPTIONS = {
    "dissect": {"--quantile": "float", "--iou-threshold": "float", "--batch-size": "int",
                "--top-k": "int", "--n-images": "int", "--seed": "int",
                "--checkpoint-every": "float", "--layer": "text", "--net2vec": "text",
                "--device": "text", "--dataset": "text"},
    "actmax": {"--units": "text", "--steps": "int", "--size": "int", "--seed": "int",
               "--batch-size": "int", "--objective": "text", "--param": "text",
               "--regularizers": "text", "--start": "text", "--layer": "text",
               "--direction": "text", "--reference": "text", "--color-from": "text"},
    "deconv": {"--units": "text", "--top-k": "int", "--mode": "text", "--method": "text",
               "--n-images": "int", "--layer": "text", "--image": "text", "--images": "text"},
    "invert": {"--steps": "int", "--jitter": "int", "--seed": "int", "--optimizer": "text",
               "--layer": "text", "--method": "text", "--image": "text"},
    "info": {"--input-size": "text", "--mean": "text", "--std": "text", "--scale": "float",
             "--preprocess": "text", "--layer": "text", "--layout": "text"},
    "concepts synth": {"--n-images": "int", "--size": "int", "--seed": "int", "--out": "text"},
    "cache rm": {"--method": "text", "--model": "text"},
}  # fmt: skip

_BASE = {
    "dissect": ["dissect", str(DEFAULT), "--layer", "relu6", "--n-images", "4", "--out", "{out}"],
    "actmax": ["actmax", str(DEFAULT), "--layer", "relu5", "--units", "0", "--steps", "1",
               "--size", "16", "--out", "{out}"],
    "deconv": ["deconv", str(DEFAULT), "--layer", "relu5", "--units", "0", "--n-images", "2",
               "--top-k", "1", "--out", "{out}"],
    "invert": ["invert", str(DEFAULT), "--image", "{in}/x.png", "--layer", "relu2", "--steps",
               "1", "--out", "{out}"],
    "info": ["info", str(DEFAULT), "--no-parity"],
    "concepts synth": ["concepts", "synth", "--out", "{out}/ds", "--n-images", "3", "--size", "16"],
    "cache rm": ["cache", "rm"],
}  # fmt: skip


def params_case(rng: random.Random) -> Case:
    """One command with one to three of its options set to hostile values."""
    command = rng.choice(sorted(_OPTIONS))
    args = list(_BASE[command])
    if command != "info" and command != "concepts synth":
        args += STORE
    options = rng.sample(
        sorted(_OPTIONS[command]), k=min(len(_OPTIONS[command]), rng.randint(1, 3))
    )
    for opt in options:
        value = _value(rng, _OPTIONS[command][opt])
        if opt in args:  # replace the base value
            args[args.index(opt) + 1] = value
        else:
            args += [opt, value]
    if command == "cache rm" and rng.random() < 0.5:
        args.append(rng.choice(["", " ", "*", "0" * 64, "é"]))
    files = {"x.png": _png(np.full((64, 64, 3), 90, np.uint8))}
    return Case("params", args, files, note=", ".join(options))


FAMILIES: dict[str, Callable[[random.Random], Case]] = {
    "models": model_case,
    "graphs": graph_case,
    "images": image_case,
    "broden": broden_case,
    "params": params_case,
}
"""Every family of cases, by name."""
