"""Seeded synthetic scenes with exact concept masks.

Every image is a small scene: a textured background of one of :data:`SCENES`, zero to two
small distractor objects, and one large *main object* drawn on top of them. Each object has a
shape from :data:`SHAPES`, a primary colour from the 11 Broden colour names (:data:`COLORS`),
a secondary colour and a texture from :data:`OBJECT_TEXTURES`. All drawing is crisp (no
anti-aliasing), so the per-pixel masks describe the pixels exactly:

* ``masks["shape"]``: ``[S, S]`` int16, 0 where no object is visible, else the 1-based index of
  the visible object's shape in :data:`SHAPES`.
* ``masks["color"]``: ``[S, S]`` int16, every pixel (background included) holds the 1-based index
  in :data:`COLORS` of the colour it was painted with. A pixel painted colour ``c`` differs from
  ``COLOR_RGB[c]`` by at most :data:`COLOR_JITTER` in every channel, and the prototypes are more
  than ``2 * COLOR_JITTER`` apart, so the nearest prototype of a pixel is always its label.
* ``masks["texture"]``: ``[S, S]`` int16, every pixel holds the 1-based index in
  :data:`TEXTURES` of the texture of the region it belongs to (an object's texture on object
  pixels, the scene's texture on background pixels).

Image-level labels (``Scene.labels``), as Broden's image-level categories:

* ``labels["scene"]``: 1-based index in :data:`SCENES` of the background.
* ``labels["texture"]``: 1-based index in :data:`TEXTURES` of the **main object's** texture
  (not the background's, which ``masks["texture"]`` carries).

The classification target of the project's default model is the main object's shape:
``Scene.label`` is its **0-based** index in :func:`class_names` (= :data:`SHAPES`).

Concept vocabulary: :func:`concepts` numbers every (category, name) pair with a stable global
id starting at 1 (0 is "unlabelled"), categories in the order of :data:`CATEGORIES`;
:func:`concept_lut` turns a per-category mask into global ids.

Determinism: scene ``index`` of ``seed`` is drawn from ``numpy.random.default_rng([seed,
index])`` alone, so it is identical whatever ``n`` or ``start`` it was generated with.

Only numpy is needed; a 64 px scene takes well under a millisecond.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pyanalyzer._checks import check_int as _check_int
from pyanalyzer.errors import UserInputError

__all__ = [
    "CATEGORIES",
    "COLORS",
    "COLOR_JITTER",
    "COLOR_RGB",
    "IMAGE_CATEGORIES",
    "MAX_SCENES",
    "MAX_SIZE",
    "MIN_SIZE",
    "OBJECT_TEXTURES",
    "PIXEL_CATEGORIES",
    "SCENES",
    "SCENE_TEXTURE",
    "SHAPES",
    "TEXTURES",
    "Concept",
    "Scene",
    "SceneObject",
    "class_names",
    "concept_id",
    "concept_lut",
    "concepts",
    "generate",
    "render",
    "check_count",
    "check_size",
    "render_batch",
]

# --------------------------------------------------------------------------------------------
# Vocabulary. The order of every tuple is part of the public contract (label ids derive from it):
# append, never reorder.

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring")
"""Object shapes; the default model's classes in logit order."""

COLORS: tuple[str, ...] = (
    "black",
    "blue",
    "brown",
    "green",
    "grey",
    "orange",
    "pink",
    "purple",
    "red",
    "white",
    "yellow",
)
"""The 11 colour names of the Broden dataset, alphabetical as there."""

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "blue": (35, 75, 215),
    "brown": (125, 75, 35),
    "green": (45, 155, 55),
    "grey": (128, 128, 128),
    "orange": (240, 135, 25),
    "pink": (240, 165, 200),
    "purple": (125, 50, 165),
    "red": (215, 35, 35),
    "white": (235, 235, 235),
    "yellow": (235, 215, 45),
}
"""RGB prototype of each colour. All channels lie in [20, 240] so jitter never clips."""

COLOR_JITTER: int = 14
"""Largest per-channel deviation of a painted pixel from its colour's prototype."""

_REGION_JITTER = 8  # per painted region offset, uniform in [-8, 8]
_PIXEL_JITTER = COLOR_JITTER - _REGION_JITTER  # per pixel noise, uniform in [-6, 6]

TEXTURES: tuple[str, ...] = (
    "plain",
    "striped",
    "dotted",
    "chequered",
    "zigzagged",
    "grid",
    "blotchy",
    "speckled",
    "wavy",
    "bricked",
)
"""Texture names (DTD-like). Objects use :data:`OBJECT_TEXTURES`; scenes use :data:`SCENE_TEXTURE`."""

OBJECT_TEXTURES: tuple[str, ...] = TEXTURES[:6]
"""Textures painted on objects: two-colour patterns in the object's own frame."""

SCENES: tuple[str, ...] = ("sky", "grass", "water", "sand", "brick", "night", "snow", "wall")
"""Background scene types."""

SCENE_TEXTURE: dict[str, str] = {
    "sky": "blotchy",  # blue with white cloud ellipses
    "grass": "speckled",  # green with yellow flower specks
    "water": "wavy",  # blue with white wave crests
    "sand": "wavy",  # yellow with brown ripples (longer, thinner than water's)
    "brick": "bricked",  # red or brown bricks, grey mortar
    "night": "speckled",  # black with sparse white stars
    "snow": "blotchy",  # white with grey drifts
    "wall": "plain",  # plain grey
}
"""Texture label of the background pixels of each scene."""

CATEGORIES: tuple[str, ...] = ("color", "shape", "scene", "texture")
"""Concept categories, in the order their concepts are numbered (Broden's column order)."""

PIXEL_CATEGORIES: tuple[str, ...] = ("shape", "color", "texture")
"""Categories with a per-pixel mask in ``Scene.masks``."""

IMAGE_CATEGORIES: tuple[str, ...] = ("scene", "texture")
"""Categories with an image-level label in ``Scene.labels``."""

MIN_SIZE: int = 16
"""Smallest image side accepted by :func:`render`."""

MAX_SIZE: int = 4096
"""Largest image side accepted by :func:`render` (a scene of 4096 pixels takes about 2 GiB to
draw, and must also fit the memory budget, :mod:`pyanalyzer.budget`)."""

MAX_SCENES: int = 1_000_000
"""The most scenes one call makes (:func:`render_batch`, the synthetic concept dataset of
:func:`pyanalyzer.data.broden.synth_dataset`, :class:`pyanalyzer.data.defaults.SyntheticImages`):
a million 64-pixel scenes are 12 GiB of pixels; disk and memory are checked as well."""


def check_size(size: int) -> int:
    """``size`` as an int within :data:`MIN_SIZE`..:data:`MAX_SIZE`, whose scene fits the memory
    budget.

    Raises:
        UserInputError: not an integer, out of range, or over the budget.
    """
    from pyanalyzer import budget

    size = _check_int("size", size, MIN_SIZE)
    if size > MAX_SIZE:
        raise UserInputError(f"size must be at most {MAX_SIZE} pixels, got {size}")
    budget.check(f"drawing a {size}x{size} synthetic scene", budget.synthetic_images_bytes(1, size))
    return size


def check_count(n: int, minimum: int = 1, name: str = "n_images") -> int:
    """``n`` as an int within ``minimum``..:data:`MAX_SCENES`.

    Raises:
        UserInputError: not an integer or out of range.
    """
    n = _check_int(name, n, minimum)
    if n > MAX_SCENES:
        raise UserInputError(f"{name} must be at most {MAX_SCENES} scenes, got {n}")
    return n


_NAMES: dict[str, tuple[str, ...]] = {
    "color": COLORS,
    "shape": SHAPES,
    "scene": SCENES,
    "texture": TEXTURES,
}
_COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}
_PROTOS = np.array([COLOR_RGB[c] for c in COLORS], dtype=np.int16)  # [11, 3]


@dataclass(frozen=True)
class Concept:
    """One named concept of the vocabulary.

    Attributes:
        id: Global id, 1-based and unique over all categories (0 means unlabelled).
        category: One of :data:`CATEGORIES`.
        name: The concept's name within its category.
        label: 1-based index of ``name`` in its category's tuple; the value used in masks and
            image-level labels.
    """

    id: int
    category: str
    name: str
    label: int


def concepts() -> tuple[Concept, ...]:
    """Every concept of the vocabulary with its stable global id.

    Returns:
        Concepts ordered by category (:data:`CATEGORIES`) then by their order in the category
        tuple; ``concepts()[i].id == i + 1``.
    """
    out: list[Concept] = []
    for category in CATEGORIES:
        for j, name in enumerate(_NAMES[category]):
            out.append(Concept(len(out) + 1, category, name, j + 1))
    return tuple(out)


def concept_id(category: str, name: str) -> int:
    """Global id of a concept.

    Args:
        category: One of :data:`CATEGORIES`.
        name: A name of that category.

    Returns:
        The global id (>= 1) as numbered by :func:`concepts`.

    Raises:
        UserInputError: Unknown category or name.
    """
    names = _category_names(category)
    if name not in names:
        raise UserInputError(f"unknown {category} concept {name!r}; expected one of {names}")
    return int(concept_lut(category)[names.index(name) + 1])


def concept_lut(category: str) -> np.ndarray:
    """Lookup table from a category's 1-based labels to global concept ids.

    Args:
        category: One of :data:`CATEGORIES`.

    Returns:
        int32 array ``[len(names) + 1]`` with ``lut[0] == 0``, so ``lut[masks[category]]``
        is the mask in global ids.

    Raises:
        UserInputError: Unknown category.
    """
    _category_names(category)
    offset = 0
    for c in CATEGORIES:
        if c == category:
            break
        offset += len(_NAMES[c])
    n = len(_NAMES[category])
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[1:] = np.arange(offset + 1, offset + n + 1, dtype=np.int32)
    return lut


def class_names() -> list[str]:
    """Class names of the default model in logit order (the main object's shape)."""
    return list(SHAPES)


def _category_names(category: str) -> tuple[str, ...]:
    if category not in _NAMES:
        raise UserInputError(f"unknown concept category {category!r}; expected one of {CATEGORIES}")
    return _NAMES[category]


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class SceneObject:
    """Description of one drawn object.

    Attributes:
        shape: Name in :data:`SHAPES`.
        color: Primary colour name in :data:`COLORS`.
        secondary_color: Colour of the texture's pattern (unused by "plain").
        texture: Name in :data:`OBJECT_TEXTURES`.
        center: ``(y, x)`` in pixels, pixel ``(i, j)`` having its centre at ``(i + 0.5, j + 0.5)``.
        radius: Scale in pixels; the shape lies within ``1.1 * radius`` of ``center``.
        angle: Rotation of the shape in radians.
    """

    shape: str
    color: str
    secondary_color: str
    texture: str
    center: tuple[float, float]
    radius: float
    angle: float


@dataclass(frozen=True, eq=False)
class Scene:
    """One rendered scene. All arrays are read-only.

    Attributes:
        index: Index of the scene within its seed.
        seed: The seed it was drawn from.
        image: RGB uint8 ``[S, S, 3]``.
        masks: ``{"shape", "color", "texture"}`` -> int16 ``[S, S]`` of 1-based labels (see
            the module docstring; 0 = none).
        labels: Image-level 1-based labels ``{"scene": int, "texture": int}``; ``texture`` is
            the main object's texture.
        objects: Drawn objects, main object first, then distractors in drawing order.
        instances: uint8 ``[S, S]``: 0 for background, ``k`` where ``objects[k - 1]`` is
            visible (the main object is 1 and is drawn last, so never occluded).
    """

    index: int
    seed: int
    image: np.ndarray
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    objects: tuple[SceneObject, ...]
    instances: np.ndarray

    @property
    def main_shape(self) -> str:
        """Shape name of the main object (the class of the default model)."""
        return self.objects[0].shape

    @property
    def label(self) -> int:
        """0-based class index of the main object's shape in :func:`class_names`."""
        return SHAPES.index(self.objects[0].shape)

    @property
    def scene(self) -> str:
        """Name of the background scene."""
        return SCENES[self.labels["scene"] - 1]


# --------------------------------------------------------------------------------------------
# Geometry. Shapes are defined in a unit frame (radius 1) and tested at pixel centres.


def _regular(k: int, r: float, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(k) / k
    return np.stack([r * np.sin(t), r * np.cos(t)], axis=1)  # (y, x)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.sin(t), r * np.cos(t)], axis=1)


def _cross(arm: float, half_width: float) -> np.ndarray:
    a, w = arm, half_width
    xy = [(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a)]
    xy += [(-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a)]
    return np.array([(y, x) for x, y in xy], dtype=np.float64)


_POLYGONS: dict[str, np.ndarray] = {
    "square": _regular(4, 1.0, np.pi / 4),  # half side ~0.71
    "triangle": _regular(3, 1.1, -np.pi / 2),
    "star": _star(5, 1.1, 0.45),
    "cross": _cross(1.0, 0.34),
    "hexagon": _regular(6, 0.95),
}
_CIRCLE_R = 0.85
_RING_R = (0.5, 0.95)


def _edges(vertices: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-edge terms of the even-odd test: y0, y1, x0, dx/dy (horizontal edges dropped)."""
    y0, x0 = vertices[:, 0], vertices[:, 1]
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    keep = y0 != y1
    y0, y1, x0, x1 = y0[keep], y1[keep], x0[keep], x1[keep]
    return y0[:, None], y1[:, None], x0[:, None], ((x1 - x0) / (y1 - y0))[:, None]


_EDGES = {name: _edges(v) for name, v in _POLYGONS.items()}


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of unit-frame points ``(u=y, v=x)`` inside ``shape``."""
    if shape == "circle":
        return u * u + v * v <= _CIRCLE_R**2
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= _RING_R[1] ** 2) & (d2 >= _RING_R[0] ** 2)
    y0, y1, x0, slope = _EDGES[shape]
    uf, vf = u.reshape(1, -1), v.reshape(1, -1)
    crosses = ((y0 > uf) != (y1 > uf)) & (vf < x0 + (uf - y0) * slope)
    return (np.count_nonzero(crosses, axis=0) % 2 == 1).reshape(u.shape)


def _pattern(texture: str, y: np.ndarray, x: np.ndarray, period: float) -> np.ndarray:
    """Where a texture paints its secondary colour, on pixel coordinates of its own frame."""
    p = period
    if texture == "plain":
        return np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=bool)
    if texture == "striped":
        return np.broadcast_to((y / p) % 1.0 < 0.5, np.broadcast_shapes(y.shape, x.shape))
    if texture == "dotted":
        dy, dx = (y % p) - p / 2, (x % p) - p / 2
        return dy * dy + dx * dx < (0.3 * p) ** 2
    if texture == "chequered":
        return (np.floor(y / p) + np.floor(x / p)) % 2 == 1
    if texture == "zigzagged":
        tri = np.abs((x / p) % 2.0 - 1.0)  # triangle wave in [0, 1]
        return ((y / p + 0.8 * tri) % 1.0) < 0.5
    if texture == "grid":
        w = max(1.0, 0.3 * p)
        return ((y % p) < w) | ((x % p) < w)
    raise AssertionError(texture)  # pragma: no cover - vocabulary is closed


# --------------------------------------------------------------------------------------------
# Rendering


class _Canvas:
    """Label maps being painted; the image is composed from them once at the end."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.color = np.zeros((size, size), dtype=np.int16)  # 0-based colour index
        self.region = np.zeros((size, size), dtype=np.int16)  # which jitter offset applies
        self.shape = np.zeros((size, size), dtype=np.int16)
        self.texture = np.zeros((size, size), dtype=np.int16)
        self.instances = np.zeros((size, size), dtype=np.uint8)
        self.n_regions = 0

    def new_regions(self, k: int) -> int:
        first = self.n_regions
        self.n_regions += k
        return first


def _background(canvas: _Canvas, scene: str, rng: np.random.Generator) -> set[str]:
    """Paint the background; return the colour names it used."""
    s = canvas.size
    f = s / 64.0
    yy = np.arange(s, dtype=np.float64)[:, None] + 0.5
    xx = np.arange(s, dtype=np.float64)[None, :] + 0.5
    base_region = canvas.new_regions(2)  # base, accent
    if scene == "sky":
        base, accent = "blue", "white"
        acc = np.zeros((s, s), dtype=bool)
        for _ in range(int(rng.integers(2, 5))):
            cy, cx = rng.uniform(0, s, 2)
            ry, rx = rng.uniform(3, 8) * f, rng.uniform(8, 18) * f
            acc |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    elif scene == "grass":
        base, accent = "green", "yellow"
        acc = rng.random((s, s)) < 0.06
    elif scene in ("water", "sand"):
        if scene == "water":
            base, accent = "blue", "white"
            period, amp, lam, width = 7 * f, 1.5 * f, 14 * f, 0.22
        else:
            base, accent = "yellow", "brown"
            period, amp, lam, width = 11 * f, 3.0 * f, 24 * f, 0.14
        tilt = rng.uniform(-0.3, 0.3)
        phase = rng.uniform(0, 2 * np.pi)
        wave = yy + tilt * xx + amp * np.sin(2 * np.pi * xx / lam + phase)
        acc = ((wave / period + rng.uniform()) % 1.0) < width
    elif scene == "brick":
        base, accent = ("red", "brown")[int(rng.integers(2))], "grey"
        h, w = 8 * f, 16 * f
        mortar = max(1.0, 1.5 * f)
        oy, ox = rng.uniform(0, h), rng.uniform(0, w)
        row = np.floor((yy + oy) / h)
        shift = (row % 2) * (w / 2)
        acc = (((yy + oy) % h) < mortar) | (((xx + ox + shift) % w) < mortar)
    elif scene == "night":
        base, accent = "black", "white"
        acc = rng.random((s, s)) < 0.02
    elif scene == "snow":
        base, accent = "white", "grey"
        acc = np.zeros((s, s), dtype=bool)
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = rng.uniform(0, s, 2)
            ry, rx = rng.uniform(2, 5) * f, rng.uniform(5, 12) * f
            acc |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    elif scene == "wall":
        base, accent = "grey", "grey"
        acc = np.zeros((s, s), dtype=bool)
    else:  # pragma: no cover - vocabulary is closed
        raise AssertionError(scene)
    acc = np.broadcast_to(acc, (s, s))
    canvas.color[...] = np.where(acc, _COLOR_INDEX[accent], _COLOR_INDEX[base])
    canvas.region[...] = base_region + acc
    canvas.texture[...] = TEXTURES.index(SCENE_TEXTURE[scene]) + 1
    return {base, accent}


def _draw(canvas: _Canvas, obj: SceneObject, instance: int, rng: np.random.Generator) -> None:
    """Paint one object over the canvas (only its bounding box is computed)."""
    s = canvas.size
    cy, cx = obj.center
    ext = 1.1 * obj.radius + 1.0
    y0, y1 = max(0, int(cy - ext)), min(s, int(np.ceil(cy + ext)))
    x0, x1 = max(0, int(cx - ext)), min(s, int(np.ceil(cx + ext)))
    if y0 >= y1 or x0 >= x1:
        return
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
    c, sn = np.cos(obj.angle), np.sin(obj.angle)
    # Inverse rotation into the shape's unit frame.
    u = (c * dy - sn * dx) / obj.radius
    v = (sn * dy + c * dx) / obj.radius
    inside = _inside(obj.shape, u, v)
    if not inside.any():
        return
    # Texture frame: its own random orientation and phase, period in pixels.
    t = rng.uniform(0, np.pi)
    ct, st = np.cos(t), np.sin(t)
    period = rng.uniform(4.0, 7.0) * s / 64.0
    oy, ox = rng.uniform(0, period, 2)
    pat = _pattern(obj.texture, ct * dy - st * dx + oy, st * dy + ct * dx + ox, period)
    region = canvas.new_regions(2)
    box = (slice(y0, y1), slice(x0, x1))
    colors = np.where(pat, _COLOR_INDEX[obj.secondary_color], _COLOR_INDEX[obj.color])
    canvas.color[box][inside] = colors[inside]
    canvas.region[box][inside] = (region + pat)[inside]
    canvas.shape[box][inside] = SHAPES.index(obj.shape) + 1
    canvas.texture[box][inside] = TEXTURES.index(obj.texture) + 1
    canvas.instances[box][inside] = instance


def _pick_object(
    rng: np.random.Generator, size: int, radius: tuple[float, float], avoid: set[str]
) -> SceneObject:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    allowed = [c for c in COLORS if c not in avoid]
    color = allowed[int(rng.integers(len(allowed)))]
    others = [c for c in COLORS if c != color and c not in avoid]
    secondary = others[int(rng.integers(len(others)))]
    texture = OBJECT_TEXTURES[int(rng.integers(len(OBJECT_TEXTURES)))]
    r = rng.uniform(*radius) * size
    margin = 1.1 * r
    cy, cx = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, 2 * np.pi)
    return SceneObject(shape, color, secondary, texture, (float(cy), float(cx)), float(r), angle)


def render(index: int, seed: int = 0, size: int = 64) -> Scene:
    """Render one scene.

    Args:
        index: Scene number (>= 0) within ``seed``.
        seed: Dataset seed (>= 0).
        size: Image side ``S`` in pixels (>= :data:`MIN_SIZE`); geometry scales with it.

    Returns:
        The :class:`Scene`, ``image`` of shape ``[S, S, 3]`` uint8.

    Raises:
        UserInputError: A parameter is not an integer or out of range.
    """
    index = _check_int("index", index, 0)
    seed = _check_int("seed", seed, 0)
    size = check_size(size)
    rng = np.random.default_rng([seed, index])
    canvas = _Canvas(size)
    scene_name = SCENES[int(rng.integers(len(SCENES)))]
    used = _background(canvas, scene_name, rng)

    n_distractors = int(rng.choice(3, p=(0.4, 0.35, 0.25)))
    main = _pick_object(rng, size, (0.22, 0.36), used)
    distractors = [_pick_object(rng, size, (0.07, 0.11), used) for _ in range(n_distractors)]
    for k, obj in enumerate(distractors):
        _draw(canvas, obj, k + 2, rng)
    _draw(canvas, main, 1, rng)

    offsets = rng.integers(-_REGION_JITTER, _REGION_JITTER + 1, (canvas.n_regions, 3), np.int16)
    noise = rng.integers(-_PIXEL_JITTER, _PIXEL_JITTER + 1, (size, size, 3), np.int16)
    image = (_PROTOS[canvas.color] + offsets[canvas.region] + noise).astype(np.uint8)

    masks = {"shape": canvas.shape, "color": canvas.color + 1, "texture": canvas.texture}
    for a in (image, canvas.instances, *masks.values()):
        a.setflags(write=False)
    labels = {
        "scene": SCENES.index(scene_name) + 1,
        "texture": TEXTURES.index(main.texture) + 1,
    }
    return Scene(index, seed, image, masks, labels, (main, *distractors), canvas.instances)


def generate(n: int, seed: int = 0, size: int = 64, start: int = 0) -> Iterator[Scene]:
    """Yield scenes ``start, ..., start + n - 1`` of ``seed``.

    Args:
        n: Number of scenes (>= 0).
        seed: Dataset seed (>= 0).
        size: Image side in pixels (>= :data:`MIN_SIZE`).
        start: Index of the first scene (>= 0).

    Returns:
        An iterator of :class:`Scene`; scene ``i`` equals ``render(i, seed, size)``.

    Raises:
        UserInputError: A parameter is not an integer or out of range (raised at the call,
            not at the first ``next``).
    """
    n = check_count(n, 0, "n")
    seed = _check_int("seed", seed, 0)
    size = check_size(size)
    start = _check_int("start", start, 0)
    return (render(i, seed, size) for i in range(start, start + n))


def render_batch(
    n: int, seed: int = 0, size: int = 64, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images and class labels of ``n`` scenes, stacked (for training and evaluation).

    Args:
        n: Number of scenes (>= 0).
        seed: Dataset seed (>= 0).
        size: Image side in pixels (>= :data:`MIN_SIZE`).
        start: Index of the first scene (>= 0).

    Returns:
        ``(images, labels)``: uint8 ``[n, S, S, 3]`` RGB (NHWC) and int64 ``[n]`` 0-based
        class indices in :func:`class_names`.

    Raises:
        UserInputError: A parameter is not an integer or out of range, or the scenes do not
            fit the memory budget (:func:`pyanalyzer.budget.synthetic_images_bytes`).
    """
    from pyanalyzer import budget

    scenes = generate(n, seed, size, start)  # checks the parameters
    n, size = operator.index(n), operator.index(size)
    budget.check(
        f"{n} synthetic scenes of {size}x{size} held in memory",
        budget.synthetic_images_bytes(n, size),
        advice="use fewer or smaller scenes",
    )
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i, sc in enumerate(scenes):  # one scene at a time: their masks are not kept
        images[i] = sc.image
        labels[i] = sc.label
    return images, labels
