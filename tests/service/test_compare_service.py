"""`compare` through a real ``pyanalyzer serve``: the job's model is A and ``params.other`` the
id of another upload of the same owner; the result equals the library's, a repeated job is
answered from the store, an unknown or missing ``other`` is a one-line 422."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from compare_helpers import permute_channels
from service_helpers import upload_model, wait_job

pytestmark = pytest.mark.slow

SCENES = 40


def _close(a: Any, b: Any, path: str = "") -> None:
    """Recursive equality of two JSON documents, floats to 1e-6 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            if k != "timings":  # wall time differs from run to run
                _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{path}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_compare_job_with_two_uploaded_models(
    server: Any, default_model: Path, tmp_path: Path
) -> None:
    perm = np.random.default_rng(2).permutation(64)
    permuted = permute_channels(default_model, tmp_path / "permuted.onnx", "conv3_2", perm)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        a = upload_model(client, default_model)["id"]
        b = upload_model(client, permuted)["id"]
        methods = {m["method"]: m for m in client.get("/v1/methods").json()["methods"]}
        schema = methods["compare"]["params"]
        assert methods["compare"]["inputs"] == "concepts"
        assert {"layers", "other", "quantile", "iou_threshold"} <= set(schema["properties"])

        body = {"model": a, "method": "compare", "params": {"layers": ["relu5"], "other": b},
                "inputs": {"n_images": SCENES}}  # fmt: skip
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["id"], timeout=300)
        assert job["state"] == "done", job
        got = client.get(f"/v1/jobs/{job['id']}/result").json()
        assert sorted(f["path"] for f in got["files"]) == ["index.html", "summary.json"]
        (layer,) = got["summary"]["layers"]
        assert [m["unit_b"] for m in layer["matches"]] == np.argsort(perm).tolist()
        assert got["summary"]["model_b"]["file"] == f"{b}.onnx"
        page = client.get(f"/v1/jobs/{job['id']}/files/index.html")
        assert page.status_code == 200 and "relu5 \u2194 relu5" in page.text
        h5 = client.get(got["arrays_url"])
        assert h5.status_code == 200

        # the library on the same models and scenes, with a store of its own
        import pyanalyzer as pa
        from pyanalyzer.data.defaults import concept_dataset
        from pyanalyzer.store import Store

        ds = concept_dataset(tmp_path / "concepts", SCENES, 64, 0, progress=False)
        model_a = pa.load_model(default_model, check_parity=False)
        model_b = pa.load_model(permuted, check_parity=False)
        expected = pa.Comparison(model_a, {"layers": ["relu5"]}, other=model_b,
                                 store=Store(tmp_path / "lib"), progress=False).run(ds)  # fmt: skip
        want = json.loads(json.dumps(expected.summary()))
        for card in ("model_a", "model_b"):  # the files are named by their ids in the service
            want[card]["file"] = got["summary"][card]["file"]
        _close(want, got["summary"])

        # the same job again: the store answers at once
        again = client.post("/v1/jobs", json=body)
        assert again.status_code == 200 and again.json()["state"] == "done", again.text

        for params, message in [
            ({"layers": ["relu5"], "other": "f" * 32}, f"unknown model {'f' * 32!r}"),
            ({"layers": ["relu5"]}, "compare needs the second model"),
            ({"layers": ["relu66"], "other": b}, "model A ("),
            ({"layers": ["relu5"], "other": 5}, "other"),
        ]:
            r = client.post("/v1/jobs", json={**body, "params": params})
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert message in detail and "\n" not in detail, detail
