"""The Broden CSV files: their columns, :class:`DatasetError`, the parsing helpers, and the
readers of the label tables (``category.csv``, ``label.csv`` -> :class:`BrodenLabel`,
``c_<category>.csv``); ``index.csv`` is read by :class:`~pyanalyzer.data.broden.BrodenDataset`.

Every defect is reported as a :class:`DatasetError` naming the file and, where it applies, the
row (physical line numbers, the header being line 1). The layout itself is described in
:mod:`pyanalyzer.data.broden`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pyanalyzer.errors import UserInputError

__all__ = [
    "MAX_CSV_BYTES",
    "MAX_LABEL_NUMBER",
    "CATEGORY_COLUMNS",
    "CODE_COLUMNS",
    "INDEX_COLUMNS",
    "LABEL_COLUMNS",
    "BrodenLabel",
    "DatasetError",
    "parse_sizes",
    "read_categories",
    "read_codes",
    "read_labels",
]

INDEX_COLUMNS: tuple[str, ...] = ("image", "split", "ih", "iw", "sh", "sw")
"""The leading columns of ``index.csv``; every other column is a category."""
LABEL_COLUMNS: tuple[str, ...] = ("number", "name", "category", "frequency", "coverage", "syns")
"""Columns of ``label.csv``."""
CATEGORY_COLUMNS: tuple[str, ...] = ("name", "first", "last", "count", "frequency")
"""Columns of ``category.csv``."""
CODE_COLUMNS: tuple[str, ...] = ("code", "number", "name", "frequency", "coverage")
"""Columns of ``c_<category>.csv``."""

MAX_LABEL_NUMBER = 65535
"""The largest label number a dataset may use: what a Broden segmentation PNG can hold
(``R + 256 * G``, :data:`~pyanalyzer.data.broden.codec.MAX_PNG_LABEL`). Label tables are
indexed by number, so a crafted ``label.csv`` naming label 10^11 is refused, not allocated.
Codes of ``c_<category>.csv`` are bounded by it too."""

MAX_CSV_BYTES = 2**30
"""The largest CSV file of a dataset read (1 GiB; Broden's index.csv is about 10 MB)."""

_INT = re.compile(r"^-?\d+$")
_CATEGORY_ENTRY = re.compile(r"^([^()]+)\((\d+)\)$")
_CATEGORY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class DatasetError(UserInputError):
    """A Broden dataset (or a writer's input) is defective.

    The message is one line naming the file and, where it applies, the row (``index.csv line
    7``: physical line numbers, the header being line 1).

    Attributes:
        file: The defective file, when there is one.
        row: Its 1-based line number, when the defect is in a row.
    """

    def __init__(
        self, message: str, file: str | os.PathLike[str] | None = None, row: int | None = None
    ) -> None:
        super().__init__(message)
        self.file = None if file is None else str(file)
        self.row = row


def _at(path: Path, line: int | None = None) -> str:
    return f"{path} line {line}" if line is not None else str(path)


# ---- small parsing helpers ---------------------------------------------------------------------


def _parse_int(
    text: str,
    path: Path,
    line: int,
    column: str,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    s = text.strip()
    if not _INT.match(s) or len(s) > 40:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise DatasetError(
            f"{_at(path, line)}: malformed number {shown!r} in column {column!r}", path, line
        )
    value = int(s)
    if minimum is not None and value < minimum:
        raise DatasetError(
            f"{_at(path, line)}: {column} must be >= {minimum}, got {value}", path, line
        )
    if maximum is not None and value > maximum:
        raise DatasetError(
            f"{_at(path, line)}: {column} must be at most {maximum}, got {value}", path, line
        )
    return value


def parse_sizes(
    cells: Sequence[str], col: Mapping[str, int], path: Path, line: int
) -> tuple[int, int, int, int]:
    """``(ih, iw, sh, sw)`` of an ``index.csv`` row, each image at most
    :data:`~pyanalyzer.data.images.MAX_IMAGE_PIXELS` pixels (the sizes size the arrays).

    Raises:
        DatasetError: a malformed or non-positive size, or an image or segmentation too large.
    """
    from pyanalyzer.data.images import MAX_IMAGE_PIXELS as limit

    ih, iw, sh, sw = (_parse_int(cells[col[c]], path, line, c, 1, limit) for c in INDEX_COLUMNS[2:])
    for what, (a, b) in (("image", (ih, iw)), ("segmentation", (sh, sw))):
        if a * b > limit:
            raise DatasetError(
                f"{_at(path, line)}: {what} size {a}x{b} is {a * b} pixels, more than the "
                f"{limit} allowed (pyanalyzer.data.images.MAX_IMAGE_PIXELS)",
                path,
                line,
            )
    return ih, iw, sh, sw


def _parse_float(text: str, path: Path, line: int, column: str) -> float:
    s = text.strip()
    if s == "":
        return 0.0
    try:
        value = float(s)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(
            f"{_at(path, line)}: malformed number {text!r} in column {column!r}", path, line
        )
    return value


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of a dataset's CSV file: a regular file of at most :data:`MAX_CSV_BYTES`
    whose parsed rows fit the memory budget (about 8 times its size).

    Raises:
        DatasetError: missing, not a regular file, too large, or unreadable.
    """
    from pyanalyzer import budget
    from pyanalyzer._checks import open_regular

    def error(message: str) -> DatasetError:
        return DatasetError(message, path)

    try:
        with open_regular(path, f"{what} (a CSV file)", error=error, max_bytes=MAX_CSV_BYTES) as fh:
            size = os.fstat(fh.fileno()).st_size
            budget.check(f"reading {path} ({budget.format_bytes(size)})", 8 * size)
            return fh.read(MAX_CSV_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read {what}: {exc.strerror or exc}", path) from None


def _decode(raw: bytes, path: Path, what: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: cannot read {what}: {exc}", path) from None


def _read_csv(
    path: Path, expected: Sequence[str] | None, what: str
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a CSV file, checking its header and the cell count of every row.

    Returns:
        ``(header, rows)`` where each row is ``(line number, cells)``; blank lines are skipped.
    """
    if not path.exists() and not path.is_symlink():
        raise DatasetError(f"{path}: missing file ({what})", path)
    text = _decode(read_bytes(path, what), path, what)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: empty file, expected a header line", path)
        header = [h.strip() for h in header]
        if "" in header:
            raise DatasetError(f"{_at(path, 1)}: empty column name in the header", path, 1)
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise DatasetError(f"{_at(path, 1)}: duplicate column(s) {dup}", path, 1)
        if expected is not None:
            missing = [c for c in expected if c not in header]
            extra = [c for c in header if c not in expected]
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing column(s) {missing}")
                if extra:
                    parts.append(f"extra column(s) {extra}")
                raise DatasetError(
                    f"{_at(path, 1)}: {' and '.join(parts)}; expected header {','.join(expected)}",
                    path,
                    1,
                )
        rows: list[tuple[int, list[str]]] = []
        for cells in reader:
            line = reader.line_num
            if not cells or all(c.strip() == "" for c in cells) and len(cells) <= 1:
                continue
            if len(cells) != len(header):
                raise DatasetError(
                    f"{_at(path, line)}: {len(cells)} cells, but the header has {len(header)} "
                    "columns",
                    path,
                    line,
                )
            rows.append((line, cells))
    except csv.Error as exc:
        raise DatasetError(f"{_at(path, reader.line_num)}: bad CSV: {exc}", path) from None
    return header, rows


def _check_relpath(text: str, path: Path, line: int, what: str) -> str:
    p = PurePosixPath(text.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise DatasetError(
            f"{_at(path, line)}: {what} path {text!r} must be relative to images/ and stay in it",
            path,
            line,
        )
    return str(p)


# ---- the tables --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrodenLabel:
    """One row of ``label.csv``.

    Attributes:
        number: Global label number (>= 1).
        name: English name (``red-c``, ``street-s``, ``dog``...).
        categories: Category -> number of images it occurs in as that category, in file order
            (most frequent first in Broden).
        category: The primary category: the one with the highest count (ties: the earlier one
            in :attr:`~pyanalyzer.data.broden.BrodenDataset.categories`).
        frequency: Number of images with the label (summed over its categories, as Broden).
        coverage: Summed pixel fraction over images (an image-level label counts 1.0).
        syns: Synonyms.
    """

    number: int
    name: str
    categories: Mapping[str, int]
    category: str
    frequency: int
    coverage: float
    syns: tuple[str, ...] = ()


def read_categories(path: Path) -> dict[str, dict[str, int | None]]:
    """Read ``category.csv``.

    Returns:
        Category name -> its ``first``, ``last``, ``count`` and ``frequency`` (None where the
        cell is blank), in file order.

    Raises:
        DatasetError: A missing file, a bad or duplicate name, a malformed number, a ``first``
            label after the ``last``, no category.
    """
    header, rows = _read_csv(path, CATEGORY_COLUMNS, "the category list")
    col = {h: k for k, h in enumerate(header)}
    categories: dict[str, dict[str, int | None]] = {}
    for line, cells in rows:
        name = cells[col["name"]].strip()
        if not _CATEGORY_NAME.match(name):
            raise DatasetError(f"{_at(path, line)}: bad category name {name!r}", path, line)
        if name in categories:
            raise DatasetError(f"{_at(path, line)}: duplicate category {name!r}", path, line)
        info: dict[str, int | None] = {}
        for key in ("first", "last", "count", "frequency"):
            text = cells[col[key]]
            info[key] = None if text.strip() == "" else _parse_int(text, path, line, key, 0)
        first, last = info["first"], info["last"]
        if first is not None and last is not None and first > last:
            raise DatasetError(
                f"{_at(path, line)}: category {name!r} has first label {first} after its last, "
                f"{last}",
                path,
                line,
            )
        categories[name] = info
    if not categories:
        raise DatasetError(f"{path}: no categories listed", path)
    return categories


def read_labels(path: Path, cat_index: Mapping[str, int]) -> dict[int, BrodenLabel]:
    """Read ``label.csv``.

    Args:
        path: The file.
        cat_index: Category name -> its index in ``category.csv`` (breaks ties of the primary
            category).

    Returns:
        Label number -> :class:`BrodenLabel`, by increasing number (0, ``-``, is not listed).

    Raises:
        DatasetError: A missing file, a malformed row, a duplicate number, a category absent
            from ``cat_index``, no label.
    """
    header, rows = _read_csv(path, LABEL_COLUMNS, "the label list")
    col = {h: k for k, h in enumerate(header)}
    raw: dict[int, tuple[str, dict[str, int], int, float, tuple[str, ...]]] = {}
    for line, cells in rows:
        number = _parse_int(cells[col["number"]], path, line, "number", 0, MAX_LABEL_NUMBER)
        name = cells[col["name"]].strip()
        if number == 0:
            if name != "-":
                raise DatasetError(
                    f"{_at(path, line)}: label number 0 is reserved for '-' (unlabelled), "
                    f"got {name!r}",
                    path,
                    line,
                )
            continue
        if number in raw:
            raise DatasetError(f"{_at(path, line)}: duplicate label number {number}", path, line)
        if not name:
            raise DatasetError(f"{_at(path, line)}: label {number} has no name", path, line)
        cats: dict[str, int] = {}
        cell = cells[col["category"]].strip()
        for entry in (e.strip() for e in cell.split(";")):
            if not entry:
                continue
            m = _CATEGORY_ENTRY.match(entry)
            if not m:
                raise DatasetError(
                    f"{_at(path, line)}: malformed category entry {entry!r} (expected "
                    "'name(count)', e.g. 'color(289)')",
                    path,
                    line,
                )
            cat = m.group(1).strip()
            if cat not in cat_index:
                raise DatasetError(
                    f"{_at(path, line)}: category {cat!r} of label {number} has no entry in "
                    "category.csv",
                    path,
                    line,
                )
            cats[cat] = cats.get(cat, 0) + int(m.group(2))
        if not cats:
            raise DatasetError(
                f"{_at(path, line)}: label {number} ({name}) has no category", path, line
            )
        freq_text = cells[col["frequency"]]
        frequency = (
            0 if not freq_text.strip() else _parse_int(freq_text, path, line, "frequency", 0)
        )
        coverage = _parse_float(cells[col["coverage"]], path, line, "coverage")
        syns = tuple(s.strip() for s in cells[col["syns"]].split(";") if s.strip())
        raw[number] = (name, cats, frequency, coverage, syns)
    if not raw:
        raise DatasetError(f"{path}: no labels listed", path)
    labels: dict[int, BrodenLabel] = {}
    for number in sorted(raw):
        name, cats, frequency, coverage, syns = raw[number]
        # Highest count wins; ties go to the earlier category of category.csv.
        primary = min(cats, key=lambda c: (-cats[c], cat_index[c]))
        labels[number] = BrodenLabel(number, name, cats, primary, frequency, coverage, syns)
    return labels


def read_codes(path: Path, category: str, labels: Mapping[int, object]) -> np.ndarray:
    """Read ``c_<category>.csv``.

    Args:
        path: The file.
        category: Its category (for messages).
        labels: The known label numbers (of ``label.csv``).

    Returns:
        int32 ``[n]``: the label number of each dense code 1..n (0 for a code not listed).

    Raises:
        DatasetError: A missing file, a malformed row, a duplicate code, an unknown label.
    """
    header, rows = _read_csv(path, CODE_COLUMNS, f"the codes of category {category!r}")
    col = {h: k for k, h in enumerate(header)}
    codes: dict[int, int] = {}
    for line, cells in rows:
        code = _parse_int(cells[col["code"]], path, line, "code", 1, MAX_LABEL_NUMBER)
        number = _parse_int(cells[col["number"]], path, line, "number", 1, MAX_LABEL_NUMBER)
        _parse_int(cells[col["frequency"]] or "0", path, line, "frequency", 0)
        _parse_float(cells[col["coverage"]], path, line, "coverage")
        if number not in labels:
            raise DatasetError(
                f"{_at(path, line)}: label number {number} absent from label.csv", path, line
            )
        if code in codes:
            raise DatasetError(f"{_at(path, line)}: duplicate code {code}", path, line)
        codes[code] = number
    arr = np.zeros(max(codes, default=0), dtype=np.int32)
    for code, number in codes.items():
        arr[code - 1] = number
    return arr
