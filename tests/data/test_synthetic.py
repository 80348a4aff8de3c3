"""Tests of pyanalyzer.data.synthetic and of the committed default model built from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pyanalyzer.data import synthetic as syn
from pyanalyzer.errors import UserInputError

MODEL = Path(__file__).resolve().parents[2] / "models" / "default.onnx"


@pytest.fixture(scope="module")
def scenes() -> list[syn.Scene]:
    return list(syn.generate(120, seed=11))


# ------------------------------------------------------------------------------ determinism


def test_same_seed_and_index_give_identical_scenes() -> None:
    a, b = syn.render(5, seed=3), syn.render(5, seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    for k in a.masks:
        np.testing.assert_array_equal(a.masks[k], b.masks[k])
    np.testing.assert_array_equal(a.instances, b.instances)
    assert a.labels == b.labels
    assert a.objects == b.objects


def test_different_seeds_and_indices_differ() -> None:
    base = syn.render(5, seed=3).image
    assert not np.array_equal(base, syn.render(5, seed=4).image)
    assert not np.array_equal(base, syn.render(6, seed=3).image)


def test_scene_does_not_depend_on_n_or_start() -> None:
    ref = syn.render(7, seed=2)
    from_long = list(syn.generate(10, seed=2))[7]
    from_start = next(syn.generate(1, seed=2, start=7))
    for other in (from_long, from_start):
        np.testing.assert_array_equal(ref.image, other.image)
        np.testing.assert_array_equal(ref.masks["color"], other.masks["color"])
        assert other.index == 7 and other.seed == 2
    images, labels = syn.render_batch(3, seed=2, start=6)
    np.testing.assert_array_equal(images[1], ref.image)
    assert labels[1] == ref.label


# ------------------------------------------------------------------------------ arrays


@pytest.mark.parametrize("size", [16, 64, 97])
def test_array_shapes_and_dtypes(size: int) -> None:
    sc = syn.render(1, seed=0, size=size)
    assert sc.image.shape == (size, size, 3) and sc.image.dtype == np.uint8
    assert set(sc.masks) == set(syn.PIXEL_CATEGORIES)
    for m in (*sc.masks.values(), sc.instances):
        assert m.shape == (size, size)
        assert np.issubdtype(m.dtype, np.integer)
    assert not sc.image.flags.writeable and not sc.masks["shape"].flags.writeable
    assert set(sc.labels) == set(syn.IMAGE_CATEGORIES)
    images, labels = syn.render_batch(4, size=size)
    assert images.shape == (4, size, size, 3) and labels.shape == (4,)


# ------------------------------------------------------------------------------ masks vs pixels


def test_color_mask_matches_pixels(scenes: list[syn.Scene]) -> None:
    protos = np.array([syn.COLOR_RGB[c] for c in syn.COLORS], dtype=np.int16)
    for sc in scenes:
        color = sc.masks["color"]
        assert color.min() >= 1 and color.max() <= len(syn.COLORS)  # every pixel is labelled
        diff = np.abs(sc.image.astype(np.int16) - protos[color - 1])
        assert diff.max() <= syn.COLOR_JITTER
        # The prototypes are far enough apart that the nearest one is always the label.
        dist = np.abs(sc.image[:, :, None, :].astype(np.int16) - protos).max(-1)
        np.testing.assert_array_equal(dist.argmin(-1) + 1, color)


def test_red_pixels_are_red(scenes: list[syn.Scene]) -> None:
    red = syn.COLORS.index("red") + 1
    pixels = np.concatenate([sc.image[sc.masks["color"] == red] for sc in scenes])
    assert len(pixels) > 100
    assert np.abs(pixels.astype(int) - syn.COLOR_RGB["red"]).max() <= syn.COLOR_JITTER


def test_shape_mask_is_the_visible_objects(scenes: list[syn.Scene]) -> None:
    for sc in scenes:
        shape, inst = sc.masks["shape"], sc.instances
        np.testing.assert_array_equal(shape > 0, inst > 0)
        for k, obj in enumerate(sc.objects, start=1):
            assert np.all(shape[inst == k] == syn.SHAPES.index(obj.shape) + 1)
            assert np.all(sc.masks["texture"][inst == k] == syn.TEXTURES.index(obj.texture) + 1)
        main = inst == 1
        assert main.sum() > 0.02 * inst.size  # the main object is large and never occluded
        assert np.all(shape[main] == sc.label + 1)
        assert syn.class_names()[sc.label] == sc.main_shape
        # Every object pixel lies inside its object's disc of radius 1.1 * radius.
        ys, xs = np.nonzero(inst)
        for y, x in zip(ys, xs, strict=True):
            obj = sc.objects[inst[y, x] - 1]
            assert np.hypot(y + 0.5 - obj.center[0], x + 0.5 - obj.center[1]) <= 1.1 * obj.radius


def _unit_frame(sc: syn.Scene) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the main object's frame, in units of its radius."""
    obj = sc.objects[0]
    s = sc.image.shape[0]
    dy = np.arange(s)[:, None] + 0.5 - obj.center[0]
    dx = np.arange(s)[None, :] + 0.5 - obj.center[1]
    c, sn = np.cos(obj.angle), np.sin(obj.angle)
    return (c * dy - sn * dx) / obj.radius, (sn * dy + c * dx) / obj.radius


def test_circles_and_squares_match_independent_geometry() -> None:
    """Main circles (radius 0.85) and squares (half side 1/sqrt 2) against closed forms."""
    checked = set()
    for sc in syn.generate(60, seed=5):
        if sc.main_shape not in ("circle", "square"):
            continue
        u, v = _unit_frame(sc)
        if sc.main_shape == "circle":
            level = np.hypot(u, v) / 0.85
        else:
            level = np.maximum(np.abs(u), np.abs(v)) * np.sqrt(2)
        main = sc.instances == 1
        eps = 1e-6
        assert np.all(main[level < 1 - eps]) and not np.any(main[level > 1 + eps])
        checked.add(sc.main_shape)
    assert checked == {"circle", "square"}


def test_background_texture_and_image_labels(scenes: list[syn.Scene]) -> None:
    for sc in scenes:
        bg = sc.instances == 0
        want = syn.TEXTURES.index(syn.SCENE_TEXTURE[sc.scene]) + 1
        assert np.all(sc.masks["texture"][bg] == want)
        assert sc.labels["texture"] == syn.TEXTURES.index(sc.objects[0].texture) + 1
        assert syn.SCENES[sc.labels["scene"] - 1] == sc.scene


# ------------------------------------------------------------------------------ vocabulary


def test_vocabulary_is_stable_and_complete() -> None:
    assert syn.COLORS == (
        "black", "blue", "brown", "green", "grey", "orange",
        "pink", "purple", "red", "white", "yellow",
    )  # fmt: skip
    assert syn.SHAPES == ("circle", "square", "triangle", "star", "cross", "hexagon", "ring")
    assert syn.TEXTURES == (
        "plain", "striped", "dotted", "chequered", "zigzagged",
        "grid", "blotchy", "speckled", "wavy", "bricked",
    )  # fmt: skip
    assert syn.SCENES == ("sky", "grass", "water", "sand", "brick", "night", "snow", "wall")
    assert set(syn.COLOR_RGB) == set(syn.COLORS)
    assert set(syn.SCENE_TEXTURE) == set(syn.SCENES)
    assert syn.class_names() == list(syn.SHAPES)

    cs = syn.concepts()
    assert [c.id for c in cs] == list(range(1, len(cs) + 1))
    assert len(cs) == 11 + 7 + 8 + 10
    assert [c.category for c in cs] == sorted((c.category for c in cs), key=syn.CATEGORIES.index)
    for c in cs:
        assert syn.concept_id(c.category, c.name) == c.id
        assert syn.concept_lut(c.category)[c.label] == c.id
    assert syn.concept_id("color", "black") == 1
    assert syn.concept_lut("shape")[0] == 0


def test_all_concepts_occur() -> None:
    seen: dict[str, set[int]] = {k: set() for k in syn.PIXEL_CATEGORIES}
    scenes_seen = set()
    for sc in syn.generate(300, seed=9):
        for k in syn.PIXEL_CATEGORIES:
            seen[k].update(np.unique(sc.masks[k]).tolist())
        scenes_seen.add(sc.labels["scene"])
    assert seen["shape"] == set(range(len(syn.SHAPES) + 1))
    assert seen["color"] == set(range(1, len(syn.COLORS) + 1))
    assert seen["texture"] == set(range(1, len(syn.TEXTURES) + 1))
    assert scenes_seen == set(range(1, len(syn.SCENES) + 1))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: syn.render(-1), "index must be >= 0"),
        (lambda: syn.render(0, seed=-2), "seed must be >= 0"),
        (lambda: syn.render(0, size=15), "size must be >= 16"),
        (lambda: syn.render(1.5), "index must be an integer"),
        (lambda: syn.render(True), "index must be an integer"),
        (lambda: syn.render(0, size="64"), "size must be an integer"),
        (lambda: syn.generate(-1), "n must be >= 0"),
        (lambda: syn.generate(2.0), "n must be an integer"),
        (lambda: syn.generate(2, start=-1), "start must be >= 0"),
        (lambda: syn.render_batch(3, size=8), "size must be >= 16"),
        (lambda: syn.concept_id("shape", "blob"), "unknown shape concept"),
        (lambda: syn.concept_lut("material"), "unknown concept category"),
    ],
)
def test_parameter_validation(call, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        call()


def test_numpy_integers_are_accepted() -> None:
    a = syn.render(np.int64(3), seed=np.int32(1), size=np.int64(32))
    np.testing.assert_array_equal(a.image, syn.render(3, 1, 32).image)


# ------------------------------------------------------------------------------ default model


def test_default_model_metadata_and_accuracy() -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    assert MODEL.is_file(), "run: python models/build_default.py"
    assert MODEL.stat().st_size < 2 * 1024 * 1024
    proto = onnx.load(str(MODEL))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert {
        "pyanalyzer.preprocessing",
        "pyanalyzer.class_names",
        "pyanalyzer.description",
        "pyanalyzer.held_out_accuracy",
    } <= set(meta)
    pre = json.loads(meta["pyanalyzer.preprocessing"])
    assert pre == {
        "input_size": [64, 64],
        "resize": "stretch",
        "scale": 1 / 255,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "channel_order": "rgb",
        "layout": "nchw",
    }
    assert json.loads(meta["pyanalyzer.class_names"]) == syn.class_names()
    assert float(meta["pyanalyzer.held_out_accuracy"]) >= 0.9
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"}
    assert not any(t.external_data for t in proto.graph.initializer)

    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("image", "logits")
    images, labels = syn.render_batch(200, seed=2024)
    x = ((images.astype(np.float32) / 255 - 0.5) / 0.25).transpose(0, 3, 1, 2)
    logits = sess.run(["logits"], {"image": np.ascontiguousarray(x)})[0]
    assert logits.shape == (200, len(syn.SHAPES))
    assert (logits.argmax(1) == labels).mean() >= 0.85
