"""Image sources: where the images a method scans come from.

A source is indexable and yields each image as 0–255 pixels at the model's input size
(``pixels(i, spec)``), so forward passes can stream any number of images in batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pyanalyzer.errors import ImageError

if TYPE_CHECKING:
    from pyanalyzer.model.preprocessing import PreprocessSpec

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class ImageSource(Protocol):
    """What the forward engine streams over."""

    def __len__(self) -> int: ...

    def pixels(self, index: int, spec: PreprocessSpec) -> np.ndarray:
        """``uint8 [H, W, C]`` at ``spec.input_size`` with ``spec.channels`` channels (RGB)."""
        ...

    def name(self, index: int) -> str: ...


def load_image(path: str | os.PathLike[str]):
    """Open an image file fully, as a PIL image.

    Raises:
        ImageError: missing, a directory, or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise ImageError(f"image file {str(p)!r} does not exist")
    if p.is_dir():
        raise ImageError(f"{str(p)!r} is a directory, not an image file")
    try:
        with Image.open(p) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "not a recognised image format" if isinstance(exc, UnidentifiedImageError) else exc
        raise ImageError(f"cannot read image {str(p)!r}: {reason}") from None


def files_digest(paths: Sequence[str | os.PathLike[str]]) -> str:
    """sha256 over each file's resolved path, size and modification time (cheap: no reads);
    identifies an image set in store keys. A missing file hashes as missing."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


class ImageFiles:
    """A list of image files.

    Args:
        paths: the files, in order.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]]):
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return str(self.paths[index])

    def pixels(self, index: int, spec: PreprocessSpec) -> np.ndarray:
        return spec.prepare_image(load_image(self.paths[index]))


class ImageFolder(ImageFiles):
    """Every image file under a folder (recursively, sorted by path).

    Raises:
        ImageError: the folder is missing or holds no images.
    """

    def __init__(self, root: str | os.PathLike[str]):
        root = Path(root)
        if not root.is_dir():
            raise ImageError(f"image folder {str(root)!r} does not exist or is not a folder")
        paths = sorted(
            p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not paths:
            raise ImageError(
                f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        super().__init__(paths)
        self.root = root


class ArraySource:
    """Images already in memory: ``uint8 [N, H, W, C]`` RGB (or gray) arrays.

    Images are resized through PIL when their size differs from the model's input.
    """

    def __init__(self, images: np.ndarray, names: Sequence[str] | None = None):
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
            raise ImageError(f"images must be [N, H, W, 1|3], got shape {list(arr.shape)}")
        self.images = arr
        self.names = list(names) if names is not None else [f"image{i}" for i in range(len(arr))]

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return self.names[index]

    def pixels(self, index: int, spec: PreprocessSpec) -> np.ndarray:
        img = self.images[index]
        if img.shape[:2] == tuple(spec.input_size) and img.shape[-1] == spec.channels:
            return img.astype(np.uint8, copy=False)
        from PIL import Image

        pil = Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img))
        return spec.prepare_image(pil)
