"""Broden's segmentation PNGs: the label at a pixel is ``R + 256 * G`` (0 = unlabelled), and
label maps are resized by nearest neighbour only (labels are never mixed)."""

from __future__ import annotations

import os

import numpy as np

from pyanalyzer.data.broden.format import DatasetError
from pyanalyzer.errors import UserInputError

__all__ = ["MAX_PNG_LABEL", "decode_label_png", "encode_label_png", "resize_labels"]

MAX_PNG_LABEL = 65535  # R + 256 * G with 8-bit channels


def decode_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a Broden segmentation PNG.

    RGB(A) and palette PNGs hold the label ``R + 256 * G`` (Broden's encoding); a single-channel
    PNG (mode L, I;16, I), which Broden never writes, is read as the label number itself.

    Args:
        path: The PNG file.

    Returns:
        int32 ``[H, W]`` label numbers (0 = unlabelled).

    Raises:
        DatasetError: The file is missing, not a regular file, not a readable image, not a
            PNG (a JPEG's lossy codes are not labels), or larger than
            :data:`~pyanalyzer.data.images.MAX_IMAGE_PIXELS` or the memory budget.
    """
    from pyanalyzer.data.images import open_image

    def error(message: str) -> DatasetError:
        return DatasetError(message, path)

    with open_image(path, "segmentation PNG", error=error) as img:
        if img.format != "PNG":
            raise error(
                f"it holds a {img.format or 'non-PNG'} image, not a PNG (Broden label maps "
                "must be lossless PNGs)"
            )
        img.load()
        mode = img.mode
        if mode in ("L", "I", "I;16", "I;16L", "I;16B", "I;16N"):
            return np.asarray(img).astype(np.int32)
        arr = np.asarray(img if mode in ("RGB", "RGBA") else img.convert("RGB"))
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


def _decode_png(path: str | os.PathLike[str]) -> np.ndarray:
    """The one place the reader decodes segmentation PNGs (tests count calls to it)."""
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
