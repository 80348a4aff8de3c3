"""Random image transforms applied before every forward pass (transformation robustness).

Olah et al., "Feature Visualization", Distill 2017 (lucid's ``transform`` module): an image that
excites a unit only at one exact alignment is mostly high-frequency noise; asking it to excite
the unit under small random jitter, scaling and rotation makes the optimiser find structure.

A transform is a callable ``t(x, generator) -> x`` on a batch of images ``[N, C, H, W]``. Every
random draw comes from the generator passed in, never from global state, so a fixed seed gives
identical images. ``generator`` is either one :class:`torch.Generator` (one row of draws per
image, taken from it in batch order) or a sequence of ``N`` generators, one per image, so that
an image's draws do not depend on the other images in its batch (the render loop uses one
generator per unit: a unit's picture is the same whether it is rendered alone or in a batch).
For this module's transforms the render loop hands in the per-image generators as a
:class:`DrawAhead` (:func:`draw_ahead`), which gives the same draws without a torch call per
image and draw.

Transforms are differentiable in ``x``; they compose with :class:`Compose`, which fuses runs
of affine transforms (jitter, scale, rotate, crop) into a single resampling, and
:func:`standard_transforms` is lucid's default set. The render loop appends a
:class:`CenterCrop` back to the image's size (undoing the padding) and :func:`resize` to the
model's input size when the image size differs from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pyanalyzer.errors import UserInputError

__all__ = [
    "AffineTransform",
    "CenterCrop",
    "Compose",
    "DrawAhead",
    "Generators",
    "Jitter",
    "Pad",
    "RandomRotate",
    "RandomScale",
    "Transform",
    "draw_ahead",
    "draw_index",
    "resize",
    "standard_transforms",
    "warp",
]


HIGH_AHEAD = 1 << 24
"""The largest range :class:`DrawAhead` draws from (torch takes one word per draw up to it)."""

_MT_N = 624  # words of MT19937's state
_STATE_BYTES = 5056  # torch's CPU generator state: seed, left, seeded, next, 624 words, ...


def _mersenne(g: torch.Generator) -> np.random.MT19937 | None:
    """numpy's MT19937 in the state of the CPU generator ``g`` (the next outputs are the 32-bit
    words ``g`` would use next), or None where ``g``'s state is not laid out as expected."""
    raw = g.get_state().numpy()
    if g.device.type != "cpu" or raw.size != _STATE_BYTES:
        return None
    left = int(raw[8:12].view("<i4")[0])
    nxt = int(raw[16:24].view("<u8")[0])
    key = raw[24 : 24 + 8 * _MT_N].view("<u8")
    # torch takes word `next` after counting `left` down; at left == 1 it regenerates first
    if not (1 <= left <= _MT_N + 1 and (left == 1 or left + nxt == _MT_N + 1)):
        return None
    if int(key.max()) >= 1 << 32:
        return None
    bits = np.random.MT19937()
    pos = _MT_N if left == 1 else nxt
    bits.state = {"bit_generator": "MT19937", "state": {"key": key.astype(np.uint32), "pos": pos}}
    return bits


class DrawAhead:
    """Per-image generators whose :func:`draw_index` draws are made ahead, in blocks.

    torch draws a small integer (``high <= 2**24``; larger ranges may take two words) on the
    CPU as ``w % high`` of one 32-bit word ``w`` of the generator's Mersenne Twister. This
    reads each generator's state once (:func:`draw_ahead`), takes the words in blocks of
    :attr:`BLOCK` from numpy's MT19937 (the same algorithm), and answers :func:`draw_index`
    with ``w % high``: the values the generators would give, in the same order, without a
    torch call per image and draw. The generators are left where they were: draws made from
    them afterwards repeat these.
    """

    BLOCK = 1024
    """32-bit words drawn ahead per image at a time."""

    def __init__(self, bits: Sequence[np.random.MT19937]):
        self._bits = list(bits)
        self._words = np.empty((len(self._bits), 0), np.uint64)
        self._at = 0

    def __len__(self) -> int:
        return len(self._bits)

    def take(self, n: int, high: int, k: int) -> torch.Tensor:
        """Uniform integers in ``[0, high)``, int64 ``[n, k]``, row ``i`` from image ``i``'s
        words (:func:`draw_index`)."""
        if n != len(self._bits):
            raise ValueError(f"got {len(self._bits)} generators for a batch of {n} images")
        if not 1 <= high <= HIGH_AHEAD:
            raise ValueError(f"draws ahead are below 1..{HIGH_AHEAD}, got {high}")
        if self._at + k > self._words.shape[1]:
            more = np.stack([b.random_raw(max(self.BLOCK, k)) for b in self._bits])
            self._words = np.concatenate([self._words[:, self._at :], more], axis=1)
            self._at = 0
        words = self._words[:, self._at : self._at + k]
        self._at += k
        return torch.from_numpy((words % np.uint64(high)).astype(np.int64))


Generators = torch.Generator | Sequence[torch.Generator] | DrawAhead
"""One generator for the whole batch, one per image, or one per image drawn ahead
(:func:`draw_ahead`)."""


def draw_ahead(generators: Sequence[torch.Generator]) -> DrawAhead | list[torch.Generator]:
    """The per-image generators as a :class:`DrawAhead`, or as a list where their states are
    not the ones expected (another torch's layout or generator): then every draw is torch's
    own. Checked on a copy of the first generator: 32 words against torch's ``randint``."""
    gens = list(generators)
    bits = [_mersenne(g) for g in gens]
    if not gens or any(b is None for b in bits):
        return gens
    probe, copy = torch.Generator(), np.random.MT19937()
    probe.set_state(gens[0].get_state())
    copy.state = bits[0].state  # type: ignore[union-attr]
    top = HIGH_AHEAD
    expect = torch.randint(0, top, (32,), generator=probe).numpy()
    if not np.array_equal(copy.random_raw(32) % np.uint64(top), expect.astype(np.uint64)):
        return gens
    return DrawAhead(bits)  # type: ignore[arg-type]


def draw_index(generator: Generators, n: int, high: int, k: int = 1) -> torch.Tensor:
    """Uniform integers in ``[0, high)``, int64 ``[n, k]``: row ``i`` is image ``i``'s draws.

    With one generator the ``[n, k]`` block is drawn at once; with a sequence of ``n``
    generators, row ``i`` comes from ``generator[i]`` alone (a :class:`DrawAhead` gives the
    same values).
    """
    if isinstance(generator, torch.Generator):
        return torch.randint(0, high, (n, k), generator=generator)
    if isinstance(generator, DrawAhead):
        return generator.take(n, high, k)
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for a batch of {n} images")
    return torch.cat([torch.randint(0, high, (1, k), generator=g) for g in gens])


def _choice(generator: Generators, n: int, values: Sequence[float]) -> np.ndarray:
    """One of ``values`` per image, as float32 then float64 ``[n]``."""
    idx = draw_index(generator, n, len(values))[:, 0].numpy()
    return np.asarray(values, dtype=np.float32)[idx].astype(np.float64)


def _eye(n: int) -> np.ndarray:
    """``n`` identity matrices, float64 ``[n, 3, 3]``."""
    return np.broadcast_to(np.eye(3), (n, 3, 3)).copy()


class Transform:
    """Base class: ``__call__(x [N, C, H, W], generator) -> [N, C, H', W']``."""

    def __call__(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Pad(Transform):
    """Pad every side by ``width`` pixels (deterministic).

    Args:
        width: pixels added on each side.
        mode: ``"reflect"`` or ``"constant"``.
        value: the fill of ``"constant"`` (0.5 = mid-grey in RGB 0..1).
    """

    def __init__(self, width: int, mode: str = "reflect", value: float = 0.5):
        if mode not in ("reflect", "constant"):
            raise UserInputError(f"pad mode must be 'reflect' or 'constant', got {mode!r}")
        if width < 0:
            raise UserInputError(f"pad width must be >= 0, got {width}")
        self.width = int(width)
        self.mode = mode
        self.value = float(value)

    def as_resampling(self) -> AffineTransform | None:
        """A constant pad as the resampling it is (a shift outwards, :attr:`value` outside
        the image), which :class:`Compose` fuses with its neighbours; None for reflect."""
        if self.mode != "constant" or self.width == 0:
            return None
        return _Shift(self.width, self.value)

    def __call__(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        if self.width == 0:
            return x
        w = [self.width] * 4
        if self.mode == "constant":
            return F.pad(x, w, mode="constant", value=self.value)
        if self.width >= min(x.shape[-2:]):  # torch's reflect needs width < size
            return F.pad(x, w, mode="replicate")
        return F.pad(x, w, mode="reflect")


class AffineTransform(Transform):
    """A transform that is a resampling ``output(p) = input(M_i p)`` per image.

    ``M_i`` is a 3x3 matrix in pixel coordinates (pixel ``(row, col)`` has its centre at
    ``(x, y) = (col, row)``) mapping an output pixel to where it samples the input, bilinearly,
    with :attr:`fill` outside the input. :class:`Compose` multiplies the matrices of
    consecutive affine transforms and resamples once: fewer passes over the batch, and one
    interpolation instead of several (integer shifts stay exact).
    """

    fill: float | None = None
    """The value of output pixels that sample outside the input (0 = black in RGB 0..1), or
    None for transforms that never do (crops)."""

    def matrix(
        self, n: int, size: tuple[int, int], generator: Generators
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """``(M [n, 3, 3] float64, output size)`` for inputs of ``size = (H, W)``; numpy
        arrays, made on the CPU once per step (a few hundred values: numpy's small-array ops
        cost a fraction of torch's dispatch)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        m, out = self.matrix(x.shape[0], (int(x.shape[-2]), int(x.shape[-1])), generator)
        return warp(x, m, out, fill=self.fill or 0.0)


class _Shift(AffineTransform):
    """A constant :class:`Pad` as a resampling: the image moved ``width`` pixels right and
    down into a canvas ``2 * width`` larger, ``fill`` around it."""

    def __init__(self, width: int, fill: float):
        self.width = int(width)
        self.fill = float(fill)

    def matrix(self, n, size, generator):
        m = _eye(n)
        m[:, 0, 2] = -self.width
        m[:, 1, 2] = -self.width
        return m, (size[0] + 2 * self.width, size[1] + 2 * self.width)


def _to_normalized(h: int, w: int) -> torch.Tensor:
    """Pixel coordinates (centre of pixel ``(r, c)`` at ``(c, r)``) to grid_sample's
    normalised ones with ``align_corners=False`` (-1 and 1 at the outer pixel edges)."""
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def warp(
    x: torch.Tensor, matrix: np.ndarray | torch.Tensor, out: tuple[int, int], fill: float = 0.0
) -> torch.Tensor:
    """Resample ``x [N, C, H, W]`` at ``matrix @ (x, y, 1)`` of every output pixel of size
    ``out`` (pixel coordinates, see :class:`AffineTransform`): bilinear, ``fill`` outside
    (blending into it across the input's edge pixel, as zeros padding does)."""
    n, c, h, w = x.shape
    ho, wo = out
    m = torch.as_tensor(matrix, dtype=torch.float64)
    theta = _to_normalized(h, w) @ m @ torch.linalg.inv(_to_normalized(ho, wo))
    # The matrices are small and on the CPU (the draws are); the grid is made where x is.
    grid = F.affine_grid(theta[:, :2].to(x.device, x.dtype), [n, c, ho, wo], align_corners=False)
    if fill:
        shifted = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # fmt: skip
        return shifted + fill
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _about_centre(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[n, 2, 2]`` linear maps applied about the image centre, as ``[n, 3, 3]``."""
    h, w = size
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    m = np.zeros((a.shape[0], 3, 3))
    m[:, :2, :2] = a
    m[:, :2, 2] = c - a @ c
    m[:, 2, 2] = 1.0
    return m


class Jitter(AffineTransform):
    """A random crop ``d`` pixels smaller in each dimension (lucid's ``jitter(d)``).

    Image ``i`` becomes ``x[i, :, dy:dy + H - d, dx:dx + W - d]`` with ``(dy, dx)`` row ``i``
    of :func:`draw_index` ``(generator, N, d + 1, 2)``: a shift of up to ``d`` pixels.
    """

    def __init__(self, d: int):
        if d < 0:
            raise UserInputError(f"jitter must be >= 0 pixels, got {d}")
        self.d = int(d)

    def _offsets(self, n: int, size: tuple[int, int], generator: Generators) -> torch.Tensor:
        if self.d >= min(size):
            raise UserInputError(
                f"jitter of {self.d} pixels leaves nothing of a {size[0]}x{size[1]} image"
            )
        return draw_index(generator, n, self.d + 1, 2)

    def matrix(self, n, size, generator):
        m = _eye(n)
        if self.d:
            off = self._offsets(n, size, generator).numpy()
            m[:, 0, 2] = off[:, 1]
            m[:, 1, 2] = off[:, 0]
        return m, (size[0] - self.d, size[1] - self.d)

    def __call__(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        if self.d == 0:
            return x
        n, c, h, w = x.shape
        off = self._offsets(n, (h, w), generator)
        ho, wo = h - self.d, w - self.d
        # An exact crop: one gather over the flattened pixels (its backward, one scatter).
        off = off.to(x.device)  # drawn on the CPU whatever the device (same draws)
        rows = off[:, :1] + torch.arange(ho, device=x.device)  # [N, ho]
        cols = off[:, 1:] + torch.arange(wo, device=x.device)  # [N, wo]
        idx = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, -1).expand(n, c, -1)
        return x.flatten(2).gather(2, idx).view(n, c, ho, wo)


class RandomScale(AffineTransform):
    """Zoom about the centre by a factor drawn per image from ``scales``; the size is kept.

    Output pixel ``p`` samples the input at ``centre + (p - centre) / s``, bilinearly; zooming
    out (``s < 1``) fills the border with ``fill``. lucid resizes the tensor instead, which
    shows no fill; after the render loop's crop back to the image size the two differ where a
    large image's border reaches the fill (:func:`standard_transforms` fills with the pad's
    mid-grey there, not black).
    """

    def __init__(self, scales: Iterable[float], fill: float = 0.0):
        self.scales = [float(s) for s in scales]
        if not self.scales or min(self.scales) <= 0:
            raise UserInputError(f"scales must be positive and non-empty, got {self.scales}")
        self.fill = float(fill)

    def matrix(self, n, size, generator):
        inv = 1.0 / _choice(generator, n, self.scales)
        a = np.zeros((n, 2, 2))
        a[:, 0, 0] = inv
        a[:, 1, 1] = inv
        return _about_centre(a, size), size


class RandomRotate(AffineTransform):
    """Rotate about the centre by an angle (degrees, counter-clockwise on screen) drawn per
    image from ``angles``; bilinear, ``fill`` outside (lucid: 0), size kept. ``90`` equals
    ``torch.rot90(x, 1, dims=(2, 3))`` on a square image."""

    def __init__(self, angles: Iterable[float], fill: float = 0.0):
        self.angles = [float(a) for a in angles]
        if not self.angles:
            raise UserInputError("angles must not be empty")
        self.fill = float(fill)

    def matrix(self, n, size, generator):
        rad = _choice(generator, n, self.angles) * (math.pi / 180.0)
        cos, sin = np.cos(rad), np.sin(rad)
        # Output pixel (u, v) from the centre, y down, samples the input at
        # (u cos a - v sin a, u sin a + v cos a): a counter-clockwise turn on screen.
        a = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
        return _about_centre(a, size), size


class CenterCrop(AffineTransform):
    """The centre ``size = (h, w)`` of each image (top-left corner at ``(H - h) // 2,
    (W - w) // 2``); images no larger than ``size`` in a dimension are left whole in it."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def _box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        h, w = min(size[0], self.size[0]), min(size[1], self.size[1])
        return (size[0] - h) // 2, (size[1] - w) // 2, h, w

    def matrix(self, n, size, generator):
        top, left, h, w = self._box(size)
        m = _eye(n)
        m[:, 0, 2] = left
        m[:, 1, 2] = top
        return m, (h, w)

    def __call__(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        top, left, h, w = self._box((int(x.shape[-2]), int(x.shape[-1])))
        return x[..., top : top + h, left : left + w]


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator(s).

    Runs of consecutive :class:`AffineTransform` are fused into one resampling (their draws
    are taken in the same order as when applied one by one). A constant :class:`Pad` joins the
    run as the shift it is when the run's resamplings fill with its value (lucid's set: the pad
    and the scaling and rotation all fill with mid-grey), so the padded canvas is never made:
    the same image to float rounding, one pass over the batch less and a smaller resampling.
    """

    def __init__(self, transforms: Iterable[Transform]):
        self.transforms = tuple(transforms)
        self._run: list[AffineTransform] | None = None  # as_resampling(), once known
        self._run_known = False

    def _resampling(self, i: int, run: list[AffineTransform]) -> AffineTransform | None:
        """Transform ``i`` as a resampling to fuse into ``run``, or None."""
        t = self.transforms[i]
        if isinstance(t, AffineTransform):
            return t
        shift = t.as_resampling() if isinstance(t, Pad) else None
        if shift is None:
            return None
        after = []
        for u in self.transforms[i + 1 :]:
            if not isinstance(u, AffineTransform):
                break
            after.append(u)
        fills = {u.fill for u in [*run, *after] if u.fill is not None}
        return shift if fills <= {shift.fill} else None

    def __call__(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        run: list[AffineTransform] = []
        for i, t in enumerate(self.transforms):
            resampling = self._resampling(i, run)
            if resampling is not None:
                run.append(resampling)
                continue
            x = self._fused(x, run, generator)
            run = []
            x = t(x, generator)
        return self._fused(x, run, generator)

    @classmethod
    def _fused(cls, x: torch.Tensor, run: list[AffineTransform], generator: Generators):
        if not run:
            return x
        if len(run) == 1:
            return run[0](x, generator)
        size: tuple[int, int] = tuple(x.shape[-2:])  # type: ignore[assignment]
        total, out, fill = cls._product(run, x.shape[0], size, generator)
        return warp(x, total, out, fill=fill)

    @staticmethod
    def _product(
        run: Sequence[AffineTransform], n: int, size: tuple[int, int], generator: Generators
    ) -> tuple[np.ndarray, tuple[int, int], float]:
        """``(M [n, 3, 3] float64, output size, fill)`` of ``run`` applied in order to inputs
        of ``size``, drawing as applying them one by one would."""
        fills = {t.fill for t in run if t.fill is not None}
        if len(fills) > 1:
            raise UserInputError(
                f"consecutive resampling transforms fill the outside with different values "
                f"({sorted(fills)}): give them one fill, or put another transform between them"
            )
        total = _eye(n)
        for t in run:
            m, size = t.matrix(n, size, generator)
            total = total @ np.asarray(m, dtype=np.float64)
        return total, size, fills.pop() if fills else 0.0

    def as_resampling(self) -> list[AffineTransform] | None:
        """The whole composition as one run of resamplings (what :meth:`resampling` applies),
        or None when a transform is not one (a reflecting pad, a custom transform). Worked
        out once: the render loop asks at every step."""
        if not self._run_known:
            self._run = self._fusable_run()
            self._run_known = True
        return self._run

    def _fusable_run(self) -> list[AffineTransform] | None:
        run: list[AffineTransform] = []
        for i in range(len(self.transforms)):
            resampling = self._resampling(i, run)
            if resampling is None:
                return None
            run.append(resampling)
        return run

    def resampling(
        self, n: int, size: tuple[int, int], generator: Generators
    ) -> tuple[np.ndarray, tuple[int, int], float]:
        """``(M [n, 3, 3] float64, output size, fill)``: the one resampling that this
        composition is, for inputs of ``size`` (:meth:`as_resampling`), with the draws that
        calling it would take, in the same order; ``warp(x, M, size, fill)`` is then the
        composition's result, to float rounding.

        Raises:
            ValueError: the composition is not one resampling.
            UserInputError: its resamplings fill with different values.
        """
        run = self.as_resampling()
        if run is None:
            raise ValueError(f"{self!r} is not one resampling")
        return self._product(run, n, size, generator)

    def draws_by_index(self) -> bool:
        """Whether every transform is one of this module's, which draw only through
        :func:`draw_index` (so that a :class:`DrawAhead` may stand for the generators)."""
        return all(
            type(t) in _BY_INDEX or (type(t) is Compose and t.draws_by_index())
            for t in self.transforms
        )

    def __iter__(self) -> Iterator[Transform]:
        return iter(self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Compose([{', '.join(map(repr, self.transforms))}])"


_BY_INDEX = (Pad, _Shift, Jitter, RandomScale, RandomRotate, CenterCrop)
"""The transforms that draw through :func:`draw_index` alone (:meth:`Compose.draws_by_index`)."""


def standard_transforms() -> Compose:
    """lucid's ``transform.standard_transforms``: pad 12 (constant 0.5), jitter 8, scale from
    ``[1 + (i - 5) / 50 for i in range(11)]``, rotate from ``range(-10, 11)`` degrees (plus the
    five extra 0° entries lucid lists, so no rotation is drawn a little more often), jitter 4.

    Where scaling or rotation samples outside the padded image, it sees the pad's mid-grey:
    lucid's zoom shows no fill at all and its rotation black corners, which on large images
    reach the crop that the model sees.
    """
    return Compose(
        [
            Pad(12, mode="constant", value=0.5),
            Jitter(8),
            RandomScale([1 + (i - 5) / 50 for i in range(11)], fill=0.5),
            RandomRotate(list(range(-10, 11)) + 5 * [0], fill=0.5),
            Jitter(4),
        ]
    )


def resize(x: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` to ``out`` (antialiased when shrinking); a no-op
    at that size already."""
    if tuple(x.shape[-2:]) == tuple(out):
        return x
    shrink = x.shape[-2] > out[0] or x.shape[-1] > out[1]
    return F.interpolate(x, size=out, mode="bilinear", align_corners=False, antialias=shrink)
