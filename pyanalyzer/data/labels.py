"""Class labels of an image folder, from a CSV file (for the unit ablation's accuracies).

The file has one row per image, ``image,label``: ``image`` is the file's path relative to the
folder (``cats/001.jpg``) or its bare name when that is unique; ``label`` is a class number
(0-based) or a class name of the model. A first row ``image,label`` (any header whose label is
not a class) is skipped; blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pyanalyzer.errors import UserInputError

__all__ = ["read_labels"]

MAX_LABEL_FILE = 64 << 20
"""The largest labels file read (bytes)."""


def read_labels(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    class_names: Sequence[str],
) -> np.ndarray:
    """int64 ``[len(images)]``: the class of every image of the folder ``root``, in order.

    Raises:
        UserInputError: an unreadable file, a malformed row, an unknown image or class, an
            image labelled twice or not at all (one line naming the first).
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"labels file {str(p)!r} does not exist or is not a file")
    if p.stat().st_size > MAX_LABEL_FILE:
        raise UserInputError(f"labels file {str(p)!r} is larger than {MAX_LABEL_FILE >> 20} MiB")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read labels file {str(p)!r}: {exc}") from None
    base = Path(root)
    rel = [Path(i).resolve().relative_to(base.resolve()).as_posix() for i in images]
    index = {r: k for k, r in enumerate(rel)}
    names: dict[str, list[int]] = {}
    for k, r in enumerate(rel):
        names.setdefault(Path(r).name, []).append(k)
    classes = {str(c): k for k, c in enumerate(class_names)}
    out = np.full(len(rel), -1, np.int64)
    rows = csv.reader(text.splitlines())
    for line, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise UserInputError(
                f"{p.name} line {line}: expected 'image,label', got {len(row)} field(s)"
            )
        image, label = row[0].strip(), row[1].strip()
        if label.isdigit():
            number = int(label)
            if number >= len(class_names):
                raise UserInputError(
                    f"{p.name} line {line}: class {number} is out of range "
                    f"(the model has {len(class_names)} classes)"
                )
        elif label in classes:
            number = classes[label]
        elif line == 1:
            continue  # a header
        else:
            raise UserInputError(f"{p.name} line {line}: {label!r} is not a class of the model")
        if image in index:
            k = index[image]
        elif len(names.get(image, [])) == 1:
            k = names[image][0]
        elif image in names:
            raise UserInputError(
                f"{p.name} line {line}: {image!r} names {len(names[image])} images; give its "
                "path relative to the folder"
            )
        else:
            raise UserInputError(f"{p.name} line {line}: no image {image!r} in the folder")
        if out[k] >= 0:
            raise UserInputError(f"{p.name} line {line}: image {image!r} is labelled twice")
        out[k] = number
    missing = np.flatnonzero(out < 0)
    if missing.size:
        raise UserInputError(
            f"{p.name}: {missing.size} image(s) have no label, the first {rel[int(missing[0])]!r}"
        )
    return out
