"""Run CLI cases in isolated child processes and judge them (the fuzz suite's engine).

Every case runs ``pyanalyzer ARGS`` in a child process forked from a server that has imported
pyanalyzer, torch, onnx and onnxruntime once (``multiprocessing``'s forkserver), so a case
costs its own work, not the imports. The child gets an address-space limit, a CPU-time limit
and a wall-clock timeout, a sandbox folder as its working directory and home, and
``PYANALYZER_STORE`` inside the sandbox.

A case *escapes* when it

* exits with any code but 0 (success) or 2 (bad input, one line);
* exits 2 with anything but exactly one line on stderr, or prints a traceback;
* hangs (killed at the timeout) or dies of a signal (the memory limit, a crash);
* writes anything outside its ``out/`` and ``store/`` folders and the concept data kept beside
  the store (``concepts/``).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MEMORY_LIMIT = 6 << 30
"""Address space of a case (bytes): torch's import alone maps ~2 GiB of it."""

TIMEOUT = 60.0
"""Seconds a case may take (wall clock) before it counts as a hang."""

ALLOWED = ("in", "out", "store", "concepts", "cwd")
"""What a case may leave in its sandbox: its inputs, outputs, store, concept data and the
working folder (where relative paths given on its command line point)."""

_PRELOAD = ["pyanalyzer.cli", "numpy", "onnx", "onnxruntime", "torch", "onnx2torch", "PIL.Image"]


@dataclass
class Case:
    """One CLI invocation and the files it reads.

    Attributes:
        family: which generator made it (for the report).
        args: the command line after ``pyanalyzer``; ``{in}``, ``{out}`` and ``{store}`` are
            replaced by the sandbox's folders.
        files: relative path under ``in/`` -> bytes (or a callable that writes the file, given
            its path: for FIFOs and symlinks).
        note: what the case tries, for the report.
        seed: the seed its generator was given (``FAMILIES[family](random.Random(seed))``
            makes it again), when known.
    """

    family: str
    args: list[str]
    files: Mapping[str, bytes | Callable[[Path], None]] = field(default_factory=dict)
    note: str = ""
    seed: int | None = None


@dataclass
class Outcome:
    case: Case
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    escape: str | None  # why the case escaped, or None

    def describe(self) -> str:
        return (
            f"[{self.case.family} seed {self.case.seed}] {self.case.note or ''} "
            f"pyanalyzer {' '.join(self.case.args)}"
            f" -> {self.code} ({self.escape}); stderr: {self.stderr.strip()[-300:]!r}"
        )


def _child(args: list[str], sandbox: str, memory: int, timeout: float) -> None:
    """The forked child: limits, sandbox, output files, then the CLI's entry point."""
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(timeout) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    os.chdir(os.path.join(sandbox, "cwd"))
    os.environ.update(
        HOME=os.path.join(sandbox, "home"),
        PYANALYZER_STORE=os.path.join(sandbox, "store"),
        TMPDIR=os.path.join(sandbox, "tmp"),
        PYANALYZER_PROGRESS="0",
        OMP_NUM_THREADS="1",
    )
    tempfile.tempdir = None  # re-read TMPDIR
    out = os.open(os.path.join(sandbox, ".stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(os.path.join(sandbox, ".stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    import warnings

    warnings.resetwarnings()
    from pyanalyzer.cli import main

    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        os._exit(code)
    os._exit(0)


class Runner:
    """Runs cases in forked children (two at a time by default) and judges them."""

    def __init__(self, *, memory: int = MEMORY_LIMIT, timeout: float = TIMEOUT, workers: int = 2):
        self.memory, self.timeout, self.workers = memory, timeout, workers
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(_PRELOAD)
        self.root = Path(tempfile.mkdtemp(prefix="pyanalyzer-fuzz-"))

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sandbox(self, case: Case, n: int) -> tuple[Path, list[str]]:
        box = self.root / f"case{n:05d}"
        for sub in ("in", "out", "home", "tmp", "cwd"):
            (box / sub).mkdir(parents=True)
        for rel, data in case.files.items():
            path = box / "in" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if callable(data):
                data(path)
            else:
                path.write_bytes(data)
        subs = {"{in}": str(box / "in"), "{out}": str(box / "out"), "{store}": str(box / "store")}
        args = []
        for a in case.args:
            for k, v in subs.items():
                a = a.replace(k, v)
            args.append(a)
        return box, args

    def run(self, cases: Sequence[Case]) -> list[Outcome]:
        """Run every case, ``workers`` at a time; outcomes in the order of ``cases``."""
        outcomes: list[Outcome | None] = [None] * len(cases)
        pending = list(enumerate(cases))
        running: dict[int, tuple[multiprocessing.process.BaseProcess, Path, float]] = {}
        while pending or running:
            while pending and len(running) < self.workers:
                i, case = pending.pop(0)
                box, args = self._sandbox(case, i)
                proc = self.ctx.Process(
                    target=_child, args=(args, str(box), self.memory, self.timeout)
                )
                proc.start()
                running[i] = (proc, box, time.monotonic())
            time.sleep(0.01)
            for i, (proc, box, t0) in list(running.items()):
                elapsed = time.monotonic() - t0
                if proc.exitcode is None and elapsed < self.timeout:
                    continue
                hung = proc.exitcode is None
                if hung:
                    proc.kill()
                proc.join()
                outcomes[i] = self._judge(cases[i], box, proc.exitcode, elapsed, hung)
                del running[i]
                with contextlib.suppress(OSError):
                    shutil.rmtree(box)
        return [o for o in outcomes if o is not None]

    def _judge(
        self, case: Case, box: Path, code: int | None, seconds: float, hung: bool
    ) -> Outcome:
        def read(name: str) -> str:
            try:
                return (box / name).read_text(errors="replace")
            except OSError:
                return ""

        out, err = read(".stdout"), read(".stderr")
        escape = None
        if hung:
            escape = f"hung (killed after {self.timeout:.0f} s)"
        elif code is None or code < 0:
            escape = (
                f"killed by signal {-(code or 0)} ({signal.Signals(-code).name if code else '?'})"
            )
        elif code not in (0, 2):
            escape = f"exit code {code}"
        elif "Traceback" in err:
            escape = "traceback on stderr"
        elif code == 2 and err.count("\n") != 1:
            escape = f"exit 2 with {err.count(chr(10))} stderr lines"
        else:
            stray = _stray_files(box)
            if stray:
                escape = f"wrote outside out/ and store/: {stray[:3]}"
        return Outcome(case, code, out, err, seconds, escape)


def _stray_files(box: Path) -> list[str]:
    """Files a case left in its sandbox where it may not write."""
    stray = []
    for entry in box.iterdir():
        if entry.name in ALLOWED or entry.name in (".stdout", ".stderr"):
            continue
        if entry.name in ("home", "tmp"):
            stray += [str(p.relative_to(box)) for p in entry.rglob("*") if not p.is_dir()]
            continue
        stray.append(entry.name)
    return stray


def summarise(outcomes: Iterable[Outcome]) -> dict[str, dict[str, int]]:
    """Per family: cases, exits 0, exits 2 and escapes."""
    table: dict[str, dict[str, int]] = {}
    for o in outcomes:
        row = table.setdefault(o.case.family, {"cases": 0, "exit 0": 0, "exit 2": 0, "escapes": 0})
        row["cases"] += 1
        if o.escape:
            row["escapes"] += 1
        elif o.code == 0:
            row["exit 0"] += 1
        else:
            row["exit 2"] += 1
    return table


def write_log(outcomes: Iterable[Outcome], path: str | os.PathLike[str]) -> None:
    """One JSON line per case (family, note, args, code, seconds, escape, stderr's end)."""
    with open(path, "a", encoding="utf-8") as f:
        for o in outcomes:
            f.write(
                json.dumps(
                    {
                        "family": o.case.family,
                        "seed": o.case.seed,
                        "note": o.case.note,
                        "args": o.case.args,
                        "code": o.code,
                        "seconds": round(o.seconds, 2),
                        "escape": o.escape,
                        "stderr": o.stderr[-500:],
                    }
                )
                + "\n"
            )
