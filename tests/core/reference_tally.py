"""A plain numpy reference of the tally contract (csrc/include/pyanalyzer/tally.h).

Written for clarity, not speed: every map is upsampled in full with the header's formula, in
float32 and in the header's order, then thresholded and counted with np.bincount. The compiled
kernels must give IDENTICAL counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Axis:
    """Bilinear weights along one axis, for every output index."""

    lo: np.ndarray  # int64 [out]
    hi: np.ndarray  # int64 [out]
    w_lo: np.ndarray  # float32 [out]
    w_hi: np.ndarray  # float32 [out]


def bilinear_axis(size_in: int, size_out: int) -> Axis:
    """Half-pixel centres, edge clamp (torch align_corners=False, PIL 'F').

    In float64 (every numpy operation is one IEEE rounding, no FMA), as the header says:
    src = max(0, (d + 0.5) * (in / out) - 0.5); lo = floor(src); hi = min(lo + 1, in - 1);
    w_hi = float32(src - lo); w_lo = float32(1) - w_hi in float32.
    """
    d = np.arange(size_out, dtype=np.float64)
    src = np.maximum((d + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    w_hi = (src - lo).astype(np.float32)
    w_lo = np.float32(1.0) - w_hi
    return Axis(lo, hi, w_lo, w_hi)


def upsample(acts: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """float32 [..., h, w] -> [..., out_h, out_w], bit for bit the kernels' values."""
    acts = np.asarray(acts, dtype=np.float32)
    ay = bilinear_axis(acts.shape[-2], out_h)
    ax = bilinear_axis(acts.shape[-1], out_w)
    rows_lo = acts[..., ay.lo, :]  # [..., out_h, w]
    rows_hi = acts[..., ay.hi, :]
    # top = w_lo_x * a[lo_y, lo_x] + w_hi_x * a[lo_y, hi_x]; float32 * float32 stays float32.
    top = ax.w_lo * rows_lo[..., ax.lo] + ax.w_hi * rows_lo[..., ax.hi]
    bot = ax.w_lo * rows_hi[..., ax.lo] + ax.w_hi * rows_hi[..., ax.hi]
    value = ay.w_lo[:, None] * top + ay.w_hi[:, None] * bot
    assert value.dtype == np.float32
    return value


def reference_tally(
    acts: np.ndarray,
    thresholds: np.ndarray,
    seg: np.ndarray,
    image_labels: np.ndarray,
    concepts: int,
    image_categories: np.ndarray,
) -> dict[str, np.ndarray]:
    """The counts of one tally call, starting from zero.

    Args:
        acts: float32 [N, U, h, w].
        thresholds: float32 [U].
        seg: int [N, K, Sh, Sw], concept ids in [0, concepts), 0 = unlabelled.
        image_labels: int [N, L], 0 = padding.
        concepts: C.
        image_categories: [N, G], nonzero where image n is labelled in category g.

    Returns:
        int64 arrays ``intersection`` [U, C], ``unit_area_cat`` [U, G], ``unit_area`` [U],
        ``concept_area`` [C].
    """
    n_images, units = acts.shape[:2]
    seg_h, seg_w = seg.shape[2:]
    categories = image_categories.shape[1]
    intersection = np.zeros((units, concepts), np.int64)
    unit_area_cat = np.zeros((units, categories), np.int64)
    unit_area = np.zeros(units, np.int64)
    concept_area = np.zeros(concepts, np.int64)

    for n in range(n_images):
        labels = [int(c) for c in image_labels[n] if c != 0]
        concept_area += np.bincount(seg[n].ravel(), minlength=concepts)
        for c in labels:
            concept_area[c] += seg_h * seg_w
        in_category = np.nonzero(image_categories[n])[0]
        up = upsample(acts[n], seg_h, seg_w)  # [U, Sh, Sw]
        for u in range(units):
            mask = up[u] > thresholds[u]
            area = int(mask.sum())
            unit_area[u] += area
            unit_area_cat[u, in_category] += area
            # One count per channel: seg[n][:, mask] is [K, |M|].
            intersection[u] += np.bincount(seg[n][:, mask].ravel(), minlength=concepts)
            for c in labels:
                intersection[u, c] += area
    intersection[:, 0] = 0  # concept 0 (unlabelled) is never counted
    concept_area[0] = 0
    return {
        "intersection": intersection,
        "unit_area_cat": unit_area_cat,
        "unit_area": unit_area,
        "concept_area": concept_area,
    }
