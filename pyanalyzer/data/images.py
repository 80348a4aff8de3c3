"""Image sources: where the images a method scans come from.

A source is indexable and yields each image as 0–255 pixels at the model's input size
(``pixels(i, spec)``), so forward passes can stream any number of images in batches (the
protocol is :class:`pyanalyzer.model.forward.ImageSource`). Each source here also says what it
is (``identity()``), which store keys are made of.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyanalyzer._checks import check_shape, open_regular
from pyanalyzer.errors import ImageError, UserInputError

if TYPE_CHECKING:
    from pyanalyzer.model.forward import ImageSource
    from pyanalyzer.model.preprocessing import PreprocessSpec

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ArraySource",
    "ImageFiles",
    "ImageFolder",
    "array_digest",
    "check_image_size",
    "files_digest",
    "load_image",
    "model_images",
    "open_image",
    "source_identity",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


MAX_IMAGE_PIXELS = 128 * 2**20
"""The most pixels an image file may declare (128 Mi pixels, e.g. 16384 x 8192; a 108-megapixel
photo fits). Its header is read first and a larger image is refused before it is decoded, as
Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, whose error and warning are turned into
the same refusal) would refuse a decompression bomb; decoding must also fit the memory budget
(:func:`pyanalyzer.budget.image_decode_bytes`)."""

_BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, struct.error)
"""What Pillow raises on a damaged file (UnidentifiedImageError is an OSError)."""

_BAD_HEADER = (*_BAD_IMAGE, IndexError, TypeError)
"""What Pillow's header parsers raise on a damaged file."""


def check_image_size(
    width: int,
    height: int,
    channels: int,
    shown: str,
    *,
    error: Callable[[str], UserInputError] = ImageError,
    itemsize: int = 1,
) -> None:
    """Refuse an image whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels, or
    whose decoding would exceed the memory budget (one line naming the image).

    Raises:
        error: the image is too large.
    """
    from pyanalyzer import budget

    pixels = int(width) * int(height)
    if width < 1 or height < 1:
        raise error(f"{shown} declares an empty size {width}x{height}")
    if pixels > MAX_IMAGE_PIXELS:
        raise error(
            f"{shown} is {width}x{height} ({pixels} pixels), more than the "
            f"{MAX_IMAGE_PIXELS} allowed (pyanalyzer.data.images.MAX_IMAGE_PIXELS)"
        )
    budget.check(
        f"decoding {shown} ({width}x{height})",
        budget.image_decode_bytes(width, height, channels, itemsize),
    )


def _bomb_pixels(exc: BaseException) -> str:
    m = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{m.group(1)} pixels" if m else "too many pixels"


@contextlib.contextmanager
def open_image(
    path: str | os.PathLike[str],
    what: str = "image",
    *,
    error: Callable[[str], UserInputError] = ImageError,
) -> Iterator[Any]:
    """Open an image file lazily, with its header checked: the one way pyanalyzer opens
    images, masks and segmentations.

    The file must be a regular file (:func:`pyanalyzer._checks.open_regular`); its declared
    size must be within :data:`MAX_IMAGE_PIXELS` and the memory budget
    (:func:`check_image_size`). Pillow reads only the header here; the caller decodes (``load``)
    inside the block, where a damaged file raises ``error`` too.

    Args:
        path: the file.
        what: what it is, for messages (``"image"``, ``"mask"``, ``"segmentation PNG"``).
        error: makes the exception raised from a message (a :class:`UserInputError` subclass
            or a function that builds one).

    Yields:
        the open ``PIL.Image.Image``.

    Raises:
        error: one line: missing, not a regular file, not a readable image, too large, or
            damaged.
    """
    from PIL import Image, UnidentifiedImageError

    shown = f"{what} {os.fspath(path)!r}"
    fh = open_regular(
        path, f"an {what} file" if what[0] in "aeiou" else f"a {what} file", error=error
    )
    with fh:
        try:
            with warnings.catch_warnings():
                # pyanalyzer's own limit is below Pillow's error threshold: its warning (for
                # sizes between its limit and twice it) is superseded by check_image_size.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise error(
                f"cannot read {shown}: it declares {_bomb_pixels(exc)}, more than the "
                f"{MAX_IMAGE_PIXELS} allowed (pyanalyzer.data.images.MAX_IMAGE_PIXELS)"
            ) from None
        except UnidentifiedImageError:
            raise error(f"cannot read {shown}: not a recognised image format") from None
        except _BAD_HEADER as exc:
            raise error(f"cannot read {shown}: {_reason(exc)}") from None
        with img:
            check_image_size(img.width, img.height, len(img.getbands()), shown, error=error,
                             itemsize=_itemsize(img.mode))  # fmt: skip
            try:
                yield img
            except Image.DecompressionBombError as exc:
                raise error(f"cannot read {shown}: it declares {_bomb_pixels(exc)}") from None
            except _BAD_IMAGE as exc:
                raise error(f"cannot read {shown}: {_reason(exc)}") from None


def _itemsize(mode: str) -> int:
    return (
        4 if mode in ("I", "F") or mode.startswith("I;32") else 2 if mode.startswith("I;16") else 1
    )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def load_image(path: str | os.PathLike[str]):
    """Open an image file fully, as a PIL image (:func:`open_image`'s checks first).

    Raises:
        ImageError: missing, a directory, not a regular file, not a readable image, larger
            than :data:`MAX_IMAGE_PIXELS` or the memory budget, or damaged.
    """
    with open_image(path, "image") as img:
        with warnings.catch_warnings():
            from PIL import Image

            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        return img.copy()


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
            array: one ``[H, W, C]`` image or a batch ``[N, H, W, C]``, already at the input
            size; for a one-channel model also a batch of grey images ``[N, H, W]``.

    Raises:
        ImageError: an empty source, an unreadable file (named), or an array of another dtype,
            shape or size.
    """
    if hasattr(images, "pixels") and hasattr(images, "__len__"):  # an image source
        if len(images) == 0:
            raise ImageError("the image source is empty: give at least one image")
        from pyanalyzer import budget

        h, w = spec.input_size
        budget.check(
            f"holding {len(images)} images of {h}x{w} in memory",
            2 * budget.images_bytes(len(images), h, w, spec.channels),
            advice="give fewer images",
        )
        images = np.stack([images.pixels(i, spec) for i in range(len(images))])
    arr = np.asarray(images)
    h, w = spec.input_size
    if arr.ndim == 3:
        grey_batch = spec.channels == 1 and arr.shape[-1] != 1 and arr.shape[1:] == (h, w)
        arr = arr[..., None] if grey_batch else arr[None]
    elif arr.ndim == 2 and spec.channels == 1:
        arr = arr[None, :, :, None]  # one grey image [H, W]
    if arr.dtype != np.uint8:
        raise ImageError(f"images must be uint8 pixels 0..255, got {arr.dtype}")
    note = (
        "(the model's input size, RGB)" if spec.channels == 3 else "(the model's input size, grey)"
    )
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
