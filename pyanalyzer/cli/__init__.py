"""The ``pyanalyzer`` command line: a thin click layer over the public API.

One module per command (:mod:`.info`, :mod:`.dissect`, :mod:`.deconv`, :mod:`.actmax`,
:mod:`.invert`, :mod:`.cache`, :mod:`.concepts`); the option groups they share are defined once
in :mod:`.options`. Commands build an analysis from their flags, run it (the store answers a
repeated run), write its files with the report writers, and print a summary line (``--json``:
the summary as JSON on stdout).

Exit codes: 0 success; 2 bad input or usage (one line on stderr, no traceback); 1 an
unexpected failure (set ``PYANALYZER_DEBUG=1`` for its traceback); 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import click

from pyanalyzer._version import __version__

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="pyanalyzer")
def cli() -> None:
    """See what an image CNN saved as ONNX has learned.

    Activation maximization, DeconvNet, network inversion and network dissection on any
    ONNX image model. Every command that reads a model takes the preprocessing flags
    (see `pyanalyzer info --help`); results are cached in a result store (--store), and
    every command that produces results prints its summary as JSON with --json.
    """


def _attach_commands() -> None:
    from pyanalyzer.cli.actmax import actmax
    from pyanalyzer.cli.cache import cache
    from pyanalyzer.cli.concepts import concepts
    from pyanalyzer.cli.deconv import deconv
    from pyanalyzer.cli.dissect import dissect
    from pyanalyzer.cli.info import doctor, info
    from pyanalyzer.cli.invert import invert

    for command in (info, doctor, dissect, deconv, actmax, invert, cache, concepts):
        cli.add_command(command)


_attach_commands()


# ---- entry point ---------------------------------------------------------------------------


def _show_warning(
    message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None
) -> None:
    click.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point with pyanalyzer's exit-code contract."""
    from pyanalyzer.errors import PyanalyzerError

    warnings.showwarning = _show_warning
    try:
        cli.main(args=argv, prog_name="pyanalyzer", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:  # click's form of Ctrl-C (KeyboardInterrupt) and EOF
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except PyanalyzerError as exc:
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("PYANALYZER_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(set PYANALYZER_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(0)


def _one_line(text: str) -> str:
    return " ".join(text.split())
