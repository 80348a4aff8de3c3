"""The memory budget (pyanalyzer.budget): its setting, its estimates against measured sizes on
small cases, and the one-line refusals of the analyses and the CLI."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from PIL import Image

import pyanalyzer as pa
from pyanalyzer import _backend, budget
from pyanalyzer.budget import BudgetError
from pyanalyzer.data.broden import BrodenDataset, synth_dataset
from pyanalyzer.data.defaults import SyntheticImages
from pyanalyzer.data.images import load_image
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.dissection.pipeline import _LayerState, topk_size

GiB = 2**30


@pytest.fixture(autouse=True)
def _no_setting(monkeypatch):
    """Every test starts from the environment's budget and leaves no Python setting behind."""
    monkeypatch.delenv(budget.ENV_VAR, raising=False)
    budget.set_memory_budget(None)
    yield
    budget.set_memory_budget(None)


@pytest.fixture(scope="module")
def model(default_model):
    return pa.load_model(default_model, check_parity=False)


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget") / "ds"
    synth_dataset(root, n_images=6, size=32, progress=False)
    return BrodenDataset(root, cache_dir=root.parent / "cache")


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


# ---- the setting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8G", 8 * GiB), ("8g", 8 * GiB), ("8GiB", 8 * GiB), ("8 GB", 8 * GiB),
        ("512M", 512 * 2**20), ("1.5G", int(1.5 * GiB)), ("64k", 64 * 1024),
        ("2000000000", 2_000_000_000), ("1T", 2**40), (12345, 12345),
    ],
)  # fmt: skip
def test_parse_size(text, expected):
    assert budget.parse_size(text) == expected


def test_parse_size_share_of_memory(monkeypatch):
    monkeypatch.setattr(budget, "physical_memory", lambda: 16 * GiB)
    assert budget.parse_size("25%") == 4 * GiB


@pytest.mark.parametrize("text", ["", "lots", "8X", "-1G", "0", "G8", "1e9"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(BudgetError) as info:
        budget.parse_size(text)
    assert isinstance(info.value, UserInputError)
    _one_line(info.value)


def test_default_is_half_of_physical_memory(monkeypatch):
    real = budget.physical_memory()  # the real machine: positive, or unknown
    assert real is None or real > 0
    monkeypatch.setattr(budget, "physical_memory", lambda: 10 * GiB)
    assert budget.memory_budget() == 5 * GiB
    assert "half of the memory this process may use" in budget.budget_source()
    monkeypatch.setattr(budget, "physical_memory", lambda: None)
    assert budget.memory_budget() == budget.FALLBACK_BYTES


def test_environment_then_python_setting_win(monkeypatch):
    monkeypatch.setenv(budget.ENV_VAR, "3G")
    assert budget.memory_budget() == 3 * GiB and budget.ENV_VAR in budget.budget_source()
    budget.set_memory_budget("1G")
    assert budget.memory_budget() == GiB and "set_memory_budget" in budget.budget_source()
    with budget.budget_override(1000) as limit:
        assert limit == 1000 == budget.memory_budget()
    assert budget.memory_budget() == GiB  # restored
    budget.set_memory_budget(None)
    assert budget.memory_budget() == 3 * GiB
    monkeypatch.setenv(budget.ENV_VAR, "plenty")
    with pytest.raises(BudgetError, match=budget.ENV_VAR):
        budget.memory_budget()


def test_check_names_the_quantity_its_estimate_and_the_budget():
    with budget.budget_override("1M"):
        assert budget.check("a small thing", 1000) == 1000
        with pytest.raises(BudgetError) as info:
            budget.check("a forward pass of 64 images", 3 * GiB, advice="use fewer")
    text = _one_line(info.value)
    assert text.startswith("a forward pass of 64 images needs about 3 GiB")
    assert "memory budget of 1 MiB" in text and text.endswith("; use fewer")


def test_check_disk(tmp_path):
    assert budget.check_disk("a dataset", 10, tmp_path / "not" / "yet") == 10
    with pytest.raises(BudgetError) as info:
        budget.check_disk("a dataset", 2**62, tmp_path / "not" / "yet")
    text = _one_line(info.value)
    assert "a dataset needs about" in text and "of disk" in text and str(tmp_path) in text


def test_format_bytes():
    assert budget.format_bytes(100) == "100 bytes"
    assert budget.format_bytes(1536) == "1.5 KiB"
    assert budget.format_bytes(4.3e12) == "3.91 TiB"


# ---- estimates against measured sizes ------------------------------------------------------


def test_layer_and_forward_estimates_match_the_engine(model):
    spatial = [x for x in model.layers if x.is_spatial]
    x = model.preprocessing.normalize(np.zeros((3, 64, 64, 3), np.uint8))
    outs = model.forward.run(x, [layer.name for layer in spatial])
    measured = sum(a.nbytes for a in outs.values())
    assert measured == 3 * budget.activation_bytes(spatial)  # float32 maps: exact
    for layer in spatial:
        assert outs[layer.name].nbytes == budget.layer_bytes(layer, 3)
    est = budget.forward_bytes(model, spatial, 3)
    assert measured + x.nbytes <= est <= 4 * (measured + x.nbytes)


def test_image_estimates_match_decoded_images(tmp_path):
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 50), np.uint16)).save(tmp_path / "g.png")
    img = load_image(tmp_path / "a.png")
    assert np.asarray(img).nbytes == budget.image_bytes(50, 30, 3)
    gray = np.asarray(load_image(tmp_path / "g.png"))
    assert gray.nbytes <= budget.image_bytes(50, 30, 1, 4)
    assert budget.image_decode_bytes(50, 30, 3) == 3 * np.asarray(img).nbytes
    assert budget.images_bytes(4, 30, 50, 3) == np.zeros((4, 30, 50, 3), np.uint8).nbytes


def test_synthetic_estimates_match_the_scenes():
    src = SyntheticImages(5, size=32)
    est = budget.synthetic_images_bytes(5, 32)
    assert est - src.images.nbytes == 32 * 32 * budget.SCENE_BYTES_PER_PIXEL


def test_synthetic_disk_estimate_bounds_the_written_dataset(concepts):
    written = sum(p.stat().st_size for p in concepts.root.rglob("*") if p.is_file())
    assert written <= budget.synthetic_disk_bytes(6, 32)


def test_label_estimates_match_the_dataset(concepts):
    ds = concepts
    sh, sw = ds.seg_size
    seg, numbers, cats = ds.segmentation_batch([0, 1, 2, 3])
    est = budget.segmentation_batch_bytes(
        4, ds.max_channels, ds.max_image_labels, len(ds.categories), (sh, sw)
    )
    assert est == seg.nbytes + numbers.nbytes + cats.nbytes
    tables = len(ds) * (ds.max_image_labels * 4 + len(ds.categories) + 8)
    row = ds.max_channels * sh * sw * 8
    cache = budget.label_cache_bytes(
        len(ds), ds.max_channels, ds.max_image_labels, len(ds.categories), (sh, sw)
    )
    assert cache == tables + row
    assert budget.label_table_bytes(ds.num_labels - 1) >= ds.concept_category.nbytes


def test_dissection_state_estimate_covers_the_state(model, concepts):
    layers = [model.layer("relu5"), model.layer("relu6")]
    n, q, top_k = len(concepts), 0.005, 3
    states = [
        _LayerState.fresh(x, n, q, concepts.num_labels, len(concepts.categories), top_k)
        for x in layers
    ]
    measured = sum(
        getattr(st, f).nbytes
        for st in states
        for f in ("topk", "intersection", "unit_area_cat", "unit_area", "top_values", "top_images")
    )
    ks = [topk_size(n * int(x.height) * int(x.width), q) for x in layers]
    assert [st.topk.shape[1] for st in states] == ks
    assert _backend.topk_empty(4, ks[0]).nbytes == 4 * ks[0] * budget.FLOAT_BYTES
    batch_only = budget.dissection_bytes(model, layers, batch=2)
    full = budget.dissection_bytes(
        model, layers, batch=2, images=n, topk=ks, top_k=top_k, concepts=concepts.num_labels,
        categories=len(concepts.categories), seg=(concepts.max_channels, 2, *concepts.seg_size),
    )  # fmt: skip
    assert measured <= full - batch_only <= 3 * measured + 10**6
    spill = budget.dissection_spill_bytes(layers, n)
    assert spill == sum(n * x.channels * x.height * x.width * 4 for x in layers)


def test_actmax_estimate_covers_the_result_and_the_batch(model):
    method = pa.ActivationMaximization(
        model, layer="relu4", units="0-2", steps=2, size=32, progress=False
    )
    result = method.run()
    measured = result.images.nbytes + result.curve.nbytes
    est = budget.actmax_bytes(model, method.target.name, batch=3, units=3, size=(32, 32), steps=2)
    feats = model.gradient.features(
        model.preprocessing.normalize_torch(__import__("torch").zeros(3, 3, 64, 64)),
        [x.name for x in model.layers[: model.layer("relu4").index + 1]],
    )
    activations = sum(t.numel() * 4 for t in feats.values())
    assert measured + activations <= est <= 50 * (measured + activations)


def test_inversion_estimate_covers_the_result(model):
    images = SyntheticImages(2, size=64).images
    inv = pa.OptimInversion(model, layers=["relu2", "relu4"], steps=2, progress=False)
    result = inv.run(images)
    measured = result.images.nbytes + result.originals.nbytes + result.history.nbytes
    est = budget.inversion_bytes(model, inv.infos, images=2, steps=2)
    assert measured <= est


# ---- refusals ------------------------------------------------------------------------------


def test_analyses_refuse_before_running(model, concepts):
    with budget.budget_override("64M"):
        with pytest.raises(BudgetError) as info:
            pa.ActivationMaximization(model, layer="relu2", units="all", size=4096, steps=2)
        text = _one_line(info.value)
        assert "activation maximization of 32 unit(s) at 4096x4096" in text
        assert "memory budget of 64 MiB" in text and "--batch-size" in text
        inv = pa.OptimInversion(model, layers=["relu2"], steps=2)
        with pytest.raises(BudgetError, match="inverting 400 image"):
            inv.run(SyntheticImages(400, size=64))  # refused before the images are read
        assert inv.last is None
        with pytest.raises(BudgetError, match="dissecting relu1 in batches of 100000 images"):
            pa.Dissection(model, layers=["relu1"], batch_size=100_000)
        with pytest.raises(BudgetError, match="synthetic scenes"):
            SyntheticImages(1_000_000, size=64)
    dissection = pa.Dissection(model, layers=["relu1"], batch_size=2)
    with budget.budget_override("1M"), pytest.raises(BudgetError, match="over 6 images"):
        dissection.prepare(concepts)


def test_forward_batches_are_checked(model):
    est = budget.forward_bytes(model, [model.layer("relu1")], 200)
    src = SyntheticImages(200, size=64)
    with budget.budget_override(est - 1), pytest.raises(BudgetError, match="forward pass of 200"):
        next(model.forward.iter_layers(src, ["relu1"], batch_size=10**6, progress=False))
    assert src._images is None  # nothing rendered


def test_load_model_refuses_a_model_over_the_budget(default_model, model):
    # The model's tensors for one image: its input and every node output (float32).
    per_image = budget.activation_bytes([model.layers[0].shape[:1] + (3, 64, 64)])
    per_image += budget.activation_bytes(model.layers)
    reading = 2 * default_model.stat().st_size
    with budget.budget_override(reading), pytest.raises(BudgetError) as info:
        pa.load_model(default_model, check_parity=False)
    text = _one_line(info.value)
    assert "running the model on one 64x64 image" in text and "the largest, 'conv1_1'" in text
    assert f"needs about {budget.format_bytes(per_image)}" in text
    with budget.budget_override(reading - 1), pytest.raises(BudgetError, match="reading model"):
        pa.load_model(default_model, check_parity=False)


def test_cli_override_by_environment(monkeypatch, capsys, default_model, tmp_path):
    monkeypatch.setenv(budget.ENV_VAR, "2M")
    out, store = tmp_path / "out", tmp_path / "store"
    code, _, err = run_cli(
        capsys, "actmax", str(default_model), "--layer", "relu1", "--units", "all",
        "--size", "2048", "--steps", "2", "--out", str(out), "--store", str(store),
        "--no-progress",
    )  # fmt: skip
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and budget.ENV_VAR in err
    assert not out.exists() and not store.exists()
    monkeypatch.setenv(budget.ENV_VAR, "a lot")
    code, _, err = run_cli(capsys, "info", str(default_model))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not a size" in err


def test_dissection_without_room_for_its_spill_recomputes(model, concepts, tmp_path, monkeypatch):
    """The disk budget chooses: no room for the spill files, so pass 2 runs the forward pass
    again (the same result); Net2Vec, which reads every activation again, still refuses."""
    import collections

    normal = pa.Dissection(model, layers=["relu5"], batch_size=2, progress=False).run(concepts)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(budget.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    store = pa.Store(tmp_path / "store")
    dissection = pa.Dissection(model, layers=["relu5"], batch_size=2, store=store, progress=False)
    result = dissection.run(concepts)
    assert dissection.activations == "recompute"
    for name in ("thresholds", "intersection", "unit_area_cat", "unit_area", "top_images"):
        np.testing.assert_array_equal(getattr(result[0], name), getattr(normal[0], name))
    entries = list(store.entries())
    with_net2vec = pa.Dissection(model, layers=["relu5"], batch_size=2, net2vec=["circle"],
                                 store=store, progress=False)  # fmt: skip
    with pytest.raises(BudgetError) as info:
        with_net2vec.run(concepts)
    text = _one_line(info.value)
    assert "spill files" in text and "of disk" in text and "100 bytes free" in text
    assert list(store.entries()) == entries


def test_units_are_checked_before_they_are_listed():
    from pyanalyzer.units import select_units

    with pytest.raises(UserInputError) as info:
        select_units(range(10**12), 64)
    assert "10000000000" in _one_line(info.value)
    with pytest.raises(UserInputError, match="out of range"):
        select_units("0-99999999999", 64)
    assert select_units(range(3), 64) == [0, 1, 2]


# ---- what the estimates miss -------------------------------------------------------------------

_PAD_MODEL = """
import numpy as np, onnx, sys
from onnx import TensorProto, helper, numpy_helper
pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 4_000_000, 0], np.int64), "p")
nodes = [helper.make_node("Pad", ["x", "p"], ["y"], name="pad")]  # its size shows only at run
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", 32])
graph = helper.make_graph(nodes, "g", [x], [y], [pads])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), sys.argv[1])
"""


def _limited(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def test_address_space_limit_lowers_the_default_budget():
    code = "from pyanalyzer import budget; print(budget.physical_memory(), budget.memory_budget())"
    env = {k: v for k, v in os.environ.items() if k != budget.ENV_VAR}
    limit = 5 * GiB
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        preexec_fn=_limited(limit), check=True,
    )  # fmt: skip
    total, default = map(int, proc.stdout.split())
    real = budget.physical_memory()
    assert total == min(limit, real or limit) and default == total // 2


def test_out_of_memory_is_recognised_in_real_library_errors():
    errors = []
    for allocate in (lambda: np.empty(2**62, np.uint8), lambda: torch.empty(2**50)):
        try:
            allocate()
        except Exception as exc:  # numpy: _ArrayMemoryError; torch: RuntimeError
            errors.append(exc)
    assert len(errors) == 2 and all(budget.is_out_of_memory(e) for e in errors)
    assert "4.00 EiB" in budget.out_of_memory_message(errors[0])  # numpy's own words
    assert "an allocation of 4 PiB failed" in budget.out_of_memory_message(errors[1])
    assert not budget.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not budget.is_out_of_memory(KeyboardInterrupt())


def test_allocation_the_estimates_miss_is_one_line_exit_2(tmp_path):
    # A Pad whose output (3 x 4000032 x 32 floats, 1.4 GiB) inference cannot size: the budget
    # is set high so no estimate refuses it, and the address space is capped below what
    # onnxruntime then asks for. The CLI reports one line, exit code 2, nothing written.
    model = tmp_path / "pad.onnx"
    subprocess.run([sys.executable, "-c", _PAD_MODEL, str(model)], check=True)
    env = dict(os.environ, **{budget.ENV_VAR: "1T"})
    out, store = tmp_path / "out", tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "pyanalyzer", "actmax", str(model), "--layer", "y",
         "--steps", "1", "--out", str(out), "--store", str(store), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
        preexec_fn=_limited(_address_space_for_torch() + GiB),
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith("error: out of memory") and "1 TiB" in lines[0], lines[0]
    assert not out.exists() and not store.exists()


def _address_space_for_torch() -> int:
    """The address space a process needs to import pyanalyzer's CLI, torch and onnxruntime
    (measured: it differs between builds), so the cap above leaves ~1 GiB of room."""
    code = (
        "import pyanalyzer.cli, torch, onnxruntime, onnx2torch;"
        "print(open('/proc/self/statm').read().split()[0])"
    )
    pages = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)  # fmt: skip
    return pages * os.sysconf("SC_PAGE_SIZE")
