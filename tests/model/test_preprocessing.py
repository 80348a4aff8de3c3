"""Preprocessing specs: presets, layering (metadata < sidecar < arguments), the transform."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_factory as fac
import pytest
import torch
from PIL import Image

import pyanalyzer as pa
from pyanalyzer.errors import PreprocessingError
from pyanalyzer.model.preprocessing import PRESETS, build_spec


def _spec(model_channels=3, model_layout="nchw", model_size=(32, 32), **over):
    """A spec for a model input of the given kind, with ``over`` as the caller's flags."""
    return build_spec(
        channels=model_channels, layout=model_layout, model_size=model_size, layers=[("test", over)]
    )


def test_imagenet_transform_by_hand():
    s = _spec(preset="imagenet")
    pix = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    x = s.normalize(pix)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    r = (pix[1, 5, 7, 0] / 255.0 - 0.485) / 0.229
    np.testing.assert_allclose(x[1, 0, 5, 7], r, rtol=1e-5)


def test_caffe_is_bgr_0_255_mean_subtracted():
    s = _spec(preset="caffe")
    pix = np.zeros((1, 32, 32, 3), np.uint8)
    pix[..., 0] = 200  # red
    x = s.normalize(pix)
    # The model's channel 2 is red in BGR order; channel 0 (blue) is 0 - 103.939.
    np.testing.assert_allclose(x[0, 2, 0, 0], 200 - 123.68, rtol=1e-6)
    np.testing.assert_allclose(x[0, 0, 0, 0], -103.939, rtol=1e-6)


def test_nhwc_layout_and_roundtrip():
    s = _spec(model_layout="nhwc", layout="nhwc", preset="caffe")
    pix = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3)).astype(np.float32)
    x = s.normalize(pix)
    assert x.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(s.denormalize(x), pix, atol=1e-3)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.int32, bool])
def test_normalize_is_bitwise_the_plain_formula(preset, layout, dtype):
    """The in-place transform (pixels reordered first, one float32 conversion) gives the
    floats of ``(float32(x)[order] * scale - mean) / std`` transposed, bit for bit."""
    s = _spec(model_layout=layout, preset=preset, layout=layout)
    pix = np.random.default_rng(4).integers(0, 256, size=(3, 5, 7, 3)).astype(dtype)
    x = np.asarray(pix, dtype=np.float32)
    if s.channel_order == "bgr":
        x = x[..., ::-1]
    mean = np.asarray(s.mean, np.float32)
    std = np.asarray(s.std, np.float32)
    want = (x * np.float32(s.scale) - mean) / std
    if layout == "nchw":
        want = want.transpose(0, 3, 1, 2)
    got = s.normalize(pix)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), np.ascontiguousarray(want).view(np.uint32))


def test_torch_twin_matches_numpy():
    for preset in PRESETS:
        for layout in ("nchw", "nhwc"):
            s = _spec(model_layout=layout, preset=preset, layout=layout)
            pix = np.random.default_rng(2).integers(0, 256, size=(2, 32, 32, 3)).astype(np.float32)
            t = torch.from_numpy(pix / 255.0).permute(0, 3, 1, 2)
            got = s.normalize_torch(t).numpy()
            np.testing.assert_allclose(got, s.normalize(pix), rtol=1e-5, atol=1e-4)


def test_crop_resizes_shorter_side_then_centre_crops():
    s = _spec(model_size=(None, None), input_size="4x4", resize="crop", preset="raw")
    img = np.zeros((8, 16, 3), np.uint8)
    img[:, 6:10] = 255  # a white band in the centre columns
    out = s.prepare_image(Image.fromarray(img))
    assert out.shape == (4, 4, 3)
    assert out[:, 1:3].min() > 200 and out[:, 0].max() < 60


@pytest.mark.parametrize(
    "over, msg",
    [
        ({"std": "0,1,1"}, "std must be positive"),
        ({"mean": "1,2"}, "mean has 2 values"),
        ({"scale": -1}, "scale must be a positive"),
        ({"preset": "vgg"}, "unknown preprocessing preset"),
        ({"layout": "nhwc"}, "contradicts the model input"),
        ({"input_size": "64x64"}, "contradicts the model input, fixed to 32x32"),
        ({"input_size": "0x10"}, "out of range"),
        ({"input_size": "abc"}, "not HxW"),
        ({"resize": "squash"}, "resize must be"),
        ({"colour": "rgb"}, "unknown preprocessing key"),
    ],
)
def test_impossible_specs(over, msg):
    with pytest.raises(PreprocessingError, match=msg):
        _spec(**over)


def test_bgr_on_grayscale_is_refused():
    with pytest.raises(PreprocessingError, match="bgr needs a 3-channel"):
        _spec(model_channels=1, channel_order="bgr")


def test_layering_metadata_sidecar_arguments(tmp_path):
    path = fac.caffe_style(tmp_path)  # metadata: caffe-style BGR 0-255
    m = pa.load_model(path, check_parity=False)
    assert m.preprocessing.channel_order == "bgr" and m.preprocessing.scale == 1.0
    assert m.preprocessing.source["channel_order"] == "model metadata"
    # A sidecar overrides the metadata...
    (tmp_path / (path.name + ".json")).write_text(json.dumps({"preset": "imagenet"}))
    m = pa.load_model(path, check_parity=False)
    assert m.preprocessing.channel_order == "rgb" and m.preprocessing.std == (0.229, 0.224, 0.225)
    assert m.preprocessing.source["std"].startswith("preset imagenet (sidecar")
    # ...and arguments override both.
    m = pa.load_model(path, {"std": "2,2,2"}, check_parity=False)
    assert m.preprocessing.std == (2.0, 2.0, 2.0) and m.preprocessing.source["std"] == "arguments"


def test_sidecar_file_found_by_model_name(tmp_path):
    m = pa.load_model(fac.with_sidecar(tmp_path), check_parity=False)
    assert m.preprocessing.mean == PRESETS["imagenet"]["mean"]
    assert m.preprocessing.source["mean"].startswith("preset imagenet (sidecar")


def test_bad_sidecar_and_metadata(tmp_path):
    path = fac.tiny_cnn(tmp_path)
    side = tmp_path / (path.name + ".json")
    side.write_text("{not json")
    with pytest.raises(PreprocessingError, match="not valid JSON"):
        pa.load_model(path, check_parity=False)
    side.unlink()
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {"pyanalyzer.preprocessing": json.dumps({"std": [0, 0, 0]})})
    onnx.save(proto, path)
    with pytest.raises(PreprocessingError, match="std must be positive"):
        pa.load_model(path, check_parity=False)


def test_dynamic_size_model_takes_input_size(tmp_path):
    m = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    assert m.preprocessing.input_size == (32, 32)


def test_16_bit_and_float_images_are_rescaled_not_clipped():
    from PIL import Image

    from pyanalyzer.model.preprocessing import PreprocessSpec

    spec = PreprocessSpec(input_size=(4, 64), channels=1)
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))
    got = spec.prepare_image(Image.fromarray(ramp))  # mode I;16
    np.testing.assert_allclose(got[0, :, 0], np.linspace(0, 255, 64), atol=1)
    as_int = spec.prepare_image(Image.fromarray(ramp.astype(np.int32)))  # mode I
    np.testing.assert_array_equal(as_int, got)
    unit = spec.prepare_image(Image.fromarray((ramp / 65535).astype(np.float32)))  # mode F
    np.testing.assert_allclose(unit[0, :, 0], np.linspace(0, 255, 64), atol=1)
    rgb = PreprocessSpec(input_size=(4, 64), channels=3).prepare_image(Image.fromarray(ramp))
    assert rgb.shape == (4, 64, 3) and (rgb[..., 0] == rgb[..., 1]).all()
    assert (rgb[0, :, 0] < 250).sum() > 55  # not saturated
