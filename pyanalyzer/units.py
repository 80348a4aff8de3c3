"""Unit selections: ``"5"``, ``"0-7"``, ``"1,4,9"``, ``"all"``, an int or a sequence of ints.

Every analysis that selects units (channels, classes, direction rows) reads them through
:func:`select_units`, so the text form, the checks and the messages are the same everywhere.
Ranges are checked against the layer before any list is built: ``0-99999999999`` on a layer of
64 units fails at once instead of materialising a hundred billion numbers.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from pyanalyzer._checks import is_int
from pyanalyzer.errors import UserInputError

__all__ = ["UnitSpec", "check_syntax", "parse_units", "select_units"]

UnitSpec = str | int | Sequence[int]
"""What a caller may pass as units: text, one int, or a sequence of ints."""


def _ranges(text: str, spec: object) -> list[tuple[int, int]]:
    """``"1,4-6"`` → ``[(1, 1), (4, 6)]``; raises UserInputError when malformed."""
    out: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if lo > hi:
                    raise ValueError
                out.append((lo, hi))
            else:
                v = int(part)
                out.append((v, v))
    except ValueError:
        raise UserInputError(f"units {spec!r}: expected N, A-B, a comma list or 'all'") from None
    return out


def check_syntax(spec: str) -> str:
    """``spec`` when it is ``"all"`` or well-formed unit text (nothing is expanded).

    Raises:
        UserInputError: malformed.
    """
    if spec.strip().lower() != "all":
        _ranges(spec.strip().lower(), spec)
    return spec


def _first_outside(ranges: list[tuple[int, int]], count: int) -> int | None:
    """The smallest value of the ranges outside ``0..count-1``, without expanding them."""
    bad = [lo if lo < 0 else max(lo, count) for lo, hi in ranges if lo < 0 or hi >= count]
    return min(bad) if bad else None


def parse_units(spec: str, channels: int | None) -> list[int]:
    """``"5"``, ``"0-7"``, ``"1,4,9"`` or ``"all"`` to a sorted list of units in range.

    Args:
        spec: the text.
        channels: the number of units; None parses only (no range check, no ``"all"``): use
            it only on trusted text (a range is expanded), else :func:`check_syntax`.

    Raises:
        UserInputError: malformed, or a unit outside ``0..channels-1``.
    """
    text = str(spec).strip().lower()
    if text == "all":
        if channels is None:
            raise ValueError("parse_units: 'all' needs the number of units")
        return list(range(channels))
    ranges = _ranges(text, spec)
    if channels is not None:
        bad = _first_outside(ranges, channels)
        if bad is not None:
            raise UserInputError(
                f"unit {bad} is out of range: the layer has units 0..{channels - 1}"
            )
    units: set[int] = set()
    for lo, hi in ranges:
        units.update(range(lo, hi + 1))
    return sorted(units)


def select_units(
    units: UnitSpec, count: int, *, noun: str = "unit", where: str | None = None
) -> list[int]:
    """Units as a list, checked against ``count``: text keeps its sorted, de-duplicated form
    (``"all"`` is every unit); an int or a sequence keeps its order and must not repeat.

    Args:
        units: ``"all"``, ``"0-7"``, ``"1,4,9"``, an int or a sequence of ints.
        count: how many units there are (``0..count-1``).
        noun: what a unit is called in messages (``"unit"``, ``"class"``, ``"direction"``).
        where: the end of the out-of-range message (default ``"the layer has units 0..N"``).

    Raises:
        UserInputError: malformed, empty, repeated, not integers, or out of range.
    """
    where = where or f"the layer has {noun}s 0..{count - 1}"
    if isinstance(units, str):
        text = units.strip().lower()
        if text == "all":
            chosen = list(range(count))
        else:
            ranges = _ranges(text, units)
            bad = _first_outside(ranges, count)
            if bad is not None:
                raise UserInputError(f"{noun} {bad} is out of range: {where}")
            chosen = sorted({u for lo, hi in ranges for u in range(lo, hi + 1)})
    else:
        if not is_int(units) and hasattr(units, "__len__") and len(units) > count:
            # distinct units in range are at most ``count``: refuse before listing a huge range
            raise UserInputError(f"{len(units)} units given, but {where}")
        try:
            seq = [units] if is_int(units) else list(units)
            if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) for u in seq):
                raise TypeError
            chosen = [int(u) for u in seq]
        except TypeError:
            raise UserInputError(f"units must be integers, got {units!r}") from None
        if len(set(chosen)) != len(chosen):
            raise UserInputError(f"units repeat: {chosen}")
        for u in chosen:
            if not 0 <= u < count:
                raise UserInputError(f"{noun} {u} is out of range: {where}")
    if not chosen:
        raise UserInputError("no units chosen")
    return chosen
