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
