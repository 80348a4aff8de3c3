"""The atlas (pyanalyzer.methods.atlas): each part equals its analysis run alone, parts come
from the store piece by piece (units, layers), and only what is new is computed."""

from __future__ import annotations

import numpy as np
import pytest

import pyanalyzer as pa
from pyanalyzer.analysis import NotStored
from pyanalyzer.data.broden import BrodenDataset, synth_dataset
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods import analysis as analysis_class
from pyanalyzer.methods.atlas import run_covering

SMALL = {
    "samples": 2,
    "actmax": {"steps": 4},
    "invert": {"steps": 3},
    "patches": {"k": 4, "projection": "deconv"},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("atlas")
    model = pa.load_model("models/default.onnx")
    ds = BrodenDataset(
        synth_dataset(d / "ds", n_images=60, size=64, progress=False), cache_dir=d / "c"
    )
    return model, ds, d


def _atlas(model, store, layers, units, **kw):
    return pa.Atlas(model, layers=layers, units=units, store=store, progress=False,
                    **{**SMALL, **kw})  # fmt: skip


def _computed(result):
    return sorted((p["layer"], p["method"], tuple(p.get("units", p.get("layers")))) for p in
                  result.computed)  # fmt: skip


def test_parts_equal_the_analyses_alone_and_extend_incrementally(setup, tmp_path):
    model, ds, _ = setup
    store = pa.Store(tmp_path / "store")
    first = _atlas(model, store, ["relu5"], "0-3").run(ds)
    assert len(first.computed) == 4 and not first.computed[0]["from_store"]
    layer = first.layer("relu5")
    assert layer.units == [0, 1, 2, 3]

    # each part equals its analysis run alone (no store: computed again)
    alone = pa.Dissection(model, layers=["relu5"], progress=False).run(ds).layer("relu5")
    np.testing.assert_array_equal(layer.dissection.intersection, alone.intersection)
    np.testing.assert_array_equal(layer.dissection.thresholds, alone.thresholds)
    patches = pa.TopPatches(model, layer="relu5", units=[0, 1, 2, 3], k=4,
                            projection="deconv", progress=False).run(ds)  # fmt: skip
    np.testing.assert_array_equal(layer.patches.values, patches.values)
    np.testing.assert_array_equal(layer.patches.images, patches.images)
    for u in range(4):
        np.testing.assert_array_equal(layer.patches.projections[u], patches.projections[u])
    act = pa.ActivationMaximization(model, layer="relu5", units="0-3", steps=4,
                                    progress=False).run()  # fmt: skip
    np.testing.assert_array_equal(layer.actmax.images, act.images)
    np.testing.assert_array_equal(layer.actmax.reached, act.reached)
    idx = first.samples
    assert list(idx) == [0, 59]  # spread over the source
    originals = np.stack([ds.pixels(int(i), model.preprocessing) for i in idx])
    inv = pa.OptimInversion(model, layers=["relu5"], steps=3, progress=False).run(originals)
    np.testing.assert_array_equal(layer.inversion.images, inv.images)

    # more units and a second layer: only the new units and the new layer are computed
    second = _atlas(model, store, ["relu5", "relu6"], {"relu5": "0-5", "relu6": "0-1"}).run(ds)
    assert _computed(second) == [
        ("relu5", "actmax", (4, 5)),
        ("relu5", "patches", (4, 5)),
        ("relu6", "actmax", (0, 1)),
        ("relu6", "dissect", ("relu4_1",)),
        ("relu6", "invert-optim", ("relu4_1",)),
        ("relu6", "patches", (0, 1)),
    ]
    merged = second.layer("relu5")
    assert merged.units == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(merged.actmax.images[:4], layer.actmax.images)
    np.testing.assert_array_equal(merged.actmax.units, np.arange(6))
    assert sorted(merged.patches.projections) == list(range(6))
    # the merged actmax rows equal a run of the new units alone
    new = pa.ActivationMaximization(model, layer="relu5", units="4-5", steps=4,
                                    progress=False).run()  # fmt: skip
    np.testing.assert_array_equal(merged.actmax.images[4:], new.images)

    # the same atlas again: everything from the store, nothing computed
    again = _atlas(model, store, ["relu5", "relu6"], {"relu5": "0-5", "relu6": "0-1"})
    result = again.run(ds)
    assert result.computed == [] and again.from_store
    # a subset of stored units needs no computing either
    assert _atlas(model, store, ["relu6"], "1").run(ds).computed == []


def test_stored_only_refuses_to_compute(setup, tmp_path):
    model, ds, _ = setup
    store = pa.Store(tmp_path / "store")
    atlas = _atlas(model, store, ["relu5"], "0", samples=0)
    atlas.stored_only = True
    with pytest.raises(NotStored):
        atlas.run(ds)
    assert store.entries() == []


def test_run_covering_uses_a_dissection_of_several_layers(setup, tmp_path):
    """A dissection stored for two layers (the CLI's `dissect --layer a --layer b`) answers a
    request for one of them."""
    model, ds, _ = setup
    store = pa.Store(tmp_path / "store")
    both = pa.Dissection(model, layers=["relu5", "relu6"], store=store, progress=False).run(ds)
    cls = analysis_class("dissect")
    pieces = run_covering(cls, model, {}, ds, "layers", ["relu6"], store=store, progress=False)
    assert len(pieces) == 1 and pieces[0].from_store and pieces[0].items == ["relu4_1"]
    np.testing.assert_array_equal(
        pieces[0].result.layer("relu6").intersection, both.layer("relu6").intersection
    )
    # another quantile is another result: computed
    pieces = run_covering(cls, model, {"quantile": 0.01}, ds, "layers", ["relu6"], store=store,
                          progress=False)  # fmt: skip
    assert [p.from_store for p in pieces] == [False]


def test_patches_projecting_more_units_does_not_scan_again(setup, tmp_path, monkeypatch):
    model, ds, _ = setup
    store = pa.Store(tmp_path / "store")
    from pyanalyzer.methods import patches as patches_module

    scans = []
    real = patches_module.scan
    monkeypatch.setattr(patches_module, "scan", lambda *a, **k: scans.append(1) or real(*a, **k))
    a = pa.TopPatches(model, layer="relu5", units=[0], k=3, projection="deconv", store=store,
                      progress=False).run(ds)  # fmt: skip
    b = pa.TopPatches(model, layer="relu5", units=[1], k=3, projection="deconv", store=store,
                      progress=False).run(ds)  # fmt: skip
    assert len(scans) == 1
    np.testing.assert_array_equal(a.values, b.values)
    alone = pa.TopPatches(model, layer="relu5", units=[1], k=3, projection="deconv",
                          progress=False).run(ds)  # fmt: skip
    np.testing.assert_array_equal(b.projections[1], alone.projections[1])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"layers": ["nope"]}, "nope"),
        ({"units": "70"}, "out of range"),
        ({"units": {"relu6": "0"}}, "not among the atlas' layers"),
        ({"actmax": {"units": "0"}}, "may not set units"),
        ({"dissect": {"layers": ["relu5"]}}, "may not set layers"),
        ({"actmax": {"objective": "class"}}, "objective channel"),
        ({"actmax": {"steps": 0}}, "atlas actmax: steps must be >= 1"),
        ({"patches": {"projection": "x"}}, "atlas patches: unknown projection"),
        ({"samples": 17}, "samples must be at most 16"),
        ({"dissect": "q"}, "dissect"),
    ],
)
def test_bad_parameters_one_line(setup, kw, message):
    model, _, _ = setup
    params = {"layers": ["relu5"], **kw}
    with pytest.raises(UserInputError) as exc:
        pa.Atlas(model, params, progress=False)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_empty_inputs_refused(setup):
    model, ds, _ = setup
    atlas = pa.Atlas(model, layers=["relu5"], progress=False, **SMALL)
    with pytest.raises(UserInputError, match="concept dataset"):
        atlas.run(None)
    with pytest.raises(UserInputError, match="empty"):
        atlas.run(pa.AtlasInputs(ds, pa.ImageFiles([])))
