"""The one place that imports pyanalyzer's compiled code and picks the device.

``pyanalyzer._core`` holds the CPU reference kernels and must be importable; without it the
package is not installed (build it with ``pip install -e .``). ``pyanalyzer._core_cuda`` holds
the same contracts in CUDA; it is optional, so a failure to import it is recorded and only
raised when CUDA is asked for explicitly (``device="cuda"``). ``device="auto"`` uses CUDA when
the module loaded and sees a GPU, else the CPU.

Nothing else in the package imports the compiled modules: the rest of pyanalyzer calls the
wrappers below, which take arrays in any float/int dtype and layout and hand the kernels
C-contiguous float32/int32/int64 copies only where needed (count arrays that the kernels add
to in place are the exception: they must already be C-contiguous int64).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from pyanalyzer.errors import BackendUnavailableError

if TYPE_CHECKING:  # torch is imported lazily, by unpool_tensor only
    import torch

__all__ = [
    "AND",
    "AND_NOT",
    "OR",
    "ComposeCounts",
    "DEVICES",
    "CoreImportError",
    "Device",
    "TallyCounts",
    "compose",
    "info",
    "kernels",
    "map_peaks",
    "tally",
    "topk_empty",
    "topk_merge",
    "topk_merge_states",
    "unpool",
    "unpool_tensor",
    "upsample_bilinear",
]

Device = Literal["auto", "cpu", "cuda"]
DEVICES = ("auto", "cpu", "cuda")
"""The values of every ``device`` option: the compiled kernels' and torch's."""


class CoreImportError(ImportError):
    """``pyanalyzer._core`` (the compiled CPU kernels) cannot be imported."""


try:
    _core = importlib.import_module("pyanalyzer._core")
except ImportError as exc:  # pragma: no cover - only without a build
    raise CoreImportError(
        "pyanalyzer's compiled core (pyanalyzer._core) is missing or broken: "
        f"{type(exc).__name__}: {exc}. Install pyanalyzer with `pip install -e .` (or "
        "`pip install .`) so the C++ extension is built; running from a source checkout "
        "without building it does not work."
    ) from exc

_core_cuda: ModuleType | None
_cuda_error: str | None
try:
    _core_cuda = importlib.import_module("pyanalyzer._core_cuda")
    _cuda_error = None
except ImportError as exc:
    _core_cuda = None
    _cuda_error = (
        "pyanalyzer._core_cuda is not built (no CUDA compiler at build time, or "
        "PYANALYZER_CUDA=OFF)"
        if isinstance(exc, ModuleNotFoundError) and exc.name == "pyanalyzer._core_cuda"
        else f"pyanalyzer._core_cuda failed to import: {type(exc).__name__}: {exc}"
    )


def _cuda_device_count() -> int:
    return int(_core_cuda.device_count()) if _core_cuda is not None else 0


def _cuda_device_name(index: int) -> str:
    try:
        return str(_core_cuda.device_name(index))  # type: ignore[union-attr]
    except (RuntimeError, IndexError) as exc:  # a misbehaving driver must not break info()
        return f"<unknown: {exc}>"


def info() -> dict[str, Any]:
    """Describe the compiled backends available in this process.

    Returns:
        A dict with keys ``core_loaded`` (bool), ``core_error`` (str | None),
        ``cuda_module_loaded`` (bool), ``cuda_module_error`` (str | None), ``cuda_devices``
        (int), ``cuda_device_names`` (list[str]), ``openmp`` (bool) and
        ``omp_max_threads`` (int).
    """
    count = _cuda_device_count()
    names = [_cuda_device_name(i) for i in range(count)]
    return {
        "core_loaded": True,  # importing this module fails otherwise
        "core_error": None,
        "cuda_module_loaded": _core_cuda is not None,
        "cuda_module_error": _cuda_error,
        "cuda_devices": count,
        "cuda_device_names": names,
        "openmp": bool(_core.has_openmp()),
        "omp_max_threads": int(_core.omp_max_threads()),
    }


def kernels(device: str = "auto") -> ModuleType:
    """Return the compiled module that runs on ``device``.

    Args:
        device: ``"cpu"`` (the reference ``_core``), ``"cuda"`` (``_core_cuda``) or
            ``"auto"`` (CUDA when its module loaded and sees a device, else CPU).

    Raises:
        BackendUnavailableError: ``"cuda"`` was asked for but the module is missing or no
            CUDA device is visible; the message says why.
        ValueError: ``device`` is not one of ``"auto"``, ``"cpu"``, ``"cuda"``.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    if device == "cpu":
        return _core
    if _core_cuda is not None and _cuda_device_count() > 0:
        return _core_cuda
    if device == "auto":
        return _core
    reason = _cuda_error if _core_cuda is None else "no CUDA device is visible"
    raise BackendUnavailableError(f"device='cuda' was requested but CUDA is unavailable: {reason}")


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """An int or a pair of ints as an (h, w) pair of Python ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _as(array: npt.ArrayLike, dtype: type[np.generic], kinds: str, name: str) -> np.ndarray:
    """``array`` as a C-contiguous array of ``dtype``, accepting only the dtype kinds given."""
    arr = np.asarray(array)
    if arr.dtype.kind not in kinds:
        raise ValueError(
            f"{name} must have a {np.dtype(dtype).name}-compatible dtype, got {arr.dtype}"
        )
    return np.ascontiguousarray(arr, dtype=dtype)


def unpool(
    values: npt.ArrayLike,
    switches: npt.ArrayLike,
    out_size: int | tuple[int, int],
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    device: str = "auto",
) -> np.ndarray:
    """Scatter max-pool values back to their switches (DeconvNet's unpooling).

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (2014). Values
    whose switches coincide (overlapping pools such as AlexNet's 3x3 stride 2) are summed,
    which equals autograd's max-pool backward.

    Args:
        values: [N, C, Ho, Wo] floats (cast to float32).
        switches: [N, C, Ho, Wo] ints (cast to int64): flat index ``y * W + x`` in each (n, c)
            plane, as ``torch.nn.functional.max_pool2d(..., return_indices=True)`` gives.
        out_size: (H, W) of the unpooled map (the max-pool's input), or one int for both.
        kernel, stride, padding, dilation: the max-pool's geometry; ``stride`` defaults to
            ``kernel`` as in torch.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`kernels`).

    Returns:
        float32 [N, C, H, W]; CPU and CUDA results are bitwise equal.

    Raises:
        ValueError: bad dtype, rank, shapes or geometry, or a switch out of range or outside
            its pool window (switches must come from a max-pool with this geometry).
        BackendUnavailableError: ``device="cuda"`` without CUDA.
    """
    module = kernels(device)
    out_h, out_w = _pair(out_size, "out_size")
    k = _pair(kernel, "kernel")
    s = k if stride is None else _pair(stride, "stride")
    return module.unpool(
        _as(values, np.float32, "fiub", "values"),
        _as(switches, np.int64, "iu", "switches"),
        out_h,
        out_w,
        k,
        s,
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )


def unpool_tensor(
    values: torch.Tensor,
    switches: torch.Tensor,
    out_size: int | tuple[int, int],
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """:func:`unpool` for torch tensors, run where they are.

    CPU tensors go through the CPU kernel (``_core``) by way of numpy, without a copy when
    they are C-contiguous float32/int64; CUDA tensors go through ``_core_cuda`` on their own
    device, from device memory to device memory (no trip through the host): the switches are
    checked there (the call waits for that answer), then the gather is queued on torch's
    current stream of that device and the call returns without waiting, so torch's later
    work on that stream sees the result. Values are cast to float32 and switches to int64
    (on their device) when they are not.

    Args:
        values: [N, C, Ho, Wo] real (not complex) tensor; ``switches``: [N, C, Ho, Wo] integer
            (not bool) tensor on the same device, as
            ``torch.nn.functional.max_pool2d(..., return_indices=True)`` gives them.
        out_size, kernel, stride, padding, dilation: as :func:`unpool`.

    Returns:
        float32 [N, C, H, W] on the inputs' device, bitwise the CPU kernel's result.

    Raises:
        ValueError: not tensors, tensors on different devices or on a device that is neither
            the CPU nor CUDA, bad dtype, rank or shapes, bad geometry, or a switch out of
            range or outside its pool window (the same messages as :func:`unpool`).
        BackendUnavailableError: CUDA tensors and ``pyanalyzer._core_cuda`` is missing or
            sees no device.
    """
    import torch

    if not isinstance(values, torch.Tensor) or not isinstance(switches, torch.Tensor):
        raise ValueError(
            "unpool_tensor takes torch tensors, got "
            f"{type(values).__name__} and {type(switches).__name__} (use unpool for arrays)"
        )
    if values.device != switches.device:
        raise ValueError(
            f"unpool: values and switches must be on one device, got {values.device} and "
            f"{switches.device}"
        )
    if values.is_complex():
        raise ValueError(f"values must have a float32-compatible dtype, got {values.dtype}")
    if switches.is_floating_point() or switches.is_complex() or switches.dtype == torch.bool:
        raise ValueError(f"switches must have a int64-compatible dtype, got {switches.dtype}")
    values = values.detach().to(torch.float32)
    switches = switches.detach().to(torch.int64)
    out_h, out_w = _pair(out_size, "out_size")
    k = _pair(kernel, "kernel")
    s = k if stride is None else _pair(stride, "stride")
    pad, dil = _pair(padding, "padding"), _pair(dilation, "dilation")
    if values.device.type == "cpu":  # the arrays' path: the binding checks the rest
        up = unpool(values.numpy(), switches.numpy(), (out_h, out_w), k, s, pad, dil, "cpu")
        return torch.from_numpy(up)
    if values.device.type != "cuda":
        raise ValueError(f"unpool: tensors on {values.device} are not supported (cpu or cuda)")
    dims = "[N, C, Ho, Wo]"
    if values.dim() != 4:
        raise ValueError(
            f"unpool: values must have shape {dims} (rank 4), got shape {tuple(values.shape)}"
        )
    if values.shape != switches.shape:
        raise ValueError(
            f"unpool: values and switches must have the same shape {dims}, got "
            f"{tuple(values.shape)} and {tuple(switches.shape)}"
        )
    module = kernels("cuda")
    values, switches = values.contiguous(), switches.contiguous()
    n, c, ho, wo = (int(v) for v in values.shape)
    out = torch.empty(
        (n, c, max(out_h, 0), max(out_w, 0)), dtype=torch.float32, device=values.device
    )  # a negative size is refused by the binding, with the CPU's message
    index = values.device.index
    index = torch.cuda.current_device() if index is None else int(index)
    stream = torch.cuda.current_stream(index).cuda_stream
    module.unpool_device(
        values.data_ptr(), switches.data_ptr(), out.data_ptr(), n, c, ho, wo, out_h, out_w,
        k, s, pad, dil, index, stream,
    )  # fmt: skip
    return out


def topk_empty(units: int, k: int) -> np.ndarray:
    """An empty top-k state: float32 [units, k] filled with -inf."""
    return np.full((units, k), -np.inf, dtype=np.float32)


def topk_merge(state: npt.ArrayLike, batch: npt.ArrayLike, device: str = "auto") -> np.ndarray:
    """Merge a batch of activations into a top-k state.

    Args:
        state: [U, k] float32, each row sorted descending and padded with -inf (start from
            :func:`topk_empty`).
        batch: [N, U, h, w] floats (cast to float32), no NaN.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`kernels`); CPU and CUDA results
            are bitwise equal.

    Returns:
        float32 [U, k]: per unit, the k largest of the state and of the batch's N*h*w values,
        sorted descending, -inf padded while fewer than k were seen; zeros are stored as +0.0.

    Raises:
        ValueError: bad dtype, rank or shapes, NaN in the batch, or an invalid state.
        BackendUnavailableError: ``device="cuda"`` without CUDA.
    """
    module = kernels(device)
    return module.topk_merge(
        _as(state, np.float32, "f", "state"), _as(batch, np.float32, "fiub", "batch")
    )


def map_peaks(acts: npt.ArrayLike) -> np.ndarray:
    """The largest value of every map, on the CPU: ``[N, U, h, w]`` floats (cast to float32),
    free of NaN (not checked: the dissection passes maps :func:`topk_merge` has checked) ->
    float32 ``[N, U]``; numpy's ``max`` over ``(h, w)`` up to the sign of a zero peak.

    Raises:
        ValueError: bad dtype or rank.
    """
    return _core.map_peaks(_as(acts, np.float32, "fiub", "acts"))


def topk_merge_states(a: npt.ArrayLike, b: npt.ArrayLike, device: str = "auto") -> np.ndarray:
    """Merge two top-k states [U, k] (e.g. from two shards) into one.

    Raises:
        ValueError: bad dtype, rank or shapes, or an invalid state.
        BackendUnavailableError: ``device="cuda"`` without CUDA.
    """
    module = kernels(device)
    return module.topk_merge_states(_as(a, np.float32, "f", "a"), _as(b, np.float32, "f", "b"))


def _as_int32(array: npt.ArrayLike, name: str) -> np.ndarray:
    """An integer array as C-contiguous int32, refusing values that int32 cannot hold."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind != "b" and arr.dtype.itemsize >= 4 and arr.dtype != np.int32 and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
            raise ValueError(f"{name} holds values outside int32 ([{lo}, {hi}])")
    return np.ascontiguousarray(arr, dtype=np.int32)


@dataclass
class TallyCounts:
    """The int64 counts that :func:`tally` adds to; batches and shards add up.

    Attributes:
        intersection: [U, C] fired pixels of unit u labelled with concept c (per label
            channel; image-level labels add the unit's whole mask). Column 0 stays 0.
        unit_area_cat: [U, G] fired pixels of unit u on images labelled in category g.
        unit_area: [U] fired pixels of unit u.
        concept_area: [C] pixels labelled c (image-level labels count S*S). Entry 0 stays 0.
    """

    intersection: np.ndarray
    unit_area_cat: np.ndarray
    unit_area: np.ndarray
    concept_area: np.ndarray

    @classmethod
    def zeros(cls, units: int, concepts: int, categories: int) -> TallyCounts:
        """All-zero counts for U units, C concept ids (0 included) and G categories."""
        return cls(
            np.zeros((units, concepts), np.int64),
            np.zeros((units, categories), np.int64),
            np.zeros(units, np.int64),
            np.zeros(concepts, np.int64),
        )

    def add(self, other: TallyCounts) -> TallyCounts:
        """Add another shard's counts to these, in place; returns self."""
        self.intersection += other.intersection
        self.unit_area_cat += other.unit_area_cat
        self.unit_area += other.unit_area
        self.concept_area += other.concept_area
        return self


def tally(
    acts: npt.ArrayLike,
    thresholds: npt.ArrayLike,
    seg: npt.ArrayLike,
    image_labels: npt.ArrayLike | None,
    concept_category: npt.ArrayLike,
    image_categories: npt.ArrayLike,
    counts: TallyCounts,
    device: str = "auto",
) -> TallyCounts:
    """Add one batch's network-dissection counts to ``counts`` (in place).

    Bau et al., "Network Dissection: Quantifying Interpretability of Deep Visual
    Representations" (CVPR 2017). Each map ``acts[n, u]`` is upsampled bilinearly to the
    segmentation size (half-pixel centres, as torch's ``align_corners=False``; the exact float32
    order is in ``csrc/include/pyanalyzer/tally.h``), thresholded (``> thresholds[u]``) to the
    unit's mask M, and counted: ``unit_area[u] += |M|``; ``unit_area_cat[u, g] += |M|`` for each
    category g of the image; ``intersection[u, c] += 1`` per pixel of M and label channel whose
    concept is c != 0; ``intersection[u, c] += |M|`` per image label c != 0. ``concept_area``
    counts each concept's pixels once per call, independently of the units.

    Args:
        acts: [N, U, h, w] floats (cast to float32), no NaN.
        thresholds: [U] floats (cast to float32), no NaN.
        seg: [N, K, S, S] ints (cast to int32) in [0, C), 0 = unlabelled; K may be 0.
        image_labels: [N, L] ints (cast to int32) in [0, C), 0 = padding, or None (L = 0).
        concept_category: [C] ints: the category index in [0, G) of each concept id (entry 0 is
            unused). Only checked here: the caller uses it for the IoU denominators.
        image_categories: [N, G] bools/ints: nonzero where image n is labelled in category g.
        counts: the :class:`TallyCounts` to add to (C-contiguous int64, shapes [U, C], [U, G],
            [U], [C]); start from :meth:`TallyCounts.zeros`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`kernels`). CUDA copies the whole
            batch to the GPU: batch large N (a few hundred images per call).

    Returns:
        ``counts``, updated. CPU and CUDA counts are identical.

    Raises:
        ValueError: bad dtype, rank or shapes, NaN, an id out of range, or counts that are
            not writeable C-contiguous int64 arrays.
        BackendUnavailableError: ``device="cuda"`` without CUDA.
    """
    module = kernels(device)
    acts_ = _as(acts, np.float32, "fiub", "acts")
    module.tally(
        acts_,
        *_tally_inputs(acts_.shape[0] if acts_.ndim else 0, thresholds, seg, image_labels,
                       concept_category, image_categories),
        counts.intersection,
        counts.unit_area_cat,
        counts.unit_area,
        counts.concept_area,
    )  # fmt: skip
    return counts


def _tally_inputs(
    n: int,
    thresholds: npt.ArrayLike,
    seg: npt.ArrayLike,
    image_labels: npt.ArrayLike | None,
    concept_category: npt.ArrayLike,
    image_categories: npt.ArrayLike,
) -> tuple[np.ndarray, ...]:
    """The tally's inputs after the activations, as the bindings take them (``n`` images:
    the row count of the empty image labels that None stands for)."""
    if image_labels is None:
        image_labels = np.zeros((n, 0), np.int32)
    cats = np.asarray(image_categories)
    if cats.dtype.kind not in "iub":
        raise ValueError(f"image_categories must have a bool or integer dtype, got {cats.dtype}")
    if cats.dtype != np.uint8:
        cats = cats != 0
    return (
        _as(thresholds, np.float32, "fiub", "thresholds"),
        _as_int32(seg, "seg"),
        _as_int32(image_labels, "image_labels"),
        _as_int32(concept_category, "concept_category"),
        np.ascontiguousarray(cats, dtype=np.uint8),
    )


def uses_cuda(device: str = "auto") -> bool:
    """Whether :func:`kernels` picks the CUDA module for ``device`` (``"cuda"``, or ``"auto"``
    where CUDA is there); raises as :func:`kernels` does."""
    return _core_cuda is not None and kernels(device) is _core_cuda


def _cuda_index(device: int) -> int:
    kernels("cuda")  # BackendUnavailableError (one line) without CUDA
    return int(device)


def find_nan_device(ptr: int, count: int, *, finite: bool = False, device: int = 0) -> int:
    """Flat index of the first NaN (``finite``: NaN or infinity) among ``count`` float32
    values at ``ptr`` in the memory of CUDA device ``device``, or -1.

    Raises:
        ValueError: ``ptr`` is not memory of that device.
        BackendUnavailableError: no CUDA.
    """
    index = _cuda_index(device)
    return int(_core_cuda.find_nan_device(int(ptr), int(count), bool(finite), index))  # type: ignore[union-attr]


def topk_merge_device(
    state: npt.ArrayLike, ptr: int, shape: tuple[int, int, int, int], device: int = 0
) -> np.ndarray:
    """:func:`topk_merge` with the batch (C-contiguous float32 ``[N, U, h, w]`` of ``shape``)
    already in the memory of CUDA device ``device`` (an onnxruntime output bound to the GPU:
    :class:`~pyanalyzer.model.forward.BoundMaps`), read there without a copy; bitwise the
    CPU's result for the same values.

    Raises:
        ValueError: a bad state or shape, ``ptr`` not memory of that device, NaN in the batch.
        BackendUnavailableError: no CUDA.
    """
    index = _cuda_index(device)
    return _core_cuda.topk_merge_device(  # type: ignore[union-attr]
        _as(state, np.float32, "f", "state"), int(ptr), tuple(int(d) for d in shape), index
    )


def tally_device(
    ptr: int,
    shape: tuple[int, int, int, int],
    thresholds: npt.ArrayLike,
    seg: npt.ArrayLike,
    image_labels: npt.ArrayLike | None,
    concept_category: npt.ArrayLike,
    image_categories: npt.ArrayLike,
    counts: TallyCounts,
    *,
    peaks: np.ndarray | None = None,
    device: int = 0,
) -> TallyCounts:
    """:func:`tally` with the activations (C-contiguous float32 ``[N, U, h, w]`` of ``shape``)
    already in the memory of CUDA device ``device``, read there without a copy; the labels and
    counts are host arrays as for :func:`tally`, and the counts equal the CPU's for the same
    activations.

    Args:
        peaks: None, or a float32 ``[N, U]`` host array that receives each map's maximum (what
            ranks the units' top images), computed by the same pass.

    Raises:
        ValueError: as :func:`tally`, and ``ptr`` not memory of that device.
        BackendUnavailableError: no CUDA.
    """
    index = _cuda_index(device)
    dims = tuple(int(d) for d in shape)
    _core_cuda.tally_device(  # type: ignore[union-attr]
        int(ptr), dims,
        *_tally_inputs(dims[0] if dims else 0, thresholds, seg, image_labels, concept_category,
                       image_categories),
        counts.intersection, counts.unit_area_cat, counts.unit_area, counts.concept_area,
        peaks, index,
    )  # fmt: skip
    return counts


AND, OR, AND_NOT = 1, 2, 3
"""The operators of :func:`compose`'s formulas (``ops[u, b, t]`` for terms ``t >= 1``)."""


@dataclass
class ComposeCounts:
    """The int64 counts that :func:`compose` adds to; batches and shards add up.

    Attributes:
        f_concept: [U, B, C] pixels of formula (u, b) where concept c is present. Column 0
            stays 0.
        mf_concept: [U, B, C] the same pixels where unit u also fires.
        f_area: [U, B] pixels of formula (u, b).
        mf_area: [U, B] pixels of formula (u, b) where unit u fires.
    """

    f_concept: np.ndarray
    mf_concept: np.ndarray
    f_area: np.ndarray
    mf_area: np.ndarray

    @classmethod
    def zeros(cls, units: int, beam: int, concepts: int) -> ComposeCounts:
        """All-zero counts for U units, B formulas each and C concept ids (0 included)."""
        return cls(
            np.zeros((units, beam, concepts), np.int64),
            np.zeros((units, beam, concepts), np.int64),
            np.zeros((units, beam), np.int64),
            np.zeros((units, beam), np.int64),
        )

    def add(self, other: ComposeCounts) -> ComposeCounts:
        """Add another shard's counts to these, in place; returns self."""
        self.f_concept += other.f_concept
        self.mf_concept += other.mf_concept
        self.f_area += other.f_area
        self.mf_area += other.mf_area
        return self


def _as_int8(array: npt.ArrayLike, name: str) -> np.ndarray:
    """An integer array as C-contiguous int8, refusing values that int8 cannot hold."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind != "b" and arr.dtype != np.int8 and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < np.iinfo(np.int8).min or hi > np.iinfo(np.int8).max:
            raise ValueError(f"{name} holds values outside int8 ([{lo}, {hi}])")
    return np.ascontiguousarray(arr, dtype=np.int8)


def compose(
    acts: npt.ArrayLike,
    thresholds: npt.ArrayLike,
    seg: npt.ArrayLike,
    image_labels: npt.ArrayLike | None,
    formulas: npt.ArrayLike,
    ops: npt.ArrayLike,
    counts: ComposeCounts,
    device: str = "auto",
) -> ComposeCounts:
    """Add one batch's compositional-explanation counts to ``counts`` (in place).

    Mu & Andreas, "Compositional Explanations of Neurons" (NeurIPS 2020). Each unit's mask M is
    the tally's (:func:`tally`: the map upsampled bilinearly to the segmentation size,
    ``> thresholds[u]``, bit for bit). A concept c != 0 is present at a pixel when it is in any
    seg channel there or among the image's labels (set semantics: once per pixel). Formula
    ``(u, b)`` is ``formulas[u, b, 0]`` combined left to right with each next id by
    ``ops[u, b, t]`` (:data:`AND`, :data:`OR`, :data:`AND_NOT`): ``((c0 op1 c1) op2 c2)``; the
    first 0 id ends it, and a formula starting with 0 is the empty formula (every pixel). Over
    all pixels of all images: ``f_area[u, b] += |F|``, ``mf_area[u, b] += |M ∧ F|``,
    ``f_concept[u, b, c] += |F ∧ c|``, ``mf_concept[u, b, c] += |M ∧ F ∧ c|``. The contract is
    in ``csrc/include/pyanalyzer/compose.h``.

    Args:
        acts: [N, U, h, w] floats (cast to float32), no NaN.
        thresholds: [U] floats (cast to float32), no NaN.
        seg: [N, K, Sh, Sw] ints (cast to int32) in [0, C), 0 = unlabelled; K may be 0.
        image_labels: [N, L] ints (cast to int32) in [0, C), 0 = padding, or None (L = 0).
        formulas: [U, B, T] ints (cast to int32): concept ids in [0, C), T >= 1.
        ops: [U, B, T] ints (cast to int8): 1, 2 or 3 for every term that is read (t >= 1,
            before the first 0 id); the others are ignored.
        counts: the :class:`ComposeCounts` to add to (C-contiguous int64, shapes [U, B, C],
            [U, B, C], [U, B], [U, B]); start from :meth:`ComposeCounts.zeros`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`kernels`). CUDA copies the whole
            batch to the GPU: batch large N.

    Returns:
        ``counts``, updated. CPU and CUDA counts are identical.

    Raises:
        ValueError: bad dtype, rank or shapes, NaN, an id out of range, a bad operator, or
            counts that are not writeable C-contiguous int64 arrays.
        BackendUnavailableError: ``device="cuda"`` without CUDA.
    """
    module = kernels(device)
    acts_ = _as(acts, np.float32, "fiub", "acts")
    if image_labels is None:
        image_labels = np.zeros((acts_.shape[0] if acts_.ndim else 0, 0), np.int32)
    module.compose(
        acts_,
        _as(thresholds, np.float32, "fiub", "thresholds"),
        _as_int32(seg, "seg"),
        _as_int32(image_labels, "image_labels"),
        _as_int32(formulas, "formulas"),
        _as_int8(ops, "ops"),
        counts.f_concept,
        counts.mf_concept,
        counts.f_area,
        counts.mf_area,
    )
    return counts


def upsample_bilinear(
    acts: npt.ArrayLike, size: int | tuple[int, int], device: str = "auto"
) -> np.ndarray:
    """The tally's bilinear upsampling alone (for tests and debugging).

    Args:
        acts: [N, U, h, w] floats (cast to float32).
        size: (S_h, S_w) or one int S.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        float32 [N, U, S_h, S_w]: bitwise the values :func:`tally` thresholds; equal to
        ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` up to float32
        rounding.
    """
    module = kernels(device)
    out_h, out_w = _pair(size, "size")
    return module.upsample_bilinear(_as(acts, np.float32, "fiub", "acts"), out_h, out_w)
