"""The Python client (:mod:`pyanalyzer.client`) against a real ``pyanalyzer serve``: uploads,
a dissect job waited for, its result downloaded byte for byte and its summary equal to the
library's, the errors mapped to the library's exceptions (with the library's messages), failed,
cancelled and timed-out waits, and tokens.

Most tests share one server (module scope: its start and first model upload, which waits for
torch to import, cost most of this file's time); every wait is bounded.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import Server, free_port

from pyanalyzer.client import (
    AuthenticationError,
    BadRequestError,
    Client,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    NotReadyError,
    ServiceError,
    TooManyJobsError,
    UploadTooLargeError,
)
from pyanalyzer.errors import PyanalyzerError, UserInputError

WAIT_S = 120.0
"""The most any job of these tests is waited for."""
DISSECT = {"layers": ["relu5"]}
DISSECT_INPUTS = {"n_images": 60}
ALICE = "alice-token-" + "a" * 16
BOB = "bob-token-" + "b" * 16
"""The shared server's two tokens."""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests of this module: two tokens (alice, bob), one worker, uploads
    of at most 1 MiB (the default model is 0.6 MiB), at most 2 jobs queued or running per
    token."""
    root = tmp_path_factory.mktemp("client-server")
    tokens = root / "tokens"
    tokens.write_text(f"# name token\nalice {ALICE}\nbob {BOB}\n")
    server = Server(
        root / "store", "--tokens", str(tokens), "--max-upload-mb", "1", "--max-queued", "2"
    )
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def client(shared: Server) -> Iterator[Client]:
    """Alice's client."""
    with Client(shared.url, ALICE) as c:
        yield c


@pytest.fixture(scope="module")
def model_doc(shared: Server, default_model: Path) -> dict[str, Any]:
    with Client(shared.url, ALICE, timeout=120) as c:  # the first upload waits for torch
        return c.upload_model(default_model)


@pytest.fixture(scope="module")
def library_model(default_model: Path) -> Any:
    import pyanalyzer as pa

    return pa.load_model(default_model, check_parity=False)


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _same_numbers(a: Any, b: Any, where: str = "summary") -> None:
    """``a`` equals ``b``: the same structure, strings and ints, floats within 1e-6."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            _same_numbers(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_numbers(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9), (where, a, b)
    else:
        assert a == b, (where, a, b)


# ---- uploads and listings --------------------------------------------------------------------


def test_uploads_listings_and_health(
    client: Client, model_doc: dict[str, Any], default_model: Path, tmp_path: Path
) -> None:
    health = client.health()
    assert health["status"] == "ok" and health["auth"] is True and health["workers"] == 1

    data = default_model.read_bytes()
    assert model_doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert model_doc["size"] == len(data) and model_doc["name"] == "default.onnx"
    again = client.upload_model(default_model, name="another name")
    assert again["id"] == model_doc["id"]  # the same bytes: the same model
    assert client.model(model_doc["id"]) == model_doc
    assert model_doc["id"] in [m["id"] for m in client.models()]

    # the same bytes with a preprocessing given: another model
    spec = model_doc["info"]["preprocessing"]
    spec = {k: spec[k] for k in ("input_size", "scale", "mean", "std", "channel_order")}
    other = client.upload_model(default_model, preprocessing=spec, name="with spec")
    assert other["id"] != model_doc["id"] and other["name"] == "with spec"
    assert other["preprocessing"] == spec
    assert other["info"]["parity"]["ok"] is True  # checked by default
    client.delete_model(other["id"])
    # without the parity check (the server does not need torch for it): not checked
    quick = client.upload_model(default_model, preprocessing=spec, parity=False)
    assert quick["info"]["parity"] is None and quick["info"]["gradient"]["available"] is None
    client.delete_model(quick["id"])
    with pytest.raises(NotFoundError):
        client.model(other["id"])

    img = client.upload_image(_png(tmp_path / "a.png"))
    assert client.upload_image(_png(tmp_path / "b.png"))["id"] == img["id"]  # same bytes
    assert img["id"] in [i["id"] for i in client.images()]
    assert [d["name"] for d in client.datasets()] == ["synthetic"]

    from pyanalyzer.methods import _REGISTRY, analysis  # not analyses(): no torch here

    methods = {m["method"]: m for m in client.methods()}
    assert list(methods) == list(_REGISTRY)
    assert methods["dissect"]["params"] == analysis("dissect").params_type.json_schema()


# ---- a job, its result and files, against the library ---------------------------------------


def test_dissect_job_files_and_summary_match_the_library(
    client: Client,
    shared: Server,
    model_doc: dict[str, Any],
    library_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = client.submit(model_doc["id"], "dissect", DISSECT, DISSECT_INPUTS)
    assert job["state"] in ("queued", "running") and job["method"] == "dissect"
    seen: list[dict[str, Any]] = []
    done = client.wait(job, timeout=WAIT_S, poll=0.1, progress=seen.append)
    assert done["state"] == "done" and seen and seen[-1] == done
    assert all(s["id"] == job["id"] for s in seen)
    assert client.job(job["id"]) == done and done["id"] in [j["id"] for j in client.jobs()]

    result = client.result(job["id"])
    assert result["from_store"] is False and result["method"] == "dissect"
    files = {f["path"]: f for f in result["files"]}
    assert "index.html" in files and any("/" in p for p in files)  # a subfolder too

    dest = tmp_path / "download"
    written = client.download(job, dest)
    assert written == [dest / p for p in files] + [dest / "arrays.h5"]
    auth = {"Authorization": f"Bearer {ALICE}"}
    with httpx.Client(base_url=shared.url, headers=auth, timeout=30) as raw:
        for path, entry in files.items():
            r = raw.get(f"/v1/jobs/{job['id']}/files/{path}")
            assert r.status_code == 200, path
            assert (dest / path).read_bytes() == r.content, path
            assert len(r.content) == entry["size"], path
        r = raw.get(f"/v1/jobs/{job['id']}/arrays.h5")
        assert r.status_code == 200 and (dest / "arrays.h5").read_bytes() == r.content
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        [*files, "arrays.h5"]
    )
    assert client.download(job["id"], tmp_path / "no-arrays", arrays=False) == [
        tmp_path / "no-arrays" / p for p in files
    ]

    # the same analysis through the library, with its own store and its own concept dataset
    import pyanalyzer as pa
    from pyanalyzer.data.defaults import concept_dataset, scene_size
    from pyanalyzer.methods import analysis

    dataset = concept_dataset(
        tmp_path / "concepts", 60, scene_size(library_model.preprocessing), 0, progress=False
    )
    lib = analysis("dissect")(
        library_model, DISSECT, store=pa.Store(tmp_path / "lib-store"), progress=False
    )
    expected = json.loads(json.dumps(lib.run(dataset).summary()))
    assert lib.from_store is False
    served = result["summary"]
    assert "timings" in served and "timings" in expected  # seconds: they differ
    _same_numbers({**served, "timings": None}, {**expected, "timings": None})
    assert served["layers"][0]["images"] == 60

    # again: answered from the server's store at submit, the same summary; the bar on a TTY
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    again = client.run(model_doc, "dissect", DISSECT, DISSECT_INPUTS, timeout=WAIT_S)
    assert again["from_store"] is True and again["job"]["id"] != job["id"]
    assert again["summary"] == result["summary"]
    assert f"job {again['job']['id']} done" in tty.getvalue() and "100%" in tty.getvalue()
    monkeypatch.undo()
    client.wait(again["job"], timeout=WAIT_S)  # stderr is no terminal here: no bar
    assert capsys.readouterr().err == ""


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---- errors ----------------------------------------------------------------------------------


def _library_error(call: Any) -> str:
    with pytest.raises(UserInputError) as info:
        call()
    return str(info.value)


def test_errors_are_the_library_exceptions_with_its_messages(
    client: Client, model_doc: dict[str, Any], library_model: Any, tmp_path: Path
) -> None:
    from pyanalyzer.methods import analysis

    mid = model_doc["id"]
    cases: list[dict[str, Any]] = [
        {"layers": ["relu55"]},  # the layer catalogue's message, with the closest names
        {"layers": ["relu5"], "quantile": 2},
        {"layers": ["relu5"], "top_k": True},
        {"layers": ["relu5"], "colour": 1},
        {"layers": []},
    ]
    for params in cases:
        expected = _library_error(lambda p=params: analysis("dissect")(library_model, p))
        with pytest.raises(UserInputError) as info:
            client.submit(mid, "dissect", params, DISSECT_INPUTS)
        err = info.value
        assert isinstance(err, BadRequestError) and isinstance(err, ServiceError)
        assert str(err) == expected and err.detail == expected and err.status == 422
    expected = _library_error(lambda: analysis("no-such-method"))
    with pytest.raises(BadRequestError, match="^unknown analysis 'no-such-method'") as info:
        client.submit(mid, "no-such-method")
    assert str(info.value) == expected
    with pytest.raises(BadRequestError, match="n_images"):
        client.submit(mid, "dissect", DISSECT, {"n_images": 0})
    with pytest.raises(BadRequestError, match="does not take the input"):
        client.submit(mid, "actmax", {"layer": "relu5"}, {"n_images": 5})

    for call in (
        lambda: client.job("0123456789abcdef"),
        lambda: client.result("0123456789abcdef"),
        lambda: client.cancel("0123456789abcdef"),
        lambda: client.model("0" * 32),
        lambda: client.delete_model("0" * 32),
        lambda: client.submit("0" * 32, "dissect", DISSECT),
        lambda: client.download("0123456789abcdef", tmp_path / "never"),
    ):
        with pytest.raises(NotFoundError) as nf:
            call()
        assert nf.value.status == 404 and "unknown" in str(nf.value)
    assert not (tmp_path / "never").exists()

    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * (3 * 1024 * 1024 // 2))  # over the server's 1 MiB
    with pytest.raises(UserInputError, match="larger than the server's limit of 1 MiB") as info:
        client.upload_model(big)
    assert isinstance(info.value, UploadTooLargeError) and info.value.status == 413
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(BadRequestError):
        client.upload_model(broken)
    with pytest.raises(UserInputError, match="not a readable file"):
        client.upload_model(tmp_path / "missing.onnx")

    port = free_port()  # nothing listens there
    with Client(f"http://127.0.0.1:{port}", timeout=5) as nowhere:
        with pytest.raises(ServiceError) as unreachable:
            nowhere.health()
    down = unreachable.value
    assert down.status is None and f"http://127.0.0.1:{port}" in str(down)
    assert "\n" not in str(down) and not isinstance(down, UserInputError)
    with pytest.raises(UserInputError, match="http://"):
        Client("127.0.0.1:8000")


def test_wait_failed_cancelled_timeout_and_too_many_jobs(
    client: Client, model_doc: dict[str, Any], default_model: Path
) -> None:
    # a long job keeps the only worker busy while a job on a second model waits behind it
    long = client.submit(
        model_doc, "actmax", {"layer": "relu5", "units": "0-3", "steps": 100_000, "seed": 7}
    )
    spec = model_doc["info"]["preprocessing"]
    second = client.upload_model(default_model, preprocessing={"input_size": spec["input_size"]})
    behind = client.submit(second, "actmax", {"layer": "relu5", "units": "0", "steps": 2})
    assert behind["state"] == "queued"
    with pytest.raises(TooManyJobsError) as info:  # the server takes 2 at once
        client.submit(second, "actmax", {"layer": "relu5", "units": "1", "steps": 2})
    assert info.value.status == 429 and "at most 2" in str(info.value)
    with pytest.raises(TimeoutError, match=f"job {long['id']} is still"):
        client.wait(long, timeout=0.3, poll=0.1)
    with pytest.raises(NotReadyError) as nr:
        client.result(long["id"])
    assert nr.value.status == 409

    client.delete_model(second["id"])  # the waiting job's model is gone: it will fail
    client.cancel(long["id"])
    with pytest.raises(JobCancelledError) as cancelled:
        client.wait(long["id"], timeout=WAIT_S, poll=0.1)
    assert cancelled.value.job["state"] == "cancelled"
    with pytest.raises(JobFailedError) as failed:
        client.wait(behind, timeout=WAIT_S, poll=0.1)
    job = failed.value.job
    assert job["state"] == "failed" and str(failed.value) == job["error"]
    assert str(failed.value) == f"model {second['id']} was deleted before the job ran"
    assert isinstance(failed.value, PyanalyzerError)
    with pytest.raises(NotReadyError, match=f"job {behind['id']} is failed"):
        client.result(behind["id"])
    assert client.cancel(behind["id"])["state"] == "failed"  # an ended job stays as it is


def test_download_refuses_paths_outside_the_folder(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside, target_is_directory=True)
    for bad in ("../x.png", "/etc/x.png", "a/../../x.png", "link/x.png", "a\\..\\x", "", "./x"):
        doc = {"files": [{"path": "ok.png"}, {"path": bad}], "arrays_url": None}
        monkeypatch.setattr(client, "result", lambda job_id, doc=doc: doc)
        with pytest.raises(ServiceError, match="refusing the result file path"):
            client.download("0123456789abcdef", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["link"]  # nothing fetched
    assert list(outside.iterdir()) == []


# ---- tokens ----------------------------------------------------------------------------------


def test_tokens(shared: Server, client: Client, model_doc: dict[str, Any], tmp_path: Path) -> None:
    with Client(shared.url) as anonymous:
        assert anonymous.health()["auth"] is True  # health needs no token
        with pytest.raises(AuthenticationError, match="a bearer token is required") as info:
            anonymous.models()
        assert info.value.status == 401
    with Client(shared.url, "x" * 20) as wrong, pytest.raises(AuthenticationError) as info:
        wrong.jobs()
    assert str(info.value) == "unknown token" and not isinstance(info.value, UserInputError)

    # each token sees only its own models, images and jobs
    job = client.submit(model_doc, "actmax", {"layer": "relu5", "units": "2", "steps": 2})
    with Client(shared.url, BOB) as bob:
        assert bob.models() == [] and bob.images() == [] and bob.jobs() == []
        for call in (
            lambda: bob.job(job["id"]),
            lambda: bob.result(job["id"]),
            lambda: bob.cancel(job["id"]),
            lambda: bob.download(job["id"], tmp_path / "bob"),
            lambda: bob.model(model_doc["id"]),
            lambda: bob.submit(model_doc["id"], "dissect", DISSECT, DISSECT_INPUTS),
        ):
            with pytest.raises(NotFoundError):
                call()
        img = bob.upload_image(_png(tmp_path / "x.png", seed=3))
        assert [i["id"] for i in bob.images()] == [img["id"]]
    assert img["id"] not in [i["id"] for i in client.images()]
    assert not (tmp_path / "bob").exists()
    assert client.wait(job, timeout=WAIT_S)["state"] == "done"
