"""The server's bounded pool of worker processes (:mod:`.worker`), and its supervisor.

The supervisor thread watches every worker: one that exits while it holds a job (a segfault,
the kernel's out-of-memory killer, kill -9) fails that job with a line saying how the worker
died, and a new worker takes its place; the server stays up and the next job runs. Stopping
the pool sends SIGTERM to the workers (their running jobs go back to the queue, resumed from
their checkpoints at the next start) and SIGKILL to any still alive after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from pyanalyzer.service.config import ServiceConfig
from pyanalyzer.service.queue import Queue

LOG = logging.getLogger("pyanalyzer.service")

__all__ = ["WorkerPool", "describe_exit"]


def describe_exit(code: int) -> str:
    """How a worker process ended, for a failed job's error line."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = (
            " (it was killed: out of memory, or by hand)"
            if -code == signal.SIGKILL
            else " (a crash in native code)"
            if -code in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL)
            else ""
        )
        return f"the worker process running this job died of {name}{hint}"
    return f"the worker process running this job exited with code {code}"


class WorkerPool:
    """``size`` worker processes over the queue at ``config.db_path``."""

    def __init__(self, config: ServiceConfig, queue: Queue, size: int):
        self.config = config
        self.queue = queue
        self.size = size
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self._started: dict[int, float] = {}  # pid -> when it was started
        self._backoff = 0.0  # seconds before replacing a worker that died young and idle
        self._respawn_at: dict[int, float] = {}  # slot -> when to start its next worker

    def _spawn(self) -> subprocess.Popen[bytes]:
        payload = json.dumps(
            {
                "store": str(self.config.store),
                "datasets": None if self.config.datasets is None else str(self.config.datasets),
                "ray_address": self.config.ray_address,
                "parent": os.getpid(),  # the worker exits if this process died before it ran
            }
        )
        env = dict(os.environ, PYANALYZER_PROGRESS="0")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyanalyzer.service.worker", payload],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._started[proc.pid] = time.monotonic()
        return proc

    def start(self) -> None:
        with self._lock:
            self.procs = [self._spawn() for _ in range(self.size)]
        self._thread = threading.Thread(target=self._watch, name="worker-pool", daemon=True)
        self._thread.start()

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.procs if p.poll() is None]

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                for i, proc in enumerate(self.procs):
                    if i in self._respawn_at:  # a replacement is due later (backoff)
                        if time.monotonic() >= self._respawn_at[i]:
                            del self._respawn_at[i]
                            self.procs[i] = self._spawn()
                        continue
                    code = proc.poll()
                    if code is None or self._stopping.is_set():
                        continue
                    lived = time.monotonic() - self._started.pop(proc.pid, 0.0)
                    job = self.queue.running_in(proc.pid)
                    self.restarts += 1
                    if job is not None:
                        message = describe_exit(code)
                        self.queue.finish(job.id, "failed", error=message, worker=proc.pid)
                        LOG.error("job %s failed: %s", job.id, message)
                    elif lived < 10.0:  # died young without a job: a broken install? back off
                        self._backoff = min(60.0, max(1.0, 2 * self._backoff))
                        LOG.error(
                            "worker %d exited (%s) %.1f s after it started; the next in %.0f s",
                            proc.pid, code, lived, self._backoff,
                        )  # fmt: skip
                        self._respawn_at[i] = time.monotonic() + self._backoff
                        continue
                    else:
                        LOG.warning("worker %d exited (%s); starting another", proc.pid, code)
                    self._backoff = 0.0
                    self.procs[i] = self._spawn()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every worker (running jobs checkpoint and go back to the queue), wait up to
        ``grace`` seconds, then SIGKILL what is left and queue its job again."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            procs = list(self.procs)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for p in procs:
            job = self.queue.running_in(p.pid)
            if job is not None:
                self.queue.requeue(job.id, p.pid)
