"""The forward engine streamed over image sources."""

from __future__ import annotations

import numpy as np
import onnx_factory as fac
import pytest
from PIL import Image

import pyanalyzer as pa
from pyanalyzer.errors import ImageError, UserInputError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return pa.load_model(fac.tiny_cnn(tmp_path_factory.mktemp("fw")), check_parity=False)


def test_iter_layers_over_folder_equals_one_batch(model, tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    source = pa.ImageFolder(tmp_path)
    assert len(source) == 7
    names = ["relu2", "fc1"]
    got = {n: [] for n in ("/Relu_1_output_0", "logits")}
    seen = []
    for idx, outs in model.forward.iter_layers(source, names, batch_size=3, progress=False):
        seen.extend(idx)
        for k, v in outs.items():
            got[k].append(v)
    assert seen == list(range(7))
    ref = model.forward.run(model.preprocessing.normalize(imgs), names)
    for k in got:
        np.testing.assert_allclose(np.concatenate(got[k]), ref[k], rtol=1e-5, atol=1e-6)


def test_array_source_resizes(model):
    big = np.full((2, 64, 48, 3), 128, np.uint8)
    src = pa.ArraySource(big)
    assert src.pixels(0, model.preprocessing).shape == (32, 32, 3)


def test_bad_images(model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageError, match="cannot read image"):
        pa.ImageFiles([bad]).pixels(0, model.preprocessing)
    with pytest.raises(ImageError, match="does not exist"):
        pa.ImageFiles([tmp_path / "nope.png"]).pixels(0, model.preprocessing)
    with pytest.raises(ImageError, match="holds no images"):
        pa.ImageFolder(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)
    with pytest.raises(UserInputError, match="the model takes"):
        model.forward.run(np.zeros((1, 1, 32, 32), np.float32), ["relu1"])
    with pytest.raises(UserInputError, match="batch size"):
        next(
            model.forward.iter_layers(
                pa.ArraySource(np.zeros((1, 32, 32, 3), np.uint8)), ["relu1"], batch_size=0
            )
        )


def test_cuda_provider_first_when_onnxruntime_gpu_is_installed(monkeypatch):
    import onnxruntime as ort

    from pyanalyzer.model.forward import default_providers

    monkeypatch.setattr(
        ort, "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )  # fmt: skip
    assert default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert default_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("make", "layers", "mode"),
    [
        (fac.tiny_cnn, ["relu1", "relu2", "fc1"], "native"),
        (fac.tf2onnx_style, ["relu2", "transpose2", "maxpool1"], "native"),  # an NHWC map
        (lambda d: fac.tiny_cnn(d, batch=1), ["relu1", "relu2"], "loop"),
    ],
)
def test_iter_bound_gives_the_maps_of_iter_layers(tmp_path, make, layers, mode):
    """The IOBinding stream: the same floats as iter_layers (NCHW float32, transposed and cast
    in the graph), left in onnxruntime's memory (the host here), in the same batches (a model
    that runs one image at a time has them joined on the host); fc1 is not a spatial map and
    is refused."""
    m = pa.load_model(make(tmp_path), check_parity=False)
    spatial = [n for n in layers if n != "fc1"]
    h, w = m.preprocessing.input_size
    imgs = np.random.default_rng(3).integers(0, 256, size=(7, h, w, 3), dtype=np.uint8)
    src = pa.ArraySource(imgs)
    assert m.forward.bound_device(spatial) == ("cpu", 0)
    ref = {}
    for _, outs in m.forward.iter_layers(src, spatial, batch_size=3, progress=False):
        for k, v in outs.items():
            ref.setdefault(k, []).append(v)
    got: dict[str, list[np.ndarray]] = {}
    seen = []
    for idx, maps in m.forward.iter_bound(src, spatial, batch_size=3, progress=False):
        seen.append(list(idx))
        for k, bm in maps.items():
            assert bm.device == "cpu" and bm.shape[0] == len(idx) and bm.size == bm.numpy().size
            arr = bm.numpy()
            assert arr.dtype == np.float32 and arr.flags.c_contiguous and arr.shape == bm.shape
            # the pointer is the host memory of the OrtValue: the same floats read through it
            view = np.ctypeslib.as_array(
                (np.ctypeslib.ctypes.c_float * bm.size).from_address(bm.ptr)
            ).reshape(bm.shape)
            np.testing.assert_array_equal(view, arr)
            got.setdefault(k, []).append(arr)
    assert m.forward.batch_mode == mode
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]  # one image at a time: joined on the host
    assert set(got) == {m.layer(n).name for n in spatial}
    for k in got:
        np.testing.assert_array_equal(np.concatenate(got[k]), np.concatenate(ref[k]))
    if "fc1" in layers:
        with pytest.raises(pa.errors.ModelError, match="not a 4-D map"):
            next(m.forward.iter_bound(src, ["fc1"], batch_size=3, progress=False))
