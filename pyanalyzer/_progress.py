"""Progress bars for long work, on stderr so that stdout stays clean for ``--json``; and a
listener that another front end (the service's workers) sets to follow every bar as it moves,
whether or not the bar is shown."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["Listener", "note", "progress_bar", "progress_enabled", "set_listener"]

Listener = Callable[[str, int, int], None]
"""``listener(label, done, total)``: called when a bar starts (done = 0) and at each step; it
may raise to stop the work (a cancelled job)."""

_listener: Listener | None = None


def set_listener(listener: Listener | None) -> Listener | None:
    """Follow every progress bar of this process with ``listener`` (None: stop); returns the
    previous one."""
    global _listener
    previous, _listener = _listener, listener
    return previous


class _Bar(Protocol):
    def update(self, n: int) -> None: ...


class _NullBar:
    def update(self, n: int) -> None:
        pass


class _Followed:
    """A bar whose steps are also reported to the listener."""

    def __init__(self, bar: _Bar, listener: Listener, label: str, total: int):
        self.bar, self.listener, self.label, self.total = bar, listener, label, total
        self.done = 0

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        self.listener(self.label, self.done, self.total)


def progress_enabled(requested: bool = True) -> bool:
    """Bars show when asked for and stderr is a terminal, or PYANALYZER_PROGRESS=1."""
    if not requested or os.environ.get("PYANALYZER_PROGRESS") == "0":
        return False
    return sys.stderr.isatty() or os.environ.get("PYANALYZER_PROGRESS") == "1"


def note(text: str, *, enabled: bool = True) -> None:
    """One line on stderr saying which step of a long job starts, where bars are shown
    (:func:`progress_enabled`)."""
    if progress_enabled(enabled):
        print(text, file=sys.stderr, flush=True)


@contextmanager
def progress_bar(total: int, *, label: str, enabled: bool = True) -> Iterator[_Bar]:
    """A click progress bar of ``total`` steps, or a no-op when disabled; either way followed
    by the listener (:func:`set_listener`) when one is set."""
    listener = _listener
    with _shown(total, label, enabled) as bar:
        if listener is None or total <= 0:
            yield bar
            return
        listener(label, 0, total)
        yield _Followed(bar, listener, label, total)


@contextmanager
def _shown(total: int, label: str, enabled: bool) -> Iterator[_Bar]:
    if not progress_enabled(enabled) or total <= 0:
        yield _NullBar()
        return
    import click

    with click.progressbar(
        length=total, label=label, file=sys.stderr, show_eta=True, show_pos=True
    ) as bar:
        yield bar
