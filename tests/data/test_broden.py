"""Tests of pyanalyzer.data.broden (Broden-format reader, label cache, writers) and
pyanalyzer.data.colors.

The reference dataset below is written by hand, byte for byte in the layout released with
Network Dissection, independently of the module's writer.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pyanalyzer.data import broden
from pyanalyzer.data import synthetic as syn
from pyanalyzer.data.broden import BrodenDataset, DatasetError, resize_labels
from pyanalyzer.data.colors import COLOR_NAMES, name_colors
from pyanalyzer.errors import UserInputError
from pyanalyzer.model.preprocessing import PreprocessSpec

# ---------------------------------------------------------------------------------------------
# A hand-written Broden dataset: 3 images (8x6), segmentations 4x3, categories object (pixel
# level; image a has two PNG channels) and scene (image level). Label 300 (> 255) is R=44, G=1.

IH, IW, SH, SW = 8, 6, 4, 3

INDEX_CSV = """\
image,split,ih,iw,sh,sw,object,scene
a.png,train,8,6,4,3,a_object_1.png;a_object_2.png,300
sub/b.png,val,8,6,4,3,sub/b_object.png,5;300
c.png,train,8,6,4,3,,2
"""
LABEL_CSV = """\
number,name,category,frequency,coverage,syns
1,sky,object(2),2,0.833333,heaven;firmament
2,dog,scene(1);object(1),2,1.250000,
300,tree,object(1);scene(2),3,2.416667,
5,street-s,scene(1),1,1.000000,
"""
CATEGORY_CSV = """\
name,first,last,count,frequency
object,1,300,3,4
scene,2,300,3,4
"""
C_OBJECT_CSV = """\
code,number,name,frequency,coverage
1,1,sky,2,0.833333333333
2,2,dog,1,0.25
3,300,tree,1,0.416666666667
"""
C_SCENE_CSV = """\
code,number,name,frequency,coverage
1,300,tree,2,2.0
2,5,street-s,1,1.0
3,2,dog,1,1.0
"""

# Expected label maps [SH, SW].
A1 = np.array([[1, 1, 0], [300, 300, 0], [300, 0, 0], [0, 0, 1]], dtype=np.int32)
A2 = np.array([[0, 2, 2], [0, 2, 2], [0, 0, 0], [0, 0, 0]], dtype=np.int32)
B1 = np.array([[300, 1, 1], [300, 1, 1], [0, 0, 0], [300, 300, 300]], dtype=np.int32)


def _rg_png(labels: np.ndarray, path: Path) -> None:
    """Encode labels as R + 256 * G by hand (independent of broden.encode_label_png)."""
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = labels & 0xFF
    rgb[..., 1] = labels >> 8
    rgb[..., 2] = 77  # blue is ignored by the format
    Image.fromarray(rgb, "RGB").save(path)


def _photo(seed: int, h: int = IH, w: int = IW) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_hand_dataset(root: Path) -> Path:
    (root / "images" / "sub").mkdir(parents=True)
    (root / "index.csv").write_text(INDEX_CSV)
    (root / "label.csv").write_text(LABEL_CSV)
    (root / "category.csv").write_text(CATEGORY_CSV)
    (root / "c_object.csv").write_text(C_OBJECT_CSV)
    (root / "c_scene.csv").write_text(C_SCENE_CSV)
    img = root / "images"
    for k, name in enumerate(["a.png", "sub/b.png", "c.png"]):
        Image.fromarray(_photo(k)).save(img / name)
    _rg_png(A1, img / "a_object_1.png")
    _rg_png(A2, img / "a_object_2.png")
    _rg_png(B1, img / "sub" / "b_object.png")
    return root


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    return make_hand_dataset(tmp_path / "hand")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------
# Reader on the hand-written dataset


def test_reader_metadata(hand: Path, cache_dir: Path) -> None:
    ds = BrodenDataset(hand, cache_dir=cache_dir)
    assert len(ds) == 3
    assert ds.categories == ["object", "scene"]
    assert ds.seg_size == (SH, SW)
    assert (ds.max_channels, ds.max_image_labels) == (2, 2)
    assert sorted(ds.labels) == [1, 2, 5, 300]
    assert ds.labels[1].name == "sky" and ds.labels[1].syns == ("heaven", "firmament")
    assert dict(ds.labels[300].categories) == {"object": 1, "scene": 2}
    assert ds.num_labels == 301 and ds.names[300] == "tree" and ds.names[0] == "-"
    # Primary category: highest count; a tie (dog) goes to the first category of category.csv.
    cc = ds.concept_category
    assert cc.dtype == np.int32 and cc.shape == (301,)
    assert cc[1] == 0 and cc[2] == 0 and cc[300] == 1 and cc[5] == 1
    assert cc[0] == -1 and cc[3] == -1 and cc[299] == -1
    assert ds.labels[2].category == "object"
    np.testing.assert_array_equal(ds.category_codes["object"], [1, 2, 300])
    np.testing.assert_array_equal(ds.category_codes["scene"], [300, 5, 2])
    assert ds.name(1) == "sub/b.png" and ds.image_path(1) == hand / "images" / "sub" / "b.png"
    assert ds.image_split(1) == "val" and ds.image_size(2) == (IH, IW)


def test_reader_decodes_labels_exactly(hand: Path, cache_dir: Path) -> None:
    ds = BrodenDataset(hand, cache_dir=cache_dir)
    seg, labs = ds.segmentation(0)
    assert seg.dtype == np.int32 and seg.shape == (2, SH, SW)
    np.testing.assert_array_equal(seg, np.stack([A1, A2]))
    np.testing.assert_array_equal(labs, [300])
    seg, labs = ds.segmentation(1)
    np.testing.assert_array_equal(seg, B1[None])
    np.testing.assert_array_equal(labs, [5, 300])
    seg, labs = ds.segmentation(2)
    assert seg.shape == (0, SH, SW) and labs.tolist() == [2]

    seg, labs, cats = ds.segmentation_batch([0, 1, 2])
    assert seg.shape == (3, 2, SH, SW) and seg.dtype == np.int32
    np.testing.assert_array_equal(seg[0], np.stack([A1, A2]))
    np.testing.assert_array_equal(seg[1, 0], B1)
    assert not seg[1, 1].any() and not seg[2].any()
    assert labs.dtype == np.int32 and labs.tolist() == [[300, 0], [5, 300], [2, 0]]
    assert cats.dtype == np.uint8 and cats.tolist() == [[1, 1], [1, 1], [0, 1]]

    seg, labs, cats = ds.segmentation_batch([2, 0], K=3, L=4)
    assert seg.shape == (2, 3, SH, SW) and labs.shape == (2, 4)
    np.testing.assert_array_equal(seg[1, :2], np.stack([A1, A2]))
    with pytest.raises(UserInputError, match="K=1"):
        ds.segmentation_batch([0], K=1)


def test_reader_pixels_and_split(hand: Path, cache_dir: Path) -> None:
    ds = BrodenDataset(hand, cache_dir=cache_dir)
    spec = PreprocessSpec(input_size=(IH, IW))
    np.testing.assert_array_equal(ds.pixels(0, spec), _photo(0))
    np.testing.assert_array_equal(ds.image(2), _photo(2))
    assert ds.pixels(1, PreprocessSpec(input_size=(16, 12))).shape == (16, 12, 3)
    val = BrodenDataset(hand, split="val", cache_dir=cache_dir)
    assert len(val) == 1 and val.name(0) == "sub/b.png"
    with pytest.raises(DatasetError, match="no images of split 'test'"):
        BrodenDataset(hand, split="test", cache_dir=cache_dir)
    with pytest.raises(IndexError):
        ds.segmentation(3)


def test_single_channel_and_palette_pngs_decode(tmp_path: Path) -> None:
    lab = np.array([[0, 7], [300, 65535]], dtype=np.int32)
    Image.fromarray(lab.astype(np.uint16)).save(tmp_path / "gray.png")  # mode I;16
    np.testing.assert_array_equal(broden.decode_label_png(tmp_path / "gray.png"), lab)
    broden.encode_label_png(lab, tmp_path / "rg.png")
    np.testing.assert_array_equal(broden.decode_label_png(tmp_path / "rg.png"), lab)


# ---------------------------------------------------------------------------------------------
# Every defect gives a one-line DatasetError naming the file and the row.


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an image")


DEFECTS: dict[str, tuple[Callable[[Path], object], str, str, int | None]] = {
    # name: (mutation, when detected, file named, line)
    "missing index.csv": (lambda r: (r / "index.csv").unlink(), "load", "index.csv", None),
    "missing label.csv": (lambda r: (r / "label.csv").unlink(), "load", "label.csv", None),
    "missing category.csv": (lambda r: (r / "category.csv").unlink(), "load", "category.csv", None),
    "missing c_scene.csv": (lambda r: (r / "c_scene.csv").unlink(), "load", "c_scene.csv", None),
    "index missing column": (
        lambda r: (r / "index.csv").write_text(
            "\n".join(
                ",".join(c for k, c in enumerate(line.split(",")) if k != 4)
                for line in INDEX_CSV.splitlines()
            )
        ),
        "load", "index.csv", 1,
    ),
    "index column without category.csv entry": (
        lambda r: (r / "index.csv").write_text(
            "\n".join(line + ("," + "material" if i == 0 else ",") for i, line in enumerate(INDEX_CSV.splitlines()))
        ),
        "load", "index.csv", 1,
    ),
    "category.csv entry without index column": (
        lambda r: (
            _edit(r / "category.csv", "scene,2,300,3,4\n", "scene,2,300,3,4\npart,,,0,0\n"),
            (r / "c_part.csv").write_text("code,number,name,frequency,coverage\n"),
        ),
        "load", "index.csv", 1,
    ),
    "label.csv extra column": (
        lambda r: _edit(r / "label.csv", "coverage,syns", "coverage,syns,extra"),
        "load", "label.csv", 1,
    ),
    "label.csv missing column": (
        lambda r: _edit(r / "label.csv", "frequency,coverage", "coverage"),
        "load", "label.csv", 1,
    ),
    "index row with an extra cell": (
        lambda r: _edit(r / "index.csv", "sub/b_object.png,5;300", "sub/b_object.png,5;300,x"),
        "load", "index.csv", 3,
    ),
    "malformed ih": (lambda r: _edit(r / "index.csv", "c.png,train,8", "c.png,train,8x"), "load", "index.csv", 4),
    "malformed label frequency": (
        lambda r: _edit(r / "label.csv", "(1);object(1),2,", "(1);object(1),many,"),
        "load", "label.csv", 3,
    ),
    "malformed category entry": (
        lambda r: _edit(r / "label.csv", "sky,object(2)", "sky,object"), "load", "label.csv", 2,
    ),
    "malformed c_ code": (lambda r: _edit(r / "c_object.csv", "\n2,2,dog", "\ntwo,2,dog"), "load", "c_object.csv", 3),
    "malformed index entry": (lambda r: _edit(r / "index.csv", ",,2", ",,dog"), "load", "index.csv", 4),
    "index label absent from label.csv": (
        lambda r: _edit(r / "index.csv", ",,2", ",,999"), "load", "index.csv", 4,
    ),
    "c_ label absent from label.csv": (
        lambda r: _edit(r / "c_object.csv", "1,1,sky", "1,77,sky"), "load", "c_object.csv", 2,
    ),
    "label category without category.csv entry": (
        lambda r: _edit(r / "label.csv", "street-s,scene(1)", "street-s,place(1)"),
        "load", "label.csv", 5,
    ),
    "duplicate label number": (
        lambda r: _edit(r / "label.csv", "5,street-s", "1,street-s"), "load", "label.csv", 5,
    ),
    "non-uniform segmentation size": (
        lambda r: _edit(r / "index.csv", "c.png,train,8,6,4,3", "c.png,train,8,6,5,3"),
        "load", "index.csv", 4,
    ),
    "missing image": (lambda r: (r / "images" / "c.png").unlink(), "load", "c.png", 4),
    "missing PNG": (lambda r: (r / "images" / "sub" / "b_object.png").unlink(), "load", "b_object.png", 3),
    "path escaping images/": (
        lambda r: _edit(r / "index.csv", "c.png,train", "../c.png,train"), "load", "index.csv", 4,
    ),
    "unreadable PNG": (lambda r: _garbage(r / "images" / "a_object_2.png"), "segmentation", "a_object_2.png", 2),
    "unreadable image": (lambda r: _garbage(r / "images" / "a.png"), "pixels", "a.png", 2),
    "image size differs from ih, iw": (
        lambda r: Image.fromarray(_photo(2, 7, 6)).save(r / "images" / "c.png"),
        "pixels:2", "c.png", 4,
    ),
    "PNG size differs from sh, sw": (
        lambda r: _rg_png(np.ones((5, 3), np.int32), r / "images" / "sub" / "b_object.png"),
        "segmentation:1", "b_object.png", 3,
    ),
    "PNG label absent from label.csv": (
        lambda r: _rg_png(np.where(A1 == 300, 77, A1), r / "images" / "a_object_1.png"),
        "segmentation", "a_object_1.png", 2,
    ),
}  # fmt: skip


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_defects_name_file_and_row(hand: Path, cache_dir: Path, defect: str) -> None:
    mutate, when, file_name, line = DEFECTS[defect]
    mutate(hand)
    stage, _, index = when.partition(":")
    i = int(index or 0)
    with pytest.raises(DatasetError) as info:
        ds = BrodenDataset(hand, cache_dir=cache_dir)
        if stage == "segmentation":
            ds.segmentation(i)
        elif stage == "pixels":
            ds.pixels(i, PreprocessSpec(input_size=(IH, IW)))
    message = str(info.value)
    assert "\n" not in message
    assert file_name in message, message
    if line is not None:
        assert f"line {line}" in message, message
        assert info.value.row == line
    assert isinstance(info.value, UserInputError)


def test_defect_in_batch_and_cache_writes_nothing(hand: Path, cache_dir: Path) -> None:
    _garbage(hand / "images" / "a_object_2.png")
    ds = BrodenDataset(hand, cache_dir=cache_dir)
    with pytest.raises(DatasetError, match="a_object_2.png"):
        ds.segmentation_batch([1, 0])
    with pytest.raises(DatasetError, match="a_object_2.png"):
        ds.prepare_cache(progress=False)
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


# ---------------------------------------------------------------------------------------------
# The decoded-label cache


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    from pyanalyzer.data.broden import reader  # where segmentation PNGs are decoded

    real = reader._decode_png

    def counting(path: Path) -> np.ndarray:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(reader, "_decode_png", counting)
    return calls


def test_cache_avoids_decoding_again(
    hand: Path, cache_dir: Path, count_decodes: list[Path]
) -> None:
    expected = BrodenDataset(hand, cache_dir=cache_dir).segmentation_batch([0, 1, 2])
    assert len(count_decodes) == 3
    count_decodes.clear()

    first = BrodenDataset(hand, cache_dir=cache_dir)
    path = first.prepare_cache(progress=False)
    assert path.parent == cache_dir and path.suffix == ".h5" and first.digest in path.name
    assert len(count_decodes) == 3  # every PNG once
    assert [p.name for p in cache_dir.iterdir()] == [path.name]  # no temp file left
    count_decodes.clear()

    # A second model on the same dataset: a new reader decodes nothing.
    second = BrodenDataset(hand, cache_dir=cache_dir)
    assert second.prepare_cache(progress=False) == path
    for indices in ([0, 1, 2], [1, 2], [2, 0, 1], [0, 0, 2], [1]):  # runs are read as slices
        got = second.segmentation_batch(indices)
        want = tuple(a[indices] for a in expected)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
    seg, labs = BrodenDataset(hand, cache_dir=cache_dir).segmentation(0)  # cache found lazily
    np.testing.assert_array_equal(seg, np.stack([A1, A2]))
    np.testing.assert_array_equal(labs, [300])
    assert count_decodes == []
    second.close()


def test_small_label_caches_are_stored_raw_and_large_ones_compressed(
    hand: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Maps of at most cache.RAW_SEG_MAX bytes are stored uncompressed (faster reads); above
    it, lzf. Both read back the decoded labels exactly."""
    import h5py

    from pyanalyzer.data.broden import cache as cache_module

    expected = BrodenDataset(hand, cache_dir=tmp_path / "none").segmentation_batch([0, 1, 2])
    for limit, compression in ((cache_module.RAW_SEG_MAX, None), (0, "lzf")):
        monkeypatch.setattr(cache_module, "RAW_SEG_MAX", limit)
        ds = BrodenDataset(hand, cache_dir=tmp_path / f"limit{limit}")
        with h5py.File(ds.prepare_cache(progress=False)) as f:
            assert f["seg"].compression == compression
        for g, w in zip(ds.segmentation_batch([0, 1, 2]), expected, strict=True):
            np.testing.assert_array_equal(g, w)
        ds.close()


def test_cache_is_invalidated_when_a_png_changes(
    hand: Path, cache_dir: Path, count_decodes: list[Path]
) -> None:
    ds = BrodenDataset(hand, cache_dir=cache_dir)
    old = ds.prepare_cache(progress=False)
    png = hand / "images" / "a_object_2.png"
    changed = np.where(A2 == 2, 300, A2)
    _rg_png(changed, png)
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    count_decodes.clear()
    fresh = BrodenDataset(hand, cache_dir=cache_dir)
    assert fresh.cache_path != old
    fresh.prepare_cache(progress=False)
    assert len(count_decodes) == 3
    np.testing.assert_array_equal(fresh.segmentation(0)[0][1], changed)


def test_cache_default_folder_is_next_to_the_store(
    hand: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYANALYZER_STORE", str(tmp_path / "st" / "store.h5"))
    ds = BrodenDataset(hand)
    assert ds.cache_dir == tmp_path / "st" / "concepts"
    assert ds.prepare_cache(progress=False).parent == tmp_path / "st" / "concepts"


# ---------------------------------------------------------------------------------------------
# Writers


def test_resize_labels_is_nearest_at_pixel_centres() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 60000, (64, 64)).astype(np.int32)
    np.testing.assert_array_equal(resize_labels(a, (32, 32)), a[1::2, 1::2])
    for big, small in [((33, 35), (16, 17)), ((227, 227), (113, 113)), ((10, 7), (23, 5))]:
        a = rng.integers(0, 60000, big).astype(np.int32)
        pil = Image.fromarray(a, "I").resize(small[::-1], Image.Resampling.NEAREST)
        np.testing.assert_array_equal(resize_labels(a, small), np.asarray(pil))


def test_synth_round_trip(tmp_path: Path, cache_dir: Path) -> None:
    n, size, seed = 6, 32, 3
    out = broden.synth_dataset(tmp_path / "synth", n_images=n, size=size, seed=seed, progress=False)
    assert not list(tmp_path.glob("synth.tmp-*"))
    ds = BrodenDataset(out, cache_dir=cache_dir)
    assert len(ds) == n and ds.seg_size == (size // 2, size // 2)
    assert ds.categories == ["color", "shape", "scene", "texture"]
    header = (out / "index.csv").read_text().splitlines()[0]
    assert header == "image,split,ih,iw,sh,sw,color,shape,scene,texture"
    # Broden naming and the generator's stable ids.
    assert ds.labels[syn.concept_id("color", "red")].name == "red-c"
    assert ds.labels[syn.concept_id("scene", "sky")].name == "sky-s"
    lut = {c: syn.concept_lut(c) for c in syn.CATEGORIES}
    counts: dict[int, int] = {}
    spec = PreprocessSpec(input_size=(size, size))
    for i in range(n):
        sc = syn.render(i, seed, size)
        seg, labs = ds.segmentation(i)
        want = [lut[c][sc.masks[c][1::2, 1::2]] for c in ("color", "shape", "texture")]
        np.testing.assert_array_equal(seg, np.stack(want))
        assert labs.tolist() == [
            lut["scene"][sc.labels["scene"]],
            lut["texture"][sc.labels["texture"]],
        ]
        np.testing.assert_array_equal(ds.pixels(i, spec), sc.image)
        # Per (label, category) image counts, as label.csv's frequency.
        seen = {
            (int(v), c)
            for c, s in zip(("color", "shape", "texture"), seg, strict=True)
            for v in np.unique(s)
            if v
        }
        seen |= {(int(labs[0]), "scene"), (int(labs[1]), "texture")}
        for v, _ in seen:
            counts[v] = counts.get(v, 0) + 1
    assert {v: lab.frequency for v, lab in ds.labels.items()} == counts
    for v, lab in ds.labels.items():
        assert ds.categories[ds.concept_category[v]] == syn.concepts()[v - 1].category
        assert sum(lab.categories.values()) == lab.frequency
    seg, labs, cats = ds.segmentation_batch(range(n))
    assert seg.shape == (n, 3, size // 2, size // 2) and cats.all()


def test_synth_validates_and_is_atomic(tmp_path: Path) -> None:
    for kw in ({"n_images": 0}, {"size": 8}, {"seed": -1}, {"n_images": True}, {"size": 32.0}):
        with pytest.raises(UserInputError):
            broden.synth_dataset(
                tmp_path / "x", **{"n_images": 2, "size": 16, **kw}, progress=False
            )
    assert not (tmp_path / "x").exists()
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not empty"):
        broden.synth_dataset(out, n_images=2, size=16, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    broden.synth_dataset(out, n_images=2, size=16, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "index.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_write_broden_failure_leaves_nothing(tmp_path: Path) -> None:
    def records():
        yield broden.BrodenRecord(
            "a.png", np.zeros((8, 8, 3), np.uint8), {"object": [np.ones((4, 4), np.int32)]}
        )
        yield broden.BrodenRecord(
            "b.png", np.zeros((8, 8, 3), np.uint8), {"object": [np.full((4, 4), 9, np.int32)]}
        )

    with pytest.raises(UserInputError, match="label number 9"):
        broden.write_broden(tmp_path / "out", records(), {1: "thing"}, ["object"])
    assert list(tmp_path.iterdir()) == []


def _palette_png(mask: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mask.astype(np.uint8), "P")
    pal = np.zeros((256, 3), np.uint8)
    pal[1], pal[2], pal[255] = (128, 0, 0), (0, 128, 0), (224, 224, 192)  # VOC-like colours
    img.putpalette(pal.ravel().tolist())
    img.save(path)


BLOCKS = {
    "red": (230, 20, 20),
    "blue": (20, 40, 230),
    "white": (250, 250, 250),
    "green": (20, 150, 30),
}


def _voc_inputs(root: Path, palette: bool = True) -> tuple[Path, Path, list[np.ndarray]]:
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    images.mkdir(parents=True)
    masks.mkdir()
    out = []
    for k in range(3):
        img = np.zeros((16, 12, 3), np.uint8)
        img[:8] = BLOCKS["red" if k % 2 else "blue"]
        img[8:] = BLOCKS["white"]
        img[8:, 6:] = BLOCKS["green"]
        mask = np.zeros((16, 12), np.int64)
        mask[:8, :6] = 1
        mask[8:, 6:] = 2
        mask[7:9, :] = 255  # VOC's ignore border
        Image.fromarray(img).save(images / f"img{k}.png")
        if palette:
            _palette_png(mask, masks / f"img{k}.png")
        else:
            Image.fromarray(mask.astype(np.uint8), "L").save(masks / f"img{k}.png")
        out.append(mask)
    Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(images / "unlabelled.png")  # no mask
    return images, masks, out


def test_build_from_voc_palette_masks(tmp_path: Path, cache_dir: Path) -> None:
    images, masks, expected = _voc_inputs(tmp_path / "voc")
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    out = broden.build_dataset(
        images, masks, tmp_path / "classes.txt", tmp_path / "out", progress=False
    )
    ds = BrodenDataset(out, cache_dir=cache_dir)
    assert len(ds) == 3 and ds.categories == ["color", "object"] and ds.seg_size == (8, 6)
    assert ds.labels[1].name == "cat" and ds.labels[2].name == "dog"
    assert ds.labels[1].category == "object"
    color_number = {lab.name: v for v, lab in ds.labels.items() if lab.category == "color"}
    assert set(color_number) == {"red-c", "blue-c", "white-c", "green-c"}
    assert all(v >= 3 for v in color_number.values())
    for i in range(3):
        assert ds.name(i) == f"img{i}.png"
        seg, labs = ds.segmentation(i)
        assert labs.size == 0 and seg.shape == (2, 8, 6)
        obj = np.where(expected[i] == 255, 0, expected[i])[1::2, 1::2]
        np.testing.assert_array_equal(seg[1], obj)
        img = np.asarray(Image.open(images / f"img{i}.png"))
        names = np.array(COLOR_NAMES)[name_colors(img)[1::2, 1::2] - 1]
        np.testing.assert_array_equal(seg[0], np.vectorize(lambda s: color_number[f"{s}-c"])(names))
    assert "255" not in (out / "label.csv").read_text().split("\n", 1)[1].split(",")[0]


def test_build_from_index_masks_csv_labels_and_resize(tmp_path: Path, cache_dir: Path) -> None:
    images, masks, expected = _voc_inputs(tmp_path / "voc", palette=False)
    (tmp_path / "classes.csv").write_text("index,name\n0,background\n1,wheel\n2,door\n")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / "img0.png")  # other size
    Image.fromarray(np.zeros((20, 20), np.uint8), "L").save(masks / "img0.png")
    with pytest.raises(DatasetError, match="--size"):
        broden.build_dataset(
            images, masks, tmp_path / "classes.csv", tmp_path / "out", progress=False
        )
    out = broden.build_dataset(
        images, masks, tmp_path / "classes.csv", tmp_path / "out",
        add_colors=False, category="part", size=16, progress=False,
    )  # fmt: skip
    ds = BrodenDataset(out, cache_dir=cache_dir)
    assert ds.categories == ["part"] and ds.seg_size == (8, 8) and ds.image_size(0) == (16, 16)
    assert {v: lab.name for v, lab in ds.labels.items()} == {1: "wheel", 2: "door"}
    seg, _ = ds.segmentation(1)
    want = resize_labels(np.where(expected[1] == 255, 0, expected[1]), (16, 16))[1::2, 1::2]
    np.testing.assert_array_equal(seg[0], want)


@pytest.mark.parametrize(
    "defect, match",
    [
        ("unknown index", "mask index 7"),
        ("rgb mask", "mode RGB"),
        ("orphan mask", "no image with stem"),
        ("mask size", "mask is"),
    ],
)
def test_build_defects(tmp_path: Path, defect: str, match: str) -> None:
    images, masks, _ = _voc_inputs(tmp_path / "voc")
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    if defect == "unknown index":
        _palette_png(np.full((16, 12), 7), masks / "img1.png")
    elif defect == "rgb mask":
        Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(masks / "img1.png")
    elif defect == "orphan mask":
        _palette_png(np.zeros((16, 12)), masks / "lonely.png")
    else:
        _palette_png(np.zeros((10, 12)), masks / "img1.png")
    with pytest.raises(DatasetError, match=match) as info:
        broden.build_dataset(
            images, masks, tmp_path / "classes.txt", tmp_path / "out", progress=False
        )
    assert info.value.file is not None and Path(info.value.file).name in str(info.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_read_class_names(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_text("background\naeroplane\nbicycle\n\n")
    assert broden.read_class_names(p) == {0: "background", 1: "aeroplane", 2: "bicycle"}
    p.write_text("0,background\n5,person\n")
    assert broden.read_class_names(p) == {0: "background", 5: "person"}
    for text, line in [("a\n\nb\n", 2), ("0,a\n1,a\n", 2), ("0,a\nx,b\n", 2), ("0,a\n255,b\n", 2)]:
        p.write_text(text)
        with pytest.raises(DatasetError, match=f"line {line}"):
            broden.read_class_names(p)


# ---------------------------------------------------------------------------------------------
# Colour naming


def test_colour_names_match_broden_and_synthetic() -> None:
    assert COLOR_NAMES == syn.COLORS
    known = {
        (255, 0, 0): "red", (128, 0, 0): "red", (0, 0, 255): "blue", (0, 0, 128): "blue",
        (135, 206, 235): "blue", (0, 128, 0): "green", (0, 255, 0): "green",
        (255, 255, 0): "yellow", (255, 215, 0): "yellow", (255, 165, 0): "orange",
        (128, 0, 128): "purple", (238, 130, 238): "purple", (255, 192, 203): "pink",
        (255, 105, 180): "pink", (139, 69, 19): "brown", (210, 180, 140): "brown",
        (128, 128, 128): "grey", (192, 192, 192): "grey", (0, 0, 0): "black",
        (20, 20, 20): "black", (255, 255, 255): "white", (240, 240, 240): "white",
    }  # fmt: skip
    rgb = np.array([list(known)], dtype=np.uint8)
    got = [COLOR_NAMES[k - 1] for k in name_colors(rgb)[0]]
    assert got == list(known.values())


def test_colour_names_of_synthetic_paint() -> None:
    # Every pixel the generator can paint (prototype +- COLOR_JITTER) is named as painted.
    j = syn.COLOR_JITTER
    for c in syn.COLORS:
        corners = [np.add(syn.COLOR_RGB[c], d) for d in itertools.product((-j, 0, j), repeat=3)]
        names = name_colors(np.array([corners], dtype=np.uint8))[0]
        assert {COLOR_NAMES[k - 1] for k in names} == {c}
    scene = syn.render(0, seed=5, size=32)
    np.testing.assert_array_equal(name_colors(scene.image), scene.masks["color"])


def test_colour_naming_of_gray_and_bad_input() -> None:
    gray = np.array([[0, 128, 255]], dtype=np.uint8)
    assert [COLOR_NAMES[k - 1] for k in name_colors(gray)[0]] == ["black", "grey", "white"]
    with pytest.raises(UserInputError):
        name_colors(np.zeros((2, 2, 5), np.uint8))


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_synth_build_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyanalyzer.cli.concepts import concepts

    monkeypatch.setenv("PYANALYZER_STORE", str(tmp_path / "store.h5"))
    runner = CliRunner()
    out = tmp_path / "synth"
    r = runner.invoke(
        concepts, ["synth", "--out", str(out), "--n-images", "4", "--size", "16", "--seed", "2"]
    )
    assert r.exit_code == 0, r.output
    assert str(out) in r.output and "4 images" in r.output
    for name in (
        "index.csv",
        "label.csv",
        "category.csv",
        "c_color.csv",
        "c_scene.csv",
        "README.txt",
    ):
        assert (out / name).is_file()
    assert len(list((out / "images" / "synth").glob("*.png"))) == 4 * 4

    r = runner.invoke(concepts, ["synth", "--out", str(out), "--n-images", "2", "--size", "16"])
    assert r.exit_code != 0 and isinstance(r.exception, UserInputError)
    r = runner.invoke(concepts, ["synth", "--out", str(out), "--n-images", "0"])
    assert isinstance(r.exception, UserInputError)

    r = runner.invoke(concepts, ["info", str(out), "--check"])
    assert r.exit_code == 0, r.output
    assert "8x8" in r.output and "texture" in r.output and "pixel+image" in r.output
    r = runner.invoke(concepts, ["info", str(out), "--json"])
    data = json.loads(r.output)
    assert (
        data["images"] == 4 and data["seg_size"] == [8, 8] and data["validation"].startswith("ok")
    )

    images, masks, _ = _voc_inputs(tmp_path / "voc")
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    built = tmp_path / "built"
    args = [
        "build",
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--labels",
        str(tmp_path / "classes.txt"),
    ]
    r = runner.invoke(concepts, [*args, "--out", str(built)])
    assert r.exit_code == 0, r.output
    assert (
        str(built) in r.output
        and (built / "c_object.csv").is_file()
        and (built / "c_color.csv").is_file()
    )
    r = runner.invoke(concepts, [*args, "--out", str(built), "--no-colors", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert not (built / "c_color.csv").exists()

    (out / "label.csv").write_text("number,name\n")
    r = runner.invoke(concepts, ["info", str(out)])
    assert isinstance(r.exception, DatasetError) and "label.csv line 1" in str(r.exception)
