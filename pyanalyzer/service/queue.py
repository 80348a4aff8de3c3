"""The service's state in SQLite (stdlib ``sqlite3``, WAL): uploaded models and images with
their owners, and the job queue.

The database lives in the service folder beside the store (``queue.sqlite``). The server and
its worker processes each open their own connection; every change is one short transaction,
so that a process killed at any moment leaves the database consistent. A job moves through

    queued ──► running ──► done | failed | cancelled
      ▲           │
      └───────────┘  (the server stopped, or was killed, while it ran: it is queued again at
                      the next start and resumes from its checkpoint in the store)
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STATES", "Job", "Queue"]

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    owner TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, preprocessing TEXT, info TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE TABLE IF NOT EXISTS images (
    owner TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
    suffix TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL, method TEXT NOT NULL,
    params TEXT NOT NULL, inputs TEXT NOT NULL, state TEXT NOT NULL, stage TEXT,
    fraction REAL, eta REAL, error TEXT, created REAL NOT NULL, started REAL,
    finished REAL, worker INTEGER, cancel INTEGER NOT NULL DEFAULT 0, result TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
"""


@dataclass(frozen=True)
class Job:
    """One job as the database holds it."""

    id: str
    owner: str
    model: str
    method: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    state: str
    stage: str | None
    fraction: float | None
    eta: float | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    worker: int | None
    cancel: bool
    result: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"], owner=row["owner"], model=row["model"], method=row["method"],
            params=json.loads(row["params"]), inputs=json.loads(row["inputs"]),
            state=row["state"], stage=row["stage"], fraction=row["fraction"], eta=row["eta"],
            error=row["error"], created=row["created"], started=row["started"],
            finished=row["finished"], worker=row["worker"], cancel=bool(row["cancel"]),
            result=None if row["result"] is None else json.loads(row["result"]),
        )  # fmt: skip

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED


class Queue:
    """The service database: one connection per process (and per thread: the connection is
    opened with ``check_same_thread=False`` and every use holds its lock)."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        import threading

        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue on the database lock)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # ---- models and images -------------------------------------------------------------------
    def add_model(
        self,
        owner: str,
        model_id: str,
        *,
        name: str,
        size: int,
        sha256: str,
        preprocessing: Mapping[str, Any] | None,
        info: Mapping[str, Any],
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    owner, model_id, name, size, sha256,
                    None if preprocessing is None else json.dumps(dict(preprocessing)),
                    json.dumps(dict(info)), time.time(),
                ),
            )  # fmt: skip

    def model(self, owner: str, model_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM models WHERE owner = ? AND id = ?", (owner, model_id))
        return None if row is None else _model_dict(row)

    def models(self, owner: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM models WHERE owner = ? ORDER BY created", (owner,))
        return [_model_dict(r) for r in rows]

    def model_users(self, model_id: str) -> int:
        """How many owners hold a model (its file is removed with the last)."""
        row = self._one("SELECT COUNT(*) AS n FROM models WHERE id = ?", (model_id,))
        return 0 if row is None else int(row["n"])

    def remove_model(self, owner: str, model_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM models WHERE owner = ? AND id = ?", (owner, model_id))
            return cur.rowcount > 0

    def add_image(self, owner: str, image_id: str, *, name: str, size: int, suffix: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)",
                (owner, image_id, name, size, suffix, time.time()),
            )

    def image(self, owner: str, image_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM images WHERE owner = ? AND id = ?", (owner, image_id))
        return None if row is None else dict(row)

    def images(self, owner: str) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self._all("SELECT * FROM images WHERE owner = ? ORDER BY created", (owner,))
        ]

    # ---- jobs --------------------------------------------------------------------------------
    def submit(
        self,
        owner: str,
        model: str,
        method: str,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any],
        *,
        state: str = "queued",
        result: Mapping[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Job:
        """A new job (``state="done"`` with its ``result`` for one answered from the store)."""
        job_id = job_id or secrets.token_hex(8)
        now = time.time()
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                "INSERT INTO jobs (id, owner, model, method, params, inputs, state, created, "
                "started, finished, fraction, result, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id, owner, model, method, json.dumps(dict(params)),
                    json.dumps(dict(inputs)), state, now,
                    now if state == "done" else None, now if state == "done" else None,
                    1.0 if state == "done" else None,
                    None if result is None else json.dumps(dict(result)), seq,
                ),
            )  # fmt: skip
        job = self.job(job_id)
        assert job is not None
        return job

    def job(self, job_id: str, owner: str | None = None) -> Job | None:
        if owner is None:
            row = self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        else:
            row = self._one("SELECT * FROM jobs WHERE id = ? AND owner = ?", (job_id, owner))
        return None if row is None else Job.from_row(row)

    def jobs(self, owner: str, *, limit: int = 1000) -> list[Job]:
        rows = self._all(
            "SELECT * FROM jobs WHERE owner = ? ORDER BY seq DESC LIMIT ?", (owner, limit)
        )
        return [Job.from_row(r) for r in rows]

    def count(self, state: str, owner: str | None = None) -> int:
        if owner is None:
            row = self._one("SELECT COUNT(*) AS n FROM jobs WHERE state = ?", (state,))
        else:
            row = self._one(
                "SELECT COUNT(*) AS n FROM jobs WHERE state = ? AND owner = ?", (state, owner)
            )
        return 0 if row is None else int(row["n"])

    def claim(self, worker: int) -> Job | None:
        """The oldest queued job, now running in ``worker`` (a process id), or None."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, started = ?, stage = NULL, "
                "error = NULL WHERE id = ?",
                (worker, time.time(), row["id"]),
            )
        return self.job(row["id"])

    def progress(self, job_id: str, stage: str, fraction: float, eta: float | None) -> bool:
        """Record a running job's progress; returns whether its cancellation was asked for."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET stage = ?, fraction = ?, eta = ? WHERE id = ? AND "
                "state = 'running'",
                (stage, fraction, eta, job_id),
            )
            row = db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row is not None and row["cancel"])

    def cancel_requested(self, job_id: str) -> bool:
        row = self._one("SELECT cancel FROM jobs WHERE id = ?", (job_id,))
        return bool(row is not None and row["cancel"])

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
        worker: int | None = None,
    ) -> bool:
        """End a job (``done``, ``failed`` or ``cancelled``); with ``worker``, only while that
        worker still holds it. Returns whether the job changed."""
        assert state in FINISHED
        sql = (
            "UPDATE jobs SET state = ?, result = ?, error = ?, finished = ?, "
            "fraction = CASE WHEN ? = 'done' THEN 1.0 ELSE fraction END, eta = NULL "
            "WHERE id = ? AND state IN ('queued', 'running')"
        )
        args: tuple[Any, ...] = (
            state, None if result is None else json.dumps(dict(result)), error, time.time(),
            state, job_id,
        )  # fmt: skip
        if worker is not None:
            sql += " AND worker = ?"
            args += (worker,)
        with self._tx() as db:
            return db.execute(sql, args).rowcount > 0

    def requeue(self, job_id: str, worker: int | None = None) -> bool:
        """Put a running job back in the queue (its worker stopped before the end)."""
        sql = (
            "UPDATE jobs SET state = 'queued', worker = NULL, eta = NULL "
            "WHERE id = ? AND state = 'running'"
        )
        args: tuple[Any, ...] = (job_id,)
        if worker is not None:
            sql += " AND worker = ?"
            args += (worker,)
        with self._tx() as db:
            return db.execute(sql, args).rowcount > 0

    def requeue_running(self) -> int:
        """Every running job back in the queue (at start: no worker is running any)."""
        with self._tx() as db:
            return db.execute(
                "UPDATE jobs SET state = 'queued', worker = NULL, eta = NULL "
                "WHERE state = 'running'"
            ).rowcount

    def running_in(self, worker: int) -> Job | None:
        row = self._one("SELECT * FROM jobs WHERE state = 'running' AND worker = ?", (worker,))
        return None if row is None else Job.from_row(row)

    def cancel(self, job_id: str, owner: str) -> Job | None:
        """Cancel a job: a queued one at once, a running one at its next progress step (its
        worker sees the flag). Returns the job as it is now, or None when unknown."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ?, eta = NULL "
                "WHERE id = ? AND owner = ? AND state = 'queued'",
                (time.time(), job_id, owner),
            )
            db.execute(
                "UPDATE jobs SET cancel = 1 WHERE id = ? AND owner = ? AND state = 'running'",
                (job_id, owner),
            )
        return self.job(job_id, owner)


def _model_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["info"] = json.loads(d["info"])
    d["preprocessing"] = None if d["preprocessing"] is None else json.loads(d["preprocessing"])
    return d
