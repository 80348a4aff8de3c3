"""Compositional explanations (Mu & Andreas 2020) end to end, against a brute force over every
formula computed with plain numpy masks on a tiny model and concept dataset made here."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from onnx import TensorProto, helper, numpy_helper

import pyanalyzer as pa
from pyanalyzer.analysis import ParamsError
from pyanalyzer.data.broden import BrodenDataset, BrodenRecord, write_broden
from pyanalyzer.methods.dissection import Compositional, Dissection, formula_text
from pyanalyzer.methods.dissection.compositional import AND, AND_NOT, OR
from pyanalyzer.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from reference_compose import formula_mask, presence  # noqa: E402
from reference_tally import upsample  # noqa: E402

SQUARE, DISK, STRIPE, TOP, INDOOR, OUTDOOR = 1, 2, 3, 4, 5, 6
LABELS = {SQUARE: "square", DISK: "disk", STRIPE: "stripe", TOP: "top", INDOOR: "indoor",
          OUTDOOR: "outdoor"}  # fmt: skip
N_IMAGES, SEG = 24, 16


def _model(path: Path, weights: np.ndarray, bias: np.ndarray) -> Path:
    """A 1x1 convolution of the raw pixels: unit u = weights[u] . rgb + bias[u]."""
    units = weights.shape[0]
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w", "b"], ["conv"], name="conv"),
            helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        ],
        "compose-probe",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["N", units, 32, 32])],
        initializer=[
            numpy_helper.from_array(weights.reshape(units, 3, 1, 1).astype(np.float32), "w"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(m, {"pyanalyzer.preprocessing": json.dumps({"preset": "raw"})})
    onnx.save(m, path)
    return path


def _records():
    """Scenes at seg resolution 16x16, drawn at 32x32 (each label pixel a 2x2 block): a square
    (left) and a disk (right) in red; green on the square's pixels outside the "top" part; blue
    on the stripe and the top part, and noise; a scene label."""
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        obj = np.zeros((SEG, SEG), np.int32)
        y, x = rng.integers(4, 9), rng.integers(0, 4)
        obj[y : y + 4, x : x + 4] = SQUARE
        y, x = rng.integers(0, 12), rng.integers(9, 12)
        obj[y : y + 3, x : x + 4] = DISK
        stripe = obj[14:, rng.integers(0, 8) :]  # a view: written through
        stripe[stripe == 0] = STRIPE
        part = np.zeros((SEG, SEG), np.int32)
        if i % 3:
            part[:7] = TOP
        red = np.isin(obj, (SQUARE, DISK))
        green = (obj == SQUARE) & (part != TOP)
        blue = 80 * (obj == STRIPE) + 60 * (part == TOP) + rng.integers(0, 60, (SEG, SEG))
        rgb = np.stack([red * 100, green * 100, blue], axis=-1)
        image = np.kron(rgb, np.ones((2, 2, 1))).astype(np.uint8)
        yield BrodenRecord(
            f"scenes/{i:03d}.png", image, {"object": [obj], "part": [part]},
            {"scene": [INDOOR if i % 2 else OUTDOOR]},
        )  # fmt: skip


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    d = tmp_path_factory.mktemp("compose")
    ds = write_broden(d / "ds", _records(), LABELS, ["object", "part", "scene"])
    rng = np.random.default_rng(1)
    weights = np.concatenate([np.eye(3)[:2], rng.normal(size=(4, 3))])  # red, green, random
    bias = np.concatenate([[0.0, 0.0], rng.normal(size=4) * 20])
    model = pa.load_model(_model(d / "probe.onnx", weights, bias), check_parity=False)
    return model, BrodenDataset(ds, cache_dir=d / "cache")


def _masks(model, ds, thresholds):
    """Plain numpy: each unit's mask [U, N, S, S] (the reference upsampling) and each concept's
    presence [C, N, S, S] (set semantics)."""
    n = len(ds)
    spec = model.preprocessing
    x = spec.normalize(np.stack([ds.pixels(i, spec) for i in range(n)]))
    acts = model.forward.run(x, ["relu"])["relu"]
    up = upsample(acts, *ds.seg_size)  # [N, U, S, S]
    units = up > np.asarray(thresholds)[None, :, None, None]
    seg, labels, _ = ds.segmentation_batch(np.arange(n))
    c = len(ds.names)
    present = np.zeros((c, n, *ds.seg_size), bool)
    for k in range(1, c):
        for i in range(n):
            present[k, i] = presence(seg[i], labels[i], k)
    return units.transpose(1, 0, 2, 3), present, seg, labels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def test_beam_as_wide_as_the_concepts_equals_a_brute_force(probe, tmp_path):
    model, ds = probe
    result = Compositional(model, layers=["relu"], max_length=2, beam=8, quantile=0.5,
                           store=Store(tmp_path / "s"), progress=False).run(ds)  # fmt: skip
    (r,) = result
    masks, present, _, _ = _masks(model, ds, r.thresholds)
    concepts = [k for k in range(1, len(ds.names)) if ds.names[k] and present[k].any()]
    assert len(concepts) == 6
    formulas: list[tuple[str, np.ndarray]] = [(ds.names[k], present[k]) for k in concepts]
    for a, b in itertools.permutations(concepts, 2):
        formulas += [
            (f"{ds.names[a]} AND {ds.names[b]}", present[a] & present[b]),
            (f"{ds.names[a]} OR {ds.names[b]}", present[a] | present[b]),
            (f"{ds.names[a]} AND NOT {ds.names[b]}", present[a] & ~present[b]),
        ]
    for i, u in enumerate(r.units):
        scores = [_iou(masks[u], f) for _, f in formulas]
        assert r.iou[i] == max(scores), (u, r.text(i))
        singles = scores[: len(concepts)]
        assert r.single_iou[i] == max(singles)
        assert r.single_concept[i] == concepts[int(np.argmax(singles))]
        # the formula found is what it says: its IoU recomputed from its own mask
        seg, labels, _ = ds.segmentation_batch(np.arange(len(ds)))
        mask = np.stack([formula_mask(seg[n], labels[n], r.formulas[i], r.ops[i])
                         for n in range(len(ds))])  # fmt: skip
        assert _iou(masks[u], mask) == r.iou[i]
        assert r.intersection[i] == (masks[u] & mask).sum() and r.area[i] == mask.sum()
        assert r.unit_area[i] == masks[u].sum()
    assert (r.length == 2).any()  # some unit is explained better by two concepts


def test_units_built_on_a_formula_get_it_with_iou_1(probe):
    model, ds = probe
    (r,) = Compositional(model, layers=["relu"], units="0-1", quantile=0.5,
                         progress=False).run(ds)  # fmt: skip
    np.testing.assert_array_equal(r.units, [0, 1])
    np.testing.assert_array_equal(r.iou, [1.0, 1.0])
    # unit 0 (red) fires on square OR disk
    assert r.length[0] == 2 and r.ops[0, 1] == OR and set(r.formulas[0, :2]) == {SQUARE, DISK}
    assert r.text(0) in ("square OR disk", "disk OR square")
    # unit 1 (green) fires on square AND NOT top
    assert r.text(1) == "square AND NOT top"
    assert list(r.formulas[1]) == [SQUARE, TOP, 0] and r.ops[1, 1] == AND_NOT
    # a single concept explains them less well; the dissection's label is beside it
    assert (r.single_iou < 1).all() and r.single_concept[1] == SQUARE
    d = Dissection(model, layers=["relu"], quantile=0.5, progress=False).run(ds)[0]
    np.testing.assert_array_equal(r.netdissect_concept, d.best_concept[:2])
    np.testing.assert_array_equal(r.netdissect_iou, d.best_iou[:2])
    np.testing.assert_array_equal(r.thresholds, d.thresholds[:2])


def test_length_one_is_the_plain_single_concept_iou(probe):
    model, ds = probe
    (r,) = Compositional(model, layers=["relu"], max_length=1, quantile=0.5,
                         progress=False).run(ds)  # fmt: skip
    masks, present, _, _ = _masks(model, ds, r.thresholds)
    for i, u in enumerate(r.units):
        ious = [_iou(masks[u], present[k]) if ds.names[k] else 0.0
                for k in range(len(ds.names))]  # fmt: skip
        best = int(np.argmax(ious))
        assert r.iou[i] == r.single_iou[i] == ious[best]
        assert r.length[i] == 1 and r.formulas[i, 0] == r.single_concept[i] == best
        assert r.text(i) == ds.names[best]


def test_the_store_answers_and_an_interrupted_run_resumes(probe, tmp_path, monkeypatch):
    model, ds = probe
    params = {"layers": ["relu"], "quantile": 0.5, "max_length": 3, "batch_size": 5}
    ref = Compositional(model, params, progress=False).run(ds)
    store = Store(tmp_path / "s")
    Dissection(model, layers=["relu"], quantile=0.5, top_k=3, store=store, progress=False).run(ds)
    from pyanalyzer.methods.dissection import compositional as comp

    real = comp._backend.compose
    calls = {"n": 0}

    def dying(*a, **k):  # dies in the middle of pass 2 (5 batches a pass)
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(comp._backend, "compose", dying)
    with pytest.raises(KeyboardInterrupt):
        Compositional(model, params, store=store, checkpoint_every=0, progress=False).run(ds)
    monkeypatch.setattr(comp._backend, "compose", real)
    monkeypatch.setattr(Dissection, "compute", lambda *a: pytest.fail("dissected again"))
    again = Compositional(model, params, store=store, checkpoint_every=0, progress=False)
    got = again.run(ds)
    assert again.resumed and again.resumed_from == (2, 10)
    for name, value in ref.to_arrays().items():
        np.testing.assert_array_equal(got.to_arrays()[name], value, err_msg=name)

    monkeypatch.setattr(Compositional, "compute", lambda *a: pytest.fail("computed again"))
    third = Compositional(model, {**params, "layers": ["relu"], "batch_size": 7}, store=store,
                          progress=False)  # fmt: skip
    stored = third.run(ds)
    assert third.from_store
    assert stored.summary()["layers"] == ref.summary()["layers"]
    assert not any(e.key.is_partial for e in store.entries())


def _csv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return list(rows[0]), {row["unit"]: row for row in rows}


def test_cli_dissect_compositional_columns_equal_the_library(probe, tmp_path, capsys):
    model, ds = probe
    store = tmp_path / "store"
    common = ["dissect", str(model.path), "--dataset", str(ds.root), "--layer", "relu",
              "--quantile", "0.5", "--store", str(store), "--no-progress"]  # fmt: skip
    code, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "plain"))
    assert code == 0, err
    code, out, err = run_cli(capsys, *common, "--out", str(tmp_path / "comp"), "--compositional",
                             "--formula-length", "2", "--beam", "8", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["from_store"] is True and doc["summary"]["compositional"]["from_store"] is False

    alias = model.layer("relu").alias
    plain_fields, plain = _csv(tmp_path / "plain" / f"{alias}_tally.csv")
    fields, rows = _csv(tmp_path / "comp" / f"{alias}_tally.csv")
    assert fields == plain_fields + ["formula", "formula-length", "formula-score",
                                     "formula-single", "formula-single-score"]  # fmt: skip
    for unit, row in rows.items():
        assert {k: row[k] for k in plain_fields} == plain[unit]

    lib = Compositional(model, layers=["relu"], quantile=0.5, max_length=2, beam=8,
                        store=Store(store), progress=False)  # fmt: skip
    (r,) = lib.run(ds)
    assert lib.from_store  # the CLI's run
    for i, u in enumerate(r.units):
        row = rows[str(u + 1)]
        assert row["formula"] == r.text(i)
        assert int(row["formula-length"]) == r.length[i]
        assert float(row["formula-score"]) == r.iou[i]
        assert row["formula-single"] == ds.names[r.single_concept[i]]
        assert float(row["formula-single-score"]) == r.single_iou[i]
    assert rows["1"]["formula"] in ("square OR disk", "disk OR square")
    assert rows["2"]["formula"] == "square AND NOT top"
    records = json.loads((tmp_path / "comp" / "summary.json").read_text())["layers"][0]
    assert [x["formula"] for x in records["unit_records"]] == r.texts
    assert records["compositional"]["max_length"] == 2
    page = (tmp_path / "comp" / f"{alias}.html").read_text()
    assert 'class="formula-text">square AND NOT top</span>' in page
    listed = doc["summary"]["compositional"]["layers"][0]["unit_records"]
    assert [x["formula"] for x in listed] == r.texts

    code, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "x"), "--beam", "3")
    assert code == 2 and "--formula-length and --beam go with --compositional" in err
    code, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "x"), "--compositional",
                           "--formula-length", "9")  # fmt: skip
    assert code == 2 and err.strip().endswith("formula length must be at most 5, got 9")


def test_formula_text():
    names = ["-", "grass", "field", "sky"]
    assert formula_text([1, 2, 3], [0, OR, AND_NOT], names) == "(grass OR field) AND NOT sky"
    assert formula_text([3, 1, 0], [0, AND, 9], names) == "sky AND grass"
    assert formula_text([2, 0, 1], [0, 0, 0], names) == "field"
    assert formula_text([0, 2, 1], [0, AND, AND], names) == ""


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_length": 0}, "formula length must be >= 1, got 0"),
        ({"max_length": 6}, "formula length must be at most 5, got 6"),
        ({"beam": 0}, "beam must be >= 1, got 0"),
        ({"beam": 65}, "beam must be at most 64, got 65"),
        ({"beam": True}, "beam must be an integer, got bool True"),
        ({"quantile": 1.5}, r"quantile must be in \(0, 1\)"),
        ({"units": "3-"}, "units '3-'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"layers": []}, "give at least one layer"),
        ({"bogus": 1}, "unknown compose parameter 'bogus'"),
    ],
)
def test_bad_params_give_one_line(probe, params, message):
    model, _ = probe
    with pytest.raises(ParamsError, match=message) as exc:
        Compositional(model, {"layers": ["relu"], **params})
    assert "\n" not in str(exc.value)


def test_params_that_do_not_fit_the_model(probe):
    model, ds = probe
    with pytest.raises(pa.UserInputError, match="unit 6 is out of range") as exc:
        Compositional(model, layers=["relu"], units="0-6")
    assert "\n" not in str(exc.value)
    with pytest.raises(pa.LayerNotFoundError):
        Compositional(model, layers=["relu9"])
    with pytest.raises(pa.UserInputError, match="give the concept dataset"):
        Compositional(model, layers=["relu"], progress=False).run(None)


def test_write_result_writes_the_formulas_csv(probe, tmp_path):
    model, ds = probe
    result = Compositional(model, layers=["relu"], units="0-1", quantile=0.5,
                           progress=False).run(ds)  # fmt: skip
    paths = pa.write_result(result, tmp_path / "out")
    (layer,) = result
    fields, rows = _csv(paths[f"{layer.alias}/formulas"])
    assert fields[:4] == ["unit", "channel", "formula", "length"]
    for i, u in enumerate(layer.units.tolist()):
        row = rows[str(u + 1)]
        assert row["formula"] == layer.text(i)
        assert float(row["iou"]) == pytest.approx(float(layer.iou[i]))
    assert json.loads(paths["summary"].read_text()) == json.loads(json.dumps(result.summary()))
