"""The reading side of the Broden format: :class:`BrodenDataset`.

Loading parses and validates the CSV files (:mod:`~pyanalyzer.data.broden.format`); images and
segmentation PNGs (:mod:`~pyanalyzer.data.broden.codec`) are decoded when read, or once for all
into the decoded-label cache (:mod:`~pyanalyzer.data.broden.cache`).
"""

from __future__ import annotations

import operator
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer import budget
from pyanalyzer.data.broden.cache import CacheLayout, cache_digest, open_cache, write_cache
from pyanalyzer.data.broden.codec import _decode_png
from pyanalyzer.data.broden.format import (
    _INT,
    INDEX_COLUMNS,
    MAX_LABEL_NUMBER,
    BrodenLabel,
    DatasetError,
    _at,
    _check_relpath,
    _read_csv,
    parse_sizes,
    read_bytes,
    read_categories,
    read_codes,
    read_labels,
)
from pyanalyzer.errors import UserInputError

if TYPE_CHECKING:
    import h5py

    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = ["BrodenDataset"]


@dataclass
class _Row:
    line: int
    image: str
    split: str
    ih: int
    iw: int
    pngs: list[tuple[int, str]]  # (category index, path relative to images/)
    numbers: list[tuple[int, int]]  # (category index, label number)


@dataclass(frozen=True)
class _CacheTables:
    """What :meth:`BrodenDataset.segmentation_batch` reads from the decoded-label cache: the
    ``seg`` dataset, and the per-image tables (a few bytes an image) held in memory."""

    seg: Any  # h5py.Dataset [n, K, sh, sw]
    n_channels: np.ndarray  # int32 [n]
    n_image_labels: np.ndarray  # int32 [n]
    image_labels: np.ndarray  # int32 [n, L]
    categories: np.ndarray  # uint8 [n, G]


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
        self._tables: _CacheTables | None = None
        self._load_categories()
        self._load_labels()
        self._load_codes()
        self._load_index()

    # ---- loading -----------------------------------------------------------------------------
    def _load_categories(self) -> None:
        self.category_info: dict[str, dict[str, int | None]] = read_categories(
            self.root / "category.csv"
        )
        self.categories: list[str] = list(self.category_info)
        self._cat_index = {c: k for k, c in enumerate(self.categories)}

    def _load_labels(self) -> None:
        path = self.root / "label.csv"
        self._label_bytes = read_bytes(path, "the label list") if path.is_file() else b""
        self.labels: dict[int, BrodenLabel] = read_labels(path, self._cat_index)
        size = max(self.labels) + 1
        concept_category = np.full(size, -1, dtype=np.int32)
        names = [""] * size
        names[0] = "-"
        for number, label in self.labels.items():
            concept_category[number] = self._cat_index[label.category]
            names[number] = label.name
        self.concept_category: np.ndarray = concept_category
        self.names: list[str] = names
        self._known = concept_category >= 0  # bool [C]

    def _load_codes(self) -> None:
        self.category_codes: dict[str, np.ndarray] = {
            cat: read_codes(self.root / f"c_{cat}.csv", cat, self.labels) for cat in self.categories
        }

    def _load_index(self) -> None:
        path = self.root / "index.csv"
        self._index_path = path
        self._index_bytes = read_bytes(path, "the image index") if path.is_file() else b""
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
            ih, iw, sh, sw = parse_sizes(cells, col, path, line)
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
                        number = int(entry) if len(entry) <= 20 else MAX_LABEL_NUMBER + 1
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
                if not stat.S_ISREG(st.st_mode):
                    where = f"{_at(path, line)}: {what} {str(images_dir / rel)!r}"
                    raise DatasetError(f"{where} is not a regular file", path, line)
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
        self.digest: str = cache_digest(
            self._index_bytes, self._label_bytes, self.split, self.categories, stats
        )

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
        budget.check(
            f"decoding the {len(r.pngs)} segmentation(s) of image {r.image!r} ({sh}x{sw})",
            2 * budget.segmentation_batch_bytes(1, len(r.pngs), 0, 0, (sh, sw)),
        )
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
        budget.check(
            f"a batch of {B} concept label maps ({K} channel(s) of {sh}x{sw} each)",
            budget.segmentation_batch_bytes(B, K, L, G, (sh, sw)),
            advice="use a smaller batch size",
        )
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

        cache = self._cache_tables()
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
        ks = cache.n_channels[idx]
        ns = cache.n_image_labels[idx]
        for b in range(B):
            need(b, int(ks[b]), int(ns[b]))
        kk, ll = min(K, self.max_channels), min(L, self.max_image_labels)
        if idx == list(range(idx[0], idx[0] + B)):  # a run of rows (the dissection's batches)
            rows: slice | list[int] = slice(idx[0], idx[0] + B)
            inverse: slice | np.ndarray = slice(None)
        else:  # h5py reads a list of indices in one call if it is increasing and unique
            uniq, inverse = np.unique(np.asarray(idx), return_inverse=True)
            rows = uniq.tolist()
        if kk:
            seg[:, :kk] = cache.seg[rows, :kk][inverse]
        if ll:
            numbers[:, :ll] = cache.image_labels[idx, :ll]
        cats[:] = cache.categories[idx]
        return seg, numbers, cats

    # ---- the decoded-label cache -------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        """``<cache_dir>/<digest>.h5``; the digest covers index.csv, label.csv, the split and the
        (path, size, mtime) of every selected segmentation PNG."""
        return self.cache_dir / f"{self.digest}.h5"

    def _cache_layout(self) -> CacheLayout:
        return CacheLayout(
            self.digest,
            self.split,
            tuple(self.categories),
            len(self),
            self.max_channels,
            self.max_image_labels,
            self.seg_size,
        )

    def _open_cache(self) -> h5py.File | None:
        if self._cache is not None:
            return self._cache
        if self._cache_checked:
            return None
        self._cache_checked = True
        self._cache = open_cache(self.cache_path, self._cache_layout())
        return self._cache

    def _cache_tables(self) -> _CacheTables | None:
        """The open cache's label maps (read per batch) and its small per-image tables, read
        once into memory (a batch then costs one read of the file instead of five)."""
        if self._tables is None:
            cache = self._open_cache()
            if cache is None:
                return None
            self._tables = _CacheTables(
                seg=cache["seg"],
                n_channels=cache["n_channels"][...],
                n_image_labels=cache["n_image_labels"][...],
                image_labels=cache["image_labels"][...],
                categories=cache["categories"][...],
            )
        return self._tables

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
        final = self.cache_path
        write_cache(
            final,
            self._cache_layout(),
            self._decode_row,
            root=self.root,
            num_labels=self.num_labels,
            progress=progress,
        )
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
        self._tables = None

    def __enter__(self) -> BrodenDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # h5py handles do not cross processes
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_cache_checked"] = False
        state["_tables"] = None
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
