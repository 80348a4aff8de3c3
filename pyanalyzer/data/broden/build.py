"""Builders of Broden datasets: synthetic scenes (:func:`synth_dataset`) and a user's images
with index masks (:func:`build_dataset`, :func:`read_class_names`), both written by
:func:`~pyanalyzer.data.broden.write_broden`."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyanalyzer._checks import check_int as _check_int
from pyanalyzer.data.broden.codec import resize_labels
from pyanalyzer.data.broden.format import (
    _CATEGORY_NAME,
    INDEX_COLUMNS,
    DatasetError,
    _at,
    _parse_int,
    read_bytes,
)
from pyanalyzer.data.broden.writer import BrodenRecord, write_broden
from pyanalyzer.errors import UserInputError

__all__ = ["build_dataset", "check_synth", "read_class_names", "synth_dataset"]


def _broden_name(category: str, name: str) -> str:
    """Broden's naming: colours get ``-c``, scenes ``-s`` (NetDissect's adeseg/osseg/dtdseg)."""
    return {"color": f"{name}-c", "scene": f"{name}-s"}.get(category, name)


def synth_concept_names() -> list[str]:
    """The label names of a synthetic concept dataset, indexed by label number (0 is
    ``""``), as :func:`synth_dataset` writes them to ``label.csv``."""
    from pyanalyzer.data import synthetic

    vocabulary = synthetic.concepts()
    names = [""] * (max(c.id for c in vocabulary) + 1)
    for c in vocabulary:
        names[c.id] = _broden_name(c.category, c.name)
    return names


def check_synth(
    out_dir: str | os.PathLike[str], n_images: int, size: int, seed: int = 0
) -> tuple[int, int, int]:
    """Check the parameters of a synthetic concept dataset before anything is made.

    ``n_images`` must be within 1..:data:`~pyanalyzer.data.synthetic.MAX_SCENES`, ``size``
    within :data:`~pyanalyzer.data.synthetic.MIN_SIZE`..:data:`~pyanalyzer.data.synthetic.MAX_SIZE`
    (and one scene within the memory budget), and the file system of ``out_dir`` must have
    room for the dataset, estimated from the image size (uncompressed: an upper bound,
    :func:`pyanalyzer.budget.synthetic_disk_bytes`).

    Returns:
        ``(n_images, size, seed)`` as ints.

    Raises:
        UserInputError: a parameter out of range; BudgetError: not enough memory or disk.
    """
    from pyanalyzer import budget
    from pyanalyzer.data import synthetic as syn

    n_images = syn.check_count(n_images)
    size = syn.check_size(size)
    seed = _check_int("seed", seed, 0)
    budget.check_disk(
        f"a synthetic concept dataset of {n_images} scenes of {size}x{size}",
        budget.synthetic_disk_bytes(n_images, size),
        out_dir,
        advice="use fewer or smaller scenes",
    )
    return n_images, size, seed


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
        n_images: Number of scenes (1..:data:`~pyanalyzer.data.synthetic.MAX_SCENES`), scene
            ``i`` being ``synthetic.render(i, seed, size)``.
        size: Image side (16..:data:`~pyanalyzer.data.synthetic.MAX_SIZE`).
        seed: Scene seed (>= 0).
        progress: Show a progress bar on stderr.
        overwrite: Replace a non-empty ``out_dir``.

    Returns:
        The output folder.

    Raises:
        UserInputError: A bad parameter or a non-empty ``out_dir`` without ``overwrite``.
        BudgetError: The dataset would not fit the free disk space (checked before anything
            is written), or a scene the memory budget.
    """
    from pyanalyzer.data import synthetic as syn

    n_images, size, seed = check_synth(out_dir, n_images, size, seed)
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
    if not p.exists() and not p.is_symlink():
        raise DatasetError(f"{p}: missing file (class names)", p)
    try:
        lines = read_bytes(p, "the class names").decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
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
    from pyanalyzer.data.images import open_image

    def error(message: str) -> DatasetError:
        return DatasetError(message, path)

    with open_image(path, "mask", error=error) as img:
        img.load()
        mode = img.mode
        arr = np.asarray(img)  # P: the palette indices, not the colours
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
        from pyanalyzer import budget
        from pyanalyzer.data.images import MAX_IMAGE_PIXELS

        size = _check_int("size", size, 16)
        if size * size > MAX_IMAGE_PIXELS:
            raise UserInputError(
                f"size {size} makes images of {size * size} pixels, more than the "
                f"{MAX_IMAGE_PIXELS} allowed (pyanalyzer.data.images.MAX_IMAGE_PIXELS)"
            )
        budget.check(
            f"resizing images to {size}x{size}", budget.image_decode_bytes(size, size, 3) * 2
        )
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
