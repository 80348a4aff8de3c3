"""Top-k patches per unit (Zeiler & Fergus 2014, Fig. 2) against a brute-force numpy top-k."""

from __future__ import annotations

import numpy as np
import onnx_factory as fac
import pytest

import pyanalyzer as pa
from pyanalyzer.errors import UserInputError
from pyanalyzer.methods.patches import TopPatches, TopPatchesResult, merge_topk
from pyanalyzer.model.receptive import crop_box
from pyanalyzer.report.patches import layer_montage, montage, write_patches


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return pa.load_model(fac.tiny_cnn(tmp_path_factory.mktemp("tp")), check_parity=False)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)


def _brute_force(model, images, layer, k):
    """Run every image at once; per unit and image the first raster maximum; sort, take k."""
    name = model.layer(layer).name
    x = model.preprocessing.normalize(images)
    acts = model.forward.run(x, [layer], nchw=False)[name]  # as the graph makes it
    if model.layer(layer).layout == "nhwc":
        acts = acts.transpose(0, 3, 1, 2)
    n, u, h, w = acts.shape
    flat = acts.reshape(n, u, h * w)
    arg = flat.argmax(axis=2)  # [n, u]
    best = flat.max(axis=2)
    vals = np.full((u, k), -np.inf, np.float32)
    imgs = np.full((u, k), -1, np.int64)
    pos = np.full((u, k, 2), -1, np.int64)
    for unit in range(u):
        order = sorted(range(n), key=lambda i: (-best[i, unit], i))[:k]
        for j, i in enumerate(order):
            vals[unit, j] = best[i, unit]
            imgs[unit, j] = i
            pos[unit, j] = divmod(int(arg[i, unit]), w)
    return vals, imgs, pos


@pytest.mark.parametrize(
    "layer, k, batch", [("relu2", 9, 7), ("conv1", 4, 20), ("maxpool2", 25, 3)]
)
def test_topk_matches_brute_force(model, images, layer, k, batch):
    res = TopPatches(model, layer=layer, k=k, batch_size=batch, progress=False).run(
        pa.ArraySource(images)
    )
    vals, imgs, pos = _brute_force(model, images, layer, k)
    units = model.layer(layer).channels
    assert res.values.shape == (units, k) and res.values.dtype == np.float32
    assert res.images.shape == (units, k) and res.images.dtype == np.int64
    assert res.positions.shape == (units, k, 2) and res.positions.dtype == np.int64
    np.testing.assert_array_equal(res.images, imgs)
    np.testing.assert_array_equal(res.positions, pos)
    np.testing.assert_allclose(res.values, vals, rtol=1e-5, atol=1e-6)
    assert res.n_images == 20
    for unit in range(units):  # one image per slot at most, descending values
        row = res.images[unit][res.images[unit] >= 0]
        assert len(set(row.tolist())) == len(row)
        filled = res.values[unit][res.images[unit] >= 0]
        assert np.all(np.diff(filled) <= 0)
    if k > 20:  # fewer images than k: padded
        assert (res.images[:, 20:] == -1).all() and np.isneginf(res.values[:, 20:]).all()
        assert res.count(0) == 20


def test_ties_go_to_the_lower_image_index(model):
    same = np.repeat(np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), np.uint8), 12, 0)
    res = TopPatches(model, layer="relu2", k=5, batch_size=5, progress=False).run(
        pa.ArraySource(same)
    )
    assert (res.images == np.arange(5)).all()
    assert (res.values == res.values[:, :1]).all()


def test_merge_is_deterministic_on_ties():
    vals = np.full((1, 3), -np.inf, np.float32)
    imgs = np.full((1, 3), -1, np.int64)
    pos = np.full((1, 3, 2), -1, np.int64)
    p = np.zeros((1, 4, 2), np.int64)
    v = np.array([[1.0, 2.0, 2.0, np.nan]], np.float32)
    vals, imgs, pos = merge_topk(vals, imgs, pos, v, np.array([[7, 9, 8, 6]]), p)
    assert imgs.tolist() == [[8, 9, 7]]
    v2 = np.array([[2.0, -np.inf]], np.float32)
    vals, imgs, pos = merge_topk(vals, imgs, pos, v2, np.array([[3, 4]]), p[:, :2])
    assert imgs.tolist() == [[3, 8, 9]] and vals.tolist() == [[2.0, 2.0, 2.0]]


def test_patch_is_the_receptive_field_cut_by_hand(model, images):
    src = pa.ArraySource(images)
    res = TopPatches(model, layer="relu2", k=9, progress=False).run(src)
    # relu2: conv 3x3 pad 1, max pool 2/2, conv 3x3 pad 1: rows 2y - 3 .. 2y + 4.
    assert (res.field.size, res.field.jump, res.field.start) == ((8, 8), (2, 2), (-3, -3))
    seen_border = False
    for u in range(res.units):
        for j in range(res.k):
            y, x = res.positions[u, j]
            top, left = max(2 * y - 3, 0), max(2 * x - 3, 0)
            bottom, right = min(2 * y + 5, 32), min(2 * x + 5, 32)
            expected = images[res.images[u, j], top:bottom, left:right]
            got = res.patch(u, j, src)
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected)
            seen_border |= expected.shape != (8, 8, 3)
    assert seen_border  # some maxima sit at the border: their patches are clamped


def test_montage_shapes(model, images):
    src = pa.ArraySource(images)
    res = TopPatches(model, layer="relu2", k=9, progress=False).run(src)
    u = 3
    sizes = [res.patch(u, j, src).shape[:2] for j in range(9)]
    ch, cw = max(s[0] for s in sizes), max(s[1] for s in sizes)
    plain = montage(res, u, src, min_side=1)
    assert plain.shape == (3 * (ch + 2) + 2, 3 * (cw + 2) + 2, 3) and plain.dtype == np.uint8
    # enlarged by a whole factor: the largest patch (8 px) becomes 64
    big = montage(res, u, src)
    assert big.shape == (3 * (8 * ch + 2) + 2, 3 * (8 * cw + 2) + 2, 3)
    # beside full-size projections (cut at the same box) and patch-size ones
    full = [np.full((32, 32, 3), 200, np.uint8) for _ in range(9)]
    side = montage(res, u, src, projections=full, min_side=1)
    assert side.shape == (3 * (ch + 2) + 2, 3 * (2 * cw + 2 + 2) + 2, 3)
    cut = [np.zeros(s + (3,), np.uint8) for s in sizes]
    assert montage(res, u, src, projections=cut, min_side=1).shape == side.shape
    with pytest.raises(UserInputError, match="projections"):
        montage(res, u, src, projections=full[:3])
    with pytest.raises(UserInputError, match="input size"):
        montage(res, u, src, projections=[np.zeros((5, 5, 3), np.uint8)] * 9)
    layer = layer_montage(res, [0, 1, 2], src, min_side=1)
    assert layer.dtype == np.uint8 and layer.shape[1] == 2 * (plain.shape[1] + 6) + 6


def test_save_writes_unit_and_layer_pngs(model, images, tmp_path):
    src = pa.ArraySource(images)
    res = TopPatches(model, layer="conv2", k=4, progress=False).run(src)
    paths = write_patches(res, tmp_path, src, units=[0, 5], min_side=16)
    assert [p.name for p in paths] == ["conv2_unit0000.png", "conv2_unit0005.png", "conv2.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_nhwc_layer_equals_nchw_layer(tmp_path):
    model = pa.load_model(fac.tf2onnx_style(tmp_path), check_parity=False)
    imgs = np.random.default_rng(2).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    src = pa.ArraySource(imgs)
    assert model.layer("transpose2").layout == "nhwc"
    a = TopPatches(model, layer="transpose2", k=3, batch_size=4, progress=False).run(src)
    b = TopPatches(model, layer="avgpool1", k=3, batch_size=4, progress=False).run(src)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.patch(2, 0, src), b.patch(2, 0, src))
    vals, imgs_bf, pos = _brute_force(model, imgs, "transpose2", 3)
    np.testing.assert_array_equal(a.images, imgs_bf)


def test_validation(model, images):
    with pytest.raises(pa.LayerNotFoundError):
        TopPatches(model, layer="conv9")
    with pytest.raises(UserInputError, match="not a spatial"):
        TopPatches(model, layer="logits")
    for k in (0, -1, 2.5):
        with pytest.raises(UserInputError, match="k must"):
            TopPatches(model, layer="relu2", k=k)
    with pytest.raises(UserInputError, match="batch_size"):
        TopPatches(model, layer="relu2", batch_size=0)
    empty = pa.ArraySource(np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(UserInputError, match="empty"):
        TopPatches(model, layer="relu2", progress=False).run(empty)
    src = pa.ArraySource(images[:2])
    res = TopPatches(model, layer="relu2", k=3, progress=False).run(src)
    with pytest.raises(UserInputError, match="rank 2"):
        res.patch(0, 2, src)
    with pytest.raises(UserInputError, match="out of range"):
        res.patch(99, 0, src)


def test_layer_without_receptive_field(tmp_path):
    """The top-k still works; patches say which op has no geometry rule."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Tile", ["c", "reps"], ["t"]),
        helper.make_node("Relu", ["t"], ["out"]),
    ]
    g = helper.make_graph(
        nodes,
        "tile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 32, 32])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.int64), "reps"),
        ],
    )
    path = tmp_path / "tile.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    model = pa.load_model(path, check_parity=False)
    src = pa.ArraySource(rng.integers(0, 256, (3, 16, 16, 3), np.uint8))
    res = TopPatches(model, layer="out", k=2, progress=False).run(src)
    assert isinstance(res, TopPatchesResult) and res.field is None
    assert res.images.shape == (4, 2)
    with pytest.raises(UserInputError, match="Tile"):
        res.patch(0, 0, src)


def test_crop_box_is_what_patch_uses(model, images):
    src = pa.ArraySource(images)
    res = TopPatches(model, layer="maxpool2", k=2, progress=False).run(src)
    y, x = res.positions[1, 0]
    top, left, bottom, right = crop_box(res.field, y, x, 32, 32)
    assert res.box(1, 0) == (top, left, bottom, right)
    assert res.patch(1, 0, src).shape == (bottom - top, right - left, 3)


@pytest.mark.parametrize(
    "op, layout", [("LeakyRelu", "nhwc"), ("PRelu", "nchw"), ("Relu6", "nhwc"), ("Swish", "nchw")]
)
def test_projections_through_every_kind_of_activation(tmp_path, op, layout):
    # Top patches project through the activations the walker knows (rectifiers with their
    # own rules, smooth ones by their local gradient): each slot's view is the Projector's on
    # that image alone.
    from pyanalyzer.methods.deconvnet import Projector

    model = pa.load_model(fac.activation_cnn(tmp_path, op, layout), check_parity=False)
    imgs = np.random.default_rng(3).integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    src = pa.ArraySource(imgs)
    res = TopPatches(model, layer="act2", k=3, units=[1], projection="guided", progress=False)
    res = res.run(src)
    views = res.projections[1]
    assert views.shape == (3, 8, 8, 3)
    x = model.preprocessing.normalize(imgs[res.images[1]])
    expected = Projector(model, "guided", device="cpu").project(x, "act2", 1).images()
    np.testing.assert_array_equal(views, expected)
    paths = write_patches(res, tmp_path / "out", src, min_side=8)
    alias = model.layer("act2").alias  # named by its op: leakyrelu2, clip2, mul2...
    assert [p.name for p in paths] == [f"{alias}_unit0001.png", f"{alias}.png"]


def test_gray_patches_and_projections(tmp_path):
    # A 1-channel model: patches are cut from the gray image the model saw and shown, like
    # the projections, as gray RGB.
    model = pa.load_model(fac.channels1(tmp_path), check_parity=False)
    imgs = np.random.default_rng(4).integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)
    src = pa.ArraySource(imgs)
    res = TopPatches(model, layer="relu2", k=2, units=[0], projection="deconv", progress=False)
    res = res.run(src)
    top, left, bottom, right = res.box(0, 0)
    patch = res.patch(0, 0, src)
    assert patch.shape == (bottom - top, right - left, 3)
    gray = imgs[res.images[0, 0], top:bottom, left:right, 0]
    assert all((patch[..., c] == gray).all() for c in range(3))
    views = res.projections[0]
    assert views.shape == (2, 28, 28, 3) and (views == views[..., :1]).all()
    (unit, layer) = write_patches(res, tmp_path / "out", src, min_side=16)
    assert unit.name == "relu2_unit0000.png" and layer.name == "relu2.png"


def test_scan_skips_nan_activations():
    """A NaN never wins a unit's maximum, wherever it stands in the map (the scan looks for
    NaN only when argmax found one)."""
    from types import SimpleNamespace

    from pyanalyzer.methods.patches import scan_topk

    maps = np.zeros((2, 2, 2, 3), np.float32)  # [B, C, h, w]
    maps[0, 0] = [[np.nan, 5.0, 1.0], [2.0, np.nan, 0.0]]  # unit 0, image 0: 5.0 at (0, 1)
    maps[1, 0] = [[1.0, 1.0, 7.0], [1.0, 1.0, 1.0]]  # unit 0, image 1: 7.0 at (0, 2)
    maps[0, 1] = [[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]
    maps[1, 1] = np.nan  # unit 1, image 1: all NaN, never chosen over image 0's 3.0

    def iter_layers(source, names, **kw):
        yield range(0, 2), {names[0]: maps}

    fake = SimpleNamespace(forward=SimpleNamespace(iter_layers=iter_layers))
    layer = SimpleNamespace(channels=2, name="x", alias="x")
    values, imgs, pos = scan_topk(fake, layer, None, k=2, progress=False)
    assert values[0].tolist() == [7.0, 5.0] and imgs[0].tolist() == [1, 0]
    assert pos[0].tolist() == [[0, 2], [0, 1]]
    assert values[1, 0] == 3.0 and imgs[1, 0] == 0 and pos[1, 0].tolist() == [1, 1]
    assert imgs[1, 1] in (-1, 1) and not (values[1, 1] > 3.0)
