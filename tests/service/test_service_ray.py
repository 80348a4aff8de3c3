"""The service with ``--ray-address``: a real ``pyanalyzer serve`` whose worker runs the
shards of a dissection on a Ray cluster (``ray start --head`` on this machine, 2 CPUs, no
dashboard, stopped after the test; given as 127.0.0.1:PORT, which Ray maps to this node's own
address); the job's result equals the library's local run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_helpers import Server, free_port, upload_model, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_cluster():
    pytest.importorskip("ray")
    exe = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    if not os.path.exists(exe):
        pytest.skip("the ray command is not installed")
    import tempfile

    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must be short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    start = [exe, "start", "--head", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false",
             f"--temp-dir={temp}", "--disable-usage-stats"]  # fmt: skip
    proc = subprocess.run(start, capture_output=True, text=True, env=env, timeout=180)
    if proc.returncode != 0:
        pytest.fail(f"ray start failed: {proc.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([exe, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_dissect_job_shards_on_ray(tmp_path: Path, default_model: Path, ray_cluster: tuple):
    address, env = ray_cluster  # the cluster's token authentication stays on
    server = Server(tmp_path / "store", "--ray-address", address, env=env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            model = upload_model(client, default_model)["id"]
            params = {"layers": ["relu6"], "batch_size": 16}
            r = client.post("/v1/jobs", json={"model": model, "method": "dissect",
                                              "params": params, "inputs": {"n_images": 60}})  # fmt: skip
            assert r.status_code == 202, r.text
            job = wait_job(client, r.json()["id"], timeout=300)
            assert job["state"] == "done", job
            got = client.get(f"/v1/jobs/{job['id']}/result").json()
        assert f"connected to the Ray cluster at {address}" in server.log()
    finally:
        server.kill()
    import pyanalyzer as pa
    from pyanalyzer.data.defaults import concept_dataset

    ds = concept_dataset(tmp_path / "concepts", 60, 64, 0, progress=False)
    m = pa.load_model(default_model, check_parity=False)
    local = pa.Dissection(m, params, progress=False).run(ds)
    want = json.loads(json.dumps(local.summary()))["layers"]
    assert got["summary"]["layers"] == want
