"""The kernels' entries for maps already in GPU memory (what onnxruntime-gpu leaves there when
its outputs are bound to the device): tally_device, topk_merge_device and find_nan_device
against the host kernels on the same floats, which are the reference (bitwise for the top-k
state, identical counts for the tally, the per-map peaks against numpy's max).

Here (any machine): without CUDA each entry is one clear BackendUnavailableError. Where torch
and pyanalyzer._core_cuda see a device, the maps are torch CUDA tensors (their data_ptr()).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_core_tally import assert_counts_equal, random_case

from pyanalyzer import _backend
from pyanalyzer.errors import BackendUnavailableError

torch = pytest.importorskip("torch")


def _cuda() -> bool:
    return bool(torch.cuda.is_available()) and _backend.info()["cuda_devices"] > 0


needs_cuda = pytest.mark.skipif(
    not _cuda(), reason="CUDA unavailable to torch or to pyanalyzer._core_cuda"
)
without_cuda = pytest.mark.skipif(_cuda(), reason="CUDA is available here")


def _counts(case: dict) -> _backend.TallyCounts:
    return _backend.TallyCounts.zeros(
        case["acts"].shape[1], case["concept_category"].shape[0], case["image_categories"].shape[1]
    )


def _labels(case: dict) -> dict:
    return {k: v for k, v in case.items() if k not in ("acts", "thresholds")}


@without_cuda
def test_device_entries_without_cuda_are_one_clear_error():
    case = random_case(np.random.default_rng(0), 2, 3, (4, 4), 8, 1, 1, 5, 2, 0.9)
    shape = case["acts"].shape
    calls = [
        lambda: _backend.find_nan_device(case["acts"].ctypes.data, case["acts"].size),
        lambda: _backend.topk_merge_device(_backend.topk_empty(3, 4), 0, shape),
        lambda: _backend.tally_device(
            case["acts"].ctypes.data, shape, case["thresholds"], **_labels(case),
            counts=_counts(case),
        ),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(BackendUnavailableError, match="device='cuda' was requested") as info:
            call()
        assert "\n" not in str(info.value)


# (n, units, (h, w), S, K, L, C, G, quantile, offset), as in test_core_tally
CASES = [
    (3, 6, (7, 7), 112, 2, 1, 20, 3, 0.995, 0.0),
    (4, 6, (5, 3), 13, 3, 2, 9, 2, 0.8, 0.0),
    (3, 4, (6, 6), 5, 1, 2, 7, 2, 0.7, 0.0),
    (2, 5, (13, 13), (50, 37), 2, 1, 11, 3, 0.99, -5.0),
    (2, 3, (3, 3), 8, 2, 1, 5, 2, 0.0, 0.0),
]


@needs_cuda
@pytest.mark.parametrize("args", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_tally_device_equals_the_host_tally(args):
    case = random_case(np.random.default_rng(7), *args)
    want = _backend.tally(**case, counts=_counts(case), device="cpu")
    acts = torch.from_numpy(case["acts"]).cuda()
    got, peaks = _counts(case), np.full(case["acts"].shape[:2], np.nan, np.float32)
    _backend.tally_device(acts.data_ptr(), tuple(acts.shape), case["thresholds"], **_labels(case),
                          counts=got, peaks=peaks, device=acts.device.index or 0)  # fmt: skip
    assert_counts_equal(got, {f: getattr(want, f) for f in ("intersection", "unit_area_cat",
                                                           "unit_area", "concept_area")})  # fmt: skip
    n, u = case["acts"].shape[:2]
    np.testing.assert_array_equal(peaks, case["acts"].reshape(n, u, -1).max(axis=2))
    # counts add up over calls, as the host tally's do
    _backend.tally_device(acts.data_ptr(), tuple(acts.shape), case["thresholds"], **_labels(case),
                          counts=got)  # fmt: skip
    np.testing.assert_array_equal(got.unit_area, 2 * want.unit_area)


@needs_cuda
def test_topk_merge_device_is_bitwise_the_host_merge():
    rng = np.random.default_rng(3)
    units, k = 64, 700
    host = dev = _backend.topk_empty(units, k)
    for i in range(3):
        batch = rng.standard_normal((32, units, 7, 7), dtype=np.float32)
        if i == 1:  # ties and zeros of both signs
            batch = np.round(batch * 4) / 4
            batch[batch == 0] *= -1
        host = _backend.topk_merge(host, batch, device="cpu")
        t = torch.from_numpy(batch).cuda()
        dev = _backend.topk_merge_device(dev, t.data_ptr(), tuple(t.shape))
        np.testing.assert_array_equal(dev.view(np.uint32), host.view(np.uint32))


@needs_cuda
def test_device_entries_find_nan_and_refuse_host_memory():
    a = np.zeros((2, 3, 4, 5), np.float32)
    t = torch.from_numpy(a).cuda()
    assert _backend.find_nan_device(t.data_ptr(), a.size) == -1
    t[1, 2, 3, 1] = float("inf")
    assert _backend.find_nan_device(t.data_ptr(), a.size) == -1
    assert _backend.find_nan_device(t.data_ptr(), a.size, finite=True) == np.ravel_multi_index(
        (1, 2, 3, 1), a.shape
    )
    t[0, 1, 2, 3] = float("nan")
    flat = int(np.ravel_multi_index((0, 1, 2, 3), a.shape))
    assert _backend.find_nan_device(t.data_ptr(), a.size) == flat
    with pytest.raises(ValueError, match=r"batch contains NaN at \[0, 1, 2, 3\]"):
        _backend.topk_merge_device(_backend.topk_empty(3, 4), t.data_ptr(), tuple(t.shape))
    case = random_case(np.random.default_rng(0), 2, 3, (4, 5), 8, 1, 1, 5, 2, 0.9)
    with pytest.raises(ValueError, match=r"acts contains NaN at \[0, 1, 2, 3\]"):
        _backend.tally_device(t.data_ptr(), tuple(t.shape), case["thresholds"], **_labels(case),
                              counts=_counts(case))  # fmt: skip
    with pytest.raises(ValueError, match="is not memory of CUDA device 0"):
        _backend.find_nan_device(a.ctypes.data, a.size)
    with pytest.raises(ValueError, match="is not memory of CUDA device 0"):
        _backend.topk_merge_device(_backend.topk_empty(3, 4), a.ctypes.data, a.shape)
    with pytest.raises(ValueError, match="U = 3 units but state"):
        _backend.topk_merge_device(_backend.topk_empty(4, 4), t.data_ptr(), tuple(t.shape))
    with pytest.raises(ValueError, match="peaks"):
        _backend.tally_device(t.data_ptr(), tuple(t.shape), case["thresholds"], **_labels(case),
                              counts=_counts(case), peaks=np.zeros((2, 4), np.float32))  # fmt: skip
