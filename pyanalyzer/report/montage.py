"""Small Pillow/numpy helpers to draw report images: mask overlays, labelled grids, PNG files.

Every method's report reuses these. Images are numpy arrays: ``uint8 [H, W, 3]`` RGB (a grey
image, ``[H, W]`` or a one-channel ``[H, W, 1]`` as gray models give them, is accepted where
noted); masks are ``bool [H, W]``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pyanalyzer._io import write_bytes

__all__ = ["grid", "overlay_mask", "save_png", "upscale"]


def _as_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] from uint8 [H, W] or [H, W, 1] (grey) or [H, W, 3]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be [H, W, 3], [H, W, 1] or [H, W], got shape {image.shape}")
    return image


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion; outside the image counts as inside the mask, so that a mask
    touching the border is not outlined along the frame."""
    padded = np.pad(mask, 1, mode="edge")
    return (
        mask
        & padded[:-2, 1:-1]  # up
        & padded[2:, 1:-1]  # down
        & padded[1:-1, :-2]  # left
        & padded[1:-1, 2:]  # right
    )


def overlay_mask(
    rgb: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 64, 64),
    alpha: float = 0.5,
    outline: bool = True,
    thickness: int | None = None,
) -> np.ndarray:
    """Show where a unit fires on an image, in the style of NetDissect (Bau et al., CVPR 2017).

    NetDissect-Lite keeps the pixels inside the unit's mask and dims the rest (to 20 %, i.e.
    ``alpha=0.8`` here). We do the same, and additionally draw the mask's boundary in
    ``color`` so that the region stays visible on dark images.

    Args:
        rgb: uint8 [H, W, 3] (or [H, W] / [H, W, 1] grey) image.
        mask: bool [H, W], True where the unit is above its threshold.
        color: RGB of the boundary line.
        alpha: how much the outside of the mask is dimmed: 0 leaves it, 1 makes it black.
        outline: draw the boundary of the mask (pixels of the mask within ``thickness`` of a
            pixel outside it; the image border is not a boundary).
        thickness: boundary width in pixels; default ``max(1, min(H, W) // 48)``.

    Returns:
        uint8 [H, W, 3], a new array.
    """
    rgb = _as_rgb(rgb, "rgb")
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask must be [H, W] = {rgb.shape[:2]}, got shape {mask.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mask = mask.astype(bool)
    out = rgb.astype(np.float32)
    out[~mask] *= 1.0 - alpha
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if outline and mask.any():
        if thickness is None:
            thickness = max(1, min(mask.shape) // 48)
        inner = mask
        for _ in range(max(1, int(thickness))):
            inner = _erode(inner)
        out[mask & ~inner] = np.asarray(color, dtype=np.uint8)
    return out


def upscale(image: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Enlarge a small image or map by an integer factor with nearest neighbour, so that its
    shorter side is at least ``min_side`` (a 7×7 feature map stays 49 crisp squares).

    Args:
        image: [H, W] or [H, W, C], any dtype.
        min_side: the shorter side wanted; images already this large are returned unchanged.

    Returns:
        [H*f, W*f(, C)] with f = ceil(min_side / min(H, W)), or ``image`` itself when f = 1.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or min(image.shape[:2]) == 0:
        raise ValueError(f"image must be [H, W] or [H, W, C] and non-empty, got {image.shape}")
    factor = math.ceil(min_side / min(image.shape[:2]))
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, cut with an ellipsis so that it fits in ``width`` pixels."""

    def w(s: str) -> int:
        box = draw.textbbox((0, 0), s, font=font)
        return int(box[2] - box[0])

    if w(text) <= width:
        return text
    while text and w(text + "…") > width:
        text = text[:-1]
    return text + "…" if text else ""


def _draw_text(draw: ImageDraw.ImageDraw, xy, text: str, font, fill) -> None:
    try:
        draw.text(xy, text, font=font, fill=fill)
    except UnicodeEncodeError:  # a bitmap default font only knows Latin-1
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), font=font, fill=fill)


def grid(
    images: Sequence[np.ndarray],
    cols: int,
    pad: int = 2,
    bg: int = 255,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Tile images row by row, optionally with a caption under each.

    Every cell is as large as the largest image; smaller images sit at the cell's top left.
    ``pad`` pixels of ``bg`` separate the cells and surround the grid. Captions are drawn in
    black with PIL's default font and cut with an ellipsis when wider than the cell.

    Args:
        images: uint8 [h, w, 3] (or grey [h, w] / [h, w, 1]) images, at least one.
        cols: number of columns (the grid always has exactly ``cols`` columns, so that strips
            with fewer images line up with full ones).
        pad: gap in pixels.
        bg: grey level of the background, 0..255.
        labels: one caption per image, or None for none.

    Returns:
        uint8 [rows * (ch + pad) + pad, cols * (cw + pad) + pad, 3], where cw, ch is the cell
        size (the caption's line height is added to ch when labels are given).
    """
    if len(images) == 0:
        raise ValueError("grid needs at least one image")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    tiles = [_as_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    font = _font()
    text_h = 0
    if labels is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        box = probe.textbbox((0, 0), "Ag0…", font=font)
        text_h = int(box[3]) + 2
    rows = math.ceil(len(tiles) / cols)
    step_y = cell_h + text_h + pad
    step_x = cell_w + pad
    out = np.full((rows * step_y + pad, cols * step_x + pad, 3), bg, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        y = pad + (i // cols) * step_y
        x = pad + (i % cols) * step_x
        out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    if labels is not None:
        canvas = Image.fromarray(out)
        draw = ImageDraw.Draw(canvas)
        for i, label in enumerate(labels):
            y = pad + (i // cols) * step_y + cell_h + 1
            x = pad + (i % cols) * step_x
            _draw_text(draw, (x, y), _fit_text(draw, str(label), font, cell_w), font, (0, 0, 0))
        out = np.asarray(canvas).copy()
    return out


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save uint8 [H, W] or [H, W, 1] (a grey PNG), [H, W, 3] or [H, W, 4] as a PNG,
    atomically (a temporary file in the same folder, then ``os.replace``): readers never see a
    half-written image.

    Returns:
        The path written.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"array must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:  # one channel: what gray models give
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f"array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {array.shape}"
        )
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())
