"""Where an analysis' shards run: in this process (``local``) or on a Ray cluster (``ray``).

An analysis that can be split cuts its work into shards (a range of images, a group of units)
and hands a module-level function ``fn(model, data, shard) -> result`` to an executor's
:meth:`Executor.map`; the results come back to this process one by one, in any order, where
the analysis merges them (and checkpoints what is finished). Only shards and their small
results travel: a Ray worker loads the model and opens the data itself, once per actor.

* :class:`LocalExecutor` calls ``fn`` here, shard after shard, with the analysis' own model.
* :class:`RayExecutor` keeps one actor per CPU of the cluster (``ray.init(address)``, or a
  local Ray started here), each with the model loaded once (one onnxruntime session of one
  thread) and the data opened once; a shard whose actor dies is given to a new actor (up to
  ``max_retries`` times), so a killed worker costs its shard only.

Ray is optional (``pip install 'pyanalyzer[ray]'``); asking for it without it is one line.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pyanalyzer.errors import BackendUnavailableError, UserInputError

if TYPE_CHECKING:
    from pyanalyzer.model.model import Model

__all__ = [
    "ENGINES",
    "SHARDS_PER_WORKER",
    "Executor",
    "LocalExecutor",
    "ModelRef",
    "RayExecutor",
    "Shard",
    "SourceRange",
    "batch_shards",
    "data_ref",
    "executor",
    "open_data",
]

ENGINES = ("local", "ray")

STARTUP_TIMEOUT = 300.0
"""Seconds Ray workers may take to start and load the model before the run is refused."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


SHARDS_PER_WORKER = 4
"""Shards per worker: enough to balance the load and to lose little to a killed worker."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Images ``start..stop-1`` of an image source (``start`` a multiple of the batch size)."""

    index: int
    start: int
    stop: int


def batch_shards(n: int, batch_size: int, workers: int) -> list[Shard]:
    """Contiguous shards of whole batches of ``n`` images, about :data:`SHARDS_PER_WORKER` per
    worker: every forward batch of a shard holds the images a local run's batch holds, so
    onnxruntime computes the same floats."""
    batches = -(-n // batch_size)
    per = max(1, -(-batches // (SHARDS_PER_WORKER * max(1, workers))))
    starts = range(0, batches, per)
    return [Shard(i, b * batch_size, min(n, (b + per) * batch_size)) for i, b in enumerate(starts)]


class SourceRange:
    """Images ``start..stop-1`` of an image source, as an image source of their own."""

    def __init__(self, source: Any, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def pixels(self, index: int, spec: Any) -> Any:
        return self.source.pixels(self.start + index, spec)

    def name(self, index: int) -> str:
        return str(self.source.name(self.start + index))


ShardFn = Callable[[Any, Any, Any], Any]
"""``fn(model, data, shard) -> result``: a module-level function (Ray ships it by name)."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load the same model: its file, digest and preprocessing."""

    path: str
    sha256: str
    preprocessing: dict[str, Any]

    @classmethod
    def of(cls, model: Model) -> ModelRef:
        return cls(str(model.path.resolve()), model.sha256, model.preprocessing.to_dict())

    def load(self, threads: int = 1) -> Model:
        """The model, checked to be the same file (its digest), with ``threads`` intra-op
        threads for onnxruntime."""
        from pyanalyzer.model import PreprocessSpec, load_model

        spec = PreprocessSpec.from_dict(self.preprocessing)
        model = load_model(self.path, spec, check_parity=False)
        if model.sha256 != self.sha256:
            raise UserInputError(
                f"the model file {self.path} changed while the analysis ran (its digest is "
                "not the driver's)"
            )
        model.forward.threads = threads
        return model


def data_ref(data: Any) -> Any:
    """A picklable description of an analysis' data that a worker opens again: a Broden
    dataset by its folder (its decoded-label cache is shared, read only); image sources and
    arrays as they are (they are small descriptions or small arrays)."""
    from pyanalyzer.data.broden import BrodenDataset

    if isinstance(data, BrodenDataset):
        return ("broden", str(data.root.resolve()), data.split, str(data.cache_dir.resolve()))
    return ("object", data)


def open_data(ref: Any) -> Any:
    """The data of :func:`data_ref`."""
    kind, *rest = ref
    if kind == "broden":
        from pyanalyzer.data.broden import BrodenDataset

        root, split, cache_dir = rest
        return BrodenDataset(root, split, cache_dir=cache_dir)
    return rest[0]


class Executor(ABC):
    """Runs the shards of an analysis (see the module)."""

    engine: str = ""

    @abstractmethod
    def map(
        self,
        fn: ShardFn,
        model: Model,
        data: Any,
        shards: Sequence[Any],
        on_result: Callable[[int, Any], None],
        *,
        label: str = "shards",
        progress: bool = True,
    ) -> None:
        """Run ``fn(model, data, shard)`` for every shard; ``on_result(i, result)`` is called
        here as shard ``i`` finishes (in any order). An exception of ``fn`` (a user's bad
        input) is raised here as it is."""

    @property
    def workers(self) -> int:
        """How many shards run at once."""
        return 1

    def close(self) -> None:  # noqa: B027  # a no-op unless there are workers
        """Release the workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Shards in this process, one after another, with the caller's model and data."""

    engine = "local"

    def map(
        self,
        fn: ShardFn,
        model: Model,
        data: Any,
        shards: Sequence[Any],
        on_result: Callable[[int, Any], None],
        *,
        label: str = "shards",
        progress: bool = True,
    ) -> None:
        from pyanalyzer._progress import progress_bar

        with progress_bar(len(shards), label=label, enabled=progress) as bar:
            for i, shard in enumerate(shards):
                on_result(i, fn(model, data, shard))
                bar.update(1)


class _Worker:
    """A Ray actor: the model loaded once, the data opened once, shards run on demand."""

    def __init__(self, model: ModelRef, data: Any):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.model = model.load(threads=1)
        self.data = open_data(data)

    def run(self, fn: ShardFn, shard: Any) -> Any:
        return fn(self.model, self.data, shard)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Shards on a Ray cluster (see the module).

    Args:
        address: the cluster (``ray.init(address)``); None starts a local Ray of ``cpus``
            CPUs in this process (no dashboard), or uses the one already started here.
        cpus: CPUs of a local Ray (default: this machine's).
        max_retries: times a shard is given to a new actor when its actor dies.

    Raises:
        BackendUnavailableError: Ray is not installed, or the cluster cannot be reached.
    """

    engine = "ray"

    def __init__(
        self, address: str | None = None, *, cpus: int | None = None, max_retries: int = 3
    ):
        try:
            import ray
        except ImportError:
            raise BackendUnavailableError(
                "--engine ray needs Ray: pip install 'pyanalyzer[ray]'"
            ) from None
        self.ray = ray
        self.max_retries = max_retries
        self.started = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
                else:
                    ray.init(num_cpus=cpus or os.cpu_count() or 1, include_dashboard=False,
                             log_to_driver=False, configure_logging=False)  # fmt: skip
            except Exception as exc:  # noqa: BLE001  # Ray's many connection errors
                where = f"at {address}" if address else "here"
                hint = (
                    "; a cluster with token authentication needs RAY_AUTH_MODE=token and its "
                    "token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
                    if address and os.environ.get("RAY_AUTH_MODE") != "token"
                    else ""
                )
                raise BackendUnavailableError(
                    f"cannot start Ray {where}: {_first_line(exc)}{hint}"
                ) from None
            self.started = True
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
        self._pool: dict[tuple[str, ...], list[Any]] = {}
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def workers(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def actors(self, model: Model, data: Any) -> list[Any]:
        """The actors of this model and data (started on first use, kept for the next map)."""
        import hashlib
        import json
        import pickle

        mref, dref = ModelRef.of(model), data_ref(data)
        key = (mref.path, mref.sha256, json.dumps(mref.preprocessing, sort_keys=True),
               hashlib.sha256(pickle.dumps(dref)).hexdigest())  # fmt: skip
        if key not in self._pool:
            self.release()  # one pool at a time: its actors hold the cluster's CPUs
            actors = [self._actor_cls.remote(mref, dref) for _ in range(self.workers)]
            self._ready(actors)
            self._pool[key] = actors
        return self._pool[key]

    def _ready(self, actors: Sequence[Any], timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait for new actors to load the model (their creation errors are raised here)."""
        ray = self.ray
        try:
            ray.get([a.pid.remote() for a in actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            for a in actors:
                ray.kill(a)
            raise BackendUnavailableError(
                f"the Ray workers did not start within {timeout:g} s: the cluster has no free "
                "CPU for them (other work holds its CPUs?)"
            ) from None
        except ray.exceptions.RayActorError as exc:
            raise BackendUnavailableError(
                f"a Ray worker could not load the model: {_first_line(exc)}"
            ) from None

    def release(self) -> None:
        """Stop every worker (the next map starts new ones)."""
        for actors in self._pool.values():
            for a in actors:
                self.ray.kill(a)
        self._pool.clear()

    def map(
        self,
        fn: ShardFn,
        model: Model,
        data: Any,
        shards: Sequence[Any],
        on_result: Callable[[int, Any], None],
        *,
        label: str = "shards",
        progress: bool = True,
    ) -> None:
        import pickle

        from pyanalyzer._progress import progress_bar

        ray = self.ray
        mref, dref = ModelRef.of(model), data_ref(data)
        if not shards:  # everything was finished (a resumed run): start no worker
            return
        pool = self.actors(model, data)
        todo = list(range(len(shards)))
        tries = dict.fromkeys(todo, 0)
        running: dict[Any, tuple[int, int]] = {}  # ref -> (shard, actor slot)
        idle = list(range(len(pool)))
        with progress_bar(len(shards), label=label, enabled=progress) as bar:
            while todo or running:
                while todo and idle:
                    i, slot = todo.pop(0), idle.pop(0)
                    self.bytes_sent += len(pickle.dumps(shards[i]))
                    running[pool[slot].run.remote(fn, shards[i])] = (i, slot)
                done, _ = ray.wait(list(running), num_returns=1)
                ref = done[0]
                i, slot = running.pop(ref)
                try:
                    value = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    tries[i] += 1
                    if tries[i] > self.max_retries:
                        raise BackendUnavailableError(
                            f"a Ray worker died {tries[i]} times running shard {i} of {label}: "
                            f"{_first_line(exc)}"
                        ) from None
                    pool[slot] = self._actor_cls.remote(mref, dref)  # a new worker, same slot
                    self._ready([pool[slot]])
                    todo.insert(0, i)
                    idle.append(slot)
                    continue
                except ray.exceptions.RayTaskError as exc:  # fn raised: re-raise its error
                    cause = exc.as_instanceof_cause()
                    raise cause.cause if getattr(cause, "cause", None) else cause from None
                idle.append(slot)
                self.bytes_received += len(pickle.dumps(value))
                on_result(i, value)
                bar.update(1)

    def close(self) -> None:
        self.release()
        if self.started:
            self.ray.shutdown()
            self.started = False


def executor(engine: str = "local", address: str | None = None) -> Executor:
    """The executor of ``--engine`` and ``--ray-address``.

    Raises:
        UserInputError: an unknown engine, or an address with the local engine.
        BackendUnavailableError: Ray is missing or unreachable.
    """
    if engine not in ENGINES:
        raise UserInputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "local":
        if address:
            raise UserInputError("--ray-address applies to --engine ray")
        return LocalExecutor()
    return RayExecutor(address)
