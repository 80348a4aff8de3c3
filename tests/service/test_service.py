"""The analysis service against a real ``pyanalyzer serve`` on a loopback port: every method
through the API equals the library; the CLI and the service share the store; kill -9 and
SIGTERM in the middle of a dissection resume to the identical tally; a dead worker fails its
job and the server goes on; tokens keep tenants apart; bad uploads store nothing; files stay
inside their job's folder; the page works in a real browser.

Every request loop is bounded in count and time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import Server, upload_model, wait_job

pytestmark = pytest.mark.slow

SCENES = 60  # synthetic concept scenes of the quick dissections


# ---- helpers -----------------------------------------------------------------------------------


def _close(a: Any, b: Any, path: str = "") -> None:
    """Recursive equality of two JSON documents, floats to 1e-5 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            if k not in ("timings", "seconds"):  # wall time differs from run to run
                _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, str):
        assert b is not None and (math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) or (
            math.isnan(a) and math.isnan(b))), f"{path}: {a} != {b}"  # fmt: skip
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _submit(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/v1/jobs", json=body)


def _run_job(client: httpx.Client, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    r = _submit(client, body)
    assert r.status_code in (200, 202), r.text
    job = wait_job(client, r.json()["id"], timeout=timeout)
    assert job["state"] == "done", job
    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200, result.text
    return result.json()


def _library(model: Path, method: str, params: dict[str, Any], inputs: Any, store: Path) -> Any:
    """The same analysis through the Python API (its own store)."""
    from pyanalyzer import load_model
    from pyanalyzer.methods import analysis
    from pyanalyzer.store import Store

    m = load_model(model, check_parity=False)
    a = analysis(method)(m, params, store=Store(store), progress=False)
    return a.run(inputs)


def _scene_image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
    return path


def _partial_exists(store: Path) -> bool:
    return any(
        "partial" in p.parts and not p.name.startswith(".")  # not a writer's temp file
        for p in (store / "entries").rglob("*.h5")
    )


def _signal_pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits for delivery to process ``pid`` (Linux: /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("SigPnd:", "ShdPnd:"))]  # fmt: skip
    return any(m & (1 << (sig - 1)) for m in masks)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---- one server for the method flows -------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Any:
    root = tmp_path_factory.mktemp("service")
    server = Server(root / "store").start()
    client = httpx.Client(base_url=server.url, timeout=120)
    model = upload_model(client, default_model)
    image = _scene_image(root / "scene.png")
    with open(image, "rb") as fh:
        img = client.post("/v1/images", files={"image": ("scene.png", fh)}).json()
    yield {"server": server, "client": client, "model": model, "image": img, "root": root,
           "image_path": image}  # fmt: skip
    client.close()
    server.kill()


def test_health_and_methods(shared: Any) -> None:
    client = shared["client"]
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["core"] is True and h["auth"] is False
    assert "CPUExecutionProvider" in h["onnxruntime_providers"]
    assert h["workers"] == 1
    methods = {m["method"]: m for m in client.get("/v1/methods").json()["methods"]}
    from pyanalyzer.methods import analyses

    assert set(methods) == set(analyses())
    for name, cls in analyses().items():
        assert methods[name]["params"] == cls.params_type.json_schema()
    names = [d["name"] for d in client.get("/v1/datasets").json()["datasets"]]
    assert names == ["synthetic"]
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v1/jobs" in spec["paths"]


def test_model_upload_is_content_addressed(shared: Any, default_model: Path) -> None:
    client = shared["client"]
    again = upload_model(client, default_model)
    assert again["id"] == shared["model"]["id"]
    assert again["sha256"] == hashlib.sha256(default_model.read_bytes()).hexdigest()
    from pyanalyzer import load_model

    info = load_model(default_model).summary()  # with the parity report, as `info --json`
    got = client.get(f"/v1/models/{again['id']}").json()["info"]
    info["path"] = got["path"]
    _close(json.loads(json.dumps(info)), got)
    other = upload_model(client, default_model, preprocessing='{"preset": "unit"}')
    assert other["id"] != again["id"] and other["preprocessing"] == {"preset": "unit"}


@pytest.mark.parametrize(
    ("method", "params", "inputs"),
    [
        ("dissect", {"layers": ["relu5"]}, {"n_images": SCENES}),
        ("deconv", {"layer": "relu5", "units": "0-2"}, "image"),
        ("guided", {"layer": "relu5", "units": "1"}, "image"),
        ("saliency", {"layer": "relu5", "units": "0-1"}, "image"),
        ("patches", {"layer": "relu5", "units": "0-3", "k": 4}, {"n_images": 24}),
        ("actmax", {"layer": "relu5", "units": "0-1", "steps": 6}, {}),
        ("invert-optim", {"layers": ["relu5"], "steps": 5}, "image"),
        ("ablate", {"layer": "relu6", "units": "0-3", "top": 1}, {"n_images": 24}),
        # relu4: a layer no other case dissects in the shared store (the atlas' relu6 part must
        # be computed by the atlas job itself)
        ("compose", {"layers": ["relu4"], "units": "0-3", "max_length": 2}, {"n_images": SCENES}),
        (
            "atlas",
            {
                "layers": ["relu6"],
                "units": "0-1",
                "samples": 1,
                "actmax": {"steps": 2},
                "invert": {"steps": 2},
                "patches": {"k": 2},
            },
            {"n_images": SCENES},
        ),
    ],
)
def test_each_method_equals_the_library(
    shared: Any, default_model: Path, tmp_path: Path, method: str, params: dict, inputs: Any
) -> None:
    client = shared["client"]
    body_inputs = {"images": [shared["image"]["id"]]} if inputs == "image" else inputs
    got = _run_job(client, {"model": shared["model"]["id"], "method": method,
                            "params": params, "inputs": body_inputs})  # fmt: skip
    assert got["from_store"] is False and got["job"]["state"] == "done"
    # the library, on a store of its own
    if method in ("dissect", "atlas", "compose"):
        from pyanalyzer.data.defaults import concept_dataset

        source: Any = concept_dataset(shared["root"] / "concepts", SCENES, 64, 0, progress=False)
    elif inputs == "image":
        from pyanalyzer.data.images import ImageFiles

        source = ImageFiles([shared["image_path"]])
    elif method in ("patches", "ablate"):
        from pyanalyzer import load_model
        from pyanalyzer.data.defaults import SyntheticImages

        spec = load_model(default_model, check_parity=False).preprocessing
        source = SyntheticImages.for_model(spec, 24)
    else:
        source = None
    expected = _library(default_model, method, params, source, tmp_path / "lib-store")
    _close(json.loads(json.dumps(expected.summary())), got["summary"])
    # its files are served, and the HDF5 holds the result's arrays
    assert got["files"], got
    for f in got["files"][:5]:
        r = client.get(f["url"])
        assert r.status_code == 200 and len(r.content) == f["size"]
    if method == "atlas":  # the site is browsable through the service
        urls = {f["path"]: f["url"] for f in got["files"]}
        assert "layers/relu6/units/1.html" in urls
        for path, kind in (("index.html", "text/html"), ("atlas.css", "text/css"),
                           ("atlas.js", "text/javascript")):  # fmt: skip
            r = client.get(urls[path])
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    h5 = client.get(got["arrays_url"])
    assert h5.status_code == 200
    import h5py

    (tmp_path / "a.h5").write_bytes(h5.content)
    arrays = expected.to_arrays()
    with h5py.File(tmp_path / "a.h5") as fh:
        for name, value in arrays.items():
            if np.asarray(value).dtype.kind in "biuf":
                np.testing.assert_allclose(fh[name][()], value, rtol=1e-5, atol=1e-6)


def test_train_then_invert_upconv(shared: Any) -> None:
    client = shared["client"]
    model = shared["model"]["id"]
    trained = _run_job(client, {"model": model, "method": "train-upconv",
                                "params": {"layer": "relu5", "epochs": 1, "n_images": 16}})  # fmt: skip
    assert trained["files"][0]["path"] == "summary.json"
    inverted = _run_job(client, {"model": model, "method": "invert-upconv",
                                 "params": {"layers": ["relu5"]},
                                 "inputs": {"images": [shared["image"]["id"]]}})  # fmt: skip
    assert any(f["path"].endswith(".png") for f in inverted["files"])


def test_bad_jobs_get_the_cli_line(shared: Any, default_model: Path) -> None:
    client = shared["client"]
    model = shared["model"]["id"]
    from pyanalyzer import load_model
    from pyanalyzer.errors import UserInputError
    from pyanalyzer.methods import analysis

    m = load_model(default_model, check_parity=False)
    for method, params in [
        ("dissect", {"layers": ["nope"]}),
        ("dissect", {"layers": ["relu5"], "quantile": 2}),
        ("actmax", {"layer": "relu5", "units": "0-99999999999999999999"}),
        ("deconv", {"layer": "relu5", "units": 0, "bogus": 1}),
    ]:
        with pytest.raises(UserInputError) as lib:
            analysis(method)(m, params)
        r = _submit(client, {"model": model, "method": method, "params": params,
                             "inputs": {"images": [shared["image"]["id"]]} if method == "deconv"
                             else {}})  # fmt: skip
        assert r.status_code == 422 and r.json() == {"detail": str(lib.value)}
    r = _submit(client, {"model": model, "method": "nope", "params": {}})
    assert r.status_code == 422 and "unknown analysis 'nope'" in r.json()["detail"]
    r = _submit(client, {"model": "0" * 32, "method": "dissect", "params": {"layers": ["relu5"]}})
    assert r.status_code == 404
    r = _submit(client, {"model": model, "method": "deconv", "params": {"layer": "relu5",
                "units": 0}, "inputs": {"images": ["f" * 32]}})  # fmt: skip
    assert r.status_code == 422 and "unknown image" in r.json()["detail"]
    r = _submit(client, {"model": model, "method": "dissect", "params": {"layers": ["relu5"]},
                         "inputs": {"images": [shared["image"]["id"]]}})  # fmt: skip
    assert r.status_code == 422 and "does not take the input(s) images" in r.json()["detail"]


def test_cli_then_service_is_a_store_hit(tmp_path: Path, default_model: Path, start_server: Any):
    store = tmp_path / "store"
    out = tmp_path / "cli-out"
    cli = subprocess.run(
        [sys.executable, "-m", "pyanalyzer", "dissect", str(default_model), "--layer", "relu5",
         "--n-images", str(SCENES), "--out", str(out), "--store", str(store), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    server = start_server(store=store)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        model = upload_model(client, default_model)["id"]
        r = _submit(client, {"model": model, "method": "dissect",
                             "params": {"layers": ["relu5"]}, "inputs": {"n_images": SCENES}})  # fmt: skip
        assert r.status_code == 200, r.text  # answered at once, from the store
        job = r.json()
        assert job["state"] == "done"
        result = client.get(f"/v1/jobs/{job['id']}/result").json()
        assert result["from_store"] is True
        csv = client.get(f"/v1/jobs/{job['id']}/files/relu5_tally.csv")
        assert csv.content == (out / "relu5_tally.csv").read_bytes()


def test_dissect_against_a_broden_folder_of_datasets(
    start_server: Any, default_model: Path, tmp_path: Path
) -> None:
    from pyanalyzer.data.broden import BrodenDataset, synth_dataset

    datasets = tmp_path / "datasets"
    synth_dataset(datasets / "mini", n_images=40, size=64, seed=3, progress=False)
    (datasets / "not-a-dataset").mkdir()
    server = start_server("--datasets", str(datasets))
    with httpx.Client(base_url=server.url, timeout=120) as client:
        listed = client.get("/v1/datasets").json()["datasets"]
        assert [(d["name"], d["kind"], d["images"]) for d in listed] == [
            ("synthetic", "synthetic", 1000),
            ("mini", "broden", 40),
        ]
        model = upload_model(client, default_model)["id"]
        got = _run_job(client, {"model": model, "method": "dissect",
                                "params": {"layers": ["relu5"]}, "inputs": {"dataset": "mini"}})  # fmt: skip
        for name in ("../mini", "not-a-dataset", "nope"):
            r = _submit(client, {"model": model, "method": "dissect",
                                 "params": {"layers": ["relu5"]}, "inputs": {"dataset": name}})  # fmt: skip
            assert r.status_code == 422
            assert r.json()["detail"] == f"unknown dataset {name!r}; choose one of synthetic, mini"
    expected = _library(default_model, "dissect", {"layers": ["relu5"]},
                        BrodenDataset(datasets / "mini"), tmp_path / "lib-store")  # fmt: skip
    _close(json.loads(json.dumps(expected.summary())), got["summary"])


# ---- interruptions -------------------------------------------------------------------------------

LONG_SCENES = 1500


def _long_dissection(client: httpx.Client, model: str) -> dict[str, Any]:
    r = _submit(client, {"model": model, "method": "dissect",
                         "params": {"layers": ["relu5", "relu6"], "batch_size": 16},
                         "inputs": {"n_images": LONG_SCENES}})  # fmt: skip
    assert r.status_code == 202, r.text
    return r.json()


@pytest.fixture(scope="module")
def reference_tally(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Any:
    """The uninterrupted dissection of the long job (the CLI, its own store) and the folder
    whose concepts/ the tests share (the synthetic dataset is made once)."""
    root = tmp_path_factory.mktemp("long")
    out = root / "ref-out"
    cli = subprocess.run(
        [sys.executable, "-m", "pyanalyzer", "dissect", str(default_model), "--layer", "relu5",
         "--layer", "relu6", "--batch-size", "16", "--n-images", str(LONG_SCENES), "--out",
         str(out), "--store", str(root / "ref-store"), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    return root, {n: (out / n).read_bytes() for n in ("relu5_tally.csv", "relu6_tally.csv")}


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_interrupted_server_resumes_to_the_identical_tally(
    reference_tally: Any, default_model: Path, how: str
) -> None:
    root, expected = reference_tally
    store = root / f"store-{how}"
    server = Server(store).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            model = upload_model(client, default_model)["id"]
            job = _long_dissection(client, model)
            _wait_for(lambda: _partial_exists(store), 240, "a checkpoint in the store")
            # The whole job takes a few seconds: the worker is frozen from here on, so that
            # the interruption, not a race with the job's end, decides what the store holds.
            (worker,) = server.worker_pids()
            os.kill(worker, signal.SIGSTOP)
            state = client.get(f"/v1/jobs/{job['id']}").json()["state"]
            assert state == "running"
        if how == "kill9":
            server.kill()  # the frozen worker dies with it (SIGKILL ends a stopped process)
        else:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            # the worker wakes only once the server's SIGTERM is pending there: it handles
            # that signal before it runs one more line of the job
            _wait_for(lambda: _signal_pending(worker, signal.SIGTERM), 60, "SIGTERM sent on")
            os.kill(worker, signal.SIGCONT)
            assert server.stop() in (0, 128 + signal.SIGTERM)
            assert "Application shutdown complete" in server.log()
            assert "stopped by SIGTERM: queued again" in server.log()
        assert _partial_exists(store)  # the checkpoint survived
        server = Server(store).start()
        with httpx.Client(base_url=server.url, timeout=120) as client:
            done = wait_job(client, job["id"], timeout=400)
            assert done["state"] == "done", done
            result = client.get(f"/v1/jobs/{job['id']}/result").json()
            assert result["resumed"] is True
            for name, data in expected.items():
                assert client.get(f"/v1/jobs/{job['id']}/files/{name}").content == data
    finally:
        server.kill()


def test_a_dead_worker_fails_its_job_and_the_server_goes_on(
    start_server: Any, default_model: Path
) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=120) as client:
        model = upload_model(client, default_model)["id"]
        r = _submit(client, {"model": model, "method": "actmax",
                             "params": {"layer": "relu5", "units": "all", "steps": 5000}})  # fmt: skip
        job = r.json()
        _wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["state"] == "running",
                  120, "the job to run")  # fmt: skip
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        failed = wait_job(client, job["id"], timeout=60)
        assert failed["state"] == "failed"
        assert failed["error"].startswith("the worker process running this job died of SIGKILL")
        assert client.get("/v1/health").json()["status"] == "ok"
        nxt = _submit(client, {"model": model, "method": "actmax",
                               "params": {"layer": "relu5", "units": "0", "steps": 3}}).json()  # fmt: skip
        assert wait_job(client, nxt["id"], timeout=120)["state"] == "done"
        assert worker not in server.worker_pids()


def test_a_worker_dying_idle_is_replaced_after_a_pause(start_server: Any) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        _wait_for(lambda: client.get("/v1/health").json()["workers"] == 1, 60, "a worker")
        (first,) = server.worker_pids()
        os.kill(first, signal.SIGKILL)  # young and idle: what a broken install looks like
        _wait_for(lambda: server.worker_pids() not in ([], [first]), 60, "a new worker")
        assert client.get("/v1/health").json()["status"] == "ok"
    assert f"worker {first} exited (-9)" in server.log()
    assert "the next in 1 s" in server.log()


def test_cancel_and_queue_cap(start_server: Any, default_model: Path) -> None:
    server = start_server("--max-queued", "2")
    with httpx.Client(base_url=server.url, timeout=120) as client:
        model = upload_model(client, default_model)["id"]
        body = {"model": model, "method": "actmax",
                "params": {"layer": "relu5", "units": "all", "steps": 5000}}  # fmt: skip
        first = _submit(client, body).json()
        second = _submit(client, {**body, "params": {**body["params"], "seed": 1}}).json()
        third = _submit(client, {**body, "params": {**body["params"], "seed": 2}})
        assert third.status_code == 429 and "at most 2" in third.json()["detail"]
        assert client.delete(f"/v1/jobs/{second['id']}").json()["state"] == "cancelled"
        _wait_for(lambda: client.get(f"/v1/jobs/{first['id']}").json()["state"] == "running",
                  120, "the job to run")  # fmt: skip
        client.delete(f"/v1/jobs/{first['id']}")
        assert wait_job(client, first["id"], timeout=60)["state"] == "cancelled"
        assert client.get(f"/v1/jobs/{first['id']}/result").status_code == 409
        assert client.get("/v1/health").json()["queue"] == {"queued": 0, "running": 0}


def test_events_stream_progress_to_the_end(shared: Any) -> None:
    client = shared["client"]
    # ~2 s of work: the stream polls every 0.25 s, and a job of 40 steps (0.2 s now) could go
    # from queued to done between two polls.
    r = _submit(client, {"model": shared["model"]["id"], "method": "actmax",
                         "params": {"layer": "relu5", "units": "0-3", "steps": 400, "seed": 7}})  # fmt: skip
    events = []
    with client.stream("GET", f"/v1/jobs/{r.json()['id']}/events", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if len(events) > 10_000:
                break
    assert events and events[-1]["state"] == "done"
    assert any(e["state"] == "running" for e in events) or len(events) == 1


# ---- security ----------------------------------------------------------------------------------


def test_tenants_see_only_their_own(start_server: Any, default_model: Path, tmp_path: Path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-0123456789\nbob bob-token-0123456789abc\n")
    server = start_server("--tokens", str(tokens))
    alice = httpx.Client(base_url=server.url, timeout=120,
                         headers={"Authorization": "Bearer alice-token-0123456789"})  # fmt: skip
    bob = httpx.Client(base_url=server.url, timeout=120,
                       headers={"Authorization": "Bearer bob-token-0123456789abc"})  # fmt: skip
    anon = httpx.Client(base_url=server.url, timeout=30)
    with alice, bob, anon:
        model = upload_model(alice, default_model)["id"]
        job = _run_job(alice, {"model": model, "method": "actmax",
                               "params": {"layer": "relu5", "units": "0", "steps": 3}})["job"]  # fmt: skip
        for path in (f"/v1/models/{model}", f"/v1/jobs/{job['id']}",
                     f"/v1/jobs/{job['id']}/result", f"/v1/jobs/{job['id']}/arrays.h5"):  # fmt: skip
            assert alice.get(path).status_code == 200
            assert bob.get(path).status_code == 404
            assert anon.get(path).status_code == 401
        assert bob.get("/v1/models").json() == {"models": []}
        assert bob.get("/v1/jobs").json() == {"jobs": []}
        assert bob.delete(f"/v1/jobs/{job['id']}").status_code == 404
        assert bob.delete(f"/v1/models/{model}").status_code == 404
        r = bob.post("/v1/jobs", json={"model": model, "method": "actmax", "params": {}})
        assert r.status_code == 404
        wrong = anon.get("/v1/models", headers={"Authorization": "Bearer alice-token-012345678X"})
        assert wrong.status_code == 401 and wrong.json() == {"detail": "unknown token"}
        assert anon.get("/v1/health").status_code == 200  # no token needed


def test_the_page_signs_in_with_a_token_cookie(start_server: Any, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("carol carol-token-0123456789\n")
    server = start_server("--tokens", str(tokens))
    with httpx.Client(base_url=server.url, timeout=60) as browser:
        first = browser.get("/")
        assert first.status_code == 401 and "<form method='post' action='/login'>" in first.text
        wrong = browser.post("/login", data={"token": "carol-token-012345678X"})
        assert wrong.status_code == 401 and "unknown token" in wrong.text
        signed = browser.post("/login", data={"token": "carol-token-0123456789"})
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = browser.get("/")  # the cookie now stands for the token
        assert page.status_code == 200 and "Signed in as <b>carol</b>" in page.text
        assert browser.get("/v1/jobs").json() == {"jobs": []}


def test_no_tokens_means_loopback_only(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pyanalyzer", "serve", "--host", "0.0.0.0", "--store",
         str(tmp_path / "store")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYANALYZER_TOKENS": ""},
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: refusing to bind 0.0.0.0 without tokens: give --tokens FILE (or "
        "$PYANALYZER_TOKENS), or bind a loopback address (127.0.0.1, ::1)"
    ]
    assert not (tmp_path / "store").exists()


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "pyanalyzer", "serve", "--port", str(port), "--store",
             str(tmp_path / "store")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert list(tmp_path.iterdir()) == []  # no store, no service folder


def _external_data_model(folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["y"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 16, 16])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)  # fmt: skip
    return path


def test_bad_uploads_store_nothing(start_server: Any, default_model: Path, tmp_path: Path):
    server = start_server("--max-upload-mb", "1")
    raw = default_model.read_bytes()
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(1024 * 1024 + 10))
    cases = {
        "random bytes": (os.urandom(5000), 422),
        "truncated": (raw[: len(raw) // 2], 422),
        "external data": (_external_data_model(tmp_path).read_bytes(), 422),
        "not ONNX (a PNG)": (_scene_image(tmp_path / "x.png").read_bytes(), 422),
        "empty": (b"", 422),
        "over the limit": (big.read_bytes(), 413),
    }
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for what, (data, status) in cases.items():
            r = client.post("/v1/models", files={"model": ("m.onnx", data)})
            assert r.status_code == status, (what, r.text)
            body = r.json()
            assert set(body) == {"detail"} and "\n" not in body["detail"], (what, body)
            assert str(tmp_path) not in body["detail"]  # the upload's name, not the server's path
            if what == "external data":
                assert "references external data files" in body["detail"]
        r = client.post("/v1/models", files={"model": ("m.onnx", raw)},
                        data={"preprocessing": '{"preset": "nope"}'})  # fmt: skip
        assert r.status_code == 422
        r = client.post("/v1/images", files={"image": ("x.png", b"\x89PNG\r\n\x1a\n garbage")})
        assert r.status_code == 422 and "\n" not in r.json()["detail"]
        assert client.get("/v1/models").json() == {"models": []}
        assert client.get("/v1/images").json() == {"images": []}
    service = tmp_path / "store.service"
    assert list((service / "models").iterdir()) == []
    assert list((service / "images").iterdir()) == []
    assert list((service / "tmp").iterdir()) == []


def test_files_stay_inside_the_job(shared: Any, tmp_path: Path) -> None:
    client = shared["client"]
    job = _run_job(client, {"model": shared["model"]["id"], "method": "actmax",
                            "params": {"layer": "relu5", "units": "0", "steps": 2}})["job"]  # fmt: skip
    base = f"/v1/jobs/{job['id']}/files"
    folder = shared["root"] / "store.service" / "jobs" / job["id"] / "files"
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    os.symlink(secret, folder / "link.txt")
    os.symlink(tmp_path, folder / "linkdir")
    for path in ("../../../queue.sqlite", "..%2F..%2F..%2Fqueue.sqlite", "%2e%2e/arrays.h5",
                 "link.txt", "linkdir/secret.txt", "/etc/passwd", "nope.png", ""):  # fmt: skip
        r = client.get(f"{base}/{path}")
        assert r.status_code == 404, (path, r.status_code)
        assert "secret" not in r.text and "sqlite" not in r.text.lower()


def test_page_lists_models_and_jobs_in_a_browser(shared: Any, tmp_path: Path) -> None:
    from report.conftest import find_browser

    exe = find_browser()
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    client = shared["client"]
    got = _run_job(client, {"model": shared["model"]["id"], "method": "dissect",
                            "params": {"layers": ["relu5"]}, "inputs": {"n_images": SCENES}})  # fmt: skip
    url = shared["server"].url

    def dump(page: str) -> str:
        run = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        return run.stdout

    dom = dump(url + "/")
    assert shared["model"]["id"] in dom and got["job"]["id"] in dom
    report = f"{url}/v1/jobs/{got['job']['id']}/files/index.html"
    assert f"/v1/jobs/{got['job']['id']}/files/index.html" in dom
    page = dump(report)
    assert "relu5" in page
    import re

    links = set(re.findall(r'(?:href|src)="([^"#:]+)"', page))
    assert links
    for link in sorted(links)[:20]:  # the report's relative links resolve through the server
        assert client.get(httpx.URL(report).join(link)).status_code == 200, link


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_internal_errors_carry_a_request_id_and_no_trace(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from pyanalyzer.service import ServiceConfig, create_app

    app = create_app(ServiceConfig(store=tmp_path / "store"), start_workers=False)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret detail\nline two")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    body = r.json()
    assert body["detail"] == f"internal error (request id {body['request_id']})"
    assert r.headers["x-request-id"] == body["request_id"]
    assert "secret" not in r.text and "Traceback" not in r.text


def _loads_torch(pid: int) -> bool:
    """Whether process ``pid`` has torch's shared library mapped (it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_serve_imports_torch_only_for_gradient_work(start_server: Any, default_model: Path) -> None:
    server = start_server()
    pids = [server.proc.pid, *server.worker_pids()]
    assert len(pids) >= 2 and not any(map(_loads_torch, pids)), "torch imported at start"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        model = upload_model(client, default_model, parity="false")
        assert model["info"]["parity"] is None
        assert model["info"]["gradient"] == {"available": None, "error": None}  # not checked
        _run_job(client, {"model": model["id"], "method": "dissect",
                          "params": {"layers": ["relu5"]}, "inputs": {"n_images": 8}})  # fmt: skip
        assert not any(map(_loads_torch, pids)), "a forward-only job imported torch"
        _run_job(client, {"model": model["id"], "method": "actmax",
                          "params": {"layer": "relu5", "units": "0", "steps": 2}})  # fmt: skip
        assert _loads_torch(server.proc.pid)  # the submission checks the params on the twin
        assert any(_loads_torch(p) for p in server.worker_pids())


def test_a_worker_whose_server_died_before_it_started_exits(tmp_path: Path) -> None:
    # The server's pid travels in the payload: a worker that finds another parent (the server
    # was killed while the worker was still importing) exits instead of polling for ever.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that is no one's parent now
    payload = json.dumps({"store": str(tmp_path / "store"), "parent": gone.pid})
    run = subprocess.run([sys.executable, "-m", "pyanalyzer.service.worker", payload],
                         capture_output=True, timeout=60)  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert not (tmp_path / "store").exists()
