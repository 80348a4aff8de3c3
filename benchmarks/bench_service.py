"""The analysis service against the Python API, and status polling while a job runs.

A real ``pyanalyzer serve`` on a free loopback port (its own store and concept folder under a
temporary folder, removed at the end), started once, its worker up and warm (one job of each
method run first), and the same analyses through the Python API in this process, also warm
(imports done, one run of each first). Every measured run computes: each repetition changes a
param that is part of the store key but not of the work (dissect: ``iou_threshold`` moved by
1e-6; actmax: ``seed``), identically on both sides, and the Python side also gets a fresh
store folder each time.

1. One job end to end, service against API, median of ``--repeat`` interleaved runs.
   API: ``load_model`` (``check_parity=False``, as the service loads uploads) + the analysis
   (``pyanalyzer.methods.analysis(name)(model, params, store=Store(fresh))``) ``.run`` +
   ``write_result`` to a folder. Service: the model upload (already known: answered by its
   hash) + ``POST /v1/jobs`` + polling ``GET /v1/jobs/{id}`` every 20 ms until done + ``GET
   /v1/jobs/{id}/result``. Methods: a dissection of relu5 over the 200-scene synthetic
   concept dataset (made and its label cache filled by the warm-up, shared by both sides) and
   an activation maximization of relu5's first units. Target: service <= 1.1 x API + 0.5 s.
   A second table splits the service's time by the job's own timestamps (created, started,
   finished) and the API's into load, run and write, with the time of the one thing only the
   service does (the job's ``arrays.h5``) measured apart.
2. Status polling: while one long activation maximization runs, 20 clients (threads, each
   its own ``httpx.Client``) poll ``GET /v1/jobs/{id}`` as fast as they can, each at most
   ``--poll-requests`` requests or ``--poll-seconds`` s. Printed: the number of requests,
   failures, and the p50, p95, p99 and max latency. Target: p99 < 100 ms. The long job is then
   cancelled.

Traffic goes to 127.0.0.1 only; every request loop is bounded in count and time.

    python benchmarks/bench_service.py            # a few minutes
    python benchmarks/bench_service.py --quick    # one repetition, small jobs, short polling
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_FACTOR, TARGET_SLACK_S = 1.1, 0.5
TARGET_P99_MS = 100.0
POLL_S = 0.02
"""Seconds between a client's looks at its job in part 1."""
JOB_TIMEOUT_S = 600.0
START_TIMEOUT_S = 120.0


# ---- the server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(url: str, timeout: float = 60.0) -> httpx.Client:
    # trust_env=False: no proxy from the environment, the traffic stays on loopback
    return httpx.Client(base_url=url, timeout=timeout, trust_env=False)


class Service:
    """``pyanalyzer serve`` in its own process group, logging to ``log_path``."""

    def __init__(self, store: Path, log_path: Path):
        self.store = store
        self.log_path = log_path
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it and wait until it answers with a worker alive; the seconds that took."""
        env = dict(os.environ, PYANALYZER_STORE=str(self.store))  # label caches beside it
        env.pop("PYANALYZER_TOKENS", None)
        cmd = [sys.executable, "-m", "pyanalyzer", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--store", str(self.store)]  # fmt: skip
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=ROOT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        with _client(self.url, timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.proc.returncode}:\n"
                                       + self.log_tail())  # fmt: skip
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    r = c.get("/v1/health")
                    if r.status_code == 200 and r.json().get("workers", 0) >= 1:
                        return time.perf_counter() - t0
                time.sleep(0.1)
        raise RuntimeError(f"no server with a worker within {START_TIMEOUT_S:g} s:\n"
                           + self.log_tail())  # fmt: skip

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (its workers stop with it), then SIGKILL to the process group if needed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        # the workers are in the server's process group (and die with it): wait for them
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


# ---- one job through the service ---------------------------------------------------------------


def upload(c: httpx.Client, model: Path) -> str:
    with open(model, "rb") as fh:
        r = c.post("/v1/models", files={"model": (model.name, fh)})
    r.raise_for_status()
    return str(r.json()["id"])


def wait_done(c: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    """Poll the job every POLL_S until it ends (bounded in count and time)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_S) + 1):
        doc: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        if doc["state"] in ("done", "failed", "cancelled"):
            return doc
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    raise RuntimeError(f"job {job_id} did not end within {timeout:g} s")


def service_run(c: httpx.Client, model: Path, job: dict[str, Any]) -> dict[str, float]:
    """One job from upload to result; its wall time and the parts of it."""
    t0 = time.perf_counter()
    model_id = upload(c, model)
    t1 = time.perf_counter()
    r = c.post("/v1/jobs", json={"model": model_id, **job})
    t2 = time.perf_counter()
    if r.status_code not in (200, 202):
        raise RuntimeError(f"POST /v1/jobs: {r.status_code} {r.text}")
    if r.status_code == 200:
        raise RuntimeError("the job was answered from the store: the run would not compute")
    doc = wait_done(c, r.json()["id"])
    seen_wall, t3 = time.time(), time.perf_counter()
    if doc["state"] != "done":
        raise RuntimeError(f"job {doc['id']} {doc['state']}: {doc.get('error')}")
    res = c.get(f"/v1/jobs/{doc['id']}/result")
    res.raise_for_status()
    t4 = time.perf_counter()
    if res.json()["from_store"]:
        raise RuntimeError("the worker answered from the store: the run did not compute")
    return {
        "total": t4 - t0,
        "upload": t1 - t0,
        "submit": t2 - t1,
        "queued": doc["started"] - doc["created"],
        "worker": doc["finished"] - doc["started"],
        "seen": seen_wall - doc["finished"],
        "result": t4 - t3,
    }


# ---- the same analysis through the Python API ---------------------------------------------------


def api_run(model_path: Path, job: dict[str, Any], work: Path, concepts: Path) -> dict[str, float]:
    """load_model + analysis.run + write_result into a fresh store and folder, timed; the
    job's arrays.h5 (what only the service writes) timed apart."""
    import pyanalyzer as pa
    from pyanalyzer.data.defaults import scene_size
    from pyanalyzer.methods import analysis
    from pyanalyzer.report import write_result
    from pyanalyzer.service.worker import write_arrays
    from pyanalyzer.store import Store

    work.mkdir(parents=True)
    t0 = time.perf_counter()
    model = pa.load_model(model_path, check_parity=False)
    if job["method"] == "actmax":
        _ = model.gradient  # its torch twin, built on first use (the worker keeps it built)
    t1 = time.perf_counter()
    a = analysis(job["method"])(model, job["params"], store=Store(work / "store"), progress=False)
    context: dict[str, Any] = {}
    inputs: Any = None
    if job["method"] == "dissect":
        n = job["inputs"]["n_images"]
        size = scene_size(model.preprocessing)
        inputs = pa.BrodenDataset(concepts / f"synth-n{n}-s{size}-seed0", cache_dir=concepts)
        context = {"model": model, "dataset": inputs}
    result = a.run(inputs)
    t2 = time.perf_counter()
    write_result(result, work / "out", **context)
    t3 = time.perf_counter()
    if a.from_store:
        raise RuntimeError("the API run was answered from the store")
    write_arrays(a, work / "arrays.h5")
    t4 = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    return {"total": t3 - t0, "load": t1 - t0, "run": t2 - t1, "write": t3 - t2,
            "arrays": t4 - t3}  # fmt: skip


# ---- part 2: polling -------------------------------------------------------------------------


def poll_storm(
    url: str,
    job_id: str,
    clients: int,
    max_requests: int,
    max_seconds: float,
    path: str = "/v1/jobs/{id}",
) -> tuple[list[float], list[str], float]:
    """``clients`` threads polling the job as fast as they can; latencies (ms), failures, wall."""
    target = path.format(id=job_id)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        with _client(url, timeout=30) as c:
            with contextlib.suppress(httpx.HTTPError):
                c.get("/v1/health")  # the connection is open before the clock starts
            barrier.wait(timeout=60)
            deadline = time.perf_counter() + max_seconds
            for _ in range(max_requests):
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                try:
                    r = c.get(target)
                    ok = r.status_code == 200 and "state" in r.json()
                    why = f"HTTP {r.status_code}"
                except (httpx.HTTPError, ValueError) as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                latencies[i].append((time.perf_counter() - t0) * 1e3)
                if not ok:
                    with lock:
                        failures.append(why)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait(timeout=60)
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=max_seconds + 120)
    wall = time.perf_counter() - t0
    return [x for lat in latencies for x in lat], failures, wall


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0 when unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _cpu_now(server: Service) -> dict[str, float]:
    assert server.proc is not None
    return {
        "server": _cpu_s(server.proc.pid),
        "worker": sum(_cpu_s(p) for p in _children(server.proc.pid)),
        "bench": time.process_time(),
    }


def storm(
    server: Service, job_id: str, clients: int, max_requests: int, max_seconds: float
) -> dict[str, Any]:
    """:func:`poll_storm` with the CPU each process spent and the server's own timings of
    the same requests (its request log)."""
    offset = server.log_path.stat().st_size
    before = _cpu_now(server)
    lat, failures, wall = poll_storm(server.url, job_id, clients, max_requests, max_seconds)
    after = _cpu_now(server)
    time.sleep(0.2)  # the last log lines
    with open(server.log_path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    pattern = re.compile(rf"GET /v1/jobs/{job_id} \d+ ([0-9.]+)ms")
    app = [float(m.group(1)) for m in pattern.finditer(text)]
    cpu = {k: after[k] - before[k] for k in before}
    return {"lat": lat, "failures": failures, "wall": wall, "app": app, "cpu": cpu}


def wait_state(c: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        doc: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        if doc["state"] in states or time.monotonic() > deadline:
            return doc
        time.sleep(0.05)
    return doc


# ---- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "default.onnx"))
    ap.add_argument("--quick", action="store_true", help="a short run (1 repetition, small jobs)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-images", type=int, default=200, help="scenes of the dissection")
    ap.add_argument("--actmax-units", type=int, default=16, help="relu5's first N units")
    ap.add_argument("--actmax-steps", type=int, default=64)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--poll-requests", type=int, default=300, help="at most, per client")
    ap.add_argument("--poll-seconds", type=float, default=20.0, help="at most, per client")
    ap.add_argument("--dir", default=None, help="where the temporary folder goes")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.actmax_units, args.actmax_steps = 1, 4, 16
        args.poll_requests, args.poll_seconds = 50, 5.0

    import torch

    model = Path(args.model).resolve()
    top = Path(tempfile.mkdtemp(prefix="bench-service-", dir=args.dir))
    svc_store = top / "svc" / "store"
    concepts = svc_store.parent / "concepts"  # the service's concept folder (and label cache)
    svc_store.parent.mkdir(parents=True)
    server = Service(svc_store, top / "server.log")
    os.environ["PYANALYZER_STORE"] = str(top / "api-default-store")  # nothing under ~/.cache
    os.environ.setdefault("PYANALYZER_PROGRESS", "0")
    t_all = time.perf_counter()
    print(f"pyanalyzer service benchmark: {model.name}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), in {top}; "
          f"load average {_load()}")  # fmt: skip
    try:
        startup = server.start()
        print(f"server {server.url} up with a worker in {startup:.1f} s")
        return _bench(args, model, server, top, concepts)
    finally:
        server.stop()
        shutil.rmtree(top, ignore_errors=True)
        print(f"\n({time.perf_counter() - t_all:.0f} s; load average {_load()}; server stopped, "
              f"{top} removed)")  # fmt: skip


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other work on the machine slows every run)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _jobs(args: argparse.Namespace, rep: int) -> dict[str, dict[str, Any]]:
    """The measured jobs of repetition ``rep`` (rep -1: the warm-up): a key param moved each
    time so that no run is answered from the store."""
    units = list(range(args.actmax_units))
    return {
        "dissect": {
            "method": "dissect",
            "params": {"layers": ["relu5"], "iou_threshold": 0.04 + 1e-6 * (rep + 1)},
            "inputs": {"n_images": args.n_images},
        },
        "actmax": {
            "method": "actmax",
            "params": {
                "layer": "relu5",
                "units": units,
                "steps": args.actmax_steps,
                "seed": 1000 + rep + 1,
            },
            "inputs": {},
        },
    }


def _bench(
    args: argparse.Namespace, model: Path, server: Service, top: Path, concepts: Path
) -> int:
    ok = True
    with _client(server.url, timeout=120) as c:
        # warm-up: the worker loads the model, makes the concept dataset and its label cache;
        # this process imports and runs each analysis once
        t0 = time.perf_counter()
        for job in _jobs(args, -1).values():
            service_run(c, model, job)
        t1 = time.perf_counter()
        for job in _jobs(args, -1).values():
            api_run(model, job, top / f"api-warm-{job['method']}", concepts)
        t2 = time.perf_counter()
        print(f"warm-up: service jobs {t1 - t0:.1f} s, API runs {t2 - t1:.1f} s")

        # ---- 1. one job end to end ----
        print(f"\n== 1. one job end to end, service against Python API (median of {args.repeat},"
              f" interleaved; target service <= {TARGET_FACTOR:g} x API + {TARGET_SLACK_S:g} s) ==")  # fmt: skip
        what = {
            "dissect": f"dissect relu5, {args.n_images} synthetic scenes",
            "actmax": f"actmax relu5, {args.actmax_units} units x {args.actmax_steps} steps",
        }
        api: dict[str, list[dict[str, float]]] = {m: [] for m in what}
        svc: dict[str, list[dict[str, float]]] = {m: [] for m in what}
        for rep in range(args.repeat):
            for name, job in _jobs(args, rep).items():
                api[name].append(api_run(model, job, top / f"api-{name}-{rep}", concepts))
                svc[name].append(service_run(c, model, job))
        print(f"{'method':40s} {'API s':>8s} {'service s':>10s} {'ratio':>7s} "
              f"{'target s':>9s}  verdict")  # fmt: skip
        for name, label in what.items():
            a = statistics.median(r["total"] for r in api[name])
            s = statistics.median(r["total"] for r in svc[name])
            target = TARGET_FACTOR * a + TARGET_SLACK_S
            verdict = "met" if s <= target else "MISSED"
            ok &= s <= target
            print(f"{label:40s} {a:8.2f} {s:10.2f} {s / a:6.2f}x {target:9.2f}  {verdict}")
        print("  all runs: " + "; ".join(
            f"{n} API " + "/".join(f"{r['total']:.2f}" for r in api[n])
            + " service " + "/".join(f"{r['total']:.2f}" for r in svc[n]) for n in what))  # fmt: skip

        def med(rows: list[dict[str, float]], k: str) -> float:
            return statistics.median(r[k] for r in rows)

        print("\nwhere the time goes (medians): service = upload + submit + queued + worker + "
              "seen + result;\nAPI = load (+ torch twin for actmax) + run + write; arrays.h5 = "
              "the job's arrays file, which only the\nservice writes (in its worker)")  # fmt: skip
        print(f"{'method':9s} {'upload ms':>9s} {'submit ms':>9s} {'queued ms':>9s} "
              f"{'worker s':>8s} {'seen ms':>7s} {'result ms':>9s} | {'load s':>6s} "
              f"{'run s':>6s} {'write s':>7s} | {'arrays.h5 s':>11s}")  # fmt: skip
        for name in what:
            s, a = svc[name], api[name]
            print(f"{name:9s} {1e3 * med(s, 'upload'):9.1f} {1e3 * med(s, 'submit'):9.1f} "
                  f"{1e3 * med(s, 'queued'):9.1f} {med(s, 'worker'):8.2f} "
                  f"{1e3 * med(s, 'seen'):7.1f} {1e3 * med(s, 'result'):9.1f} | "
                  f"{med(a, 'load'):6.2f} {med(a, 'run'):6.2f} {med(a, 'write'):7.2f} | "
                  f"{med(a, 'arrays'):11.2f}")  # fmt: skip

        # ---- 2. polling under load ----
        print(f"\n== 2. status polling: {args.clients} clients (threads, one httpx.Client each) "
              f"poll GET /v1/jobs/{{id}} while a long actmax runs; each at most "
              f"{args.poll_requests} requests or {args.poll_seconds:g} s (target p99 < "
              f"{TARGET_P99_MS:g} ms) ==")  # fmt: skip
        model_id = upload(c, model)
        long_job = {
            "model": model_id, "method": "actmax",
            "params": {"layer": "relu5", "units": list(range(16)), "steps": 20_000, "seed": 7},
        }  # fmt: skip
        r = c.post("/v1/jobs", json=long_job)
        if r.status_code != 202:
            raise RuntimeError(f"the long job: {r.status_code} {r.text}")
        job_id = r.json()["id"]
        try:
            doc = wait_state(c, job_id, ("running", "done", "failed", "cancelled"), 60)
            if doc["state"] != "running":
                raise RuntimeError(f"the long job is {doc['state']}, not running")
            time.sleep(1.0)  # past the start: the worker computes and writes its progress
            main_run = storm(server, job_id, args.clients, args.poll_requests, args.poll_seconds)
            after = c.get(f"/v1/jobs/{job_id}").json()
            one = storm(server, job_id, 1, args.poll_requests, args.poll_seconds / 2)
        finally:
            c.delete(f"/v1/jobs/{job_id}")
            end = wait_state(c, job_id, ("cancelled", "done", "failed"), 120)
        idle = storm(server, job_id, args.clients, args.poll_requests, args.poll_seconds / 2)
        lat, failures = main_run["lat"], main_run["failures"]
        p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat else (np.nan,) * 3
        worst = max(lat) if lat else float("nan")
        print(f"requests {len(lat)} in {main_run['wall']:.1f} s ({len(lat) / main_run['wall']:.0f}"
              f"/s), failed {len(failures)}" + (f" (first: {failures[0]})" if failures else ""))  # fmt: skip
        print(f"latency ms: p50 {p50:.1f}  p95 {p95:.1f}  p99 {p99:.1f}  max {worst:.1f}")
        verdict = "met" if p99 < TARGET_P99_MS and not failures else "MISSED"
        ok &= verdict == "met"
        prog = after.get("progress") or {}
        print(f"p99 {p99:.1f} ms against < {TARGET_P99_MS:g} ms: {verdict}; the job was "
              f"{after['state']} at the end of the polling (stage {prog.get('stage')}, "
              f"{100 * (prog.get('fraction') or 0):.0f}%), then {end['state']}")  # fmt: skip
        print("\nwhere the time goes: the same polling as above, with one client, and with no job"
              " running;\nin-app ms = the server's own request log (middleware to last byte);"
              " CPU ms/request = CPU time of\neach process over the polling / requests "
              f"(bench = this process: the {args.clients} client threads)")  # fmt: skip
        print(f"{'run':28s} {'req':>5s} {'req/s':>6s} {'fail':>4s} {'p50':>6s} {'p99':>6s} "
              f"{'in-app p50':>10s} {'in-app p99':>10s} | CPU ms/request: {'server':>6s} "
              f"{'worker':>6s} {'bench':>6s}")  # fmt: skip
        for label, run in ((f"{args.clients} clients, job running", main_run),
                           ("1 client, job running", one),
                           (f"{args.clients} clients, no job running", idle)):  # fmt: skip
            lat, app = run["lat"], run["app"]
            n = max(1, len(lat))
            q = np.percentile(lat, [50, 99]) if lat else (np.nan, np.nan)
            qa = np.percentile(app, [50, 99]) if app else (np.nan, np.nan)
            cpu = run["cpu"]
            print(f"{label:28s} {len(lat):5d} {len(lat) / run['wall']:6.0f} "
                  f"{len(run['failures']):4d} {q[0]:6.1f} {q[1]:6.1f} {qa[0]:10.1f} "
                  f"{qa[1]:10.1f} |                 {1e3 * cpu['server'] / n:6.2f} "
                  f"{1e3 * cpu['worker'] / n:6.2f} {1e3 * cpu['bench'] / n:6.2f}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
