"""Image sources: where the images a method scans come from.

A source is indexable and yields each image as 0–255 pixels at the model's input size
(``pixels(i, spec)``), so forward passes can stream any number of images in batches (the
protocol is :class:`pyanalyzer.model.forward.ImageSource`). Each source here also says what it
is (``identity()``), which store keys are made of.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer._checks import check_shape
from pyanalyzer.errors import ImageError

if TYPE_CHECKING:
    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "ImageFiles",
    "ImageFolder",
    "array_digest",
    "files_digest",
    "load_image",
    "model_images",
    "source_identity",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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


def model_images(images: Any, spec: PreprocessSpec) -> np.ndarray:
    """Images as the model sees them: uint8 ``[N, H, W, C]`` at ``spec``'s input size, our own
    writable copy.

    Args:
        images: an image source (files, a folder...), read through the preprocessing, or an
            array: one ``[H, W, C]`` image or a batch, already at the input size.

    Raises:
        ImageError: an empty source, an unreadable file (named), or an array of another dtype,
            shape or size.
    """
    if hasattr(images, "pixels") and hasattr(images, "__len__"):  # an image source
        if len(images) == 0:
            raise ImageError("the image source is empty: give at least one image")
        images = np.stack([images.pixels(i, spec) for i in range(len(images))])
    arr = np.asarray(images)
    h, w = spec.input_size
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:
        raise ImageError(f"images must be uint8 pixels 0..255, got {arr.dtype}")
    note = "(the model's input size, RGB)"
    check_shape("images", arr, "N H W C", note=note, error=ImageError, H=h, W=w, C=spec.channels)
    return np.array(arr, dtype=np.uint8, order="C")


def array_digest(a: np.ndarray) -> str:
    """sha256 over an array's shape, dtype and bytes: the identity of in-memory images."""
    import hashlib

    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def source_identity(source: ImageSource) -> dict[str, Any]:
    """What identifies an image source in store keys (JSON-able): the source's own
    ``identity()`` when it has one (files: their digest; arrays: their bytes; synthetic scenes:
    count, seed and size; concept datasets: their digest), else a digest of its names."""
    identity = getattr(source, "identity", None)
    if callable(identity):
        return dict(identity())
    import hashlib

    h = hashlib.sha256()
    for i in range(len(source)):
        h.update(f"{source.name(i)}\n".encode())
    return {"kind": type(source).__name__, "n": len(source), "sha256": h.hexdigest()}


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

    def identity(self) -> dict[str, Any]:
        """The files' paths, sizes and modification times (:func:`files_digest`)."""
        return {"kind": "files", "n": len(self), "sha256": files_digest(self.paths)}


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

    def identity(self) -> dict[str, Any]:
        """The images' bytes (:func:`array_digest`)."""
        return {"kind": "array", "n": len(self), "sha256": array_digest(self.images)}

    def name(self, index: int) -> str:
        return self.names[index]

    def pixels(self, index: int, spec: PreprocessSpec) -> np.ndarray:
        img = self.images[index]
        if img.shape[:2] == tuple(spec.input_size) and img.shape[-1] == spec.channels:
            return img.astype(np.uint8, copy=False)
        from PIL import Image

        pil = Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img))
        return spec.prepare_image(pil)
