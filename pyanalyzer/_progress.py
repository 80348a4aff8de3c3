"""Progress bars for long work, on stderr so that stdout stays clean for ``--json``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class _Bar(Protocol):
    def update(self, n: int) -> None: ...


class _NullBar:
    def update(self, n: int) -> None:
        pass


def progress_enabled(requested: bool = True) -> bool:
    """Bars show when asked for and stderr is a terminal, or PYANALYZER_PROGRESS=1."""
    if not requested or os.environ.get("PYANALYZER_PROGRESS") == "0":
        return False
    return sys.stderr.isatty() or os.environ.get("PYANALYZER_PROGRESS") == "1"


@contextmanager
def progress_bar(total: int, *, label: str, enabled: bool = True) -> Iterator[_Bar]:
    """A click progress bar of ``total`` steps, or a no-op when disabled."""
    if not progress_enabled(enabled) or total <= 0:
        yield _NullBar()
        return
    import click

    with click.progressbar(
        length=total, label=label, file=sys.stderr, show_eta=True, show_pos=True
    ) as bar:
        yield bar
