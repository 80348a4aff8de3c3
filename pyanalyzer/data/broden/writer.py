"""The writing side of the Broden format: :class:`BrodenRecord` and :func:`write_broden`.

A dataset is written into a temporary sibling folder and renamed into place when complete, so a
failure (a defective record, a crash) leaves nothing behind and never half a dataset.
"""

from __future__ import annotations

import contextlib
import csv
import operator
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pyanalyzer._io import staged_dir
from pyanalyzer.data.broden.codec import MAX_PNG_LABEL, encode_label_png
from pyanalyzer.data.broden.format import (
    _CATEGORY_NAME,
    CATEGORY_COLUMNS,
    CODE_COLUMNS,
    INDEX_COLUMNS,
    LABEL_COLUMNS,
    DatasetError,
)
from pyanalyzer.errors import UserInputError

__all__ = ["BrodenRecord", "write_broden"]

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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
    """Yield a temporary sibling folder, ``<out_dir>.tmp-<pid>-<hex>``, that replaces ``out_dir`` when
    the block succeeds; a non-empty ``out_dir`` only with ``overwrite``."""
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
    # the writer's pid in the name lets the next run remove it at once if we are killed
    temp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    with staged_dir(out, temp) as tmp:
        yield tmp


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "\n\r"):
        raise UserInputError(f"{what} must be a non-empty one-line string, got {name!r}")
    return name.strip()


def _image_size(path: Path) -> tuple[int, int]:
    """An image file's ``(height, width)`` from its header (checked by ``open_image``)."""
    from pyanalyzer.data.images import open_image

    def error(message: str) -> DatasetError:
        return DatasetError(message, path)

    with open_image(path, "image", error=error) as img:
        return img.height, img.width


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
        if dest.suffix.lower() in (".jpg", ".jpeg"):
            Image.fromarray(arr).save(dest, format="JPEG", quality=95)
        else:
            Image.fromarray(arr).save(dest)
        return arr.shape[0], arr.shape[1]

    def _seg_size(self, rel: str, rec: BrodenRecord, ih: int, iw: int) -> tuple[int, int]:
        size = rec.seg_size
        for maps in rec.pixel.values():
            if size is None and len(maps):
                size = np.shape(maps[0])[-2:]
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
    """Write a dataset in the Broden layout (see :mod:`pyanalyzer.data.broden`), atomically.

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
