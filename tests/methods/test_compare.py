"""Model comparison (:class:`pyanalyzer.Comparison`) against independent references: the default
model against itself (identity), against a copy whose conv3_2 channels are permuted (the
matching must find the permutation exactly), and against a copy fine-tuned for a few SGD steps
on its torch twin. Correlations equal ``np.corrcoef`` of the stacked activations (read with a
plain onnxruntime session), gained and lost concepts equal those of two independent
dissections, the output agreement equals a direct onnxruntime computation; the arithmetic
(bilinear resize, streaming sums, matching) against brute force; store keys and resumption."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from compare_helpers import fine_tune, permute_channels

import pyanalyzer as pa
from pyanalyzer.data.broden import BrodenDataset, synth_dataset
from pyanalyzer.data.defaults import SyntheticImages
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.compare import (
    Comparison,
    CorrelationTally,
    OutputTally,
    bilinear_matrix,
    match_units,
    resize_maps,
)
from pyanalyzer.methods.dissection import Dissection
from pyanalyzer.store import Store

LAYERS = ["relu5", "relu6"]  # conv3_2's ReLU (64 units, 16x16) and conv4_1's (128, 8x8)


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    d = tmp_path_factory.mktemp("concepts")
    root = synth_dataset(d / "ds", n_images=80, size=64, progress=False)
    return BrodenDataset(root, cache_dir=d / "cache")


@pytest.fixture(scope="module")
def versions(tmp_path_factory, default_model):
    d = tmp_path_factory.mktemp("versions")
    perm = np.random.default_rng(3).permutation(64)
    images = SyntheticImages(32, seed=7, size=64).images
    return {
        "perm": perm,
        "permuted": permute_channels(default_model, d / "permuted.onnx", "conv3_2", perm),
        "tuned": fine_tune(default_model, d / "tuned.onnx", images, target=0, lr=1e-3, steps=3),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("store") / "store")


@pytest.fixture(scope="module")
def model_a(default_model):
    return pa.load_model(default_model, check_parity=False)


def _load(path):
    return pa.load_model(path, check_parity=False)


# ---- independent references -------------------------------------------------------------------


def _ort(path, ds, spec, names):
    """The tensors ``names`` for every image of ``ds``, from a plain onnxruntime session on
    the file with those tensors added as outputs."""
    proto = onnx.load(str(path))
    have = {o.name for o in proto.graph.output}
    for name in names:
        if name not in have:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = spec.normalize(np.stack([ds.pixels(i, spec) for i in range(len(ds))]))
    return dict(zip(names, sess.run(list(names), {sess.get_inputs()[0].name: x}), strict=True))


def _flat(maps):
    return np.moveaxis(np.asarray(maps, np.float64), 1, 0).reshape(maps.shape[1], -1)


def _corrcoef(a, b):
    """np.corrcoef of every unit of ``a`` [N, U, H, W] with every unit of ``b``."""
    x, y = _flat(a), _flat(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.corrcoef(np.concatenate([x, y]))[: len(x), len(x) :]


def _labels(r):
    """Each unit's label as a dissection gives it: best concept of a detector, else 0."""
    return np.where(r.detectors, r.best_concept, 0)


def _concepts(r):
    return {r.concept_names[c] for c in r.best_concept[r.detectors]}


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _check_outputs(result, path_a, path_b, ds, spec):
    la = _ort(path_a, ds, spec, ["logits"])["logits"].astype(np.float64)
    lb = _ort(path_b, ds, spec, ["logits"])["logits"].astype(np.float64)
    pa_, pb_ = _softmax(la), _softmax(lb)
    ta, tb = pa_.argmax(1), pb_.argmax(1)
    out = result.outputs
    assert out is not None and out.images == len(ds) and out.classes == 7
    assert out.top1_agreement == pytest.approx(np.mean(ta == tb), abs=1e-12)
    assert out.mean_abs_diff == pytest.approx(np.abs(pa_ - pb_).mean(), rel=1e-6, abs=1e-9)
    rows = out.per_class()
    for c, row in enumerate(rows):
        a, b, both = (ta == c).sum(), (tb == c).sum(), ((ta == c) & (tb == c)).sum()
        assert (row["a"], row["b"], row["both"]) == (a, b, both)
        assert row["agreement"] == (both / (a + b - both) if a + b - both else None)
    return np.mean(ta == tb)


# ---- the default model against itself ---------------------------------------------------------


def test_identity(model_a, default_model, ds, store):
    b = _load(default_model)  # another instance of the same file
    c = Comparison(model_a, {"layers": LAYERS}, other=b, store=store, progress=False)
    result = c.run(ds)
    assert not c.from_store
    for layer in result.layers:
        u = layer.units_a
        np.testing.assert_array_equal(layer.matched_a, np.arange(u))
        np.testing.assert_array_equal(layer.matched_b, np.arange(u))
        assert np.abs(np.diag(layer.correlation) - 1).max() <= 1e-9
        assert np.abs(layer.match_correlation - 1).max() <= 1e-9
        assert layer.gained == [] and layer.lost == [] and len(layer.changed) == 0
        assert not layer.resized and not layer.constant_a.any()
        s = layer.summary()
        assert s["same_index"] == u and s["mean_correlation"] == pytest.approx(1, abs=1e-9)
    out = result.outputs
    assert out is not None and out.top1_agreement == 1.0 and out.mean_abs_diff == 0.0
    assert all(r["agreement"] in (1.0, None) for r in out.per_class())
    summary = result.summary()
    assert summary["same_model"] is True
    json.dumps(summary, allow_nan=False)  # strict JSON
    again = Comparison(model_a, {"layers": LAYERS}, other=b, store=store, progress=False)
    assert again.run(ds).summary() == summary and again.from_store


# ---- a permuted copy: the matching must find the permutation ----------------------------------


def test_permutation_is_recovered_exactly(model_a, default_model, versions, ds, store):
    b = _load(versions["permuted"])
    perm, inv = versions["perm"], np.argsort(versions["perm"])
    c = Comparison(model_a, {"layers": [*LAYERS, "relu5:relu6"]}, other=b, store=store,
                   progress=False)  # fmt: skip
    result = c.run(ds)
    spec = model_a.preprocessing
    names = ["relu3_2", "relu4_1"]
    acts_a = _ort(default_model, ds, spec, names)
    acts_b = _ort(versions["permuted"], ds, spec, names)
    np.testing.assert_array_equal(acts_b["relu3_2"], acts_a["relu3_2"][:, perm])  # the setup

    relu5, relu6, cross = result.layers
    # B's unit j is A's unit perm[j]: A's unit i goes with B's inv[i], at correlation 1
    np.testing.assert_array_equal(relu5.matched_a, np.arange(64))
    np.testing.assert_array_equal(relu5.matched_b, inv)
    assert np.abs(relu5.match_correlation - 1).max() <= 1e-9
    ref = _corrcoef(acts_a["relu3_2"], acts_b["relu3_2"])
    np.testing.assert_allclose(relu5.correlation, ref, rtol=0, atol=1e-9)
    # the same units, relabelled: the dissection of B is A's permuted
    np.testing.assert_array_equal(relu5.label_b[inv], relu5.label_a)
    assert relu5.gained == relu5.lost == [] and len(relu5.changed) == 0
    # the next layer is the same function again (its input weights were permuted too)
    np.testing.assert_array_equal(relu6.matched_b, np.arange(128))
    assert np.abs(relu6.match_correlation - 1).max() <= 1e-6
    np.testing.assert_allclose(
        relu6.correlation, _corrcoef(acts_a["relu4_1"], acts_b["relu4_1"]), rtol=0, atol=1e-9
    )
    # relu5 (16x16, 64 units) against relu6 (8x8, 128 units): resized, rectangular
    torch = pytest.importorskip("torch")
    up = torch.nn.functional.interpolate(
        torch.from_numpy(acts_b["relu4_1"]).double(), size=(16, 16), mode="bilinear",
        align_corners=False,
    ).numpy()  # fmt: skip
    ref = _corrcoef(acts_a["relu3_2"], up)
    assert cross.resized and cross.size_b == (8, 8) and cross.correlation.shape == (64, 128)
    np.testing.assert_allclose(cross.correlation, ref, rtol=0, atol=1e-9)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(ref, maximize=True)
    np.testing.assert_array_equal(cross.matched_a, rows)
    np.testing.assert_array_equal(cross.matched_b, cols)
    assert len(cross.unmatched_a) == 0 and len(cross.unmatched_b) == 64
    assert cross.summary()["resized"] is True
    assert _check_outputs(result, default_model, versions["permuted"], ds, spec) == 1.0


# ---- a genuine small fine-tune ----------------------------------------------------------------


def test_fine_tune_against_independent_dissections(model_a, default_model, versions, ds, store):
    b = _load(versions["tuned"])
    result = Comparison(model_a, {"layers": LAYERS}, other=b, store=store, progress=False).run(ds)
    spec = model_a.preprocessing
    names = ["relu3_2", "relu4_1"]
    acts_a = _ort(default_model, ds, spec, names)
    acts_b = _ort(versions["tuned"], ds, spec, names)
    # two dissections of their own (no store)
    dis_a = Dissection(model_a, layers=LAYERS, progress=False).run(ds)
    dis_b = Dissection(b, layers=LAYERS, progress=False).run(ds)
    changed_total = 0
    for layer, name, ra, rb in zip(result.layers, names, dis_a, dis_b, strict=True):
        ref = _corrcoef(acts_a[name], acts_b[name])
        np.testing.assert_allclose(layer.correlation, ref, rtol=0, atol=1e-9)
        assert layer.match_correlation.mean() < 0.999  # the fine-tune changed the units
        gained, lost = _concepts(rb) - _concepts(ra), _concepts(ra) - _concepts(rb)
        s = layer.summary()
        assert set(s["gained"]) == gained and set(s["lost"]) == lost
        la, lb = _labels(ra), _labels(rb)
        want = {(int(i), int(j)) for i, j in zip(layer.matched_a, layer.matched_b, strict=True)
                if la[i] != lb[j]}  # fmt: skip
        assert {(c["unit_a"], c["unit_b"]) for c in s["changed"]} == want
        for c in s["changed"]:
            assert c["iou_a"] == pytest.approx(ra.best_iou[c["unit_a"]])
            assert c["iou_b"] == pytest.approx(rb.best_iou[c["unit_b"]])
            r = layer.correlation[c["unit_a"], c["unit_b"]]
            assert c["correlation"] == pytest.approx(r)
        changed_total += len(want)
        # the matching is the optimum of the reference matrix (constant units left out)
        live_a = ~np.isnan(ref).all(axis=1)
        live_b = ~np.isnan(ref).all(axis=0)
        assert set(layer.unmatched_a) >= set(np.flatnonzero(~live_a))
        total = np.nansum(ref[layer.matched_a, layer.matched_b])
        from scipy.optimize import linear_sum_assignment

        sub = ref[np.ix_(live_a, live_b)]
        r, c = linear_sum_assignment(sub, maximize=True)
        assert total == pytest.approx(sub[r, c].sum(), abs=1e-9)
    assert changed_total > 0
    assert _check_outputs(result, default_model, versions["tuned"], ds, spec) < 1.0


# ---- the store: keys and resumption -----------------------------------------------------------


def test_key_holds_b_and_dissections_are_store_entries(model_a, default_model, versions, ds,
                                                       store):  # fmt: skip
    b = _load(versions["tuned"])
    c = Comparison(model_a, {"layers": LAYERS}, other=b, store=store, progress=False)
    key = c.key_params(ds)
    assert key["other"] == {"sha256": b.sha256, "preprocessing": b.preprocessing.to_dict()}
    assert key["params"]["layers"] == [["relu3_2", "relu3_2"], ["relu4_1", "relu4_1"]]
    # the same request spelt otherwise (ONNX names, a pair, another batch size): one key
    same = Comparison(model_a, {"layers": ["relu3_2:relu5", "relu4_1"], "batch_size": 7},
                      other=b, store=store, progress=False)  # fmt: skip
    assert same.key_params(ds) == key
    # B with another preprocessing: another key, computed again
    b2 = pa.load_model(versions["tuned"], {"mean": [0.4, 0.5, 0.5]}, check_parity=False)
    assert Comparison(model_a, {"layers": LAYERS}, other=b2).key_params(ds) != key
    # both dissections are ordinary entries of their models (as `dissect` would ask)
    for model in (model_a, b):
        d = Dissection(model, layers=LAYERS, store=store, progress=False)
        d.run(ds)
        assert d.from_store


def test_interrupted_pass_resumes_to_identical_sums(model_a, versions, ds, tmp_path,
                                                   monkeypatch):  # fmt: skip
    b = _load(versions["tuned"])
    params = {"layers": ["relu5"], "batch_size": 16}
    reference = Comparison(model_a, params, other=b, progress=False).run(ds)
    store = Store(tmp_path / "store")
    calls = {"n": 0}
    update = CorrelationTally.update

    def dying(self, a, b_):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        update(self, a, b_)

    monkeypatch.setattr(CorrelationTally, "update", dying)
    c = Comparison(model_a, params, other=b, store=store, checkpoint_every=0, progress=False)
    with pytest.raises(KeyboardInterrupt):
        c.run(ds)
    monkeypatch.setattr(CorrelationTally, "update", update)
    c = Comparison(model_a, params, other=b, store=store, checkpoint_every=0, progress=False)
    result = c.run(ds)
    assert c.resumed
    np.testing.assert_array_equal(result[0].correlation, reference[0].correlation)
    assert result.outputs is not None and reference.outputs is not None
    assert result.outputs.summary() == reference.outputs.summary()


# ---- bad input: one line each -----------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Models of another architecture: 64x64 (other layer names, 10 classes) and 32x32."""
    from onnx_factory import tiny_cnn

    d = tmp_path_factory.mktemp("foreign")
    return {"64": tiny_cnn(d, size=64), "32": tiny_cnn(d, size=32)}


@pytest.mark.parametrize(
    ("layers", "other", "message"),
    [
        (["relu5"], None, "compare needs the second model"),
        (["relu5"], "a string", "other must be a loaded Model"),
        (["relu66"], "permuted", "model A (default.onnx): no layer named 'relu66'"),
        (["relu5:nope"], "permuted", "model B (permuted.onnx): no layer named 'nope'"),
        (["relu5"], "64", "'relu5' was given for both models but model B (tiny_cnn"),
        (["fc1"], "permuted", "is not a spatial feature map"),
        (["relu5", "relu3_2:relu5"], "permuted", "the layer pair relu5:relu5 was given twice"),
        (["relu5"], "32", "different input sizes: model A (default.onnx) 64x64, model B"),
        ([], "permuted", "give at least one layer"),
    ],
)
def test_bad_input_is_one_line(model_a, versions, foreign, layers, other, message):
    models = {"permuted": versions["permuted"], **foreign}
    b = _load(models[other]) if other in models else other
    with pytest.raises(UserInputError) as exc:
        Comparison(model_a, {"layers": layers}, other=b, progress=False)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_outputs_of_other_classes_are_not_compared(model_a, foreign, ds):
    b = _load(foreign["64"])  # 10 classes against 7; relu3 is 16x16 as relu5
    result = Comparison(model_a, {"layers": ["relu5:relu3"]}, other=b, progress=False).run(ds)
    assert result.outputs is None and "7 (model A) and 10 (model B) classes" in result.outputs_note
    assert result.summary()["outputs"] is None
    layer = result[0]
    assert layer.correlation.shape == (64, 16) and len(layer.matched_a) == 16


# ---- the arithmetic against brute force -------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [(8, 16), (5, 13), (16, 8), (7, 7), (1, 4)])
def test_bilinear_matrix_equals_torch(src, dst):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(src * dst).normal(size=(2, 3, src, src + 1))
    got = resize_maps(x, (dst, dst + 2))
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(dst, dst + 2), mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bilinear_matrix(src, dst).sum(axis=1), 1.0)


def test_streaming_sums_equal_corrcoef_with_a_large_offset():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 5, 4, 4)) * 1e-3 + 1e4  # cancellation would ruin plain sums
    b = np.concatenate([a[:, :2] * 2 - 3, rng.normal(size=(30, 3, 4, 4))], axis=1)
    b[:, 4] = 7.0  # a constant unit of B
    t = CorrelationTally(5, 5)
    for lo, hi in ((0, 7), (7, 8), (8, 30)):  # uneven batches
        t.update(a[lo:hi], b[lo:hi])
    got = t.correlation()
    want = _corrcoef(a, b)
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=0, atol=1e-9)
    assert np.isnan(got[:, 4]).all() and t.constant_b.tolist() == [False] * 4 + [True]
    assert np.abs(got[[0, 1], [0, 1]] - 1).max() <= 1e-9
    ma, mb = match_units(got)
    assert 4 not in mb and len(ma) == 4


def test_matching_is_the_brute_force_optimum():
    rng = np.random.default_rng(1)
    for shape in ((3, 5), (4, 4), (5, 2)):
        corr = rng.uniform(-1, 1, size=shape)
        ma, mb = match_units(corr)
        r, c = shape
        if r <= c:  # every injective map of the narrower side into the wider
            best = max(
                sum(corr[i, p[i]] for i in range(r)) for p in itertools.permutations(range(c), r)
            )
        else:
            best = max(
                sum(corr[p[j], j] for j in range(c)) for p in itertools.permutations(range(r), c)
            )
        assert corr[ma, mb].sum() == pytest.approx(best)
        assert len(set(ma)) == len(ma) == min(shape) and len(set(mb)) == len(mb)


def test_softmax_outputs_are_taken_as_they_are():
    logits = np.random.default_rng(4).normal(size=(9, 5)) * 3
    probs = _softmax(logits)
    t = OutputTally(5, True, False)  # A ends in a Softmax, B gives logits
    t.update(probs, logits)
    assert t.agree == 9 and t.abs_sum == pytest.approx(0, abs=1e-12)
    np.testing.assert_array_equal(t.count_a, np.bincount(probs.argmax(1), minlength=5))
