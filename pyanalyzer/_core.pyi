"""pyanalyzer CPU reference kernels (private: use pyanalyzer._backend)."""

import numpy as np
import numpy.typing as npt

def has_openmp() -> bool:
    """Whether the kernels were built with OpenMP."""

def omp_max_threads() -> int:
    """Threads an OpenMP region would use now (1 without OpenMP)."""

def unpool(
    values: npt.NDArray[np.float32],
    switches: npt.NDArray[np.int64],
    out_h: int,
    out_w: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> npt.NDArray[np.float32]:
    """Scatter max-pool values to their switches, summing shared switches.

    values float32 [N, C, Ho, Wo] and switches int64 [N, C, Ho, Wo], both C-contiguous;
    returns float32 [N, C, out_h, out_w]. Raises ValueError on a bad dtype, rank, layout,
    shape or geometry, and on a switch out of range or outside its pool window.
    """

def topk_merge(
    state: npt.NDArray[np.float32], batch: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Merge batch float32 [N, U, h, w] into state float32 [U, k] (rows descending, -inf
    padded, zeros stored as +0.0); returns the new [U, k] state. Raises ValueError on NaN or
    bad shapes."""

def topk_merge_states(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Merge two top-k states float32 [U, k] into one."""

def inversion_step(
    u: npt.NDArray[np.float32],
    grad: npt.NDArray[np.float32],
    buffer: npt.NDArray[np.float32],
    lam_tv: npt.NDArray[np.float32],
    lo: npt.NDArray[np.float32],
    hi: npt.NDArray[np.float32],
    x0: float,
    alpha: float,
    lambda_alpha: float,
    b: float,
    floor: float,
    beta: float,
    v: float,
    eps: float,
    lr: float,
    momentum: float,
    fresh: bool,
) -> None:
    """One step of network inversion after the data term's backward pass, in place
    (csrc/include/pyanalyzer/invert.h)."""

def roll_normalize(
    u: npt.NDArray[np.float32],
    scale: npt.NDArray[np.float32],
    offset: npt.NDArray[np.float32],
    source: npt.NDArray[np.int64],
    shift_y: int,
    shift_x: int,
    channels_last: bool,
) -> npt.NDArray[np.float32]:
    """Inversion's image rolled by whole pixels and normalised (pyanalyzer/invert.h)."""

def roll_normalize_backward(
    grad_out: npt.NDArray[np.float32],
    scale: npt.NDArray[np.float32],
    source: npt.NDArray[np.int64],
    shift_y: int,
    shift_x: int,
    channels_last: bool,
) -> npt.NDArray[np.float32]:
    """The gradient of :func:`roll_normalize` with respect to u: float32 [N, C, H, W]."""

def map_peaks(acts: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The largest value of every map (no NaN): float32 [N, U, h, w] -> [N, U]."""

def tally(
    acts: npt.NDArray[np.float32],
    thresholds: npt.NDArray[np.float32],
    seg: npt.NDArray[np.int32],
    image_labels: npt.NDArray[np.int32],
    concept_category: npt.NDArray[np.int32],
    image_categories: npt.NDArray[np.uint8],
    intersection: npt.NDArray[np.int64],
    unit_area_cat: npt.NDArray[np.int64],
    unit_area: npt.NDArray[np.int64],
    concept_area: npt.NDArray[np.int64],
) -> None:
    """Network-dissection tally of one batch, added in place to the int64 counts.

    acts [N, U, h, w], thresholds [U], seg [N, K, S, S] (ids in [0, C), 0 = unlabelled),
    image_labels [N, L], concept_category [C] (in [0, G); entry 0 unused), image_categories
    [N, G] (nonzero = labelled); counts intersection [U, C], unit_area_cat [U, G], unit_area
    [U], concept_area [C]. Contract and float order: csrc/include/pyanalyzer/tally.h. Raises
    ValueError on a bad dtype, rank, layout or shape, read-only counts, NaN or an id out of
    range.
    """

def compose(
    acts: npt.NDArray[np.float32],
    thresholds: npt.NDArray[np.float32],
    seg: npt.NDArray[np.int32],
    image_labels: npt.NDArray[np.int32],
    formulas: npt.NDArray[np.int32],
    ops: npt.NDArray[np.int8],
    f_concept: npt.NDArray[np.int64],
    mf_concept: npt.NDArray[np.int64],
    f_area: npt.NDArray[np.int64],
    mf_area: npt.NDArray[np.int64],
) -> None:
    """Compositional-explanation counts of one batch, added in place to the int64 counts.

    acts [N, U, h, w], thresholds [U], seg [N, K, Sh, Sw] (ids in [0, C), 0 = unlabelled),
    image_labels [N, L], formulas [U, B, T] (ids in [0, C), 0 ends a formula) and ops [U, B, T]
    (1 = AND, 2 = OR, 3 = AND NOT); counts f_concept [U, B, C], mf_concept [U, B, C], f_area
    [U, B], mf_area [U, B]. Contract: csrc/include/pyanalyzer/compose.h. Raises ValueError on a
    bad dtype, rank, layout or shape, read-only counts, NaN, an id out of range or a bad op.
    """

def upsample_bilinear(
    acts: npt.NDArray[np.float32], out_h: int, out_w: int
) -> npt.NDArray[np.float32]:
    """The tally's bilinear upsampling alone: float32 [N, U, h, w] -> [N, U, out_h, out_w]."""

def warp_normalize(
    x: npt.NDArray[np.float32],
    theta: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float32],
    shift: npt.NDArray[np.float32],
    source: npt.NDArray[np.int64],
    fill: float,
    out_h: int,
    out_w: int,
) -> npt.NDArray[np.float32]:
    """Affine bilinear resampling fused with the input normalisation: float32 [N, C, H, W]
    -> [N, out_h, out_w, C] (see csrc/include/pyanalyzer/warp.h)."""

def warp_normalize_backward(
    grad_out: npt.NDArray[np.float32],
    theta: npt.NDArray[np.float64],
    scale: npt.NDArray[np.float32],
    source: npt.NDArray[np.int64],
    in_h: int,
    in_w: int,
) -> npt.NDArray[np.float32]:
    """The gradient of :func:`warp_normalize` with respect to x: float32 [N, C, in_h, in_w]."""
