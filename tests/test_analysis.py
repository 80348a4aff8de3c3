"""The analysis contract: every analysis' params, keys, the one cache path, resumption, and
the CLI's --json, checked the same way for all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_cli
from PIL import Image

import pyanalyzer as pa
from pyanalyzer.analysis import ParamsError
from pyanalyzer.data import synthetic
from pyanalyzer.data.broden import BrodenDataset, synth_dataset
from pyanalyzer.methods import analyses, analysis

# The smallest valid parameters of each analysis (its required fields, on the default model).
MINIMAL = {
    "dissect": {"layers": ["relu6"]},
    "net2vec": {"layer": "relu6", "concepts": ["circle"]},
    "compose": {"layers": ["relu6"]},
    "deconv": {"layer": "relu5"},
    "guided": {"layer": "relu5"},
    "saliency": {"layer": "relu5"},
    "patches": {"layer": "relu5"},
    "actmax": {},
    "invert-optim": {"layers": ["relu2"]},
    "invert-upconv": {"layers": ["relu2"]},
    "train-upconv": {"layer": "relu2"},
    "atlas": {"layers": ["relu6"]},
    "ablate": {"layer": "relu6"},
    "compare": {"layers": ["relu6"]},
}

# Small, fast settings for running each analysis here.
FAST = {
    "dissect": {"layers": ["relu6"], "batch_size": 32},
    "net2vec": {"layer": "relu6", "concepts": ["circle"]},
    "compose": {"layers": ["relu6"], "units": "0-3", "max_length": 2},
    "deconv": {"layer": "relu5", "units": "0-1"},
    "guided": {"layer": "relu5", "units": [2]},
    "saliency": {"layer": "relu5", "units": 3},
    "patches": {"layer": "relu5", "k": 3, "units": "0-1", "projection": "deconv"},
    "actmax": {"layer": "relu5", "units": "0-1", "steps": 3},
    "invert-optim": {"layers": ["relu2", "relu4"], "steps": 4},
    "invert-upconv": {"layers": ["relu2"]},
    "train-upconv": {"layer": "relu2", "n_images": 16, "epochs": 1},
    "atlas": {
        "layers": ["relu6"],
        "units": "0-1",
        "samples": 1,
        "actmax": {"steps": 2},
        "invert": {"steps": 2},
        "patches": {"k": 2},
    },  # fmt: skip
    "ablate": {"layer": "relu6", "units": "0-3", "top": 1},
    "compare": {"layers": ["relu6"], "batch_size": 32},
}


@pytest.fixture(scope="module")
def model(default_model):
    return pa.load_model(default_model, check_parity=False)


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    d = tmp_path_factory.mktemp("concepts")
    return BrodenDataset(
        synth_dataset(d / "ds", n_images=60, size=64, progress=False), cache_dir=d / "c"
    )


@pytest.fixture(scope="module")
def images():
    return synthetic.render_batch(3, seed=5, size=64)[0]


def keywords_for(name, model):
    """What each analysis takes beyond its params (compare: the second model)."""
    return {"other": model} if name == "compare" else {}


def inputs_for(name, images, concepts):
    """What each analysis runs on."""
    if name in ("dissect", "net2vec", "compose", "atlas", "compare"):
        return concepts
    if name == "actmax":
        return None
    if name in ("patches", "train-upconv", "ablate"):
        return pa.ArraySource(images)
    return images


def test_registry_names_every_analysis_once():
    found = analyses()
    assert list(found) == list(MINIMAL)
    assert {cls.method for cls in found.values()} == set(MINIMAL)
    assert analysis("dissect") is pa.Dissection
    with pytest.raises(pa.UserInputError, match="unknown analysis 'lrp'; choose one of dissect"):
        analysis("lrp")


@pytest.mark.parametrize("name", list(MINIMAL))
def test_params_schema_and_canonical_json(name):
    cls = analysis(name)
    d = cls.describe()
    assert d["method"] == name and d["summary"] and d["revision"] >= 1
    schema = d["params"]
    json.dumps(schema)  # the service serves it as it is
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert sorted(schema.get("required", [])) == sorted(MINIMAL[name])
    assert set(schema["properties"]) >= set(MINIMAL[name])
    params = cls.params_type.parse(MINIMAL[name])
    again = cls.params_type.parse(json.loads(params.to_json()))
    assert again == params and again.to_json() == params.to_json()
    assert params.to_json() == json.dumps(params.canonical(), sort_keys=True, separators=(",", ":"))
    with pytest.raises(ParamsError, match=f"unknown {cls.params_type.title} parameter 'bogus'"):
        cls.params_type.parse({**MINIMAL[name], "bogus": 1})


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("dissect", {"layers": []}, "give at least one layer"),
        ("dissect", {"layers": ["relu6"], "quantile": 1.5}, r"quantile must be in \(0, 1\)"),
        ("actmax", {"steps": True}, "steps must be an integer, got bool True"),
        ("patches", {"layer": "relu5", "k": 0}, "k must be >= 1, got 0"),
        ("invert-optim", {"layers": ["relu2"], "optimizer": "lbfgs"}, "unknown optimizer"),
        ("deconv", {"layer": "relu5", "units": "3-"}, "units '3-': expected N, A-B"),
        ("train-upconv", {"layer": "relu2", "lr": float("nan")}, "lr must be a positive"),
    ],
)
def test_bad_params_give_one_line(name, bad, message):
    with pytest.raises(ParamsError, match=message) as exc:
        analysis(name).params_type.parse(bad)
    assert "\n" not in str(exc.value) and isinstance(exc.value, pa.UserInputError)


def test_params_that_do_not_fit_the_model_fail_before_anything_runs(model, tmp_path):
    store = pa.Store(tmp_path / "s")
    with pytest.raises(pa.UserInputError, match="unit 64 is out of range"):
        pa.DeconvNet(model, layer="relu5", units="0-99999999999999", store=store)
    with pytest.raises(pa.LayerNotFoundError, match="did you mean"):
        pa.OptimInversion(model, layers=["relu22"], store=store)
    assert not store.exists()


def test_the_key_is_made_of_resolved_params(model, tmp_path):
    store = pa.Store(tmp_path / "s")
    name = model.layer("relu5").name
    first = pa.ActivationMaximization(model, layer="relu5", units="0-1", steps=2, store=store,
                                      progress=False)  # fmt: skip
    a = first.run()
    same = pa.ActivationMaximization(model, layer=name, units=[0, 1], steps=2, store=store,
                                     progress=False)  # fmt: skip
    b = same.run()
    assert not first.from_store and same.from_store
    assert np.array_equal(a.images, b.images) and a.summary() == b.summary()
    other = pa.ActivationMaximization(model, layer="relu5", units=[0, 1], steps=3, store=store,
                                      progress=False)  # fmt: skip
    other.run()
    assert not other.from_store and len(store.entries()) == 2


def test_inputs_are_hashed_for_a_key_only_when_a_store_keeps_it(model, tmp_path, monkeypatch):
    """The key serves the store alone: without one, an image folder is not hashed (1,000 PNG
    files cost 0.055 s, 9% of a top-k scan), and the result is the same."""
    from pyanalyzer.data import images as images_module

    imgs = synthetic.render_batch(4, seed=2, size=64)[0]
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    folder = pa.ImageFolder(tmp_path)
    digests = []
    real = images_module.files_digest

    def counted(*a, **k):
        digests.append(1)
        return real(*a, **k)

    monkeypatch.setattr(images_module, "files_digest", counted)
    kw = dict(layer="relu5", k=2, projection="none", progress=False)
    bare = pa.TopPatches(model, **kw).run(folder)
    assert digests == []
    kept = pa.TopPatches(model, store=pa.Store(tmp_path / "s"), **kw).run(folder)
    assert digests == [1]
    for k, v in bare.to_arrays().items():
        np.testing.assert_array_equal(kept.to_arrays()[k], v, err_msg=k)


@pytest.mark.parametrize("name", list(MINIMAL))
def test_every_analysis_answers_from_the_store_without_computing(
    name, model, images, concepts, tmp_path, monkeypatch
):
    store = pa.Store(tmp_path / "s")
    cls = analysis(name)
    if name == "invert-upconv":  # it needs a trained decoder in the store
        pa.UpconvTraining(model, store=store, progress=False, **FAST["train-upconv"]).run()
    inputs = inputs_for(name, images, concepts)
    first = cls(model, FAST[name], store=store, progress=False, **keywords_for(name, model))
    result = first.run(inputs)
    assert not first.from_store and isinstance(result, cls.result_type)
    before = json.dumps(result.summary(), sort_keys=True)

    def refuse(self, *a, **k):
        raise AssertionError(f"{name} computed again")

    monkeypatch.setattr(cls, "compute", refuse)
    second = cls(model, FAST[name], store=store, progress=False, **keywords_for(name, model))
    again = second.run(inputs)
    assert second.from_store and not second.resumed
    after = json.dumps(again.summary(), sort_keys=True)
    if name in ("dissect", "atlas"):  # compare the numbers, not the timings or provenance
        assert json.loads(after)["layers"] == json.loads(before)["layers"]
    else:
        assert after == before
    for k, v in result.to_arrays().items():
        np.testing.assert_array_equal(again.to_arrays()[k], v, err_msg=k)
    assert not any(e.key.is_partial for e in store.entries())
    assert not list(store.path.glob("scratch/*/*"))


def test_optim_inversion_resumes_where_it_stopped_with_the_same_result(model, images, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    params = {"layers": ["relu2", "relu4"], "steps": 12, "jitter": 2, "seed": 3}
    ref = pa.OptimInversion(model, params, progress=False).run(images[:2])

    store = pa.Store(tmp_path / "s")
    engine = model.gradient
    real = type(engine).features
    calls = {"n": 0}

    def dying(self, *a, **k):  # Ctrl-C in step 8 (call 1 is the targets' forward pass)
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(type(engine), "features", dying)
    with pytest.raises(KeyboardInterrupt):
        pa.OptimInversion(model, params, store=store, checkpoint_every=0, progress=False).run(
            images[:2]
        )
    (partial,) = store.entries()
    assert partial.key.is_partial and store.get(partial.key).extra["checkpoint"]["step"] == 7
    monkeypatch.setattr(type(engine), "features", real)
    calls["n"] = 0
    again = pa.OptimInversion(model, params, store=store, checkpoint_every=0, progress=False)
    got = again.run(images[:2])
    assert again.resumed
    np.testing.assert_array_equal(got.images, ref.images)
    np.testing.assert_array_equal(got.history, ref.history)
    assert [e.key.method for e in store.entries()] == ["invert-optim"]


def test_cli_json_summaries(capsys, default_model, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(synthetic.render(1, seed=4, size=64).image).save(img)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(synthetic.render(i, seed=6, size=64).image).save(folder / f"{i}.png")
    store = ["--store", str(tmp_path / "s"), "--no-progress", "--json"]
    model = str(default_model)
    commands = {
        "deconv": ["deconv", model, "--layer", "relu5", "--units", "1", "--image", str(img),
                   "--out", str(tmp_path / "d")],
        "patches": ["deconv", model, "--layer", "relu5", "--units", "1", "--images", str(folder),
                    "--top-k", "2", "--out", str(tmp_path / "p")],
        "actmax": ["actmax", model, "--layer", "relu5", "--units", "0", "--steps", "2",
                   "--out", str(tmp_path / "a")],
        "invert-optim": ["invert", model, "--image", str(img), "--layer", "relu2",
                         "--steps", "2", "--out", str(tmp_path / "i")],
        "train-upconv": ["invert", "train", model, "--layer", "relu2", "--images", str(folder),
                         "--epochs", "1"],
        "dissect": ["dissect", model, "--layer", "relu6", "--n-images", "40",
                    "--out", str(tmp_path / "r")],
    }  # fmt: skip
    for method, args in commands.items():
        code, out, err = run_cli(capsys, *args, *store)
        assert code == 0, err
        doc = json.loads(out)  # stdout holds the JSON document and nothing else
        assert doc["summary"], method
        if method == "invert-optim":
            assert doc["method"] == "invert" and set(doc["summary"]) == {"optim"}
        else:
            assert doc["method"] == method and doc["from_store"] is False
    code, out, err = run_cli(capsys, *commands["actmax"], *store)
    assert code == 0 and json.loads(out)["from_store"] is True, err
    code, out, err = run_cli(capsys, "concepts", "synth", "--out", str(tmp_path / "c"),
                             "--n-images", "3", "--size", "32", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["summary"]["images"] == 3, err


def test_options_outside_the_params_are_checked_too(model):
    for bad in (float("nan"), -1.0, float("inf"), True):
        with pytest.raises(pa.UserInputError, match="checkpoint_every must be a finite number"):
            pa.ActivationMaximization(model, layer="relu5", units=0, checkpoint_every=bad)
    # a huge sequence of units is refused before it is listed
    with pytest.raises(ParamsError, match="units: 1000000000000 given, at most"):
        pa.DeconvNet(model, layer="relu5", units=range(10**12))


def test_projections_refuse_what_exceeds_the_memory_budget(model):
    from pyanalyzer import budget

    with budget.budget_override("1M"), pytest.raises(budget.BudgetError, match="projecting relu5"):
        pa.GuidedBackprop(model, layer="relu5", units=0, batch_size=64)
    with budget.budget_override("1M"), pytest.raises(budget.BudgetError):
        pa.TopPatches(model, layer="relu6", projection="deconv", batch_size=512)
