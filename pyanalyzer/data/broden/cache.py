"""The decoded-label cache: every segmentation of a dataset selection decoded once, into HDF5.

Decoding PNGs dominates the time of a dissection's data pass, so
:meth:`~pyanalyzer.data.broden.BrodenDataset.prepare_cache` decodes every segmentation once into
``<cache folder>/<digest>.h5``, keyed by a digest of the dataset's files (:func:`cache_digest`);
every later run (another model, another layer) reads from it. The file holds

- attributes ``format`` (:data:`CACHE_FORMAT`), ``format_version`` (:data:`CACHE_VERSION`),
  ``digest``, ``root``, ``split`` (``""`` for all) and ``categories`` (JSON list);
- ``seg`` ``[n, K, sh, sw]`` label numbers (uint16, or int32 past 65535), zero-padded, one
  chunk per image, compressed with lzf when it takes more than :data:`RAW_SEG_MAX`;
- ``n_channels`` int32 ``[n]``, ``image_labels`` int32 ``[n, L]`` (zero-padded),
  ``n_image_labels`` int32 ``[n]`` and ``categories`` uint8 ``[n, G]``.

A file whose attributes or shapes do not match is ignored (:func:`open_cache`), never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pyanalyzer._io import atomic_path
from pyanalyzer.data.broden.codec import MAX_PNG_LABEL

if TYPE_CHECKING:
    import h5py

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "RAW_SEG_MAX",
    "CacheLayout",
    "cache_digest",
    "open_cache",
    "write_cache",
]

CACHE_FORMAT = "pyanalyzer-broden-labels"
CACHE_VERSION = 1

RAW_SEG_MAX = 256 * 2**20
"""Label maps that take at most this many bytes are stored uncompressed (their reads take a
third of lzf's time); larger ones (a Broden-scale dataset) with lzf."""

_DATASETS = ("seg", "n_channels", "image_labels", "n_image_labels", "categories")

RowDecoder = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Decodes row ``i``: ``(seg [k, sh, sw], image-level numbers [l], categories present [G])``."""


@dataclass(frozen=True)
class CacheLayout:
    """What the cache file of one dataset selection holds.

    Attributes:
        digest: :func:`cache_digest` of the selection.
        split: The selected split, or None for all.
        categories: Category names (``G``), in ``category.csv`` order.
        images: Number of selected images (``n``).
        channels: PNG channels per image (``K``, the largest of a row).
        image_labels: Image-level labels per image (``L``, the largest of a row).
        seg_size: ``(sh, sw)``.
    """

    digest: str
    split: str | None
    categories: tuple[str, ...]
    images: int
    channels: int
    image_labels: int
    seg_size: tuple[int, int]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the padded datasets ``seg``, ``image_labels`` and ``categories``."""
        n = self.images
        return {
            "seg": (n, self.channels, *self.seg_size),
            "image_labels": (n, self.image_labels),
            "categories": (n, len(self.categories)),
        }


def cache_digest(
    index_bytes: bytes,
    label_bytes: bytes,
    split: str | None,
    categories: Sequence[str],
    pngs: Iterable[tuple[str, int, int]],
) -> str:
    """The key of a selection's cache file.

    Args:
        index_bytes: The contents of ``index.csv``.
        label_bytes: The contents of ``label.csv``.
        split: The selected split, or None.
        categories: Category names in ``category.csv`` order.
        pngs: ``(path relative to images/, size, mtime_ns)`` of every selected segmentation PNG.

    Returns:
        A SHA-256 hex digest that also covers :data:`CACHE_FORMAT` and :data:`CACHE_VERSION`.
    """
    h = hashlib.sha256()
    h.update(f"{CACHE_FORMAT}/{CACHE_VERSION}\0".encode())
    for blob in (index_bytes, label_bytes):
        h.update(len(blob).to_bytes(8, "little"))
        h.update(blob)
    h.update(json.dumps([split, list(categories)]).encode())
    for rel, size, mtime in pngs:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def open_cache(path: Path, layout: CacheLayout) -> h5py.File | None:
    """Open the cache file ``path`` for reading if it is the one of ``layout``.

    Returns:
        The open file, or None when it is absent, unreadable, of another format or version,
        of another digest, or lacks a dataset or has one of another shape.
    """
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
        and a.get("digest") == layout.digest
        and all(k in f for k in _DATASETS)
        and all(f[k].shape == shape for k, shape in layout.shapes().items())
    )
    if not ok:
        f.close()
        return None
    return f


def write_cache(
    path: Path,
    layout: CacheLayout,
    decode_row: RowDecoder,
    *,
    root: Path,
    num_labels: int,
    progress: bool = True,
) -> None:
    """Decode every row of a selection into the cache file ``path``.

    The file is written to a temporary name next to ``path`` and renamed into place, so
    concurrent runs and crashes never leave a partial cache.

    Args:
        path: The cache file.
        layout: What it holds.
        decode_row: Decodes one row (raising leaves nothing behind).
        root: The dataset folder (recorded, resolved, in the ``root`` attribute).
        num_labels: One more than the largest label number (picks the dtype of ``seg``).
        progress: Show a progress bar on stderr while decoding.

    Raises:
        BudgetError: the tables and a decoded row exceed the memory budget
            (:func:`pyanalyzer.budget.label_cache_bytes`; checked before anything is written).
    """
    import h5py

    from pyanalyzer import budget
    from pyanalyzer._progress import progress_bar

    n, K, L = layout.images, layout.channels, layout.image_labels
    G = len(layout.categories)
    sh, sw = layout.seg_size
    budget.check(
        f"decoding the concept labels of {n} images into the label cache",
        budget.label_cache_bytes(n, K, L, G, (sh, sw)),
    )
    dtype = np.uint16 if num_labels <= MAX_PNG_LABEL + 1 else np.int32
    with atomic_path(path, mode=None) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                "format": CACHE_FORMAT,
                "format_version": CACHE_VERSION,
                "digest": layout.digest,
                "root": str(root.resolve()),
                "split": "" if layout.split is None else layout.split,
                "categories": json.dumps(list(layout.categories)),
            }
        )
        if K:
            # lzf: every dissection reads every map back; gzip made the reads 2x slower
            # (1,000 maps of 3x56x56: 0.057 s against 0.029 s) for a file 2.4x smaller. Maps
            # that take at most RAW_SEG_MAX are stored raw: a third of lzf's read time
            # (0.006 s against 0.019 s for those 1,000 maps) for a file that stays small.
            raw = n * K * sh * sw * np.dtype(dtype).itemsize <= RAW_SEG_MAX
            dseg = f.create_dataset(
                "seg", (n, K, sh, sw), dtype=dtype, chunks=(1, K, sh, sw),
                compression=None if raw else "lzf",
            )  # fmt: skip
        else:
            dseg = f.create_dataset("seg", (n, 0, sh, sw), dtype=dtype)
        n_channels = np.zeros(n, dtype=np.int32)
        n_numbers = np.zeros(n, dtype=np.int32)
        numbers = np.zeros((n, L), dtype=np.int32)
        present = np.zeros((n, G), dtype=np.uint8)
        with progress_bar(n, label="decoding concept labels", enabled=progress) as bar:
            for i in range(n):
                seg, nums, pres = decode_row(i)
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
