"""Helpers of the service tests: a real ``pyanalyzer serve`` (uvicorn) on a free loopback
port, started and stopped by the test; polling and uploading.

Every request loop in these tests is bounded in count and time; traffic goes to 127.0.0.1
only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

STARTUP_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One ``pyanalyzer serve`` process: ``start()``, ``stop()`` (SIGTERM), ``kill()``
    (SIGKILL), ``url``, ``log()``."""

    def __init__(self, store: Path, *args: str, env: dict[str, str] | None = None):
        self.store = store
        self.args = list(args)
        inherited = {k: v for k, v in os.environ.items() if k != "PYANALYZER_TOKENS"}
        self.env = {**inherited, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = store.parent / f"server-{self.port}.log"
        self.startup_s: float | None = None

    def start(self, timeout: float = STARTUP_S) -> Server:
        cmd = [
            sys.executable, "-m", "pyanalyzer", "serve", "--port", str(self.port),
            "--store", str(self.store), *self.args,
        ]  # fmt: skip
        t0 = time.monotonic()
        log = open(self.log_path, "ab")  # noqa: SIM115  # closed with the process
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    self.startup_s = time.monotonic() - t0
                    return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the server)."""
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        # the workers die with the server (PR_SET_PDEATHSIG); wait until they have
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc is None or not _children_alive(self.proc.pid):
                return
            time.sleep(0.1)


def _children_alive(pid: int) -> bool:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


def wait_job(client: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    """Poll a job until it ends (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(f"/v1/jobs/{job_id}").json()
        if doc["state"] in ("done", "failed", "cancelled"):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end within {timeout} s")


def upload_model(client: httpx.Client, path: Path, **form: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        r = client.post("/v1/models", files={"model": (path.name, fh)}, data=form)
    assert r.status_code in (200, 201), r.text
    return r.json()
