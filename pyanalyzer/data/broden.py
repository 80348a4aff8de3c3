"""Broden-format concept datasets: reader, label cache and writers.

Network dissection (Bau et al., "Network Dissection: Quantifying Interpretability of Deep Visual
Representations", CVPR 2017) scores every unit of a CNN against the concepts of a densely
labelled dataset. The dataset released with it, Broden, has a simple folder layout that this
module reads unchanged and writes for new data (synthetic scenes, a user's own masks)::

    <root>/
        index.csv       image,split,ih,iw,sh,sw,<category>,<category>,...
        label.csv       number,name,category,frequency,coverage,syns
        category.csv    name,first,last,count,frequency
        c_<category>.csv  code,number,name,frequency,coverage   (one per category)
        images/         the images and the segmentation PNGs (index.csv paths are relative to it)

``index.csv`` has one row per image: its path, split, image size ``ih, iw`` and segmentation
size ``sh, sw`` (``size // 2`` in the released ``broden1_224`` / ``broden1_227``), then one cell
per category holding ``;``-separated entries, dominant first. An entry ending in ``.png`` is a
pixel-level segmentation whose label at each pixel is ``R + 256 * G`` (0 = unlabelled); a decimal
number is an image-level label that applies to the whole image. A category may hold several
PNG channels (Broden's ``part`` has up to four) and may mix PNGs and numbers.

Label numbers are global over all categories. Number 0 is ``-`` (unlabelled) and is not listed in
``label.csv``, whose ``category`` cell lists every category the label occurs in with its number
of images, most frequent first: ``21,fabric,material(36);object(3),39,4.225474,cloth``. Broden
suffixes colour names with ``-c`` (``red-c``) and scene names with ``-s`` (``street-s``).
``category.csv`` gives, per category, the smallest and largest label number, the number of labels
and the summed image counts of its labels; ``c_<category>.csv`` gives a dense per-category code
(1-based, most frequent first) for each label number.

Reference: the format as written by NetDissect's ``joinseg.py`` (``write_label_files``,
``save_segmentation``, ``encodeRG``) and read by NetDissect-Lite's ``loader/data_loader.py``
(``SegmentationData``, ``decode_index_dict``, ``decode_label_dict``), and the ``README.txt``
shipped in ``broden1_224``.

Decoding PNGs dominates the time of a dissection's data pass, so :meth:`BrodenDataset.prepare_cache`
decodes every segmentation once into an HDF5 file under ``<store folder>/concepts/`` keyed by a
digest of the dataset's files; every later run (another model, another layer) reads from it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import operator
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer._checks import check_int as _check_int
from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    import h5py

    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = [
    "CACHE_FORMAT",
    "CATEGORY_COLUMNS",
    "CODE_COLUMNS",
    "INDEX_COLUMNS",
    "LABEL_COLUMNS",
    "BrodenDataset",
    "BrodenLabel",
    "BrodenRecord",
    "DatasetError",
    "build_dataset",
    "decode_label_png",
    "encode_label_png",
    "read_class_names",
    "resize_labels",
    "synth_dataset",
    "write_broden",
]

INDEX_COLUMNS: tuple[str, ...] = ("image", "split", "ih", "iw", "sh", "sw")
"""The leading columns of ``index.csv``; every other column is a category."""
LABEL_COLUMNS: tuple[str, ...] = ("number", "name", "category", "frequency", "coverage", "syns")
"""Columns of ``label.csv``."""
CATEGORY_COLUMNS: tuple[str, ...] = ("name", "first", "last", "count", "frequency")
"""Columns of ``category.csv``."""
CODE_COLUMNS: tuple[str, ...] = ("code", "number", "name", "frequency", "coverage")
"""Columns of ``c_<category>.csv``."""

CACHE_FORMAT = "pyanalyzer-broden-labels"
CACHE_VERSION = 1
MAX_PNG_LABEL = 65535  # R + 256 * G with 8-bit channels

_INT = re.compile(r"^-?\d+$")
_CATEGORY_ENTRY = re.compile(r"^([^()]+)\((\d+)\)$")
_CATEGORY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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
    ):
        super().__init__(message)
        self.file = None if file is None else str(file)
        self.row = row


def _at(path: Path, line: int | None = None) -> str:
    return f"{path} line {line}" if line is not None else str(path)


# ---- small parsing helpers ---------------------------------------------------------------------


def _parse_int(text: str, path: Path, line: int, column: str, minimum: int | None = None) -> int:
    s = text.strip()
    if not _INT.match(s):
        raise DatasetError(
            f"{_at(path, line)}: malformed number {text!r} in column {column!r}", path, line
        )
    value = int(s)
    if minimum is not None and value < minimum:
        raise DatasetError(
            f"{_at(path, line)}: {column} must be >= {minimum}, got {value}", path, line
        )
    return value


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


def _read_csv(
    path: Path, expected: Sequence[str] | None, what: str
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a CSV file, checking its header and the cell count of every row.

    Returns:
        ``(header, rows)`` where each row is ``(line number, cells)``; blank lines are skipped.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: missing file ({what})", path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read {what}: {exc}", path) from None
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


# ---- PNG label coding --------------------------------------------------------------------------


def decode_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a Broden segmentation PNG.

    RGB(A) and palette PNGs hold the label ``R + 256 * G`` (Broden's encoding); a single-channel
    PNG (mode L, I;16, I), which Broden never writes, is read as the label number itself.

    Args:
        path: The PNG file.

    Returns:
        int32 ``[H, W]`` label numbers (0 = unlabelled).

    Raises:
        DatasetError: The file is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("L", "I", "I;16", "I;16L", "I;16B", "I;16N"):
                return np.asarray(img).astype(np.int32)
            if mode not in ("RGB", "RGBA"):
                img = img.convert("RGB")
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "not a recognised image" if isinstance(exc, UnidentifiedImageError) else exc
        raise DatasetError(f"{path}: cannot read segmentation PNG: {reason}", path) from None
    return arr[..., 0].astype(np.int32) + 256 * arr[..., 1].astype(np.int32)


def encode_label_png(labels: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write label numbers as a Broden segmentation PNG (RGB, ``R + 256 * G``, B = 0).

    Args:
        labels: integer ``[H, W]`` in 0..65535.
        path: Output file.
    """
    from PIL import Image

    lab = np.asarray(labels)
    rgb = np.zeros(lab.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = lab % 256
    rgb[..., 1] = lab // 256
    Image.fromarray(rgb, "RGB").save(path, format="PNG")


def _decode_png(path: Path) -> np.ndarray:
    """The one place segmentation PNGs are decoded (tests count calls to it)."""
    return decode_label_png(path)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label map by nearest neighbour at output pixel centres.

    Output pixel ``(i, j)`` takes input pixel ``(floor((i + 0.5) * H / h), floor((j + 0.5) *
    W / w))``, as PIL's NEAREST resize does. For the Broden halving (``h = H // 2`` with even
    ``H``) this is ``labels[1::2, 1::2]``: the bottom-right pixel of each 2x2 block. Labels are
    never mixed (no mode or interpolation), so every output value is a label of the input.

    Args:
        labels: ``[..., H, W]`` any dtype.
        size: ``(h, w)`` of the output.

    Returns:
        ``[..., h, w]``, same dtype.
    """
    lab = np.asarray(labels)
    big_h, big_w = lab.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise UserInputError(f"label map size must be positive, got {h}x{w}")
    if (h, w) == (big_h, big_w):
        return lab.copy()
    rows = np.minimum(((np.arange(h) * 2 + 1) * big_h) // (2 * h), big_h - 1)
    cols = np.minimum(((np.arange(w) * 2 + 1) * big_w) // (2 * w), big_w - 1)
    return lab[..., rows[:, None], cols[None, :]]


# ---- the reader --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrodenLabel:
    """One row of ``label.csv``.

    Attributes:
        number: Global label number (>= 1).
        name: English name (``red-c``, ``street-s``, ``dog``...).
        categories: Category -> number of images it occurs in as that category, in file order
            (most frequent first in Broden).
        category: The primary category: the one with the highest count (ties: the earlier one
            in :attr:`BrodenDataset.categories`).
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


@dataclass
class _Row:
    line: int
    image: str
    split: str
    ih: int
    iw: int
    pngs: list[tuple[int, str]]  # (category index, path relative to images/)
    numbers: list[tuple[int, int]]  # (category index, label number)


class BrodenDataset:
    """A Broden-format dataset, read as released.

    Loading reads and validates the CSV files and checks that every image and PNG named by the
    selected rows exists; images and PNGs are decoded (and checked further) only when read.

    Channel order: :meth:`segmentation` stacks the PNG channels category by category in the
    order of :attr:`categories` (``category.csv`` order), each category's channels in cell
    order; image-level numbers follow the same order.

    Args:
        root: The dataset folder (holding ``index.csv``).
        split: Keep only rows of this split (``"train"``, ``"val"``); None keeps all.
        cache_dir: Folder of the decoded-label cache; default
            ``<folder of pyanalyzer.store.default_path()>/concepts``.

    Attributes:
        root: The dataset folder.
        split: The selected split, or None.
        categories: Category names, in ``category.csv`` order (``G`` of them).
        labels: Label number -> :class:`BrodenLabel`.
        concept_category: int32 ``[C]`` with ``C = max label number + 1``: index into
            :attr:`categories` of each label's primary category; -1 for 0 and unused numbers.
        names: ``C`` label names (``"-"`` for 0, ``""`` for unused numbers).
        category_codes: Category -> int32 ``[n]`` label numbers of its dense codes 1..n
            (``c_<category>.csv``); ``category_codes[c][code - 1]`` is the label number.
        seg_size: ``(sh, sw)``, shared by all selected rows.
        max_channels: Largest number of PNG channels of a row (default ``K``).
        max_image_labels: Largest number of image-level labels of a row (default ``L``).

    Raises:
        DatasetError: A file is missing or a row is defective (message names file and line).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset folder does not exist", self.root)
        if cache_dir is None:
            from pyanalyzer.store import default_path

            cache_dir = default_path().parent / "concepts"
        self.cache_dir = Path(cache_dir)
        self._cache: h5py.File | None = None
        self._cache_checked = False
        self._load_categories()
        self._load_labels()
        self._load_codes()
        self._load_index()

    # ---- loading -----------------------------------------------------------------------------
    def _load_categories(self) -> None:
        path = self.root / "category.csv"
        header, rows = _read_csv(path, CATEGORY_COLUMNS, "the category list")
        col = {h: k for k, h in enumerate(header)}
        cats: list[str] = []
        self.category_info: dict[str, dict[str, int | None]] = {}
        for line, cells in rows:
            name = cells[col["name"]].strip()
            if not _CATEGORY_NAME.match(name):
                raise DatasetError(f"{_at(path, line)}: bad category name {name!r}", path, line)
            if name in self.category_info:
                raise DatasetError(f"{_at(path, line)}: duplicate category {name!r}", path, line)
            info: dict[str, int | None] = {}
            for key in ("first", "last", "count", "frequency"):
                text = cells[col[key]]
                info[key] = None if text.strip() == "" else _parse_int(text, path, line, key, 0)
            cats.append(name)
            self.category_info[name] = info
        if not cats:
            raise DatasetError(f"{path}: no categories listed", path)
        self.categories: list[str] = cats
        self._cat_index = {c: k for k, c in enumerate(cats)}

    def _load_labels(self) -> None:
        path = self.root / "label.csv"
        self._label_bytes = path.read_bytes() if path.is_file() else b""
        header, rows = _read_csv(path, LABEL_COLUMNS, "the label list")
        col = {h: k for k, h in enumerate(header)}
        raw: dict[int, tuple[str, dict[str, int], int, float, tuple[str, ...]]] = {}
        for line, cells in rows:
            number = _parse_int(cells[col["number"]], path, line, "number", 0)
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
                raise DatasetError(
                    f"{_at(path, line)}: duplicate label number {number}", path, line
                )
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
                if cat not in self._cat_index:
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
        size = max(raw) + 1
        concept_category = np.full(size, -1, dtype=np.int32)
        names = [""] * size
        names[0] = "-"
        for number in sorted(raw):
            name, cats, frequency, coverage, syns = raw[number]
            # Highest count wins; ties go to the earlier category of category.csv.
            primary = min(cats, key=lambda c: (-cats[c], self._cat_index[c]))
            labels[number] = BrodenLabel(number, name, cats, primary, frequency, coverage, syns)
            concept_category[number] = self._cat_index[primary]
            names[number] = name
        self.labels: dict[int, BrodenLabel] = labels
        self.concept_category: np.ndarray = concept_category
        self.names: list[str] = names
        self._known = concept_category >= 0  # bool [C]

    def _load_codes(self) -> None:
        self.category_codes: dict[str, np.ndarray] = {}
        for cat in self.categories:
            path = self.root / f"c_{cat}.csv"
            header, rows = _read_csv(path, CODE_COLUMNS, f"the codes of category {cat!r}")
            col = {h: k for k, h in enumerate(header)}
            codes: dict[int, int] = {}
            for line, cells in rows:
                code = _parse_int(cells[col["code"]], path, line, "code", 1)
                number = _parse_int(cells[col["number"]], path, line, "number", 1)
                _parse_int(cells[col["frequency"]] or "0", path, line, "frequency", 0)
                _parse_float(cells[col["coverage"]], path, line, "coverage")
                if number not in self.labels:
                    raise DatasetError(
                        f"{_at(path, line)}: label number {number} absent from label.csv",
                        path,
                        line,
                    )
                if code in codes:
                    raise DatasetError(f"{_at(path, line)}: duplicate code {code}", path, line)
                codes[code] = number
            arr = np.zeros(max(codes, default=0), dtype=np.int32)
            for code, number in codes.items():
                arr[code - 1] = number
            self.category_codes[cat] = arr

    def _load_index(self) -> None:
        path = self.root / "index.csv"
        self._index_path = path
        self._index_bytes = path.read_bytes() if path.is_file() else b""
        header, rows = _read_csv(path, None, "the image index")
        missing = [c for c in INDEX_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{_at(path, 1)}: missing column(s) {missing}; the header must start with "
                f"{','.join(INDEX_COLUMNS)}",
                path,
                1,
            )
        col = {h: k for k, h in enumerate(header)}
        columns = [h for h in header if h not in INDEX_COLUMNS]
        for c in columns:
            if c not in self._cat_index:
                raise DatasetError(
                    f"{_at(path, 1)}: category column {c!r} has no entry in category.csv",
                    path,
                    1,
                )
        absent = [c for c in self.categories if c not in col]
        if absent:
            raise DatasetError(
                f"{_at(path, 1)}: missing column(s) {absent} listed in category.csv", path, 1
            )
        images_dir = self.root / "images"
        self._rows: list[_Row] = []
        seg_size: tuple[int, int] | None = None
        seg_line = 0
        stats: list[tuple[str, int, int]] = []
        for line, cells in rows:
            image = _check_relpath(cells[col["image"]].strip(), path, line, "image")
            split = cells[col["split"]].strip()
            ih = _parse_int(cells[col["ih"]], path, line, "ih", 1)
            iw = _parse_int(cells[col["iw"]], path, line, "iw", 1)
            sh = _parse_int(cells[col["sh"]], path, line, "sh", 1)
            sw = _parse_int(cells[col["sw"]], path, line, "sw", 1)
            pngs: list[tuple[int, str]] = []
            numbers: list[tuple[int, int]] = []
            for cat in self.categories:
                g = self._cat_index[cat]
                for entry in (e.strip() for e in cells[col[cat]].split(";")):
                    if not entry:
                        continue
                    if entry.lower().endswith(".png"):
                        pngs.append((g, _check_relpath(entry, path, line, "segmentation")))
                    elif _INT.match(entry):
                        number = int(entry)
                        if number == 0:  # Broden omits zeros; 0 means unlabelled anyway.
                            continue
                        if number < 0 or number not in self.labels:
                            raise DatasetError(
                                f"{_at(path, line)}: label number {number} in column {cat!r} "
                                "absent from label.csv",
                                path,
                                line,
                            )
                        numbers.append((g, number))
                    else:
                        raise DatasetError(
                            f"{_at(path, line)}: malformed entry {entry!r} in column {cat!r} "
                            "(expected a .png path or a label number)",
                            path,
                            line,
                        )
            if self.split is not None and split != self.split:
                continue
            if seg_size is None:
                seg_size, seg_line = (sh, sw), line
            elif (sh, sw) != seg_size:
                raise DatasetError(
                    f"{_at(path, line)}: segmentation size {sh}x{sw} differs from {seg_size[0]}x"
                    f"{seg_size[1]} (line {seg_line}); all images must share one (sh, sw)",
                    path,
                    line,
                )
            for rel, what in [(image, "image")] + [(p, "segmentation PNG") for _, p in pngs]:
                try:
                    st = (images_dir / rel).stat()
                except OSError:
                    raise DatasetError(
                        f"{_at(path, line)}: {what} {str(images_dir / rel)!r} does not exist",
                        path,
                        line,
                    ) from None
                if what != "image":
                    stats.append((rel, st.st_size, st.st_mtime_ns))
            self._rows.append(_Row(line, image, split, ih, iw, pngs, numbers))
        if not self._rows:
            splits = sorted({cells[col["split"]].strip() for _, cells in rows})
            where = f" of split {self.split!r} (splits: {splits})" if self.split is not None else ""
            raise DatasetError(f"{path}: no images{where}", path)
        assert seg_size is not None
        self.seg_size: tuple[int, int] = seg_size
        self.max_channels: int = max(len(r.pngs) for r in self._rows)
        self.max_image_labels: int = max(len(r.numbers) for r in self._rows)
        h = hashlib.sha256()
        h.update(f"{CACHE_FORMAT}/{CACHE_VERSION}\0".encode())
        for blob in (self._index_bytes, self._label_bytes):
            h.update(len(blob).to_bytes(8, "little"))
            h.update(blob)
        h.update(json.dumps([self.split, self.categories]).encode())
        for rel, size, mtime in stats:
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
        self.digest: str = h.hexdigest()

    # ---- basic access ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split is not None else ""
        return f"BrodenDataset({str(self.root)!r}{split}: {len(self)} images)"

    def _row(self, index: int) -> _Row:
        i = operator.index(index)
        if not -len(self._rows) <= i < len(self._rows):
            raise IndexError(f"image index {i} out of range for {len(self._rows)} images")
        return self._rows[i]

    @property
    def num_labels(self) -> int:
        """``C``: one more than the largest label number."""
        return len(self.concept_category)

    def image_path(self, index: int) -> Path:
        """Path of image ``index`` (``<root>/images/<index.csv image>``)."""
        return self.root / "images" / self._row(index).image

    def name(self, index: int) -> str:
        """Image path as written in index.csv (relative to ``images/``)."""
        return self._row(index).image

    def image_split(self, index: int) -> str:
        """Split of image ``index``."""
        return self._row(index).split

    def image_size(self, index: int) -> tuple[int, int]:
        """``(ih, iw)`` of image ``index`` as declared in index.csv."""
        r = self._row(index)
        return r.ih, r.iw

    def _load_image(self, index: int) -> Any:
        from pyanalyzer.data.images import load_image
        from pyanalyzer.errors import ImageError

        r = self._row(index)
        path = self.root / "images" / r.image
        try:
            img = load_image(path)
        except ImageError as exc:
            raise DatasetError(f"{_at(self._index_path, r.line)}: {exc}", path, r.line) from None
        if (img.height, img.width) != (r.ih, r.iw):
            raise DatasetError(
                f"{_at(self._index_path, r.line)}: image {str(path)!r} is {img.height}x"
                f"{img.width} (HxW) but index.csv says ih={r.ih}, iw={r.iw}",
                path,
                r.line,
            )
        return img

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` at its stored size.

        Returns:
            uint8 ``[ih, iw, 3]`` RGB.

        Raises:
            DatasetError: unreadable, or its size differs from index.csv's ``ih, iw``.
        """
        return np.asarray(self._load_image(index).convert("RGB"), dtype=np.uint8)

    def pixels(self, index: int, spec: PreprocessSpec) -> np.ndarray:
        """Image ``index`` for a model (the :class:`~pyanalyzer.data.images.ImageSource` protocol).

        Returns:
            uint8 ``[H, W, C]`` at ``spec.input_size`` through ``spec.prepare_image``.

        Raises:
            DatasetError: unreadable, or its size differs from index.csv's ``ih, iw``.
        """
        return spec.prepare_image(self._load_image(index))

    # ---- segmentations -----------------------------------------------------------------------
    def _decode_row(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode one row from its PNGs: ``(seg [K, sh, sw], numbers [L], present [G])``."""
        r = self._row(index)
        sh, sw = self.seg_size
        seg = np.zeros((len(r.pngs), sh, sw), dtype=np.int32)
        present = np.zeros(len(self.categories), dtype=np.uint8)
        for k, (g, rel) in enumerate(r.pngs):
            path = self.root / "images" / rel
            try:
                lab = _decode_png(path)
            except DatasetError as exc:
                raise DatasetError(
                    f"{_at(self._index_path, r.line)}: {exc}", path, r.line
                ) from None
            if lab.shape != (sh, sw):
                raise DatasetError(
                    f"{_at(self._index_path, r.line)}: segmentation {str(path)!r} is "
                    f"{lab.shape[0]}x{lab.shape[1]} (HxW) but index.csv says sh={sh}, sw={sw}",
                    path,
                    r.line,
                )
            nz = lab[lab != 0]
            if nz.size:
                bad = nz[(nz >= len(self._known)) | (nz < 0)]
                if not bad.size:
                    bad = nz[~self._known[nz]]
                if bad.size:
                    raise DatasetError(
                        f"{_at(self._index_path, r.line)}: segmentation {str(path)!r} holds "
                        f"label number {int(bad.min())} absent from label.csv",
                        path,
                        r.line,
                    )
                present[g] = 1
            seg[k] = lab
        numbers = np.array([n for _, n in r.numbers], dtype=np.int32)
        for g, _ in r.numbers:
            present[g] = 1
        return seg, numbers, present

    def segmentation(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels of image ``index``.

        Returns:
            ``(seg, image_labels)``: int32 ``[K, sh, sw]`` label numbers of all its PNG
            channels (0 = unlabelled), and int32 ``[L]`` its image-level label numbers; ``K``
            and ``L`` vary per image. Read from the cache when there is one.

        Raises:
            DatasetError: a PNG is unreadable, of the wrong size or holds an unknown label.
        """
        i = operator.index(index)
        self._row(i)
        cache = self._open_cache()
        if cache is None:
            seg, numbers, _ = self._decode_row(i)
            return seg, numbers
        i %= len(self)
        k = int(cache["n_channels"][i])
        n = int(cache["n_image_labels"][i])
        seg = cache["seg"][i, :k].astype(np.int32) if k else np.zeros((0, *self.seg_size), np.int32)
        return seg, cache["image_labels"][i, :n].astype(np.int32)

    def segmentation_batch(
        self, indices: Sequence[int] | np.ndarray, K: int | None = None, L: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels of several images, zero-padded to fixed shapes (the dissection tally's input).

        Args:
            indices: ``B`` image indices.
            K: Channels per image; default :attr:`max_channels`.
            L: Image-level labels per image; default :attr:`max_image_labels`.

        Returns:
            ``(seg, image_labels, image_categories)``: int32 ``[B, K, sh, sw]``, int32
            ``[B, L]`` (both padded with 0 = unlabelled), and uint8 ``[B, G]`` where
            ``image_categories[b, g] == 1`` when image ``b`` has any label of category ``g``
            (a nonzero pixel in one of its PNGs or an image-level number in its column).

        Raises:
            UserInputError: ``K`` or ``L`` is smaller than an image needs.
            DatasetError: as :meth:`segmentation`.
        """
        idx = [operator.index(i) for i in np.asarray(indices).reshape(-1).tolist()]
        for i in idx:
            self._row(i)
        idx = [i % len(self) for i in idx]
        K = self.max_channels if K is None else operator.index(K)
        L = self.max_image_labels if L is None else operator.index(L)
        if K < 0 or L < 0:
            raise UserInputError(f"K and L must be >= 0, got K={K}, L={L}")
        sh, sw = self.seg_size
        B, G = len(idx), len(self.categories)
        seg = np.zeros((B, K, sh, sw), dtype=np.int32)
        numbers = np.zeros((B, L), dtype=np.int32)
        cats = np.zeros((B, G), dtype=np.uint8)

        def need(b: int, k: int, n: int) -> None:
            if k > K or n > L:
                r = self._rows[idx[b]]
                raise UserInputError(
                    f"image {r.image!r} has {k} PNG channels and {n} image-level labels, more "
                    f"than K={K}, L={L} (the dataset needs K={self.max_channels}, "
                    f"L={self.max_image_labels})"
                )

        cache = self._open_cache()
        if cache is None:
            for b, i in enumerate(idx):
                s, nums, present = self._decode_row(i)
                need(b, len(s), len(nums))
                seg[b, : len(s)] = s
                numbers[b, : len(nums)] = nums
                cats[b] = present
            return seg, numbers, cats
        if B == 0:
            return seg, numbers, cats
        ks = cache["n_channels"][...][idx]
        ns = cache["n_image_labels"][...][idx]
        for b in range(B):
            need(b, int(ks[b]), int(ns[b]))
        kk, ll = min(K, self.max_channels), min(L, self.max_image_labels)
        # h5py reads a list of indices in one call if it is increasing and unique.
        uniq, inverse = np.unique(np.asarray(idx), return_inverse=True)
        rows = uniq.tolist()
        if kk:
            seg[:, :kk] = cache["seg"][rows, :kk][inverse]
        if ll:
            numbers[:, :ll] = cache["image_labels"][rows, :ll][inverse]
        cats[:] = cache["categories"][rows][inverse]
        return seg, numbers, cats

    # ---- the decoded-label cache -------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        """``<cache_dir>/<digest>.h5``; the digest covers index.csv, label.csv, the split and the
        (path, size, mtime) of every selected segmentation PNG."""
        return self.cache_dir / f"{self.digest}.h5"

    def _open_cache(self) -> h5py.File | None:
        if self._cache is not None:
            return self._cache
        if self._cache_checked:
            return None
        self._cache_checked = True
        self._cache = self._try_open(self.cache_path)
        return self._cache

    def _try_open(self, path: Path) -> h5py.File | None:
        import h5py

        if not path.is_file():
            return None
        try:
            f = h5py.File(path, "r")
        except OSError:
            return None
        a = f.attrs
        ok = (
            a.get("format") == CACHE_FORMAT
            and int(a.get("format_version", -1)) == CACHE_VERSION
            and a.get("digest") == self.digest
            and all(
                k in f
                for k in ("seg", "n_channels", "image_labels", "n_image_labels", "categories")
            )
            and f["seg"].shape == (len(self), self.max_channels, *self.seg_size)
            and f["image_labels"].shape == (len(self), self.max_image_labels)
            and f["categories"].shape == (len(self), len(self.categories))
        )
        if not ok:
            f.close()
            return None
        return f

    def prepare_cache(self, progress: bool = True) -> Path:
        """Decode every segmentation once into the HDF5 cache, or reuse the one there.

        Later :meth:`segmentation` and :meth:`segmentation_batch` calls read from it. The file
        is written to a temporary name and renamed into place, so concurrent runs and crashes
        never leave a partial cache; datasets whose files changed get a new digest (a new file).

        Args:
            progress: Show a progress bar on stderr while decoding.

        Returns:
            The cache file.

        Raises:
            DatasetError: A PNG is defective (nothing is written then).
        """
        if self._open_cache() is not None:
            return self.cache_path
        import h5py

        from pyanalyzer._progress import progress_bar

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        final = self.cache_path
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        n, K, L, G = len(self), self.max_channels, self.max_image_labels, len(self.categories)
        sh, sw = self.seg_size
        dtype = np.uint16 if self.num_labels <= MAX_PNG_LABEL + 1 else np.int32
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs.update(
                    {
                        "format": CACHE_FORMAT,
                        "format_version": CACHE_VERSION,
                        "digest": self.digest,
                        "root": str(self.root.resolve()),
                        "split": "" if self.split is None else self.split,
                        "categories": json.dumps(self.categories),
                    }
                )
                if K:
                    dseg = f.create_dataset(
                        "seg", (n, K, sh, sw), dtype=dtype, chunks=(1, K, sh, sw),
                        compression="gzip", compression_opts=4, shuffle=True,
                    )  # fmt: skip
                else:
                    dseg = f.create_dataset("seg", (n, 0, sh, sw), dtype=dtype)
                n_channels = np.zeros(n, dtype=np.int32)
                n_numbers = np.zeros(n, dtype=np.int32)
                numbers = np.zeros((n, L), dtype=np.int32)
                present = np.zeros((n, G), dtype=np.uint8)
                with progress_bar(n, label="decoding concept labels", enabled=progress) as bar:
                    for i in range(n):
                        seg, nums, pres = self._decode_row(i)
                        if len(seg):
                            block = np.zeros((K, sh, sw), dtype=dtype)
                            block[: len(seg)] = seg
                            dseg[i] = block
                        n_channels[i], n_numbers[i] = len(seg), len(nums)
                        numbers[i, : len(nums)] = nums
                        present[i] = pres
                        bar.update(1)
                f.create_dataset("n_channels", data=n_channels)
                f.create_dataset("n_image_labels", data=n_numbers)
                f.create_dataset("image_labels", data=numbers)
                f.create_dataset("categories", data=present)
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._cache_checked = False
        if self._open_cache() is None:  # pragma: no cover - we just wrote it
            raise DatasetError(f"{final}: the label cache just written cannot be read", final)
        return final

    def close(self) -> None:
        """Close the cache file (if open); the dataset stays usable."""
        if self._cache is not None:
            self._cache.close()
        self._cache = None
        self._cache_checked = False

    def __enter__(self) -> BrodenDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # h5py handles do not cross processes
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_cache_checked"] = False
        return state

    # ---- checks and summary ------------------------------------------------------------------
    def validate(self, progress: bool = False) -> int:
        """Decode every image and PNG of the selection, checking sizes and label numbers.

        Args:
            progress: Show a progress bar on stderr.

        Returns:
            The number of images checked.

        Raises:
            DatasetError: The first defect found.
        """
        from pyanalyzer._progress import progress_bar

        with progress_bar(len(self), label="checking images", enabled=progress) as bar:
            for i in range(len(self)):
                self._load_image(i)
                self._decode_row(i)
                bar.update(1)
        return len(self)

    def summary(self) -> dict[str, Any]:
        """Plain data describing the dataset (for ``pyanalyzer concepts info``)."""
        splits: dict[str, int] = {}
        sizes: dict[tuple[int, int], int] = {}
        pixel_cats: set[int] = set()
        image_cats: set[int] = set()
        for r in self._rows:
            splits[r.split] = splits.get(r.split, 0) + 1
            sizes[(r.ih, r.iw)] = sizes.get((r.ih, r.iw), 0) + 1
            pixel_cats.update(g for g, _ in r.pngs)
            image_cats.update(g for g, _ in r.numbers)
        cats = []
        for g, c in enumerate(self.categories):
            kinds = [k for k, s in (("pixel", pixel_cats), ("image", image_cats)) if g in s]
            cats.append(
                {
                    "name": c,
                    "labels": sum(1 for lab in self.labels.values() if c in lab.categories),
                    "primary": int(np.count_nonzero(self.concept_category == g)),
                    "levels": kinds,
                }
            )
        return {
            "root": str(self.root),
            "split": self.split,
            "images": len(self),
            "splits": splits,
            "image_sizes": [[h, w, n] for (h, w), n in sorted(sizes.items())],
            "seg_size": list(self.seg_size),
            "labels": len(self.labels),
            "categories": cats,
            "max_channels": self.max_channels,
            "max_image_labels": self.max_image_labels,
            "cache": str(self.cache_path) if self.cache_path.is_file() else None,
        }


# ---- the writers -------------------------------------------------------------------------------


@dataclass
class BrodenRecord:
    """One image of a dataset being written by :func:`write_broden`.

    Attributes:
        name: Image path relative to ``images/`` (``"synth/000001.png"``); its extension picks
            the encoding when ``image`` is an array.
        image: uint8 ``[H, W, 3]`` (or ``[H, W]``) pixels, or an existing image file to copy.
        pixel: Category -> pixel-level channels, each integer ``[sh, sw]`` of global label
            numbers (0 = unlabelled). Written as ``<stem>_<category>.png``, or
            ``<stem>_<category>_<k>.png`` for several channels, as Broden names them.
        image_labels: Category -> image-level label numbers (zeros are dropped, as Broden).
        split: The split written to index.csv.
        seg_size: ``(sh, sw)`` when there are no pixel channels; default ``(H // 2, W // 2)``.
    """

    name: str
    image: np.ndarray | str | os.PathLike[str]
    pixel: Mapping[str, Sequence[np.ndarray]] = field(default_factory=dict)
    image_labels: Mapping[str, Sequence[int]] = field(default_factory=dict)
    split: str = "train"
    seg_size: tuple[int, int] | None = None


@contextlib.contextmanager
def _atomic_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``out_dir`` when the block succeeds."""
    out = Path(os.path.abspath(os.fspath(out_dir)))
    if not out.name:
        raise UserInputError(f"cannot write a dataset to {str(out)!r}")
    if out.exists():
        if not out.is_dir():
            raise UserInputError(f"output {str(out)!r} exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise UserInputError(
                f"output folder {str(out)!r} is not empty; pass overwrite=True (--overwrite) "
                "to replace it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = out.with_name(f"{out.name}.tmp-{token}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f"{out.name}.old-{token}")
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "\n\r"):
        raise UserInputError(f"{what} must be a non-empty one-line string, got {name!r}")
    return name.strip()


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read image: {exc}", path) from None


class _Writer:
    """Writes records into a dataset folder and tallies Broden's label statistics."""

    def __init__(
        self,
        root: Path,
        labels: Mapping[int, str],
        categories: Sequence[str],
        syns: Mapping[int, Sequence[str]] | None,
    ) -> None:
        self.root = root
        self.images = root / "images"
        self.images.mkdir()
        self.names: dict[int, str] = {}
        for number, name in labels.items():
            if isinstance(number, bool) or not isinstance(number, (int, np.integer)):
                raise UserInputError(f"label numbers must be integers, got {number!r}")
            if not 1 <= number <= MAX_PNG_LABEL:
                raise UserInputError(f"label numbers must be in 1..{MAX_PNG_LABEL}, got {number}")
            self.names[int(number)] = _check_name(name, f"name of label {number}")
        seen: dict[str, int] = {}
        for number, name in self.names.items():
            if name in seen:
                raise UserInputError(f"labels {seen[name]} and {number} share the name {name!r}")
            if name == "-":
                raise UserInputError(f"label {number}: '-' is reserved for unlabelled (0)")
            seen[name] = number
        self.cats = list(categories)
        for c in self.cats:
            if not isinstance(c, str) or not _CATEGORY_NAME.match(c) or c in INDEX_COLUMNS:
                raise UserInputError(
                    f"bad category name {c!r}: letters, digits, '_' or '-', starting with a letter"
                )
        if len(set(self.cats)) != len(self.cats):
            raise UserInputError(f"duplicate category names in {self.cats}")
        self.cat_index = {c: k for k, c in enumerate(self.cats)}
        self.syns = syns or {}
        self.known = np.zeros(MAX_PNG_LABEL + 1, dtype=bool)
        self.known[list(self.names)] = True
        self.freq: dict[tuple[int, str], int] = {}  # (label, category) -> images
        self.cov: dict[tuple[int, str], float] = {}  # (label, category) -> summed pixel fraction
        self.used: set[str] = set()
        self.rows: list[dict[str, str]] = []
        self.files: set[str] = set()
        self.seg_size: tuple[int, int] | None = None
        self.first = ""

    def _claim(self, rel: str) -> Path:
        if rel in self.files:
            raise UserInputError(f"two records write the file images/{rel}")
        self.files.add(rel)
        dest = self.images / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def _write_image(self, rel: str, image: Any) -> tuple[int, int]:
        from PIL import Image

        dest = self._claim(rel)
        if isinstance(image, (str, os.PathLike)):
            ih, iw = _image_size(Path(image))
            shutil.copyfile(image, dest)
            return ih, iw
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
            raise UserInputError(
                f"record {rel}: image must be uint8 [H, W, 3] or [H, W], got {arr.dtype} "
                f"{list(arr.shape)}"
            )
        jpeg = dest.suffix.lower() in (".jpg", ".jpeg")
        Image.fromarray(arr).save(dest, **({"format": "JPEG", "quality": 95} if jpeg else {}))
        return arr.shape[0], arr.shape[1]

    def _seg_size(self, rel: str, rec: BrodenRecord, ih: int, iw: int) -> tuple[int, int]:
        size = rec.seg_size
        for maps in rec.pixel.values():
            if size is None and len(maps):
                size = np.shape(maps[0])[-2:]  # type: ignore[assignment]
        if size is None:
            size = (max(1, ih // 2), max(1, iw // 2))
        size = (int(size[0]), int(size[1]))
        if self.seg_size is None:
            self.seg_size, self.first = size, rel
        elif size != self.seg_size:
            raise UserInputError(
                f"record {rel}: segmentation size {size[0]}x{size[1]} differs from "
                f"{self.seg_size[0]}x{self.seg_size[1]} of {self.first}; all must be equal"
            )
        return size

    def add(self, rec: BrodenRecord) -> None:
        rel = str(PurePosixPath(_check_name(rec.name, "record name").replace("\\", "/")))
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or p.suffix.lower() not in _IMAGE_EXTENSIONS:
            raise UserInputError(
                f"record name {rec.name!r} must be a relative image path ending in one of "
                f"{', '.join(_IMAGE_EXTENSIONS)}"
            )
        for c in list(rec.pixel) + list(rec.image_labels):
            if c not in self.cat_index:
                raise UserInputError(f"record {rel}: unknown category {c!r}; known {self.cats}")
        ih, iw = self._write_image(rel, rec.image)
        size = self._seg_size(rel, rec, ih, iw)
        stem = str(p.with_suffix(""))
        cells: dict[str, list[str]] = {c: [] for c in self.cats}
        coverage: dict[tuple[int, str], float] = {}  # of this image
        for c, maps in rec.pixel.items():
            for k, m in enumerate(maps):
                m = np.asarray(m)
                if m.shape != size or not np.issubdtype(m.dtype, np.integer):
                    raise UserInputError(
                        f"record {rel}: {c} channel {k} must be integer {list(size)}, got "
                        f"{m.dtype} {list(m.shape)}"
                    )
                values, counts = np.unique(m, return_counts=True)
                inside = (values >= 0) & (values <= MAX_PNG_LABEL)
                bad = values[~inside | ((values > 0) & ~self.known[np.where(inside, values, 0)])]
                if bad.size:
                    raise UserInputError(
                        f"record {rel}: {c} channel {k} holds label number {int(bad[0])}, "
                        "absent from labels"
                    )
                png = f"{stem}_{c}.png" if len(maps) == 1 else f"{stem}_{c}_{k + 1}.png"
                encode_label_png(m, self._claim(png))
                cells[c].append(png)
                for v, n in zip(values.tolist(), counts.tolist(), strict=True):
                    if v:
                        coverage[(v, c)] = coverage.get((v, c), 0.0) + n / (size[0] * size[1])
        for c, numbers in rec.image_labels.items():
            for v in map(operator.index, numbers):
                if v == 0:  # Broden omits zeros
                    continue
                if v not in self.names:
                    raise UserInputError(
                        f"record {rel}: image-level {c} label {v} absent from labels"
                    )
                cells[c].append(str(v))
                coverage[(v, c)] = max(coverage.get((v, c), 0.0), 1.0)  # the whole image
        for key, value in coverage.items():
            self.freq[key] = self.freq.get(key, 0) + 1
            self.cov[key] = self.cov.get(key, 0.0) + value
        row = {
            "image": rel, "split": _check_name(rec.split, "split"),
            "ih": str(ih), "iw": str(iw), "sh": str(size[0]), "sw": str(size[1]),
        }  # fmt: skip
        for c, entries in cells.items():
            if entries:
                self.used.add(c)
            row[c] = ";".join(entries)
        self.rows.append(row)

    def _csv(self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        with open(self.root / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)

    def finish(self, description: str) -> None:
        if not self.rows or self.seg_size is None:
            raise UserInputError("no images to write")
        cats = [c for c in self.cats if c in self.used]
        freq, cov, names = self.freq, self.cov, self.names
        by_label: dict[int, list[tuple[str, int]]] = {}
        for (v, c), f in sorted(freq.items(), key=lambda kv: (-kv[1], self.cat_index[kv[0][1]])):
            by_label.setdefault(v, []).append((c, f))
        self._csv(
            "label.csv",
            LABEL_COLUMNS,
            (
                [
                    v,
                    names[v],
                    ";".join(f"{c}({f})" for c, f in by_label[v]),
                    sum(f for _, f in by_label[v]),
                    f"{sum(cov[(v, c)] for c, _ in by_label[v]):f}",
                    ";".join(s for s in self.syns.get(v, ()) if s != names[v]),
                ]  # fmt: skip
                for v in sorted(by_label)
            ),
        )
        members = {c: sorted(v for (v, cc) in freq if cc == c) for c in cats}
        self._csv(
            "category.csv",
            CATEGORY_COLUMNS,
            (
                [
                    c,
                    min(ms, default=""),
                    max(ms, default=""),
                    len(ms),
                    sum(freq[(v, c)] for v in ms),
                ]
                for c, ms in members.items()
            ),
        )
        for c, ms in members.items():
            ordered = sorted(ms, key=lambda v: (-freq[(v, c)], -cov[(v, c)], v))
            self._csv(
                f"c_{c}.csv",
                CODE_COLUMNS,
                (
                    [code, v, names[v], freq[(v, c)], format(cov[(v, c)], ".12g")]
                    for code, v in enumerate(ordered, start=1)
                ),
            )
        self._csv(
            "index.csv",
            list(INDEX_COLUMNS) + cats,
            ([row[k] for k in INDEX_COLUMNS] + [row[c] for c in cats] for row in self.rows),
        )
        sh, sw = self.seg_size
        text = _README.format(n=len(self.rows), sh=sh, sw=sw, cats=", ".join(cats))
        if description.strip():
            text = f"{description.strip()}\n\n{text}"
        (self.root / "README.txt").write_text(text, encoding="utf-8")


def write_broden(
    out_dir: str | os.PathLike[str],
    records: Iterable[BrodenRecord],
    labels: Mapping[int, str],
    categories: Sequence[str],
    *,
    syns: Mapping[int, Sequence[str]] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    total: int | None = None,
    description: str = "",
) -> Path:
    """Write a dataset in the Broden layout (see the module docstring), atomically.

    Records are streamed (one image in memory at a time). Statistics follow Broden's
    ``joinseg.py``: per (label, category), *frequency* = number of images and *coverage* = summed
    fraction of the image's pixels (image-level labels: 1.0); ``label.csv`` lists the labels that
    occur, with their categories most frequent first and frequency/coverage summed over
    categories; ``category.csv`` lists the categories that occur in ``categories`` order with the
    smallest and largest label number, the label count and the summed frequencies;
    ``c_<category>.csv`` codes labels 1.. by decreasing frequency, then coverage, then number.

    Args:
        out_dir: Output folder; written as ``<out_dir>.tmp-xxxx`` and renamed when complete.
        records: The images with their labels.
        labels: Label number (1..65535) -> unique name.
        categories: Category names, in the order of index.csv's columns.
        syns: Optional synonyms per label number.
        overwrite: Replace a non-empty ``out_dir``.
        progress: Show a progress bar on stderr.
        total: Number of records, for the progress bar.
        description: First paragraph of the dataset's README.txt.

    Returns:
        The output folder.

    Raises:
        UserInputError: Bad parameters, a record naming an unknown label or category, a
            non-empty ``out_dir`` without ``overwrite``; nothing is left behind.
    """
    from pyanalyzer._progress import progress_bar

    with _atomic_dir(out_dir, overwrite) as tmp:
        writer = _Writer(tmp, labels, categories, syns)
        with progress_bar(total or 0, label="writing dataset", enabled=progress) as bar:
            for rec in records:
                writer.add(rec)
                bar.update(1)
        writer.finish(description)
    return Path(os.path.abspath(os.fspath(out_dir)))


_README = """\
A concept dataset in the Broden format (Bau et al., Network Dissection, CVPR 2017),
written by pyanalyzer: {n} images, segmentation size {sh}x{sw}, categories: {cats}.

index.csv     image,split,ih,iw,sh,sw, then one column per category; a cell lists
              ';'-separated entries: a .png path (relative to images/) whose pixels hold
              the label number R + 256 * G (0 = unlabelled), or an image-level label number.
label.csv     number,name,category,frequency,coverage,syns (category: 'name(images);...').
category.csv  name,first,last,count,frequency.
c_<cat>.csv   code,number,name,frequency,coverage: a dense code per category.
"""


def _broden_name(category: str, name: str) -> str:
    """Broden's naming: colours get ``-c``, scenes ``-s`` (NetDissect's adeseg/osseg/dtdseg)."""
    return {"color": f"{name}-c", "scene": f"{name}-s"}.get(category, name)


def synth_dataset(
    out_dir: str | os.PathLike[str],
    n_images: int = 1000,
    size: int = 64,
    seed: int = 0,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write synthetic scenes (:mod:`pyanalyzer.data.synthetic`) as a Broden dataset.

    Categories (index.csv column order): ``color``, ``shape`` and ``texture`` pixel-level
    (one PNG each), ``scene`` and ``texture`` image-level (``texture``'s number is the main
    object's texture, its PNG the texture of every pixel): ``texture`` cells hold a PNG and a
    number. Label numbers are the generator's stable concept ids
    (:func:`pyanalyzer.data.synthetic.concepts`), so datasets of any seed and size share them;
    only labels that occur are listed. Names follow Broden: ``red-c``, ``sky-s``, ``circle``,
    ``striped``. Images are ``images/synth/<index:06d>.png`` (lossless), segmentations are
    ``size // 2`` square, downsampled from the exact masks by :func:`resize_labels` (nearest
    neighbour at output pixel centres: ``mask[1::2, 1::2]`` for even sizes). Every image is in
    split ``train``.

    Args:
        out_dir: Output folder (written atomically).
        n_images: Number of scenes (>= 1), scene ``i`` being ``synthetic.render(i, seed, size)``.
        size: Image side (>= 16).
        seed: Scene seed (>= 0).
        progress: Show a progress bar on stderr.
        overwrite: Replace a non-empty ``out_dir``.

    Returns:
        The output folder.

    Raises:
        UserInputError: A bad parameter or a non-empty ``out_dir`` without ``overwrite``.
    """
    from pyanalyzer.data import synthetic as syn

    n_images = _check_int("n_images", n_images, 1)
    size = _check_int("size", size, syn.MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    labels = {c.id: _broden_name(c.category, c.name) for c in syn.concepts()}
    lut = {c: syn.concept_lut(c) for c in syn.CATEGORIES}
    seg = (size // 2, size // 2)

    def records() -> Iterator[BrodenRecord]:
        for i in range(n_images):
            sc = syn.render(i, seed, size)
            pixel = {
                c: [lut[c][resize_labels(sc.masks[c], seg)]] for c in ("color", "shape", "texture")
            }
            image_labels = {c: [int(lut[c][sc.labels[c]])] for c in ("scene", "texture")}
            yield BrodenRecord(f"synth/{i:06d}.png", sc.image, pixel, image_labels)

    return write_broden(
        out_dir,
        records(),
        labels,
        syn.CATEGORIES,
        overwrite=overwrite,
        progress=progress,
        total=n_images,
        description=f"Synthetic scenes of pyanalyzer.data.synthetic: n_images={n_images}, "
        f"size={size}, seed={seed}.",
    )


def read_class_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read a class list for :func:`build_dataset`.

    Two forms: plain text, one name per line, line ``i`` (0-based) naming mask index ``i``; or
    CSV lines ``index,name`` (an ``index,name`` header is allowed). Index 0 is the background:
    it is read but never becomes a concept (Broden's 0 = unlabelled). Blank lines are not
    allowed between names.

    Returns:
        Mask index -> class name, background included.

    Raises:
        DatasetError: Missing file, malformed line, duplicate index or name, index outside
            0..254 (255 is VOC's "ignore").
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: missing file (class names)", p)
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{p}: cannot read class names: {exc}", p) from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetError(f"{p}: no class names", p)
    is_csv = "," in lines[0]
    out: dict[int, str] = {}
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            raise DatasetError(f"{_at(p, n)}: blank line among the class names", p, n)
        if is_csv:
            parts = next(csv.reader([text]))
            if n == 1 and [s.strip().lower() for s in parts] == ["index", "name"]:
                continue
            if len(parts) != 2:
                raise DatasetError(f"{_at(p, n)}: expected 'index,name', got {text!r}", p, n)
            index = _parse_int(parts[0], p, n, "index", 0)
            name = parts[1].strip()
        else:
            index, name = n - 1, text.strip()
        if index > 254:
            raise DatasetError(
                f"{_at(p, n)}: class index {index} outside 0..254 (255 means ignore)", p, n
            )
        if not name:
            raise DatasetError(f"{_at(p, n)}: empty class name", p, n)
        if index in out:
            raise DatasetError(f"{_at(p, n)}: duplicate class index {index}", p, n)
        if name in out.values():
            raise DatasetError(f"{_at(p, n)}: duplicate class name {name!r}", p, n)
        out[index] = name
    return out


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)  # P: the palette indices, not the colours
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read mask: {exc}", path) from None
    if mode not in ("P", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        raise DatasetError(
            f"{path}: mask must be a palette (P) or single-channel index PNG, got mode {mode}",
            path,
        )
    return arr.astype(np.int64)


def _files_by_stem(folder: Path, extensions: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder does not exist", folder)
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in extensions:
            if p.stem in out:
                raise DatasetError(
                    f"{p}: file stem {p.stem!r} also used by {out[p.stem]} ({what} are matched "
                    "by stem)",
                    p,
                )
            out[p.stem] = p
    if not out:
        raise DatasetError(f"{folder}: no {what} ({', '.join(extensions)})", folder)
    return out


def build_dataset(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    labels_file: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    add_colors: bool = True,
    category: str = "object",
    *,
    size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build a Broden dataset from a user's images and index masks (PASCAL VOC style).

    Masks are PNGs matched to images by file stem (``2007_000032.png`` <->
    ``2007_000032.jpg``); images without a mask are skipped. A mask is a palette PNG whose
    pixel index is the class (as VOC's SegmentationClass) or a single-channel index PNG; 0
    (background) and 255 (VOC's "ignore" border) become unlabelled. Class ``i`` of
    ``labels_file`` (:func:`read_class_names`) becomes label number ``i``, so label numbers
    equal mask indices; with ``add_colors`` the eleven colour concepts (``black-c``...) follow
    as numbers ``max index + 1 ...``, named per pixel by :func:`pyanalyzer.data.colors.name_colors`
    on the full-size image. Only labels that occur are listed.

    Segmentations are ``(ih // 2, iw // 2)`` (Broden's convention), downsampled by
    :func:`resize_labels`. All images must share one size unless ``size`` is given; then images
    are resized to ``size x size`` (bilinear, stored as PNG) and masks by nearest neighbour.
    Without ``size``, image files are copied unchanged.

    Args:
        images_dir: Folder of images (searched recursively).
        masks_dir: Folder of mask PNGs (searched recursively).
        labels_file: Class names (see :func:`read_class_names`).
        out_dir: Output folder (written atomically).
        add_colors: Add Broden's pixel-level ``color`` category.
        category: Category of the mask classes (``object``, ``part``, ``material``...).
        size: Resize everything to ``size x size`` (>= 16).
        overwrite: Replace a non-empty ``out_dir``.
        progress: Show a progress bar on stderr.

    Returns:
        The output folder.

    Raises:
        DatasetError: A defective input file (named in the message).
        UserInputError: A bad parameter or a non-empty ``out_dir`` without ``overwrite``.
    """
    from PIL import Image

    from pyanalyzer.data.colors import COLOR_NAMES, name_colors
    from pyanalyzer.data.images import IMAGE_EXTENSIONS, load_image
    from pyanalyzer.errors import ImageError

    if (
        not isinstance(category, str)
        or not _CATEGORY_NAME.match(category)
        or category in INDEX_COLUMNS
    ):
        raise UserInputError(f"bad category name {category!r}")
    if add_colors and category == "color":
        raise UserInputError("category 'color' is taken by the colour concepts; use --no-colors")
    if size is not None:
        size = _check_int("size", size, 16)
    classes = read_class_names(labels_file)
    images = _files_by_stem(Path(images_dir), IMAGE_EXTENSIONS, "images")
    masks = _files_by_stem(Path(masks_dir), (".png",), "masks")
    for stem, mpath in masks.items():
        if stem not in images:
            raise DatasetError(f"{mpath}: no image with stem {stem!r} in {images_dir}", mpath)
    labels = {i: name for i, name in classes.items() if i != 0}
    color_base = max(classes) + 1
    if add_colors:
        for k, c in enumerate(COLOR_NAMES):
            name = _broden_name("color", c)
            if name in labels.values():
                raise DatasetError(
                    f"{labels_file}: class name {name!r} clashes with a colour concept", labels_file
                )
            labels[color_base + k] = name
    lut = np.zeros(256, dtype=np.int32)  # mask index -> label number (0 and 255 -> 0)
    for i in classes:
        lut[i] = i
    valid = np.zeros(len(lut), dtype=bool)
    valid[list(classes)] = True
    valid[0] = valid[255] = True
    color_lut = np.zeros(len(COLOR_NAMES) + 1, dtype=np.int32)
    color_lut[1:] = np.arange(color_base, color_base + len(COLOR_NAMES))
    cats = (["color"] if add_colors else []) + [category]
    first: list[Any] = []

    def records() -> Iterator[BrodenRecord]:
        for stem, mpath in masks.items():
            ipath = images[stem]
            mask = _read_mask(mpath)
            try:
                img = load_image(ipath)
            except ImageError as exc:
                raise DatasetError(str(exc), ipath) from None
            if mask.shape != (img.height, img.width):
                raise DatasetError(
                    f"{mpath}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but image {ipath} "
                    f"is {img.height}x{img.width}",
                    mpath,
                )
            bad = (mask < 0) | (mask >= len(lut))
            bad[~bad] = ~valid[mask[~bad]]
            if bad.any():
                v = int(mask[bad].flat[0])
                raise DatasetError(
                    f"{mpath}: mask index {v} is not in {labels_file} (nor 0 or 255)", mpath
                )
            if size is not None:
                rgb_img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                mask = resize_labels(mask, (size, size))
                image: Any = np.asarray(rgb_img, dtype=np.uint8)
                name = f"{stem}.png"
            else:
                if not first:
                    first.append((img.height, img.width, ipath))
                elif (img.height, img.width) != first[0][:2]:
                    h0, w0, p0 = first[0]
                    raise DatasetError(
                        f"{ipath}: image is {img.height}x{img.width} (HxW) but {p0} is {h0}x{w0}; "
                        "pass size=S (--size S) to resize every image to SxS",
                        ipath,
                    )
                image = ipath
                name = f"{stem}{ipath.suffix.lower()}"
            h, w = mask.shape
            seg = (max(1, h // 2), max(1, w // 2))
            pixel = {category: [resize_labels(lut[mask], seg)]}
            if add_colors:
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8) if size is None else image
                pixel["color"] = [resize_labels(color_lut[name_colors(rgb)], seg)]
            yield BrodenRecord(name, image, pixel, {}, "train", seg)

    return write_broden(
        out_dir,
        records(),
        labels,
        cats,
        overwrite=overwrite,
        progress=progress,
        total=len(masks),
        description=f"Built from images {images_dir}, masks {masks_dir}, classes {labels_file}.",
    )
