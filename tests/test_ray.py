"""Dissection sharded over executors: in this process and on a local Ray of 2 CPUs (started by
the test session, no dashboard), bitwise equal to the local engine; a Ray worker killed in the
middle has its shard redone; a driver stopped in the middle resumes, skipping finished shards."""

from __future__ import annotations

import numpy as np
import pytest

import pyanalyzer as pa
from pyanalyzer.data.broden import BrodenDataset, synth_dataset
from pyanalyzer.errors import UserInputError
from pyanalyzer.executor import LocalExecutor, executor
from pyanalyzer.methods.dissection import shards as sh

FIELDS = ("thresholds", "intersection", "unit_area_cat", "unit_area", "concept_area",
          "top_images", "top_values")  # fmt: skip
LAYERS = ["relu5", "relu6"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_model):
    d = tmp_path_factory.mktemp("ray")
    model = pa.load_model(default_model, check_parity=False)
    ds = BrodenDataset(
        synth_dataset(d / "ds", n_images=150, size=64, progress=False), cache_dir=d / "c"
    )
    local = pa.Dissection(model, layers=LAYERS, batch_size=16, progress=False).run(ds)
    return model, ds, local


@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray")
    from pyanalyzer.executor import RayExecutor

    ex = RayExecutor(cpus=2)
    yield ex
    ex.close()


def assert_same(a, b):
    for la, lb in zip(a, b, strict=True):
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(la, f), getattr(lb, f), err_msg=f)


def test_plan_covers_whole_batches():
    shards = sh.plan(150, 16, 2)
    assert shards[0].start == 0 and shards[-1].stop == 150
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:], strict=False))
    assert all(s.start % 16 == 0 for s in shards) and len(shards) == 5  # 10 batches, 8 wanted
    assert [s.index for s in shards] == list(range(len(shards)))


def test_sharded_in_process_equals_local(setup):
    model, ds, local = setup
    sharded = pa.Dissection(model, layers=LAYERS, batch_size=16, progress=False,
                            executor=LocalExecutor()).run(ds)  # fmt: skip
    assert_same(local, sharded)


def test_ray_equals_local_and_moves_no_activations(setup, ray_executor):
    model, ds, local = setup
    a = pa.Dissection(model, layers=LAYERS, batch_size=16, progress=False,
                      executor=ray_executor)  # fmt: skip
    before = ray_executor.bytes_received
    result = a.run(ds)
    assert_same(local, result)
    assert a.shards == 5 and a.activations in ("spill", "recompute")
    received = ray_executor.bytes_received - before
    # every activation of relu5 alone is 150 x 64 x 16 x 16 x 4 bytes = 9.8 MB
    assert received < 0.2 * 150 * 64 * 16 * 16 * 4


def test_a_killed_worker_has_its_shard_redone(setup, ray_executor, monkeypatch):
    import ray

    model, ds, local = setup
    pool = ray_executor.actors(model, ds)
    victim = pool[0]
    calls = []
    real = ray_executor.map

    def map_and_kill(fn, *a, **k):
        on_result = a[3]

        def killing(i, value):
            if not calls:  # after the first shard of pass 1: kill a worker
                ray.kill(victim)
            calls.append(i)
            on_result(i, value)

        return real(fn, a[0], a[1], a[2], killing, **k)

    monkeypatch.setattr(ray_executor, "map", map_and_kill)
    result = pa.Dissection(model, layers=LAYERS, batch_size=16, progress=False,
                           executor=ray_executor).run(ds)  # fmt: skip
    assert_same(local, result)
    assert victim not in ray_executor.actors(model, ds)  # replaced


class Stop(Exception):
    pass


def test_a_stopped_driver_resumes_skipping_finished_shards(setup, tmp_path, monkeypatch):
    model, ds, local = setup
    store = pa.Store(tmp_path / "store")
    ex = LocalExecutor()
    real = sh.pass2
    seen: list[int] = []

    def stop_after_two(model, ds, job):
        if len(seen) == 2:
            raise Stop()  # the driver dies (as Ctrl-C would) after two shards of pass 2
        seen.append(job.shard.index)
        return real(model, ds, job)

    monkeypatch.setattr(sh, "pass2", stop_after_two)
    with pytest.raises(Stop):
        pa.Dissection(model, layers=LAYERS, batch_size=16, progress=False, executor=ex,
                      store=store, checkpoint_every=0).run(ds)  # fmt: skip
    assert seen == [0, 1]
    monkeypatch.setattr(sh, "pass2", real)
    ran1, ran2 = [], []
    monkeypatch.setattr(sh, "pass1", lambda m, d, j, f=sh.pass1: ran1.append(1) or f(m, d, j))
    monkeypatch.setattr(
        sh, "pass2", lambda m, d, j, f=real: ran2.append(j.shard.index) or f(m, d, j)
    )
    again = pa.Dissection(model, layers=LAYERS, batch_size=16, progress=False, executor=ex,
                          store=store)  # fmt: skip
    result = again.run(ds)
    left = [x.index for x in sh.plan(150, 16, ex.workers)][2:]  # the shards after the two
    assert ran1 == [] and ran2 == left and len(left) >= 2 and again.resumed
    assert_same(local, result)
    # the stored result answers the local engine too (the executor is not in the key)
    plain = pa.Dissection(model, layers=LAYERS, batch_size=16, progress=False, store=store)
    assert_same(local, plain.run(ds))
    assert plain.from_store


def test_recompute_instead_of_spill_gives_the_same(setup, monkeypatch):
    model, ds, local = setup
    monkeypatch.setattr(sh, "spill_mode", lambda estimate, folder=None: "recompute")
    a = pa.Dissection(model, layers=LAYERS, batch_size=16, progress=False,
                      executor=LocalExecutor())  # fmt: skip
    assert_same(local, a.run(ds))
    assert a.activations == "recompute"


def test_engine_choices():
    assert executor("local").engine == "local"
    with pytest.raises(UserInputError, match="unknown engine 'spark'"):
        executor("spark")
    with pytest.raises(UserInputError, match="--ray-address applies to --engine ray"):
        executor("local", "10.0.0.1:6379")


def test_cli_engine_ray_writes_the_local_reports(capsys, default_model, tmp_path, ray_executor):
    from cli_helpers import run_cli

    ray_executor.release()  # the CLI's executor needs the cluster's CPUs for its own workers
    common = ["dissect", str(default_model), "--layer", "relu6", "--n-images", "60",
              "--no-progress"]  # fmt: skip
    code, out, err = run_cli(capsys, *common, "--out", str(tmp_path / "ray"), "--store",
                             str(tmp_path / "s1"), "--engine", "ray")  # fmt: skip
    assert code == 0, err
    assert "computed on Ray (" in out and "activations " in out
    code, out, err = run_cli(capsys, *common, "--out", str(tmp_path / "local"), "--store",
                             str(tmp_path / "s2"))  # fmt: skip
    assert code == 0, err
    name = "relu6_tally.csv"
    assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    for bad, message in (
        (["--ray-address", "10.0.0.1:6379"], "--ray-address applies to --engine ray"),
        (["--engine", "ray", "--net2vec", "circle"], "--net2vec runs on the local engine only"),
    ):
        code, out, err = run_cli(capsys, *common, "--out", str(tmp_path / "x"), *bad)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def _actmax(model, executor=None, store=None, **kw):
    a = pa.ActivationMaximization(model, layer="relu5", units="0-9", steps=6, batch_size=4,
                                  progress=False, executor=executor, store=store, **kw)  # fmt: skip
    return a, a.run()


def test_actmax_groups_on_executors_equal_local(setup, ray_executor):
    """Units rendered group by group on workers: the same batches and seeds as locally."""
    model, _, _ = setup
    _, local = _actmax(model)
    _, inproc = _actmax(model, LocalExecutor())
    np.testing.assert_array_equal(inproc.images, local.images)
    np.testing.assert_array_equal(inproc.curve, local.curve)
    ray_executor.release()
    _, on_ray = _actmax(model, ray_executor)
    np.testing.assert_array_equal(on_ray.units, local.units)
    np.testing.assert_array_equal(on_ray.images, local.images)
    np.testing.assert_array_equal(on_ray.reached, local.reached)
    np.testing.assert_array_equal(on_ray.curve, local.curve)


def test_cli_actmax_engine_ray_writes_the_same_pngs(capsys, default_model, tmp_path, ray_executor):
    from cli_helpers import run_cli

    ray_executor.release()
    common = ["actmax", str(default_model), "--layer", "relu5", "--units", "0-5", "--steps",
              "4", "--batch-size", "3", "--no-progress"]  # fmt: skip
    outs = {}
    for engine in ("ray", "local"):
        out = tmp_path / engine
        code, _, err = run_cli(capsys, *common, "--out", str(out), "--store",
                               str(tmp_path / f"s-{engine}"), "--engine", engine)  # fmt: skip
        assert code == 0, err
        outs[engine] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert outs["ray"] == outs["local"] and len(outs["ray"]) == 7  # 6 units + the montage


def test_top_patches_on_executors_equal_local(setup, ray_executor):
    """The scan in shards of whole batches (candidates merged) and one unit's projections a
    shard: the same values, images, positions and projections."""
    model, ds, _ = setup
    kw = {"layer": "relu5", "units": [0, 3, 7], "k": 5, "projection": "deconv",
          "batch_size": 16, "progress": False}  # fmt: skip
    local = pa.TopPatches(model, **kw).run(ds)
    ray_executor.release()
    for ex in (LocalExecutor(), ray_executor):
        other = pa.TopPatches(model, executor=ex, **kw).run(ds)
        for name in ("values", "images", "positions"):
            np.testing.assert_array_equal(getattr(other, name), getattr(local, name))
        assert list(other.projections) == [0, 3, 7]
        for u in (0, 3, 7):
            np.testing.assert_array_equal(other.projections[u], local.projections[u])


def test_inversion_batches_on_executors_equal_local(setup, ray_executor):
    """images_per_batch: each batch inverted as a run of its own (the same noise and jitter),
    here or on workers: the same reconstructions."""
    model, ds, _ = setup
    images = np.stack([ds.pixels(i, model.preprocessing) for i in range(4)])
    kw = {"layers": ["relu5"], "steps": 4, "progress": False}
    local = pa.OptimInversion(model, images_per_batch=2, **kw).run(images)
    alone = pa.OptimInversion(model, **kw).run(images[2:])
    np.testing.assert_array_equal(local.images[2:], alone.images)
    np.testing.assert_array_equal(local.history[:, 2:], alone.history)
    ray_executor.release()
    on_ray = pa.OptimInversion(model, images_per_batch=2, executor=ray_executor, **kw).run(images)
    for name in ("originals", "images", "feature_error", "pixel_error", "history"):
        np.testing.assert_array_equal(getattr(on_ray, name), getattr(local, name), err_msg=name)
    # without images_per_batch, one batch: the same key and result as without an executor
    whole = pa.OptimInversion(model, **kw).run(images)
    np.testing.assert_array_equal(
        pa.OptimInversion(model, executor=ray_executor, **kw).run(images).images, whole.images
    )


def test_a_stopped_inversion_resumes_its_unfinished_batches(setup, tmp_path, monkeypatch):
    from pyanalyzer.methods.inversion import optim

    model, ds, _ = setup
    images = np.stack([ds.pixels(i, model.preprocessing) for i in range(6)])
    kw = {"layers": ["relu5"], "steps": 3, "images_per_batch": 2, "progress": False}
    whole = pa.OptimInversion(model, **kw).run(images)
    store = pa.Store(tmp_path / "store")
    real, ran = optim.invert_shard, []

    def stop_after_two(model, data, job):
        if len(ran) == 2:
            raise Stop()
        ran.append(job[1][0].tobytes())
        return real(model, data, job)

    monkeypatch.setattr(optim, "invert_shard", stop_after_two)
    with pytest.raises(Stop):
        pa.OptimInversion(model, store=store, checkpoint_every=0, **kw).run(images)
    ran.clear()
    monkeypatch.setattr(optim, "invert_shard", lambda m, d, j: ran.append(1) or real(m, d, j))
    again = pa.OptimInversion(model, store=store, **kw)
    result = again.run(images)
    assert ran == [1] and again.resumed  # only the third batch
    for name in ("originals", "images", "feature_error", "pixel_error", "history"):
        np.testing.assert_array_equal(getattr(result, name), getattr(whole, name), err_msg=name)


def test_a_stopped_patches_run_resumes_its_unfinished_shards(setup, tmp_path, monkeypatch):
    from pyanalyzer.methods import patches as patches_module

    model, ds, _ = setup
    kw = {"layer": "relu5", "units": [1, 2, 5], "k": 4, "projection": "deconv",
          "batch_size": 16, "progress": False}  # fmt: skip
    local = pa.TopPatches(model, **kw).run(ds)
    store, ex = pa.Store(tmp_path / "store"), LocalExecutor()
    scan_real, project_real = patches_module.scan_shard, patches_module.project_shard
    scans, projected = [], []

    def scan_stop(model, source, job):
        if len(scans) == 2:
            raise Stop()
        scans.append(job[3].index)
        return scan_real(model, source, job)

    monkeypatch.setattr(patches_module, "scan_shard", scan_stop)
    with pytest.raises(Stop):  # stopped in the scan, after two shards
        pa.TopPatches(model, store=store, executor=ex, checkpoint_every=0, **kw).run(ds)
    monkeypatch.setattr(patches_module, "scan_shard", lambda m, s, j: scans.append(j[3].index)
                        or scan_real(m, s, j))  # fmt: skip

    def project_stop(model, source, job):
        if projected:
            raise Stop()
        projected.append(job[1])
        return project_real(model, source, job)

    monkeypatch.setattr(patches_module, "project_shard", project_stop)
    with pytest.raises(Stop):  # the scan finishes; stopped after one unit's projections
        pa.TopPatches(model, store=store, executor=ex, checkpoint_every=0, **kw).run(ds)
    shards = [x.index for x in sh.plan(150, 16, ex.workers)]
    assert scans == shards  # the first two, then only the others
    monkeypatch.setattr(patches_module, "project_shard", lambda m, s, j: projected.append(j[1])
                        or project_real(m, s, j))  # fmt: skip
    result = pa.TopPatches(model, store=store, executor=ex, **kw).run(ds)
    assert projected == [1, 2, 5]  # unit 1 once, then 2 and 5
    for name in ("values", "images", "positions"):
        np.testing.assert_array_equal(getattr(result, name), getattr(local, name))
    for u in (1, 2, 5):
        np.testing.assert_array_equal(result.projections[u], local.projections[u])
