"""A worker process of the service: takes queued jobs from the database one at a time and runs
them (``python -m pyanalyzer.service.worker CONFIG_JSON``; the server's pool starts them).

* Progress: every progress bar of the analysis is followed (:func:`pyanalyzer._progress.
  set_listener`) and written to the job's row at most every 0.25 s, with an ETA.
* Cancellation: a job whose cancel flag is set stops at its next progress step; what the
  analysis had checkpointed stays in the store (``cached`` keeps checkpoints on any exception
  but bad input).
* SIGTERM (the server stopping): the running job stops the same way and goes back to the
  queue, to resume from its checkpoint at the next start; an idle worker just exits.
* The worker dies with the server (``PR_SET_PDEATHSIG``): a server killed with kill -9 leaves
  no worker writing on, and its next start queues the running jobs again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pyanalyzer.service.config import ServiceConfig
from pyanalyzer.service.queue import Job, Queue
from pyanalyzer.service.runner import LoadedModels

LOG = logging.getLogger("pyanalyzer.service.worker")

IDLE_POLL_S = 0.05
"""Seconds between looks at the queue when idle."""
PROGRESS_EVERY_S = 0.25
"""Seconds between progress writes (and cancel-flag reads) of a running job."""


class Cancelled(BaseException):
    """The job's cancellation was asked for (a BaseException: no ``except Exception`` in an
    analysis may swallow it)."""


class Stop(BaseException):
    """SIGTERM: the worker is to stop; the running job goes back to the queue."""


_stopping = False
_running = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _stopping
    _stopping = True
    if _running:
        raise Stop()


def _die_with_parent(parent: int | None = None) -> None:
    """Linux: SIGKILL this process when the server process that started it dies.

    Args:
        parent: the server's pid as it started this worker. Python's start-up and imports run
            before this call, and a server killed meanwhile leaves the worker adopted by
            another process: compared with the pid the server gave, not with the parent seen
            on entry here, that is noticed and the worker exits.
    """
    parent = os.getppid() if parent is None else int(parent)
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class Worker:
    """Runs jobs from the queue, keeping the last few models loaded."""

    def __init__(self, config: ServiceConfig):
        from pyanalyzer.store import Store

        self.config = config
        self.queue = Queue(config.db_path)
        self.store = Store(config.store)
        self.pid = os.getpid()
        self._models = LoadedModels(config.models_dir, keep=2)
        self._executor: Any = None

    def executor(self) -> Any:
        """The Ray cluster of ``--ray-address``, connected on the first job (None: none)."""
        if self.config.ray_address and self._executor is None:
            from pyanalyzer.executor import RayExecutor

            self._executor = RayExecutor(self.config.ray_address)
            LOG.info(
                "connected to the Ray cluster at %s (%d CPUs)",
                self.config.ray_address,
                self._executor.workers,
            )
        return self._executor

    def model(self, job: Job) -> Any:
        from pyanalyzer.errors import UserInputError

        row = self.queue.model(job.owner, job.model)
        if row is None or not (self.config.models_dir / f"{job.model}.onnx").is_file():
            raise UserInputError(f"model {job.model} was deleted before the job ran")
        return self._models.get(job.model, row["preprocessing"])

    def run(self) -> None:
        global _running
        while not _stopping:
            job = self.queue.claim(self.pid)
            if job is None:
                time.sleep(IDLE_POLL_S)
                continue
            _running = True
            try:
                self.run_job(job)
            except Stop:
                self.queue.requeue(job.id, self.pid)
                LOG.info("job %s stopped by SIGTERM: queued again", job.id)
                return
            finally:
                _running = False

    def run_job(self, job: Job) -> None:
        from pyanalyzer import budget
        from pyanalyzer._progress import set_listener
        from pyanalyzer.errors import PyanalyzerError, first_line
        from pyanalyzer.service.runner import prepare_job, run_prepared

        if job.cancel:
            self.queue.finish(job.id, "cancelled", worker=self.pid)
            return
        set_listener(self._listener(job))
        try:
            model = self.model(job)
            prepared = prepare_job(
                model, job.method, job.params, job.inputs, config=self.config,
                store=self.store, image_path=lambda i: self.image_path(job, i),
                model_of=lambda i: self.uploaded_model(job, i),
            )  # fmt: skip
            prepared.analysis.executor = self.executor()  # shards on Ray, if configured
            doc = run_prepared(prepared, self.config.jobs_dir / job.id / "files")
            write_arrays(prepared.analysis, self.config.jobs_dir / job.id / "arrays.h5")
        except Cancelled:
            self.queue.finish(job.id, "cancelled", worker=self.pid)
            return
        except PyanalyzerError as exc:
            self.queue.finish(job.id, "failed", error=_one_line(str(exc)), worker=self.pid)
            return
        except Exception as exc:
            if budget.is_out_of_memory(exc):
                message = budget.out_of_memory_message(exc)
            else:
                message = f"internal error: {type(exc).__name__}: {first_line(exc)}"
                LOG.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self.queue.finish(job.id, "failed", error=_one_line(message), worker=self.pid)
            return
        finally:
            set_listener(None)
        self.queue.finish(job.id, "done", result=doc, worker=self.pid)

    def uploaded_model(self, job: Job, model_id: str) -> Any:
        """Another model of the job's owner, loaded (a job's ``params.other``)."""
        from pyanalyzer.errors import UserInputError

        row = self.queue.model(job.owner, model_id)
        if row is None or not (self.config.models_dir / f"{model_id}.onnx").is_file():
            raise UserInputError(f"unknown model {model_id!r} (deleted before the job ran?)")
        return self._models.get(model_id, row["preprocessing"])

    def image_path(self, job: Job, image_id: str) -> Path:
        from pyanalyzer.errors import UserInputError

        row = self.queue.image(job.owner, image_id)
        if row is None:
            raise UserInputError(f"unknown image {image_id!r}")
        return self.config.images_dir / f"{image_id}{row['suffix']}"

    def _listener(self, job: Job) -> Any:
        queue, last = self.queue, [0.0]
        started: dict[str, float] = {}

        def listen(label: str, done: int, total: int) -> None:
            now = time.monotonic()
            if done == 0:
                started[label] = now
            if done not in (0, total) and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            fraction = min(1.0, done / total) if total else 0.0
            elapsed = now - started.get(label, now)
            eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
            if queue.progress(job.id, label, fraction, eta):
                raise Cancelled()

        return listen


def write_arrays(analysis: Any, path: Path) -> None:
    """The result's arrays as one HDF5 file (``/<name>``; names with ``/`` nest), written
    atomically."""
    import h5py
    import numpy as np

    from pyanalyzer._io import atomic_path

    result = analysis.last.result if analysis.last is not None else None
    if result is None:
        return
    arrays = result.to_arrays()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["method"] = analysis.method
        for name, value in arrays.items():
            a = np.asarray(value)
            if a.dtype.kind == "U":
                a = np.char.encode(a, "utf-8")
            if a.dtype.kind not in "biufcS":
                continue
            f.create_dataset(name, data=a)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    data = json.loads(args[0])
    config = ServiceConfig(
        store=Path(data["store"]),
        datasets=None if data.get("datasets") is None else Path(data["datasets"]),
        ray_address=data.get("ray_address"),
    )
    _die_with_parent(data.get("parent"))
    with contextlib.suppress(OSError):
        os.nice(10)  # below the server: status requests stay fast while a job computes
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops us
    logging.basicConfig(level=logging.INFO, format="worker %(process)d: %(message)s")
    os.environ.setdefault("PYANALYZER_PROGRESS", "0")
    import warnings

    warnings.simplefilter("ignore")  # library warnings: the job's outcome says what matters
    with contextlib.suppress(Exception):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    # Each job imports what its method needs when it starts: torch and onnx2torch with the
    # first gradient job, never for forward-only ones (dissection, top-k scans, ablation).
    try:
        Worker(config).run()
    except Stop:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
