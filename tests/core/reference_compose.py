"""A plain numpy reference of the compose contract (csrc/include/pyanalyzer/compose.h).

Written for clarity, not speed: boolean masks of the Sh x Sw grid for every concept, formula
and unit, no bitsets, no skipping. The unit's mask is the tally reference's upsampling
(tests/core/reference_tally.py) thresholded strictly. The compiled kernels must give IDENTICAL
counts.
"""

from __future__ import annotations

import numpy as np
from reference_tally import upsample

AND, OR, AND_NOT = 1, 2, 3


def presence(seg: np.ndarray, image_labels: np.ndarray, concept: int) -> np.ndarray:
    """bool [Sh, Sw]: where ``concept`` (!= 0) is present in one image: in any seg channel
    ([K, Sh, Sw]) or among its labels ([L]), which cover the whole image."""
    if concept in [int(c) for c in image_labels]:
        return np.ones(seg.shape[1:], bool)
    return (seg == concept).any(axis=0)


def formula_mask(
    seg: np.ndarray, image_labels: np.ndarray, formula: np.ndarray, ops: np.ndarray
) -> np.ndarray:
    """bool [Sh, Sw]: the pixels of one formula in one image (the empty formula: all)."""
    if formula[0] == 0:
        return np.ones(seg.shape[1:], bool)
    mask = presence(seg, image_labels, int(formula[0]))
    for t in range(1, len(formula)):
        c = int(formula[t])
        if c == 0:
            break
        other = presence(seg, image_labels, c)
        if ops[t] == AND:
            mask = mask & other
        elif ops[t] == OR:
            mask = mask | other
        elif ops[t] == AND_NOT:
            mask = mask & ~other
        else:
            raise ValueError(f"bad op {ops[t]}")
    return mask


def reference_compose(
    acts: np.ndarray,
    thresholds: np.ndarray,
    seg: np.ndarray,
    image_labels: np.ndarray,
    formulas: np.ndarray,
    ops: np.ndarray,
    concepts: int,
) -> dict[str, np.ndarray]:
    """The counts of one compose call, starting from zero.

    Args:
        acts: float32 [N, U, h, w].
        thresholds: float32 [U].
        seg: int [N, K, Sh, Sw], concept ids in [0, concepts), 0 = unlabelled.
        image_labels: int [N, L], 0 = padding.
        formulas: int [U, B, T]; ops: int [U, B, T].
        concepts: C.

    Returns:
        int64 arrays ``f_concept`` [U, B, C], ``mf_concept`` [U, B, C], ``f_area`` [U, B],
        ``mf_area`` [U, B].
    """
    n_images, units = acts.shape[:2]
    beam = formulas.shape[1]
    seg_h, seg_w = seg.shape[2:]
    f_concept = np.zeros((units, beam, concepts), np.int64)
    mf_concept = np.zeros((units, beam, concepts), np.int64)
    f_area = np.zeros((units, beam), np.int64)
    mf_area = np.zeros((units, beam), np.int64)
    for n in range(n_images):
        present = np.array(
            [presence(seg[n], image_labels[n], c) for c in range(1, concepts)], bool
        ).reshape(concepts - 1, seg_h, seg_w)
        up = upsample(acts[n], seg_h, seg_w)  # [U, Sh, Sw]
        for u in range(units):
            unit = up[u] > thresholds[u]
            for b in range(beam):
                f = formula_mask(seg[n], image_labels[n], formulas[u, b], ops[u, b])
                mf = f & unit
                f_area[u, b] += int(f.sum())
                mf_area[u, b] += int(mf.sum())
                f_concept[u, b, 1:] += (present & f).sum(axis=(1, 2))
                mf_concept[u, b, 1:] += (present & mf).sum(axis=(1, 2))
    return {
        "f_concept": f_concept,
        "mf_concept": mf_concept,
        "f_area": f_area,
        "mf_area": mf_area,
    }
