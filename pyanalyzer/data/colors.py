"""Broden's eleven colour concepts, named per pixel.

Broden (Bau et al., "Network Dissection", CVPR 2017) labels every pixel of every image with
one of the eleven basic English colour terms (Berlin & Kay): :data:`COLOR_NAMES`. The
original dataset took the per-pixel argmax of van de Weijer et al.'s colour-naming model
("Learning Color Names for Real-World Applications", IEEE TIP 2009), a 32x32x32 RGB lookup
table learned from web images.

pyanalyzer does not ship that table. It uses a simple, documented rule instead:

    **nearest prototype in CIELab.** Each pixel (sRGB, D65) is converted to CIELab and given
    the name of the nearest of :data:`PROTOTYPES` (Euclidean distance, i.e. CIE76 ΔE).
    Each name has two to eight hand-picked prototypes (a dark, a mid and a light variant where
    the term covers a wide range of lightness, e.g. navy and sky blue are both "blue").

The rule is deterministic, needs only numpy, and names pure and typical colours as people do
(red (255, 0, 0), navy (0, 0, 128), olive (128, 128, 0) as brown...). On a uniform 32x32x32
grid of the RGB cube it agrees with van de Weijer's argmax for 73 % of the colours; the
disagreements lie on the borders between neighbouring terms (purple/blue, blue/grey,
yellow/brown...), where people disagree too.

Names are numbered 1..11 in the order of :data:`COLOR_NAMES` (alphabetical, as
:data:`pyanalyzer.data.synthetic.COLORS`); 0 is never produced.
"""

from __future__ import annotations

import numpy as np

from pyanalyzer.data.synthetic import COLORS
from pyanalyzer.errors import UserInputError

__all__ = ["COLOR_NAMES", "PROTOTYPES", "name_colors", "rgb_to_lab"]

COLOR_NAMES: tuple[str, ...] = COLORS
"""The eleven basic colour terms of Broden, alphabetical (label ``k`` = ``COLOR_NAMES[k - 1]``)."""

PROTOTYPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((0, 0, 0), (35, 35, 35)),
    "blue": (
        (0, 0, 255), (30, 70, 200), (0, 0, 128), (100, 150, 230),
        (70, 100, 170), (50, 70, 130), (150, 180, 230), (0, 128, 140),
    ),
    "brown": ((130, 80, 40), (90, 55, 30), (160, 115, 70), (128, 96, 48), (150, 130, 60)),
    "green": (
        (0, 160, 0), (45, 140, 60), (0, 90, 20), (140, 210, 100),
        (90, 140, 70), (80, 110, 50), (170, 210, 140),
    ),
    "grey": ((128, 128, 128), (90, 90, 90), (170, 170, 170)),
    "orange": ((255, 140, 0), (235, 125, 40), (255, 170, 70)),
    "pink": ((255, 170, 200), (230, 110, 170), (255, 105, 180)),
    "purple": ((128, 0, 128), (130, 60, 170), (80, 30, 120), (170, 110, 210), (90, 50, 160)),
    "red": ((255, 0, 0), (200, 30, 30), (140, 15, 20)),
    "white": ((255, 255, 255), (225, 225, 225)),
    "yellow": ((255, 230, 0), (240, 220, 80), (250, 245, 150)),
}  # fmt: skip
"""sRGB prototypes of each name (hand-picked; see the module docstring)."""

# D65 reference white of CIELab.
_WHITE = np.array([0.95047, 1.0, 1.08883])
_M_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB colours to CIELab (D65).

    Args:
        rgb: ``[..., 3]`` values in 0..255 (any real or integer dtype).

    Returns:
        float64 ``[..., 3]``: L* in 0..100, a*, b*.
    """
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = (lin @ _M_RGB_TO_XYZ.T) / _WHITE
    eps = 216.0 / 24389.0
    kappa = 24389.0 / 27.0
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16.0) / 116.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def _prototype_table() -> tuple[np.ndarray, np.ndarray]:
    labs, ids = [], []
    for k, name in enumerate(COLOR_NAMES):
        for rgb in PROTOTYPES[name]:
            labs.append(rgb)
            ids.append(k + 1)
    return rgb_to_lab(np.array(labs, dtype=np.float64)), np.array(ids, dtype=np.uint8)


_PROTO_LAB, _PROTO_ID = _prototype_table()


def name_colors(image: np.ndarray) -> np.ndarray:
    """Name the colour of every pixel.

    Args:
        image: uint8 ``[H, W, 3]`` RGB, or ``[H, W]`` / ``[H, W, 1]`` gray (treated as R = G = B).

    Returns:
        uint8 ``[H, W]``: 1-based index into :data:`COLOR_NAMES` of each pixel's nearest
        prototype in CIELab.

    Raises:
        UserInputError: ``image`` is not an image array.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise UserInputError(f"expected an image [H, W, 3], got shape {list(arr.shape)}")
    arr = arr[..., :3]
    h, w = arr.shape[:2]
    # Name each distinct colour once: photos repeat colours, and CIELab costs more than a lookup.
    flat = np.ascontiguousarray(arr, dtype=np.uint8).reshape(-1, 3)
    keys = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
    uniq, inverse = np.unique(keys, return_inverse=True)
    colours = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)
    lab = rgb_to_lab(colours)
    d = ((lab[:, None, :] - _PROTO_LAB[None, :, :]) ** 2).sum(axis=-1)
    names = _PROTO_ID[np.argmin(d, axis=1)]
    return names[inverse.reshape(-1)].reshape(h, w)
