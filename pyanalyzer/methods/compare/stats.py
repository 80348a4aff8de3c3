"""The arithmetic of a model comparison: bilinear resizing of maps, the streaming Pearson
correlation of every pair of units (float64 sums over batches), the one-to-one matching of
largest total correlation, and the streaming agreement of two class vectors."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "CorrelationTally",
    "OutputTally",
    "bilinear_matrix",
    "match_units",
    "resize_maps",
]


def bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """float64 ``[dst, src]``: bilinear resampling of one axis from ``src`` to ``dst`` samples
    with half-pixel centres and the edges clamped (torch's ``align_corners=False``, the
    dissection's upsampling); rows sum to 1."""
    out = np.zeros((dst, src), np.float64)
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    rows = np.arange(dst)
    np.add.at(out, (rows, lo), 1.0 - frac)
    np.add.at(out, (rows, hi), frac)
    return out


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[N, C, h, w]`` maps resized bilinearly to ``size`` = (H, W) (:func:`bilinear_matrix`
    on each axis), as float64 ``[N, C, H, W]``."""
    n, c, h, w = maps.shape
    if (h, w) == tuple(size):
        return maps.astype(np.float64)
    wy = bilinear_matrix(h, int(size[0]))
    wx = bilinear_matrix(w, int(size[1]))
    return np.einsum("yh,nchw,xw->ncyx", wy, maps.astype(np.float64), wx, optimize=True)


def _flat(maps: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` as a new float64 ``[C, N*H*W]`` array (every image and position a
    sample; the caller's maps are never written to)."""
    c = maps.shape[1]
    return np.array(np.moveaxis(maps, 1, 0).reshape(c, -1), dtype=np.float64, order="C")


_CORR_STATE = ("shift_a", "shift_b", "sx", "sy", "sxx", "syy", "sxy", "lo_a", "hi_a",
               "lo_b", "hi_b", "count")  # fmt: skip


class CorrelationTally:
    """Streaming Pearson correlation of every pair of units of two layers.

    :meth:`update` takes a batch of both layers' maps (``[N, U_A, H, W]`` and
    ``[N, U_B, H, W]``, the same images and positions); :meth:`correlation` gives the float64
    ``[U_A, U_B]`` matrix, NaN where a unit is constant over everything seen.
    """

    def __init__(self, units_a: int, units_b: int):
        self.units = (units_a, units_b)
        self.shift_a: np.ndarray | None = None
        self.shift_b: np.ndarray | None = None
        self.sx = np.zeros(units_a)
        self.sy = np.zeros(units_b)
        self.sxx = np.zeros(units_a)
        self.syy = np.zeros(units_b)
        self.sxy = np.zeros((units_a, units_b))
        self.lo_a = np.full(units_a, np.inf)
        self.hi_a = np.full(units_a, -np.inf)
        self.lo_b = np.full(units_b, np.inf)
        self.hi_b = np.full(units_b, -np.inf)
        self.count = 0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        x, y = _flat(a), _flat(b)
        if x.shape[1] != y.shape[1]:  # pragma: no cover - the caller resizes first
            raise ValueError(f"maps of {x.shape[1]} and {y.shape[1]} values cannot be paired")
        if self.shift_a is None or self.shift_b is None:
            self.shift_a, self.shift_b = x.mean(axis=1), y.mean(axis=1)
        self.lo_a = np.minimum(self.lo_a, x.min(axis=1))
        self.hi_a = np.maximum(self.hi_a, x.max(axis=1))
        self.lo_b = np.minimum(self.lo_b, y.min(axis=1))
        self.hi_b = np.maximum(self.hi_b, y.max(axis=1))
        x -= self.shift_a[:, None]
        y -= self.shift_b[:, None]
        self.sx += x.sum(axis=1)
        self.sy += y.sum(axis=1)
        self.sxx += np.einsum("ij,ij->i", x, x)
        self.syy += np.einsum("ij,ij->i", y, y)
        self.sxy += x @ y.T
        self.count += x.shape[1]

    @property
    def constant_a(self) -> np.ndarray:
        """bool ``[U_A]``: units of A that took one value over everything seen."""
        return ~(self.hi_a > self.lo_a)

    @property
    def constant_b(self) -> np.ndarray:
        return ~(self.hi_b > self.lo_b)

    def correlation(self) -> np.ndarray:
        """float64 ``[U_A, U_B]`` Pearson correlations, clipped to [-1, 1]; NaN on the rows of
        constant units of A and the columns of constant units of B."""
        n = max(self.count, 1)
        mx, my = self.sx / n, self.sy / n
        cov = self.sxy / n - np.outer(mx, my)
        va = np.maximum(self.sxx / n - mx * mx, 0.0)
        vb = np.maximum(self.syy / n - my * my, 0.0)
        dead_a = self.constant_a | (va <= 0)
        dead_b = self.constant_b | (vb <= 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = cov / np.sqrt(np.outer(va, vb))
        corr = np.clip(corr, -1.0, 1.0)
        corr[dead_a, :] = np.nan
        corr[:, dead_b] = np.nan
        return corr

    def state(self) -> dict[str, np.ndarray]:
        out = {k: np.asarray(getattr(self, k)) for k in _CORR_STATE if k not in ("count",)}
        out["count"] = np.asarray(self.count, np.int64)
        return out

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        for k in _CORR_STATE:
            value = np.array(state[k])
            setattr(self, k, int(value) if k == "count" else value)


def match_units(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching of units that maximises the total correlation (Hungarian
    method; rectangular: every unit of the narrower side is matched). Units whose row or
    column is all NaN (constant units) are left out.

    Returns:
        ``(units of A, units of B)``, int64 ``[K]`` each, by A's unit.
    """
    from scipy.optimize import linear_sum_assignment

    rows = np.flatnonzero(~np.isnan(corr).all(axis=1))
    cols = np.flatnonzero(~np.isnan(corr).all(axis=0))
    if len(rows) == 0 or len(cols) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sub = np.nan_to_num(corr[np.ix_(rows, cols)], nan=0.0)
    r, c = linear_sum_assignment(sub, maximize=True)
    return rows[r].astype(np.int64), cols[c].astype(np.int64)


def _probabilities(logits: np.ndarray, given: bool) -> np.ndarray:
    """float64 ``[N, K]`` probabilities: the outputs as they are (a Softmax output), else
    their softmax."""
    x = np.asarray(logits, np.float64).reshape(logits.shape[0], -1)
    if given:
        return x
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


_OUT_STATE = ("images", "agree", "abs_sum", "count_a", "count_b", "both")


class OutputTally:
    """Streaming agreement of two class vectors over the same images."""

    def __init__(self, classes: int, softmax_a: bool, softmax_b: bool):
        self.classes = classes
        self.given = (softmax_a, softmax_b)
        self.images = 0
        self.agree = 0
        self.abs_sum = 0.0
        self.count_a = np.zeros(classes, np.int64)
        self.count_b = np.zeros(classes, np.int64)
        self.both = np.zeros(classes, np.int64)

    def update(self, out_a: np.ndarray, out_b: np.ndarray) -> None:
        pa = _probabilities(out_a, self.given[0])
        pb = _probabilities(out_b, self.given[1])
        ta, tb = pa.argmax(axis=1), pb.argmax(axis=1)
        same = ta == tb
        k = self.classes
        self.images += len(ta)
        self.agree += int(same.sum())
        self.abs_sum += float(np.abs(pa - pb).sum())
        self.count_a += np.bincount(ta, minlength=k)
        self.count_b += np.bincount(tb, minlength=k)
        self.both += np.bincount(ta[same], minlength=k)

    def state(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in _OUT_STATE}

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        for k in _OUT_STATE:
            value = np.array(state[k])
            if k in ("images", "agree"):
                setattr(self, k, int(value))
            elif k == "abs_sum":
                setattr(self, k, float(value))
            else:
                setattr(self, k, value)
