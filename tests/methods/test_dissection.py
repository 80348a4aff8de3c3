"""Network dissection end to end: thresholds, IoU on hand-made cases, store, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import pyanalyzer as pa
from pyanalyzer.data.broden import BrodenDataset, build_dataset, synth_dataset
from pyanalyzer.methods.dissection import Dissection, thresholds_from_topk, topk_size
from pyanalyzer.store import Store


@pytest.mark.parametrize("n, q", [(1000, 0.005), (37, 0.3), (5, 0.5), (12544, 0.005), (3, 0.9)])
def test_thresholds_equal_numpy_quantile(n, q):
    rng = np.random.default_rng(n)
    vals = rng.normal(size=(4, n)).astype(np.float32)
    vals[1, : n // 2] = 0.0  # ReLU-like ties
    k = topk_size(n, q)
    state = -np.sort(-vals, axis=1)[:, :k]
    got = thresholds_from_topk(state, n, q)
    ref = np.quantile(vals.astype(np.float64), 1 - q, axis=1).astype(np.float32)
    np.testing.assert_array_equal(got, ref)


def _probe_model(path):
    """Unit 0 = the red channel, unit 1 = a constant (never above its own threshold)."""
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[0, 0] = 1.0
    b = np.array([0.0, 7.0], np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w", "b"], ["conv"], name="conv"),
            helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        ],
        "probe",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["N", 2, 32, 32])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(m, {"pyanalyzer.preprocessing": json.dumps({"preset": "raw"})})
    onnx.save(m, path)
    return path


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    imgs, masks = d / "images", d / "masks"
    imgs.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        img = np.zeros((32, 32, 3), np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        y, x = 2 * rng.integers(0, 8, size=2)  # even-aligned: exact at half resolution
        img[y : y + 16, x : x + 16, 0] = rng.integers(50, 256)
        mask[y : y + 16, x : x + 16] = 1
        Image.fromarray(img).save(imgs / f"{i:02d}.png")
        Image.fromarray(mask, mode="L").save(masks / f"{i:02d}.png")
    (d / "labels.txt").write_text("background\nsquare\n")
    ds_dir = build_dataset(
        imgs, masks, d / "labels.txt", d / "ds", add_colors=False, progress=False
    )
    return pa.load_model(_probe_model(d / "probe.onnx")), BrodenDataset(
        ds_dir, cache_dir=d / "cache"
    )


def test_unit_firing_exactly_on_a_concept_has_iou_1(probe, tmp_path):
    model, ds = probe
    # 25% of pixels are red: the top half's threshold is 0, so unit 0 fires on the squares.
    d = Dissection(
        model, layers=["relu"], quantile=0.5, store=Store(tmp_path / "s.h5"), progress=False
    )
    (r,) = d.run(ds)
    square = ds.names.index("square")
    assert r.thresholds[0] == 0.0
    assert r.iou[0, square] == 1.0 and r.best_concept[0] == square and r.detectors[0]
    # The constant unit never exceeds its threshold: no pixels, no label.
    assert r.unit_area[1] == 0 and r.best_concept[1] == 0 and not r.detectors[1]


def test_counts_equal_a_plain_numpy_dissection(probe):
    model, ds = probe
    d = Dissection(model, layers=["relu"], quantile=0.2, batch_size=5, progress=False)
    (r,) = d.run(ds)
    n = len(ds)
    x = model.preprocessing.normalize(
        np.stack([ds.pixels(i, model.preprocessing) for i in range(n)])
    )
    acts = model.forward.run(x, ["relu"])["relu"]
    thr = np.quantile(acts.transpose(1, 0, 2, 3).reshape(2, -1).astype(np.float64), 0.8, axis=1)
    np.testing.assert_array_equal(r.thresholds, thr.astype(np.float32))
    # Downsampling 32 -> 16 with half-pixel centres averages pixel pairs (2o, 2o+1).
    up = acts.reshape(n, 2, 16, 2, 16, 2).mean(axis=(3, 5)).astype(np.float32)
    fire = up > r.thresholds[None, :, None, None]
    seg, _, _ = ds.segmentation_batch(np.arange(n))
    square = ds.names.index("square")
    inter = (fire & (seg[:, :1] == square)).sum(axis=(0, 2, 3))
    np.testing.assert_array_equal(r.intersection[:, square], inter)
    np.testing.assert_array_equal(r.unit_area, fire.sum(axis=(0, 2, 3)))
    assert r.concept_area[square] == (seg == square).sum()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return BrodenDataset(
        synth_dataset(d / "ds", n_images=120, size=64, progress=False), cache_dir=d / "c"
    )


def test_store_answers_rerun_and_resume_is_identical(default_model, synth, tmp_path, monkeypatch):
    model = pa.load_model(default_model, check_parity=False)
    layers = ["relu5", "relu6"]
    ref = Dissection(model, layers=layers, batch_size=16, progress=False).run(synth)

    store = Store(tmp_path / "store.h5")
    from pyanalyzer.methods.dissection import pipeline

    real_tally = pipeline._backend.tally
    calls = {"n": 0}

    def dying_tally(*a, **k):  # the run "dies" in the middle of the tally pass
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_tally(*a, **k)

    monkeypatch.setattr(pipeline._backend, "tally", dying_tally)
    with pytest.raises(KeyboardInterrupt):
        Dissection(
            model, layers=layers, batch_size=16, store=store, checkpoint_every=0, progress=False
        ).run(synth)
    assert any(e.key.is_partial for e in store.entries())
    monkeypatch.setattr(pipeline._backend, "tally", real_tally)
    again = Dissection(
        model, layers=layers, batch_size=16, store=store, checkpoint_every=0, progress=False
    )
    got = again.run(synth)
    assert again.resumed_from[0] == 2 and again.resumed_from[1] > 0
    for a, b in zip(ref, got, strict=True):
        for name in (
            "thresholds",
            "intersection",
            "unit_area_cat",
            "unit_area",
            "concept_area",
            "top_images",
        ):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not any(e.key.is_partial for e in store.entries())
    assert not list(store.path.glob("scratch/*/*"))  # spill files are cleaned up
    third = Dissection(model, layers=layers, batch_size=16, store=store, progress=False)
    res = third.run(synth)
    assert third.from_store
    np.testing.assert_array_equal(res[1].intersection, ref[1].intersection)


def test_maps_stay_in_memory_without_a_store_and_equal_the_spill(
    default_model, synth, tmp_path, monkeypatch
):
    # Nothing can resume a run without a store, so its maps need no spill file when they fit
    # pipeline.in_memory_limit(); a run with a store, or with maps above the limit, spills.
    import tempfile

    from pyanalyzer.methods.dissection import pipeline

    model = pa.load_model(default_model, check_parity=False)
    layers = ["relu5", "relu6"]
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    held = Dissection(model, layers=layers, batch_size=16, progress=False)
    runs = {"memory": held.run(synth)}
    assert held.activations == "memory"
    assert list(temp.iterdir()) == []  # no scratch folder, no spill file
    stored = Dissection(
        model, layers=layers, batch_size=16, store=Store(tmp_path / "s.h5"), progress=False
    )
    runs["store"] = stored.run(synth)
    assert stored.activations == "spill"
    monkeypatch.setattr(pipeline, "IN_MEMORY_MAX", 1024)  # below the maps: spilled
    over = Dissection(model, layers=layers, batch_size=16, progress=False)
    runs["over the limit"] = over.run(synth)
    assert over.activations == "spill"
    for label in ("store", "over the limit"):
        for a, b in zip(runs["memory"], runs[label], strict=True):
            for name in ("thresholds", "intersection", "unit_area_cat", "unit_area",
                         "concept_area", "top_images", "top_values"):  # fmt: skip
                np.testing.assert_array_equal(
                    getattr(a, name), getattr(b, name), err_msg=f"{label}: {name}"
                )


def test_resume_after_death_in_forward_pass(default_model, synth, tmp_path, monkeypatch):
    model = pa.load_model(default_model, check_parity=False)
    ref = Dissection(model, layers=["relu4"], batch_size=16, progress=False).run(synth)
    store = Store(tmp_path / "store.h5")
    from pyanalyzer.methods.dissection import pipeline

    real = pipeline._backend.topk_merge
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline._backend, "topk_merge", dying)
    with pytest.raises(KeyboardInterrupt):
        Dissection(
            model, layers=["relu4"], batch_size=16, store=store, checkpoint_every=0,
            progress=False,
        ).run(synth)  # fmt: skip
    monkeypatch.setattr(pipeline._backend, "topk_merge", real)
    again = Dissection(
        model, layers=["relu4"], batch_size=16, store=store, checkpoint_every=0, progress=False
    )
    (got,) = again.run(synth)
    assert again.resumed_from == (1, 48)
    np.testing.assert_array_equal(got.intersection, ref[0].intersection)
    np.testing.assert_array_equal(got.thresholds, ref[0].thresholds)


def test_net2vec_beats_or_matches_the_best_unit(default_model, synth):
    model = pa.load_model(default_model, check_parity=False)
    d = Dissection(model, layers=["relu6"], batch_size=32, net2vec=["circle"], progress=False)
    (r,) = d.run(synth)
    (item,) = r.extra["net2vec"]
    assert item["name"] == "circle" and item["test_images"] > 0
    assert item["set_iou"] >= item["best_unit_iou"] > 0


def test_cli_dissect_writes_reports_and_reruns_from_store(capsys, default_model, synth, tmp_path):
    store = tmp_path / "store.h5"
    args = ["dissect", str(default_model), "--dataset", str(synth.root), "--layer", "relu6",
            "--out", str(tmp_path / "out"), "--store", str(store), "--no-progress"]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "units covering" in out and "computed" in out
    for name in ("relu6.html", "relu6_tally.csv", "summary.json", "index.html"):
        assert (tmp_path / "out" / name).is_file()
    header = (tmp_path / "out" / "relu6_tally.csv").read_text().splitlines()[0]
    assert header.startswith("unit,category,label,score,color-label,color-truth")
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "answered from the store" in out


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--quantile", "1.5"], "quantile must be in (0, 1)"),
        (["--quantile", "0"], "quantile must be in (0, 1)"),
        (["--layer", "fc1"], "not a spatial feature map"),
        (["--layer", "relu66"], "did you mean"),
        (["--iou-threshold", "2"], "IoU threshold"),
    ],
)
def test_cli_bad_parameters_exit_2_and_write_nothing(
    capsys, default_model, synth, tmp_path, extra, msg
):
    store = tmp_path / "store.h5"
    args = ["dissect", str(default_model), "--dataset", str(synth.root), "--out", str(tmp_path / "out"),
            "--store", str(store), "--no-progress"]  # fmt: skip
    if "--layer" not in extra:
        args += ["--layer", "relu6"]
    code, out, err = run_cli(capsys, *args, *extra)
    assert code == 2 and msg in err and err.count("\n") == 1, err
    assert not store.exists() and not (tmp_path / "out").exists()


def test_cli_malformed_dataset_exit_2(capsys, default_model, synth, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth.root, bad)
    lines = (bad / "index.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",train,", ",train,x", 1)  # a malformed number in row 4
    (bad / "index.csv").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "dissect", str(default_model), "--dataset", str(bad), "--layer",
                           "relu6", "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s.h5"))  # fmt: skip
    assert code == 2 and "index.csv" in err and err.count("\n") == 1
    assert not (tmp_path / "s.h5").exists()


def test_default_model_learned_detectors_vs_random_weights(default_model, tmp_path):
    """Bau et al.'s contrast: training creates detectors (at least 3x a random network's)."""
    import subprocess
    import sys

    random_model = tmp_path / "random.onnx"
    script = default_model.parent / "build_default.py"
    subprocess.run([sys.executable, str(script), "--random-weights", str(random_model)], check=True,
                   capture_output=True)  # fmt: skip
    ds = BrodenDataset(synth_dataset(tmp_path / "ds", n_images=300, size=64, progress=False),
                       cache_dir=tmp_path / "c")  # fmt: skip
    layers = ["relu2", "relu3", "relu4", "relu5", "relu6"]
    counts = {}
    for name, path in (("trained", default_model), ("random", random_model)):
        model = pa.load_model(path, check_parity=False)
        results = Dissection(model, layers=layers, progress=False).run(ds)
        counts[name] = sum(int(r.detectors.sum()) for r in results)
    assert counts["trained"] >= 3 * max(counts["random"], 1), counts


def test_unreadable_image_mid_run_leaves_nothing_half_written(
    capsys, default_model, synth, tmp_path
):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth.root, bad)
    victim = sorted((bad / "images").rglob("*.png"))
    victim = [p for p in victim if "_" not in p.stem][50]  # an image, not a label PNG
    victim.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    store = tmp_path / "store.h5"
    code, _, err = run_cli(capsys, "dissect", str(default_model), "--dataset", str(bad), "--layer",
                           "relu6", "--out", str(tmp_path / "o"), "--store", str(store),
                           "--batch-size", "16", "--checkpoint-every", "0", "--no-progress")  # fmt: skip
    assert code == 2 and victim.name in err and err.count("\n") == 1, err
    assert Store(store).entries() == []
    assert not list(store.glob("scratch/*/*")) and not (tmp_path / "o").exists()


def test_merge_top_equals_one_sort_of_everything_seen():
    """Top images kept batch by batch (only the units a new image enters are sorted again)
    against one sort of every (peak, image) pair: by peak, ties by the lower image index.
    Integer-valued peaks make ties common, within a batch and across batches; batches arrive
    in image order, as in the dissection, and then shuffled, as shards may merge."""
    from pyanalyzer.methods.dissection.shards import merge_top

    rng = np.random.default_rng(5)
    units, k, n = 6, 4, 90
    peaks = rng.integers(0, 6, size=(units, n)).astype(np.float32)
    ids = np.broadcast_to(np.arange(n), peaks.shape)
    order = np.lexsort((ids, -peaks), axis=1)[:, :k]
    want = np.take_along_axis(peaks, order, 1), np.take_along_axis(ids, order, 1)
    starts = list(range(0, n, 9))
    for batches in (starts, list(rng.permutation(starts))):
        values, images = np.full((units, k), -np.inf, np.float32), np.full((units, k), -1)
        for s in batches:
            values, images = merge_top(values, images, peaks[:, s : s + 9], ids[:, s : s + 9], k)
        np.testing.assert_array_equal(values, want[0])
        np.testing.assert_array_equal(images, want[1])
