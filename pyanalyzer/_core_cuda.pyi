"""pyanalyzer CUDA kernels (private: use pyanalyzer._backend)."""

import numpy as np
import numpy.typing as npt

def device_count() -> int:
    """Number of visible CUDA devices; 0 when none (never raises)."""

def device_name(index: int) -> str:
    """Name of CUDA device ``index``; IndexError when out of range."""

def unpool(
    values: npt.NDArray[np.float32],
    switches: npt.NDArray[np.int64],
    out_h: int,
    out_w: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    device: int = 0,
) -> npt.NDArray[np.float32]:
    """Same contract as pyanalyzer._core.unpool on CUDA device ``device``; host arrays in and
    out, result bitwise equal to the CPU's. ValueError also when ``device`` is not visible."""

def topk_merge(
    state: npt.NDArray[np.float32], batch: npt.NDArray[np.float32], device: int = 0
) -> npt.NDArray[np.float32]:
    """Same contract as pyanalyzer._core.topk_merge on CUDA device ``device``; bitwise equal."""

def topk_merge_states(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], device: int = 0
) -> npt.NDArray[np.float32]:
    """Same contract as pyanalyzer._core.topk_merge_states on CUDA device ``device``."""

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
    device: int = 0,
) -> None:
    """Same contract as pyanalyzer._core.tally on CUDA device ``device``: host arrays in, the
    batch's counts added to the host count arrays; identical to the CPU's counts."""

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
    device: int = 0,
) -> None:
    """Same contract as pyanalyzer._core.compose on CUDA device ``device``: host arrays in, the
    batch's counts added to the host count arrays; identical to the CPU's counts."""

def upsample_bilinear(
    acts: npt.NDArray[np.float32], out_h: int, out_w: int, device: int = 0
) -> npt.NDArray[np.float32]:
    """Same as pyanalyzer._core.upsample_bilinear on CUDA device ``device``; bitwise equal."""
