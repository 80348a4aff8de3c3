"""OpenAPI-driven fuzzing of the service (schemathesis 4): every operation of a live server's
``/openapi.json`` gets requests, positive and negative; no answer may be a 5xx, and every one
must match the schema (status code, content type, body); negative cases must be refused.

The server is a real ``pyanalyzer serve`` with a tokens file, and every request carries the
bearer token, so the requests reach the handlers (only negative cases that break the header
may get 401). Before the fuzz the default model (twice, the second for ``DELETE``), an image
and one finished job are set up, and the cases reach them three ways:

* pinned cases, sent every run: the real ids, a second upload of the same model and image
  (200), the stored job (200), a job still running (409 on its result), odd file paths;
* seeded strategies: generated cases with a real id as path parameter, job bodies with the
  real model and a real method, uploads of real model bytes with mangled preprocessing and of
  small images in many modes and formats;
* job bodies generated from each method's own params schema (``GET /v1/methods``).

``--max-queued 2`` bounds what a generated ``POST /v1/jobs`` may queue (429 is documented), and
every job one queues is cancelled at once: the worker does not spend the run on analyses.

Repeatable: hypothesis runs derandomized with no example database, and schemathesis mines no
constants from the source, so the same checkout sends the same requests. The request count is
asserted (at least :data:`MIN_REQUESTS`) and printed with the statuses seen per operation;
``PYANALYZER_FUZZ_SCALE`` multiplies the generated cases, ``PYANALYZER_FUZZ_LOG`` names a file
that gets one line per request.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests  # schemathesis' transport
import schemathesis  # the test extra pins schemathesis >= 4
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from service_helpers import Server, upload_model, wait_job

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIN_REQUESTS = 300
SCALE = float(os.environ.get("PYANALYZER_FUZZ_SCALE", "1"))
"""Multiplies the generated cases (e.g. 10 for a longer local hunt)."""
POSITIVE_EXAMPLES = max(1, round(14 * SCALE))
"""Generated cases per operation and mode (hypothesis stops earlier when an operation has
fewer distinct cases, e.g. one without parameters)."""
NEGATIVE_EXAMPLES = max(1, round(8 * SCALE))
TYPED_JOB_EXAMPLES = max(1, round(40 * SCALE))
"""Job bodies generated from the methods' own params schemas (see :func:`_typed_jobs`)."""
LOG_PATH = os.environ.get("PYANALYZER_FUZZ_LOG")
"""A file to append every request and its answer to (one line each), for a look by hand."""
REQUEST_TIMEOUT = 20.0
RUN_BUDGET_S = 240.0 * max(1.0, SCALE)
"""Hard bound on the fuzzing loop (the target is far less; see the printed time)."""

CONFIG = schemathesis.Config.from_dict({"analysis": {"constants": {"enabled": False}}})
"""No constants mined from the Python source: the generated cases do not depend on where the
checkout is or on unrelated code."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]

LIVE_JOB_OPERATIONS = {"GET /v1/jobs/{job_id}/result", "GET /v1/jobs/{job_id}/arrays.h5"}
"""Also seeded with a job that is queued or running while they are fuzzed."""

EXPECTED_OPERATIONS = {
    "GET /v1/health",
    "GET /v1/models",
    "POST /v1/models",
    "GET /v1/models/{model_id}",
    "DELETE /v1/models/{model_id}",
    "GET /v1/images",
    "POST /v1/images",
    "GET /v1/datasets",
    "GET /v1/methods",
    "GET /v1/jobs",
    "POST /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "DELETE /v1/jobs/{job_id}",
    "GET /v1/jobs/{job_id}/events",
    "GET /v1/jobs/{job_id}/result",
    "GET /v1/jobs/{job_id}/files/{path}",
    "GET /v1/jobs/{job_id}/arrays.h5",
}


@dataclass
class Seeds:
    """What the server holds before the fuzz: ids the generated cases are seeded with."""

    model_id: str
    victim_model_id: str
    """A second upload of the model (another preprocessing, so another id) for DELETE."""
    image_id: str
    job_id: str
    job_body: dict[str, Any]
    live_body: dict[str, Any]
    """A job that runs long (cancelled once its operation has been fuzzed)."""
    job_files: list[str]
    methods: list[str]
    method_params: dict[str, dict[str, Any]]
    """Each method's params JSON Schema (GET /v1/methods)."""
    layers: list[str]
    model_bytes: bytes
    preprocessing: dict[str, Any]


@dataclass
class Tally:
    """Requests sent, statuses per operation, and what failed."""

    statuses: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    positive_401: int = 0
    """401 answers to positive cases (negative ones may drop or break the bearer header)."""
    failures: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """(operation, what failed) → examples (the first few)."""
    queued: list[str] = field(default_factory=list)

    def fail(self, label: str, what: str, example: str) -> None:
        examples = self.failures.setdefault((label, what), [])
        if len(examples) < 2:
            examples.append(example)

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())


def _png(seed: int, size: int = 24) -> bytes:
    from PIL import Image

    pixels = bytes((seed * 31 + i * 7) % 256 for i in range(size * size * 3))
    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(buf, "PNG")
    return buf.getvalue()


def _set_up(server: Server, default_model: Path) -> Seeds:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as client:
        model = upload_model(client, default_model)
        allowed = ("input_size", "resize", "scale", "mean", "std", "channel_order", "layout")
        preprocessing = {k: v for k, v in model["info"]["preprocessing"].items() if k in allowed}
        victim = upload_model(
            client, default_model, preprocessing=json.dumps({**preprocessing, "std": [0.5] * 3})
        )
        r = client.post("/v1/images", files={"image": ("seed.png", _png(1))})
        assert r.status_code == 201, r.text
        image_id = r.json()["id"]
        layer = next(x["name"] for x in model["info"]["layers"] if x["op"] == "Conv")
        body = {
            "model": model["id"],
            "method": "deconv",
            "params": {"layer": layer, "units": [0], "k": 1},
            "inputs": {"images": [image_id]},
        }
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["id"], timeout=120)
        assert job["state"] == "done", job
        result = client.get(f"/v1/jobs/{job['id']}/result").json()
        method_docs = client.get("/v1/methods").json()["methods"]
    return Seeds(
        model_id=model["id"],
        victim_model_id=victim["id"],
        image_id=image_id,
        job_id=job["id"],
        job_body=body,
        live_body={
            "model": model["id"],
            "method": "actmax",
            "params": {"layer": layer, "units": [0], "steps": 100_000},
        },
        job_files=[f["path"] for f in result["files"]],
        methods=[m["method"] for m in method_docs],
        method_params={m["method"]: m["params"] for m in method_docs},
        layers=[n for x in model["info"]["layers"][:4] for n in (x["name"], x["alias"]) if n],
        model_bytes=default_model.read_bytes(),
        preprocessing=preprocessing,
    )


# ---- seeded strategies -------------------------------------------------------------------------


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**40), 2**40),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    )


def _preprocessing(seeds: Seeds) -> st.SearchStrategy[str]:
    """Preprocessing JSON: the real one with some keys dropped or replaced by odd values."""
    keys = sorted(seeds.preprocessing)

    @st.composite
    def build(draw: st.DrawFn) -> str:
        doc = dict(seeds.preprocessing)
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            if draw(st.booleans()):
                del doc[key]
            else:
                doc[key] = draw(_json_values())
        if draw(st.booleans()):
            doc[draw(st.text(max_size=8))] = draw(_json_values())
        return json.dumps(doc)

    return st.one_of(build(), st.just(json.dumps(seeds.preprocessing)), st.text(max_size=40))


def _image_bytes() -> st.SearchStrategy[bytes]:
    """Small real images in various modes and formats (and some truncated)."""
    from PIL import Image

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        mode, fmt = draw(
            st.sampled_from(
                [("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "JPEG"),
                 ("I;16", "PNG"), ("RGB", "BMP"), ("RGB", "TIFF"), ("F", "TIFF"),
                 ("1", "PNG"), ("RGB", "WEBP")]
            )
        )  # fmt: skip
        w, h = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        img = Image.new(mode, (w, h))
        buf = io.BytesIO()
        img.save(buf, fmt)
        data = buf.getvalue()
        if draw(st.integers(0, 4)) == 0:
            data = data[: draw(st.integers(0, len(data) - 1))]
        return data

    return build()


def _strategies(op: Any, seeds: Seeds) -> list[st.SearchStrategy[Any]]:
    """Seeded strategies of ``op`` (besides the plain generated ones)."""
    path = op.path
    seeded: list[st.SearchStrategy[Any]] = []
    if "{model_id}" in path:
        model_id = seeds.victim_model_id if op.method.upper() == "DELETE" else seeds.model_id
        seeded.append(op.as_strategy(path_parameters={"model_id": model_id}))
    if "{job_id}" in path:
        seeded.append(op.as_strategy(path_parameters={"job_id": seeds.job_id}))
        if "{path}" in path:
            for name in seeds.job_files:
                seeded.append(
                    op.as_strategy(path_parameters={"job_id": seeds.job_id, "path": name})
                )
    if op.method.upper() == "POST" and path == "/v1/jobs":
        seeded.append(_job_cases(op, seeds))
    if op.method.upper() == "POST" and path == "/v1/models":
        seeded.append(
            _preprocessing(seeds).flatmap(
                lambda prep: op.as_strategy(
                    body={"model": seeds.model_bytes, "preprocessing": prep, "name": "seeded"}
                )
            )
        )
    if op.method.upper() == "POST" and path == "/v1/images":
        seeded.append(_image_bytes().flatmap(lambda img: op.as_strategy(body={"image": img})))
    return seeded


def _typed_jobs(raw: dict[str, Any], seeds: Seeds) -> Any:
    """``POST /v1/jobs`` of a copy of the API document whose body is one variant per method:
    the real model, the method's own params schema (layers drawn from the model's), small
    inputs. Its cases pass the request's validation and reach the analyses' checks (and some
    are queued)."""
    doc = copy.deepcopy(raw)
    post = doc["paths"]["/v1/jobs"]["post"]
    doc["paths"] = {"/v1/jobs": {"post": post}}
    inputs = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "images": {"type": "array", "items": {"enum": [seeds.image_id]}, "maxItems": 2},
            "n_images": {"type": "integer", "minimum": 1, "maximum": 4},
            "dataset": {"enum": ["synthetic"]},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2},
        },
    }
    variants = []
    for method, schema in seeds.method_params.items():
        params = copy.deepcopy(schema)
        props = params.get("properties", {})
        if "layer" in props:
            props["layer"] = {"enum": seeds.layers}
        if "layers" in props:
            props["layers"] = {"type": "array", "items": {"enum": seeds.layers},
                               "minItems": 1, "maxItems": 2}  # fmt: skip
        variants.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["model", "method", "params"],
                "properties": {
                    "model": {"enum": [seeds.model_id]},
                    "method": {"enum": [method]},
                    "params": params,
                    "inputs": inputs,
                },
            }
        )
    post["requestBody"]["content"] = {"application/json": {"schema": {"anyOf": variants}}}
    schema = schemathesis.openapi.from_dict(doc, config=CONFIG)
    (op,) = [r.ok() for r in schema.get_all_operations()]
    return op


def _job_cases(op: Any, seeds: Seeds) -> st.SearchStrategy[Any]:
    """Generated job bodies with the real model id, a real method and real-looking inputs."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        case = draw(op.as_strategy())
        body = dict(case.body) if isinstance(case.body, dict) else {}
        body["model"] = seeds.model_id
        body["method"] = draw(st.sampled_from(seeds.methods))
        if draw(st.booleans()):
            params = dict(seeds.job_body["params"])
            params.update(draw(st.dictionaries(st.sampled_from(["k", "units", "layer",
                          "mode", "batch_size", "steps", "layers"]), _json_values(),
                          max_size=2)))  # fmt: skip
            body["params"] = params
        if draw(st.booleans()):
            body["inputs"] = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "images": st.lists(
                            st.sampled_from([seeds.image_id, "0" * 32, "x"]), max_size=3
                        ),
                        "n_images": st.integers(1, 4),
                        "dataset": st.sampled_from(["synthetic", "broden", "../x"]),
                        "seed": st.integers(0, 3),
                    },
                )
            )
        case.body = body
        return case

    return build()


# ---- pinned cases: sent once each, whatever hypothesis draws -----------------------------------


def _pinned(op: Any, seeds: Seeds, live: str | None) -> list[Any]:
    """Requests every run sends (the answers the seeds must reach: 200 on a second upload, the
    stored job, 409 on a job still running, the confinement of file paths)."""
    label, done = op.label, seeds.job_id
    cases: list[Any] = []
    if label == "GET /v1/models/{model_id}":
        cases.append(op.Case(path_parameters={"model_id": seeds.model_id}))
    elif label == "DELETE /v1/models/{model_id}":
        victim = {"model_id": seeds.victim_model_id}
        cases += [op.Case(path_parameters=victim), op.Case(path_parameters=victim)]  # 204, 404
    elif label == "POST /v1/models":
        model = seeds.model_bytes
        cases += [
            op.Case(body={"model": model}),  # uploaded before: 200
            op.Case(body={"model": model, "preprocessing": "{"}),
            op.Case(body={"model": model, "preprocessing": "[]"}),
            op.Case(body={"model": model[: len(model) // 2]}),
            op.Case(body={"model": b"\0" * 64, "name": "x" * 200}),
        ]
    elif label == "POST /v1/images":
        png = _png(1)
        cases += [op.Case(body={"image": png}), op.Case(body={"image": png[:40]})]
    elif label == "POST /v1/jobs":
        body = seeds.job_body
        cases += [
            op.Case(body=dict(body)),  # the store holds it: 200
            op.Case(body={**body, "params": {**body["params"], "device": "cuda"}}),
            op.Case(body={**body, "model": "0" * 32}),
            op.Case(body={**body, "method": "nope"}),
            op.Case(body={**body, "inputs": {"images": ["0" * 32]}}),
        ]
    elif "{job_id}" in op.path and "{path}" not in op.path:
        cases.append(op.Case(path_parameters={"job_id": done}))
        if live is not None:
            cases.append(op.Case(path_parameters={"job_id": live}))
    elif label == "GET /v1/jobs/{job_id}/files/{path}":
        # no '.' or '..' segments: the client resolves them before sending (another
        # operation answers); test_service sends them
        odd = ["...", "a//b", "%2e%2e/x", "x\\y", seeds.job_files[0] + "/", "." * 300,
               "x" * 5000, "é/ü.png", "a\tb", "\x7f"]  # fmt: skip
        for path in [*seeds.job_files, *odd]:
            cases.append(op.Case(path_parameters={"job_id": done, "path": path}))
    return cases


# ---- the run -----------------------------------------------------------------------------------


class Fuzzer:
    """Sends cases to the server and checks every answer; collects what fails."""

    def __init__(self, base_url: str, session: requests.Session, deadline: float):
        self.base_url = base_url
        self.session = session
        self.deadline = deadline
        self.tally = Tally()
        self.control = httpx.Client(base_url=base_url, headers=AUTH, timeout=60)

    def exchange(self, op: Any, case: Any, checks: list[Any]) -> None:
        tally = self.tally
        try:
            response = case.call(
                base_url=self.base_url, session=self.session, headers=AUTH,
                timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except requests.RequestException as exc:
            tally.statuses[op.label][0] += 1
            tally.fail(op.label, f"no response: {type(exc).__name__}", _describe(case, None))
            return
        tally.statuses[op.label][response.status_code] += 1
        if LOG_PATH:
            with open(LOG_PATH, "a", encoding="utf-8") as log:
                log.write(_describe(case, response) + "\n")
        if response.status_code == 401 and checks is CHECKS:
            tally.positive_401 += 1
        if op.label == "POST /v1/jobs" and response.status_code == 202:
            # a generated job: cancel it at once, the worker stays (nearly) idle
            job_id = response.json()["id"]
            tally.queued.append(job_id)
            self.control.delete(f"/v1/jobs/{job_id}")
        try:
            case.validate_response(
                response, checks=checks, headers=AUTH,
                transport_kwargs={"base_url": self.base_url, "headers": AUTH,
                                  "session": self.session},
            )  # fmt: skip
        except FailureGroup as group:
            for failure in group.exceptions:
                what = f"{failure.title}: {_one_line(failure.message)}"
                tally.fail(op.label, what, _describe(case, response))

    def fuzz(self, op: Any, strategy: Any, examples: int, checks: list[Any]) -> None:
        """``examples`` cases drawn from ``strategy`` (derandomized: the same every run)."""

        @settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            if time.monotonic() < self.deadline:
                self.exchange(op, case, checks)

        run()


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _describe(case: Any, response: Any) -> str:
    """A short account of a request and its answer (no multi-megabyte bodies)."""
    body = case.body
    if isinstance(body, dict):
        body = {k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in body.items()}
    elif isinstance(body, bytes):
        body = f"<{len(body)} bytes>"
    sent = f"{case.method} {_one_line(case.formatted_path, 200)}"
    if type(body).__name__ != "NotSet":
        sent += f" body={_one_line(repr(body), 200)}"
    if response is None:
        return sent
    text = response.content.decode("utf-8", "replace")
    kind = response.headers.get("content-type")
    return f"{sent} -> {response.status_code} {kind} {_one_line(text, 200)}"


def test_openapi_fuzz(
    start_server: Any, default_model: Path, tmp_path: Path, record_property: Any
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"fuzz {TOKEN}\n")
    server = start_server("--tokens", str(tokens), "--max-queued", "2")
    t0 = time.monotonic()
    seeds = _set_up(server, default_model)
    setup_s = time.monotonic() - t0

    raw = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw, config=CONFIG)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.label for op in operations} == EXPECTED_OPERATIONS

    t1 = time.monotonic()
    with requests.Session() as session:
        fz = Fuzzer(server.url, session, deadline=t1 + RUN_BUDGET_S)
        for op in operations:
            live = None
            if op.label in LIVE_JOB_OPERATIONS:
                # a job that runs (or waits) while this operation is fuzzed: 409 on /result
                r = fz.control.post("/v1/jobs", json=seeds.live_body)
                assert r.status_code == 202, r.text
                live = r.json()["id"]
            for case in _pinned(op, seeds, live):
                fz.exchange(op, case, CHECKS)
            seeded = _strategies(op, seeds)
            if live is not None:
                seeded.append(op.as_strategy(path_parameters={"job_id": live}))
            generated = op.as_strategy(GenerationMode.POSITIVE)
            positive = st.one_of(generated, *seeded) if seeded else generated
            fz.fuzz(op, positive, POSITIVE_EXAMPLES * (1 + min(len(seeded), 2)), CHECKS)
            if any(True for _ in op.iter_parameters()) or op.body:
                negative = op.as_strategy(GenerationMode.NEGATIVE)
                fz.fuzz(op, negative, NEGATIVE_EXAMPLES, NEGATIVE_CHECKS)
            if op.label == "POST /v1/jobs":
                fz.fuzz(op, _typed_jobs(raw, seeds).as_strategy(), TYPED_JOB_EXAMPLES, CHECKS)
            if live is not None:
                fz.control.delete(f"/v1/jobs/{live}")
                assert wait_job(fz.control, live, timeout=60)["state"] == "cancelled"
        fz.control.close()
    fuzz_s = time.monotonic() - t1
    tally = fz.tally

    record_property("openapi_fuzz_requests", tally.total)
    lines = [
        f"{label}: " + ", ".join(f"{s}×{n}" for s, n in sorted(c.items()))
        for label, c in sorted(tally.statuses.items())
    ]
    print(
        f"\nOpenAPI fuzz: {tally.total} requests over {len(tally.statuses)} operations in "
        f"{fuzz_s:.1f} s (set-up {setup_s:.1f} s); {len(tally.queued)} generated job(s) "
        "queued and cancelled\n  " + "\n  ".join(lines)
    )
    if tally.failures:
        report = [
            f"{label}: {what}\n    " + "\n    ".join(examples)
            for (label, what), examples in tally.failures.items()
        ]
        pytest.fail(f"{len(report)} distinct failure(s):\n" + "\n".join(report), pytrace=False)
    assert set(tally.statuses) == EXPECTED_OPERATIONS, "operations never requested"
    assert tally.total >= MIN_REQUESTS, f"only {tally.total} requests"
    assert tally.positive_401 == 0, "a positive case (with the bearer token) got 401"
    # the seeds reached the handlers, not only 401, 404 and 422
    reached = {
        "GET /v1/models/{model_id}": 200,
        "DELETE /v1/models/{model_id}": 204,
        "POST /v1/models": 200,
        "POST /v1/images": 200,
        "POST /v1/jobs": 200,
        "GET /v1/jobs/{job_id}": 200,
        "GET /v1/jobs/{job_id}/events": 200,
        "GET /v1/jobs/{job_id}/result": 409,
        "GET /v1/jobs/{job_id}/files/{path}": 200,
        "GET /v1/jobs/{job_id}/arrays.h5": 200,
    }
    for label, status in reached.items():
        assert tally.statuses[label][status], (label, status, dict(tally.statuses[label]))
    health = httpx.get(f"{server.url}/v1/health", timeout=30)
    assert health.status_code == 200, "the server did not survive the fuzz"
