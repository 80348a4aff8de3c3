"""Unit ablation against independent references: a brute-force edit of the ONNX file (the
channel's weights and bias zeroed), the torch engine with a forward hook, and numpy
aggregation of the per-image outputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_factory as fac
import onnxruntime as ort
import pytest
import torch
from cli_helpers import run_cli
from onnx import numpy_helper
from torch import nn

import pyanalyzer as pa
from pyanalyzer.data.defaults import SyntheticImages
from pyanalyzer.data.images import ArraySource
from pyanalyzer.data.labels import read_labels
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.ablation import Ablation, AblationInputs, AblationResult
from pyanalyzer.report.ablation import write_ablation
from pyanalyzer.store import Store

N_IMAGES = 48


@pytest.fixture(scope="module")
def model(default_model):
    return pa.load_model(default_model, check_parity=False)


@pytest.fixture(scope="module")
def scenes():
    return SyntheticImages(N_IMAGES, seed=3, size=64)


def _ort(path_or_proto, x: np.ndarray) -> np.ndarray:
    data = path_or_proto if isinstance(path_or_proto, bytes) else Path(path_or_proto).read_bytes()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], np.float64)


def _zeroed(path: Path, conv_output: str, channels: list[int]) -> bytes:
    """The model with the conv producing ``conv_output``'s weights and bias zeroed for
    ``channels`` (a ReLU after it then outputs exactly zero there): the brute-force ablation."""
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if conv_output in n.output)
    assert node.op_type == "Conv"
    inits = {i.name: i for i in proto.graph.initializer}
    for name in node.input[1:]:
        t = inits[name]
        arr = numpy_helper.to_array(t).copy()
        arr[channels] = 0
        t.CopyFrom(numpy_helper.from_array(arr, name))
    return proto.SerializeToString()


def _inputs(model, source) -> np.ndarray:
    spec = model.preprocessing
    x = spec.normalize(np.stack([source.pixels(i, spec) for i in range(len(source))]))
    return np.asarray(x, np.float32)


def test_each_unit_equals_the_zeroed_weights_model(model, default_model, scenes):
    """relu5 = Relu(conv5): ablating unit u is zeroing conv5's filter u and bias u."""
    units = [0, 5, 17, 63]
    a = Ablation(model, layer="relu5", units=units, top=0, progress=False, unit_batch=3)
    r = a.run(AblationInputs(scenes, scenes.labels))
    assert r.cut == "tail"
    x = _inputs(model, scenes)
    y0 = _ort(default_model, x)
    labels = scenes.labels
    for i, u in enumerate(units):
        yu = _ort(_zeroed(default_model, "conv3_2", [u]), x)
        np.testing.assert_allclose(r.delta_score[i], (yu - y0).mean(0), rtol=1e-4, atol=1e-5)
        e0 = np.exp(y0 - y0.max(1, keepdims=True))
        eu = np.exp(yu - yu.max(1, keepdims=True))
        dp = eu / eu.sum(1, keepdims=True) - e0 / e0.sum(1, keepdims=True)
        np.testing.assert_allclose(r.delta_prob[i], dp.mean(0), atol=1e-6)
        assert r.flipped[i] == np.mean(yu.argmax(1) != y0.argmax(1))
        assert r.accuracy[i] == np.mean(yu.argmax(1) == labels)
        for k in range(7):
            sel = labels == k
            if sel.any():
                np.testing.assert_allclose(
                    r.class_delta_score[i, k], (yu - y0)[sel, k].mean(), rtol=1e-4, atol=1e-5
                )
                assert r.class_accuracy[i, k] == np.mean(yu[sel].argmax(1) == k)
    assert r.base_accuracy == np.mean(y0.argmax(1) == labels)
    np.testing.assert_allclose(r.base_score, y0.mean(0), rtol=1e-5, atol=1e-6)


def test_a_set_equals_the_zeroed_weights_model_and_the_torch_hook(model, default_model, scenes):
    chosen = [3, 9, 40]
    a = Ablation(model, layer="relu5", units=[0], joint=chosen, top=0, progress=False)
    x = _inputs(model, scenes)
    y = a.scores(x, [chosen, [7]])
    np.testing.assert_allclose(y[0], _ort(default_model, x), rtol=1e-5, atol=1e-5)
    brute = _ort(_zeroed(default_model, "conv3_2", chosen), x)
    np.testing.assert_allclose(y[1], brute, rtol=1e-4, atol=1e-5)
    # the torch engine: a forward hook zeroing the channels of relu5's module output
    engine = model.gradient
    mod_name, _ = engine.producer(model.layer("relu5").name)
    mod = engine.module.get_submodule(mod_name)

    def hook(_m, _i, out):
        out = out.clone()
        out[:, [7]] = 0
        return out

    handle = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            hooked = engine.module(torch.from_numpy(x)).numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(y[2], hooked, rtol=1e-4, atol=1e-4)
    r = a.run(AblationInputs(scenes, scenes.labels))
    assert r.sets == [{"name": "joint", "units": chosen, "class": None}]
    np.testing.assert_allclose(r.set_delta_score[0], (brute - y[0]).mean(0), rtol=1e-4, atol=1e-5)
    assert r.set_accuracy[0] == np.mean(brute.argmax(1) == scenes.labels)


def test_top_sets_are_each_classes_top_units(model, scenes):
    a = Ablation(model, layer="relu6", units="0-31", top=3, progress=False)
    r = a.run(scenes)
    present = [k for k in range(7) if r.class_images[k]]
    assert [s["class"] for s in r.sets] == present
    for s in r.sets:
        k = s["class"]
        drop = r.class_accuracy_drop[:, k]
        score = r.class_delta_score[:, k]
        # brute-force ranking: accuracy drop desc, then score change asc, then unit
        order = sorted(range(len(r.units)), key=lambda i: (-drop[i], score[i], r.units[i]))
        assert s["units"] == [int(r.units[i]) for i in order[:3]]
    x = _inputs(model, scenes)
    y = a.scores(x, [r.sets[0]["units"]])
    k = r.sets[0]["class"]
    sel = scenes.labels == k
    assert r.set_class_accuracy[0, k] == np.mean(y[1][sel].argmax(1) == k)
    assert r.labels_source == "synthetic"


class _Skip(nn.Module):
    """conv-relu (a) -> conv-relu (b, the ablated layer) -> conv + a (a skip over it) -> relu
    -> reshape to [a.size(0), -1] (a shape computed before the layer) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a))
        c = torch.relu(self.c3(b) + a)
        c = nn.functional.adaptive_avg_pool2d(c, 4)
        return self.fc(c.reshape(a.size(0), -1))


@pytest.fixture(scope="module")
def skip_model(tmp_path_factory):
    torch.manual_seed(0)
    path = fac._export(
        _Skip().eval(), torch.zeros(1, 3, 16, 16), tmp_path_factory.mktemp("skip") / "skip.onnx"
    )
    return path


def test_skip_connections_and_batch_shapes_cross_the_cut(skip_model):
    m = pa.load_model(skip_model, check_parity=False)
    relu = [i for i in m.layers if i.op == "Relu"]
    layer = relu[1]  # b
    a = Ablation(m, layer=layer.name, progress=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 16, 16)).astype(np.float32)
    y = a.scores(x, [[0], [2, 4]])
    assert a.graph is not None and a.graph.cut == "tail"
    assert len(a.graph.inputs) >= 2  # the layer and the skip
    from pyanalyzer.model.surgery import head_graph

    head_ops = [n.op_type for n in head_graph(m.forward.graph, a.graph).graph.node]
    assert head_ops.count("Conv") == 2 and "Gemm" not in head_ops  # nothing after the cut
    a._use("whole")  # the fallback graph gives the same numbers
    assert a.graph.cut == "whole" and a.head == []
    np.testing.assert_allclose(a.scores(x, [[0], [2, 4]]), y, rtol=1e-5, atol=1e-6)
    # brute force: zero the conv producing b
    prod = next(n for n in m.proto.graph.node if layer.name in n.output)
    conv_out = prod.input[0]
    for units, row in (([0], 1), ([2, 4], 2)):
        brute = _ort(_zeroed(skip_model, conv_out, units), x)
        np.testing.assert_allclose(y[row], brute, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y[0], _ort(skip_model, x), rtol=1e-5, atol=1e-6)


def test_fixed_batch_and_nhwc_softmax_models(tmp_path):
    # a batch-1 export with Reshape [1, -1]: one row at a time, same numbers
    path = fac.tiny_cnn(tmp_path, batch=1)
    m = pa.load_model(path, check_parity=False)
    layer = [i for i in m.layers if i.op == "Relu"][1]
    a = Ablation(m, layer=layer.name, units="0-3", top=0, progress=False)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    y = a.scores(x, [[1]])
    prod = next(n for n in m.proto.graph.node if layer.name in n.output)
    data = _zeroed(path, prod.input[0], [1])
    brute = np.concatenate([_ort(data, x[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(y[1], brute, rtol=1e-4, atol=1e-5)
    # an NHWC tf2onnx-style model ending in Softmax: probabilities taken as they are
    path = fac.tf2onnx_style(tmp_path)
    m = pa.load_model(path, check_parity=False)
    layer = [i for i in m.layers if i.op == "Relu"][0]
    a = Ablation(m, layer=layer.name, units="0-3", top=0, progress=False)
    imgs = (rng.uniform(size=(4, 32, 32, 3)) * 255).astype(np.uint8)
    r = a.run(ArraySource(imgs))
    assert r.labels_source == "predicted" and r.base_accuracy == 1.0
    x = _inputs(m, ArraySource(imgs))
    y = a.scores(x, [[0]])
    np.testing.assert_allclose(r.base_prob, y[0].mean(0), rtol=1e-6)  # no second softmax
    np.testing.assert_allclose(r.delta_prob[0], (y[1] - y[0]).mean(0), atol=1e-9)
    # an NHWC map (tf2onnx's transpose pair): its channel 5 is avgpool1's channel 5
    nhwc = Ablation(m, layer="transpose2", units=[5], top=0, progress=False)
    nchw = Ablation(m, layer="avgpool1", units=[5], top=0, progress=False)
    assert m.layer("transpose2").layout == "nhwc"
    got, want = nhwc.scores(x, [[5], [6]]), nchw.scores(x, [[5], [6]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.abs(got[1] - got[0]).max() > 1e-6  # the ablation changed something


def test_store_answers_and_labels_join_a_stored_dissection(model, scenes, tmp_path):
    store = Store(tmp_path / "store")
    a = Ablation(model, layer="relu6", units="0-7", top=2, store=store, progress=False)
    r1 = a.run(AblationInputs(scenes, scenes.labels))
    assert not a.from_store and r1.unit_labels == {}
    from pyanalyzer.data.defaults import concept_dataset

    ds = concept_dataset(tmp_path / "concepts", 60, 64, 0, progress=False)
    d = pa.Dissection(model, layers=["relu6"], store=store, progress=False).run(ds)[0]
    b = Ablation(model, layer="relu6", units="0-7", top=2, store=store, progress=False)
    r2 = b.run(AblationInputs(scenes, scenes.labels))
    assert b.from_store
    np.testing.assert_array_equal(r1.delta_score, r2.delta_score)
    best = d.best_concept
    for u in range(8):
        want = d.concept_names[int(best[u])] if best[u] > 0 else None
        assert r2.unit_labels[u]["concept"] == want
        assert r2.unit_labels[u]["iou"] == pytest.approx(float(d.best_iou[u]))
    text = r2.describe_class(0, 3)
    u0 = r2.top_units(0, 1)[0]
    lab = r2.unit_labels[u0]["concept"]
    assert text.startswith(f"class circle relies on units {u0}" + (f" ({lab})" if lab else ""))
    # the report
    paths = write_ablation(r2, tmp_path / "out", model=model)
    summary = json.loads(paths["summary"].read_text())
    assert summary["classes"][0]["text"] == r2.describe_class(0)
    rows = paths["units"].read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("unit,concept,flipped")
    html = paths["index"].read_text()
    assert "What each class relies on" in html and "http" not in html.replace("http-equiv", "")


def test_interrupted_run_resumes(model, scenes, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    full = Ablation(model, layer="relu6", units="0-5", top=2, batch_size=8, progress=False)
    want = full.run(AblationInputs(scenes, scenes.labels))
    a = Ablation(model, layer="relu6", units="0-5", top=2, batch_size=8, store=store,
                 progress=False, checkpoint_every=0)  # fmt: skip
    calls = {"n": 0}
    original = Ablation._evaluate

    def failing(self, x, masks):
        calls["n"] += 1
        # the graph's check, 6 batches of single units, then the sets' third batch
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return original(self, x, masks)

    monkeypatch.setattr(Ablation, "_evaluate", failing)
    with pytest.raises(KeyboardInterrupt):
        a.run(AblationInputs(scenes, scenes.labels))
    calls["n"] = 100
    b = Ablation(model, layer="relu6", units="0-5", top=2, batch_size=8, store=store,
                 progress=False)  # fmt: skip
    counted = {"n": 0}

    def counting(self, x, masks):
        counted["n"] += 1
        return original(self, x, masks)

    monkeypatch.setattr(Ablation, "_evaluate", counting)
    got = b.run(AblationInputs(scenes, scenes.labels))
    assert b.resumed
    assert counted["n"] == 1 + 4  # the graph's check, then the sets' last 4 batches
    for name in ("delta_score", "accuracy", "set_accuracy", "set_delta_score"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12)


def test_bad_params_and_inputs_are_one_line(model, scenes, tmp_path):
    cases = [
        ({"layer": "nope"}, "nope"),
        ({"layer": "relu6", "units": "500"}, "500"),
        ({"layer": "relu6", "labels": [0, 9]}, "out of range"),
        ({"layer": "relu6", "labels": ["a"]}, "class numbers"),
        ({"layer": "fc1"}, "class output itself"),
        ({"layer": "relu6", "output": "relu5"}, "not a vector"),
        ({"layer": "relu6", "top": -1}, "top"),
    ]
    for params, needle in cases:
        with pytest.raises(UserInputError, match=needle) as exc:
            Ablation(model, params, progress=False)
        assert "\n" not in str(exc.value)
    a = Ablation(model, layer="relu6", labels=[0, 1], progress=False)
    with pytest.raises(UserInputError, match="2 label"):
        a.run(scenes)


def test_labels_file(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    from PIL import Image

    for name in ("a.png", "b.png", "sub/c.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    paths = sorted(p for p in folder.rglob("*.png"))
    classes = ["cat", "dog"]
    good = tmp_path / "labels.csv"
    good.write_text("image,label\na.png,dog\nsub/c.png,0\n# comment\n\nb.png,cat\n")
    got = read_labels(good, folder, paths, classes)
    order = [p.relative_to(folder).as_posix() for p in paths]
    assert dict(zip(order, got.tolist(), strict=True)) == {"a.png": 1, "b.png": 0, "sub/c.png": 0}
    bad = {
        "a.png,dog\nb.png,cat\n": "no label",
        "a.png,dog\nb.png,cat\nc.png,cow\n": "not a class",
        "a.png,dog\nb.png,cat\nc.png,7\n": "out of range",
        "a.png,dog\na.png,cat\n": "labelled twice",
        "x.png,dog\n": "no image",
        "a.png,dog,1\n": "expected",
    }
    for text, needle in bad.items():
        good.write_text(text)
        with pytest.raises(UserInputError, match=needle):
            read_labels(good, folder, paths, classes)


def test_cli(capsys, default_model, tmp_path):
    out = tmp_path / "out"
    store = str(tmp_path / "store")
    code, stdout, err = run_cli(
        capsys, "ablate", str(default_model), "--layer", "relu6", "--units", "0-15",
        "--n-images", "40", "--top", "2", "--joint", "1,2", "--out", str(out),
        "--store", store, "--no-progress", "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["method"] == "ablate" and not doc["from_store"]
    s = doc["summary"]
    assert s["labels"] == "synthetic" and s["units"] == 16 and s["sets"][-1]["units"] == [1, 2]
    # equals the library on the same scenes and labels
    m = pa.load_model(default_model, check_parity=False)
    src = SyntheticImages.for_model(m.preprocessing, 40)
    r: AblationResult = Ablation(
        m, layer="relu6", units="0-15", top=2, joint="1,2", progress=False
    ).run(src)
    assert s["base_accuracy"] == r.base_accuracy
    rows = (out / "units.csv").read_text().splitlines()[1:]
    assert [float(x.split(",")[2]) for x in rows] == pytest.approx(r.flipped.tolist())
    # one-line errors, nothing written
    for args, needle in (
        (["--labels", "x.csv"], "--labels goes with --images"),
        (["--images", str(tmp_path / "none")], "does not exist"),
        (["--layer", "relu9"], "relu9"),
    ):
        target = tmp_path / f"bad{len(needle)}"
        base = ["ablate", str(default_model), "--out", str(target), "--store", store]
        if "--layer" not in args:
            base += ["--layer", "relu6"]
        code, stdout, err = run_cli(capsys, *base, *args)
        assert code == 2 and needle in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert not target.exists()


def test_surgery_keeps_the_original_model_untouched(model):
    before = copy.deepcopy(model.proto)
    Ablation(model, layer="relu5", units=[0], top=0, progress=False).scores(
        np.zeros((1, 3, 64, 64), np.float32), [[0]]
    )
    assert model.proto == before


def test_the_repeated_inputs_are_capped_without_changing_results(model, scenes, monkeypatch):
    import pyanalyzer.methods.ablation as ab

    x = _inputs(model, scenes)[:8]
    sets = [[u] for u in range(10)]
    want = Ablation(model, layer="relu5", top=0, progress=False, unit_batch=16).scores(x, sets)
    calls = []
    a = Ablation(model, layer="relu5", top=0, progress=False, unit_batch=16)
    a.scores(x[:1], [])  # the graph is built
    real = a.session.run
    a.session = type(
        "S",
        (),
        {"run": lambda self, o, f: calls.append(len(f["pyanalyzer_ablation_mask"])) or real(o, f)},
    )()
    monkeypatch.setattr(ab, "TAIL_FEED_BYTES", 1)
    got = a.scores(x, sets)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert calls == [8] * 11  # one ablation (8 image rows) per pass


def test_cli_on_a_broden_dataset(capsys, default_model, tmp_path):
    """--dataset DIR: the dataset's images, classes taken from the intact model's top-1."""
    from pyanalyzer.data.broden import synth_dataset

    ds = synth_dataset(tmp_path / "ds", n_images=12, size=64, progress=False)
    code, stdout, err = run_cli(
        capsys, "ablate", str(default_model), "--layer", "relu6", "--units", "0-3",
        "--dataset", str(ds), "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s"),
        "--no-progress", "--json",
    )  # fmt: skip
    assert code == 0, err
    s = json.loads(stdout)["summary"]
    assert s["images"] == 12 and s["labels"] == "predicted" and s["base_accuracy"] == 1.0
    assert "agreement with the intact model" in (tmp_path / "o" / "index.html").read_text()


def test_report_page_in_a_browser_at_375_px(model, scenes, tmp_path):
    """The ablation page in real Chromium: no request leaves it, nothing is wider than a
    phone, and it shows the numbers of the result."""
    from report.conftest import offline_page

    r = Ablation(model, layer="relu6", units="0-7", top=2, joint=[1, 2], progress=False).run(
        AblationInputs(scenes, scenes.labels)
    )
    paths = write_ablation(r, tmp_path / "out", model=model)
    with offline_page(paths["index"]) as (page, external):
        width = page.evaluate("document.documentElement.scrollWidth")
        rows = page.eval_on_selector_all(
            "table:last-of-type tbody tr", "rs => rs.map(r => r.cells[0].innerText)"
        )
    assert external == [] and width <= 375, width
    # the last table lists every unit, most disruptive first
    order = np.argsort(-r.flipped, kind="stable")
    assert [int(x) for x in rows] == [int(r.units[i]) for i in order]
