"""Running the CLI in-process with its exit-code contract (shared by the CLI tests)."""

from __future__ import annotations

import pytest

from pyanalyzer.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``pyanalyzer ARGS`` through ``main``; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err
