"""The ``pyanalyzer`` command line: a thin click layer over the public API.

One module per command (:mod:`.info`, :mod:`.dissect`, :mod:`.deconv`, :mod:`.actmax`,
:mod:`.invert`, :mod:`.cache`, :mod:`.concepts`); the option groups they share are defined once
in :mod:`.options`. Commands build an analysis from their flags, run it (the store answers a
repeated run), write its files with the report writers, and print a summary line (``--json``:
the summary as JSON on stdout).

Exit codes: 0 success; 2 bad input or usage (exactly one line on stderr, no traceback; on a
terminal a usage hint may follow); 1 an unexpected failure (set ``PYANALYZER_DEBUG=1`` for its
traceback); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM: temporary files are removed on
the way out, as for Ctrl-C).

Messages. Warnings of the libraries pyanalyzer uses (onnx2torch, torch, onnxruntime...) go to
the ``pyanalyzer`` logger and are shown with ``--verbose``/``-v`` only; pyanalyzer's own
warnings a user must see (:class:`~pyanalyzer.errors.PyanalyzerWarning`, e.g. a parity
mismatch) are printed as one ``warning: ...`` line each when the command succeeds (with
``-v``: at once).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from pyanalyzer._version import __version__

__all__ = ["cli", "main"]


LOG = logging.getLogger("pyanalyzer")
"""The logger of pyanalyzer's messages; the CLI shows it on stderr (debug and library
warnings with ``--verbose`` only)."""

_LIBRARY_WARNINGS = logging.getLogger("pyanalyzer.warnings")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="pyanalyzer")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show debug messages and the warnings of the libraries pyanalyzer uses (onnx2torch, "
    "torch, onnxruntime) on stderr.",
)
def cli(verbose: bool) -> None:
    """See what an image CNN saved as ONNX has learned.

    Activation maximization, DeconvNet, network inversion and network dissection on any
    ONNX image model. Every command that reads a model takes the preprocessing flags
    (see `pyanalyzer info --help`); results are cached in a result store (--store), and
    every command that produces results prints its summary as JSON with --json.
    """
    if verbose:
        _set_verbose()


def _attach_commands() -> None:
    from pyanalyzer.cli.ablate import ablate
    from pyanalyzer.cli.actmax import actmax
    from pyanalyzer.cli.atlas import atlas
    from pyanalyzer.cli.cache import cache
    from pyanalyzer.cli.compare import compare
    from pyanalyzer.cli.concepts import concepts
    from pyanalyzer.cli.deconv import deconv
    from pyanalyzer.cli.dissect import dissect
    from pyanalyzer.cli.info import doctor, info
    from pyanalyzer.cli.invert import invert
    from pyanalyzer.cli.serve import serve

    for command in (
        info, doctor, dissect, deconv, actmax, invert, atlas, ablate, compare, cache, concepts,
        serve,
    ):  # fmt: skip
        cli.add_command(command)


_attach_commands()


# ---- entry point ---------------------------------------------------------------------------


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that ``finally`` blocks (temporary files,
    the store's checkpoints) run as for Ctrl-C. A BaseException, as KeyboardInterrupt, so that
    no ``except Exception`` swallows it."""


def verbose() -> bool:
    """Whether ``--verbose`` was given."""
    return LOG.isEnabledFor(logging.DEBUG)


def _set_verbose() -> None:
    LOG.setLevel(logging.DEBUG)
    _LIBRARY_WARNINGS.setLevel(logging.DEBUG)


class _Handler(logging.Handler):
    """``<level>: <message>`` on the current stderr (looked up per record, so that a caller
    swapping ``sys.stderr`` is followed); records of other libraries' loggers name them and
    are shown only with ``--verbose``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ours = record.name == "pyanalyzer" or record.name.startswith("pyanalyzer.")
            if not ours and not verbose():
                return
            level = "warning" if record.levelno == logging.WARNING else record.levelname.lower()
            where = "" if ours else f"{record.name}: "
            click.echo(f"{level}: {where}{_one_line(record.getMessage())}", err=True)
        except Exception:
            self.handleError(record)


class _Warnings:
    """``warnings.showwarning`` for a CLI run: pyanalyzer's own user-facing warnings are kept
    for the end of a successful run (at once with ``--verbose``), the others logged."""

    def __init__(self) -> None:
        self.deferred: list[str] = []

    def show(
        self,
        message: Any,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: Any = None,
    ) -> None:
        from pyanalyzer.errors import PyanalyzerWarning

        text = _one_line(str(message))
        if issubclass(category, PyanalyzerWarning):
            if verbose():
                LOG.warning(text)
            elif text not in self.deferred:
                self.deferred.append(text)
            return
        where = f"{os.path.basename(filename)}:{lineno}"
        _LIBRARY_WARNINGS.warning("%s: %s (%s)", category.__name__, text, where)

    def flush(self) -> None:
        for text in self.deferred:
            LOG.warning(text)
        self.deferred.clear()


@contextmanager
def _session() -> Iterator[_Warnings]:
    """Logging, warnings and SIGTERM set up for one run of :func:`main`, and undone after it
    (so that a program or a test calling ``main`` several times starts afresh each time)."""
    handler = _Handler()
    saved = (LOG.level, LOG.propagate, _LIBRARY_WARNINGS.level)
    LOG.addHandler(handler)
    root = logging.getLogger()
    root.addHandler(handler)  # other libraries' records: shown with -v (else logging's
    # last-resort handler would print their warnings on stderr)
    LOG.setLevel(logging.WARNING)
    LOG.propagate = False
    _LIBRARY_WARNINGS.setLevel(logging.ERROR)  # hidden unless --verbose
    router = _Warnings()
    previous: Any = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = router.show
            yield router
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        LOG.removeHandler(handler)
        root.removeHandler(handler)
        LOG.setLevel(saved[0])
        LOG.propagate = saved[1]
        _LIBRARY_WARNINGS.setLevel(saved[2])


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Console entry point with pyanalyzer's exit-code contract (see the module)."""
    with _session() as router:
        code = _run(argv)
        if code == 0:
            router.flush()
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    from pyanalyzer.errors import PyanalyzerError

    for i, arg in enumerate(sys.argv[1:] if argv is None else argv):
        if "\0" in arg:  # only an in-process caller can pass one: no path or name holds it
            _error(f"argument {i + 1} ({arg!r}) contains a NUL character")
            return 2
    try:
        cli.main(args=argv, prog_name="pyanalyzer", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "pyanalyzer"
        _error(f"{path} needs a command; see '{path} --help'")
        if exc.ctx is not None and _stderr_is_tty():
            click.echo(exc.ctx.get_help(), err=True)
        return exc.exit_code
    except click.UsageError as exc:
        _error(exc.format_message())  # click's own words ("Invalid value for '--x': ...")
        if exc.ctx is not None and _stderr_is_tty():
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except click.exceptions.Abort:  # click's form of Ctrl-C (KeyboardInterrupt) and EOF
        click.echo("interrupted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except PyanalyzerError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Terminated:
        click.echo("terminated", err=True)
        return 128 + signal.SIGTERM
    except Exception as exc:
        if os.environ.get("PYANALYZER_DEBUG"):
            raise
        from pyanalyzer import budget

        if budget.is_out_of_memory(exc):  # an allocation the budget's estimates missed
            _error(budget.out_of_memory_message(exc))
            return 2
        click.echo(
            f"internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(set PYANALYZER_DEBUG=1 for the traceback)",
            err=True,
        )
        return 1
    return 0


def _error(message: str) -> None:
    click.echo(f"error: {_one_line(message)}", err=True)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _one_line(text: str) -> str:
    return " ".join(text.split())
