"""Where the dissection's activations live between its two passes.

Here (any machine): the recompute path, which streams the maps left in onnxruntime's memory
(IOBinding; an NHWC map transposed in the graph), equals the spill path bit for bit. Where
onnxruntime-gpu's CUDA provider and pyanalyzer's CUDA kernels both run: the maps stay on the GPU
(``activations == "device"``, nothing copied to the host but counts, top-k rows and peaks), and
the result agrees with the spill path of the same engine (the host kernels on host copies).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx_factory as fac
import onnxruntime as ort
import pytest

import pyanalyzer as pa
from pyanalyzer import _backend, budget
from pyanalyzer.data.broden import BrodenDataset
from pyanalyzer.data.broden.build import synth_dataset

ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
CUDA_KERNELS = _backend.info()["cuda_devices"] > 0
needs_ort_cuda = pytest.mark.skipif(
    not (ORT_CUDA and CUDA_KERNELS),
    reason="onnxruntime has no CUDA provider here (onnxruntime-gpu) or pyanalyzer._core_cuda "
    "sees no device",
)

FIELDS = ("thresholds", "intersection", "unit_area_cat", "unit_area", "concept_area",
          "top_images", "top_values")  # fmt: skip


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    d = tmp_path_factory.mktemp("concepts")
    return BrodenDataset(
        synth_dataset(d / "ds", n_images=40, size=64, progress=False), cache_dir=d / "c"
    )


@pytest.fixture
def spill_path(monkeypatch):
    """The spill path even without a store (where small maps are otherwise kept in memory)."""
    from pyanalyzer.methods.dissection import pipeline

    monkeypatch.setattr(pipeline, "IN_MEMORY_MAX", 0)


def _no_room_for_the_spill(monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(budget.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))


def test_recomputed_maps_equal_the_spilled_ones_nhwc_too(
    tmp_path, concepts, monkeypatch, spill_path
):
    model = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    layers = ["relu2", "transpose2"]  # transpose2 is computed NHWC
    assert model.layer("transpose2").layout == "nhwc"
    spilled = pa.Dissection(model, layers=layers, batch_size=6, progress=False)
    want = spilled.run(concepts)
    assert spilled.activations == "spill"
    _no_room_for_the_spill(monkeypatch)
    again = pa.Dissection(model, layers=layers, batch_size=6, progress=False)
    got = again.run(concepts)
    assert again.activations == "recompute"
    for a, b in zip(got, want, strict=True):
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@needs_ort_cuda
def test_maps_stay_on_the_gpu_and_agree_with_the_spill_path(default_model, concepts, spill_path):
    model = pa.load_model(default_model, check_parity=False)
    assert model.forward.bound_device(["relu5"])[0] == "cuda"
    resident = pa.Dissection(model, layers=["relu5", "relu6"], batch_size=16, progress=False)
    got = resident.run(concepts)
    assert resident.activations == "device"
    host = pa.Dissection(model, layers=["relu5", "relu6"], batch_size=16, device="cpu",
                         progress=False)  # fmt: skip
    want = host.run(concepts)
    assert host.activations == "spill"
    # The two sessions run the same graph (the resident one with a Cast per map added), and
    # cuDNN may pick other convolution algorithms for it: the floats agree to rounding.
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.thresholds, b.thresholds, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(a.concept_area, b.concept_area)
        fired = np.maximum(b.unit_area, 1)
        assert (np.abs(a.unit_area - b.unit_area) <= 0.01 * fired + 2).all()
        np.testing.assert_allclose(a.top_values, b.top_values, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.iou(), b.iou(), atol=0.01)
