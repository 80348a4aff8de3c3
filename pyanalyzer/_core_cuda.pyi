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
