"""The data pyanalyzer uses when none is given: synthetic concept scenes, made on the fly.

Dissection without ``--dataset`` uses a synthetic Broden-format concept set
(:func:`concept_dataset`, made once beside the store); top-k patches without ``--images`` and
UpconvNet training without a source use synthetic scenes held in memory
(:class:`SyntheticImages`). Both come from :mod:`pyanalyzer.data.synthetic` (numpy only), at one
size rule (:func:`scene_size`), so every method sees the same scenes for the same model.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer._checks import check_int

if TYPE_CHECKING:
    from pyanalyzer.data.broden import BrodenDataset
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = [
    "CONCEPT_IMAGES",
    "PATCH_IMAGES",
    "TRAINING_IMAGES",
    "SyntheticImages",
    "concept_dataset",
    "scene_size",
]

CONCEPT_IMAGES = 1000
"""Scenes of the default concept dataset (dissection)."""

PATCH_IMAGES = 200
"""Scenes scanned for top-k patches when no images are given."""

TRAINING_IMAGES = 3000
"""Scenes an UpconvNet decoder is trained on when no images are given."""


def scene_size(spec: PreprocessSpec) -> int:
    """The side of default scenes for a model: its larger input side, within 32..256 pixels
    (scenes are square; the preprocessing resizes them to the input as any image)."""
    return max(32, min(256, max(spec.input_size)))


class SyntheticImages:
    """``n`` synthetic concept scenes of ``seed`` at ``size`` pixels, as an image source.

    Scenes are rendered on first use (a store hit needs none) and kept in memory; ``n`` is at
    most :data:`~pyanalyzer.data.synthetic.MAX_SCENES` and the scenes must fit the memory
    budget (:func:`pyanalyzer.budget.synthetic_images_bytes`), checked when the source is made.
    """

    def __init__(self, n: int, seed: int = 0, size: int = 64):
        from pyanalyzer import budget
        from pyanalyzer.data.synthetic import check_count, check_size

        self.n = check_count(n)
        self.seed = check_int("seed", seed, 0)
        self.size = check_size(size)
        budget.check(
            f"{self.n} synthetic scenes of {self.size}x{self.size} held in memory",
            budget.synthetic_images_bytes(self.n, self.size),
            advice="use fewer scenes (--n-images)",
        )
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    @classmethod
    def for_model(cls, spec: PreprocessSpec, n: int, seed: int = 0) -> SyntheticImages:
        """``n`` scenes at the model's :func:`scene_size`."""
        return cls(n, seed, scene_size(spec))

    @property
    def images(self) -> np.ndarray:
        """uint8 ``[n, size, size, 3]``."""
        if self._images is None:
            from pyanalyzer.data import synthetic

            self._images, self._labels = synthetic.render_batch(
                self.n, seed=self.seed, size=self.size
            )
        return self._images

    @property
    def labels(self) -> np.ndarray:
        """int64 ``[n]``: each scene's class (its main object's shape, 0-based in
        :func:`~pyanalyzer.data.synthetic.class_names`: the default model's classes)."""
        if self._labels is None:
            self.images  # noqa: B018  # renders both
        assert self._labels is not None
        return np.asarray(self._labels, np.int64)

    def __len__(self) -> int:
        return self.n

    def name(self, index: int) -> str:
        return f"synthetic:{self.seed}:{index}"

    def pixels(self, index: int, spec: PreprocessSpec) -> np.ndarray:
        from pyanalyzer.data.images import ArraySource

        return ArraySource(self.images[index : index + 1]).pixels(0, spec)

    def identity(self) -> dict[str, Any]:
        return {"kind": "synthetic", "n": self.n, "seed": self.seed, "size": self.size}


def concept_dataset(
    root: str | Path, n_images: int, size: int, seed: int = 0, *, progress: bool = True
) -> BrodenDataset:
    """The synthetic Broden-format concept dataset ``root/synth-n<N>-s<size>-seed<seed>``,
    made on first use (written atomically, so concurrent first uses are safe).

    Raises:
        UserInputError: ``n_images`` or ``size`` out of range; BudgetError: no room on disk
            for the dataset (checked before anything is written or printed).
    """
    from pyanalyzer.data.broden import BrodenDataset, synth_dataset
    from pyanalyzer.data.broden.build import check_synth
    from pyanalyzer.data.synthetic import check_count, check_size

    n_images, size = check_count(n_images), check_size(size)
    seed = check_int("seed", seed, 0)
    folder = Path(root) / f"synth-n{n_images}-s{size}-seed{seed}"
    if not (folder / "index.csv").is_file():
        check_synth(root, n_images, size, seed)  # the disk, before the message below
        note = f"making the synthetic concept dataset {folder} ..."
        if progress:  # beside the progress bar; otherwise stderr keeps to the outcome
            print(note, file=sys.stderr)
        else:
            logging.getLogger("pyanalyzer").info(note)
        synth_dataset(
            folder, n_images=n_images, size=size, seed=seed, progress=progress, overwrite=True
        )
    return BrodenDataset(folder)
