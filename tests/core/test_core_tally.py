"""tally and its upsampling against the plain numpy reference (tests/core/reference_tally.py),
hand-made cases, torch's interpolate, and bad inputs. Counts must be IDENTICAL."""

from __future__ import annotations

import numpy as np
import pytest
from reference_tally import reference_tally, upsample

from pyanalyzer import _backend

FIELDS = ("intersection", "unit_area_cat", "unit_area", "concept_area")


def random_case(
    rng: np.random.Generator,
    n: int,
    units: int,
    hw: tuple[int, int],
    size: int | tuple[int, int],
    channels: int,
    labels: int,
    concepts: int,
    categories: int,
    quantile: float,
    offset: float = 0.0,
) -> dict:
    """Random inputs; thresholds at `quantile` of each unit's coarse values."""
    sh, sw = (size, size) if isinstance(size, int) else size
    acts = rng.standard_normal((n, units, *hw), dtype=np.float32) + np.float32(offset)
    per_unit = acts.transpose(1, 0, 2, 3).reshape(units, -1)
    thresholds = np.quantile(per_unit, quantile, axis=1).astype(np.float32)
    seg = rng.integers(0, concepts, size=(n, channels, sh, sw), dtype=np.int32)
    seg[rng.random(seg.shape) < 0.3] = 0  # unlabelled pixels
    image_labels = rng.integers(0, concepts, size=(n, labels), dtype=np.int32)
    concept_category = rng.integers(0, categories, size=concepts, dtype=np.int32)
    image_categories = (rng.random((n, categories)) < 0.6).astype(np.uint8)
    image_categories[0] = 0  # an image labelled in no category
    return {
        "acts": acts,
        "thresholds": thresholds,
        "seg": seg,
        "image_labels": image_labels,
        "concept_category": concept_category,
        "image_categories": image_categories,
    }


def run_tally(case: dict, device: str, counts: _backend.TallyCounts | None = None):
    units = case["acts"].shape[1]
    concepts = case["concept_category"].shape[0]
    if counts is None:
        counts = _backend.TallyCounts.zeros(units, concepts, case["image_categories"].shape[1])
    return _backend.tally(**case, counts=counts, device=device)


def reference(case: dict) -> dict:
    return reference_tally(
        case["acts"],
        case["thresholds"],
        case["seg"],
        case["image_labels"],
        case["concept_category"].shape[0],
        case["image_categories"],
    )


def assert_counts_equal(got: _backend.TallyCounts, want: dict) -> None:
    for field in FIELDS:
        value = getattr(got, field)
        assert value.dtype == np.int64, field
        np.testing.assert_array_equal(value, want[field], err_msg=field)


# (n, units, (h, w), S, K, L, C, G, quantile, offset)
RANDOM_CASES = [
    ("7x7->112 q99.5", 3, 6, (7, 7), 112, 2, 1, 20, 3, 0.995, 0.0),
    ("7x7->112 q90", 2, 5, (7, 7), 112, 2, 2, 30, 4, 0.9, 0.0),
    ("5x3->13 (not a multiple) q80", 4, 6, (5, 3), 13, 3, 2, 9, 2, 0.8, 0.0),
    ("6x6->5 downsampling q70", 3, 4, (6, 6), 5, 1, 2, 7, 2, 0.7, 0.0),
    ("1x1->4 q50", 2, 3, (1, 1), 4, 1, 0, 3, 1, 0.5, 0.0),
    ("13x13->50x37 negative q99", 2, 5, (13, 13), (50, 37), 2, 1, 11, 3, 0.99, -5.0),
    ("4x9->31 q30 K=0 L=2", 3, 4, (4, 9), 31, 0, 2, 6, 2, 0.3, 0.0),
    ("3x3->8 q0 everything fires", 2, 3, (3, 3), 8, 2, 1, 5, 2, 0.0, 0.0),
]


@pytest.mark.parametrize("case_args", RANDOM_CASES, ids=[c[0] for c in RANDOM_CASES])
def test_random_matches_reference(case_args, device):
    _, n, units, hw, size, k, labels, concepts, categories, q, offset = case_args
    rng = np.random.default_rng(RANDOM_CASES.index(case_args))
    case = random_case(rng, n, units, hw, size, k, labels, concepts, categories, q, offset)
    assert_counts_equal(run_tally(case, device), reference(case))


@pytest.mark.parametrize("where", ["upsampled values", "corner minus one ulp", "corner"])
def test_thresholds_on_the_edge(where, device):
    """Thresholds equal to values the maps actually take, or a hair below a coarse value: the
    cell skipping must never drop a pixel that float rounding lifts above the threshold."""
    rng = np.random.default_rng(21)
    case = random_case(rng, 3, 8, (7, 7), 37, 2, 1, 10, 2, 0.9)
    acts = case["acts"]
    units = acts.shape[1]
    if where == "upsampled values":
        up = upsample(acts, 37, 37).transpose(1, 0, 2, 3).reshape(units, -1)
        thresholds = up[np.arange(units), rng.integers(0, up.shape[1], units)]
    else:
        coarse = acts.transpose(1, 0, 2, 3).reshape(units, -1)
        thresholds = coarse[np.arange(units), np.argsort(coarse, axis=1)[:, -3]]
        if where == "corner minus one ulp":
            thresholds = np.nextafter(thresholds, np.float32(-np.inf))
    case["thresholds"] = thresholds.astype(np.float32)
    assert_counts_equal(run_tally(case, device), reference(case))


@pytest.mark.parametrize("value", [0.7, -3.25, 1e-3, 123.456])
def test_constant_maps(value, device):
    """A constant map upsamples to the constant up to rounding of the weights: just below the
    threshold nothing fires, just above everything does, at the threshold the reference rules."""
    n, units, size = 2, 3, 13
    acts = np.full((n, units, 7, 7), value, np.float32)
    eps = np.float32(abs(value) * 1e-3)
    thresholds = np.array([value - eps, value + eps, value], np.float32)
    seg = np.ones((n, 1, size, size), np.int32)
    case = {
        "acts": acts,
        "thresholds": thresholds,
        "seg": seg,
        "image_labels": np.zeros((n, 0), np.int32),
        "concept_category": np.zeros(2, np.int32),
        "image_categories": np.ones((n, 1), np.uint8),
    }
    got = run_tally(case, device)
    assert got.unit_area[0] == n * size * size
    assert got.unit_area[1] == 0
    assert_counts_equal(got, reference(case))


def test_hand_computed_quadrant(device):
    """2x2 -> 4x4: along each axis a[0]'s weight is [1, .75, .25, 0], so a single 1 in the
    top-left corner upsamples to the outer product; > 0.5 keeps exactly the top-left 2x2
    quadrant, which is concept 3's region: intersection == unit_area == concept_area."""
    acts = np.zeros((1, 2, 2, 2), np.float32)
    acts[0, 0, 0, 0] = 1.0
    acts[0, 1] = -1.0  # unit 1 never fires
    w = np.array([1.0, 0.75, 0.25, 0.0], np.float32)
    np.testing.assert_array_equal(
        _backend.upsample_bilinear(acts, 4, device=device)[0, 0], np.outer(w, w)
    )
    seg = np.zeros((1, 1, 4, 4), np.int32)
    seg[0, 0, :2, :2] = 3
    seg[0, 0, 2:, :] = 1
    counts = _backend.tally(
        acts,
        np.array([0.5, 0.0], np.float32),
        seg,
        None,
        np.array([0, 0, 0, 1], np.int32),
        np.array([[1, 0]], np.uint8),
        _backend.TallyCounts.zeros(2, 4, 2),
        device=device,
    )
    np.testing.assert_array_equal(counts.unit_area, [4, 0])
    np.testing.assert_array_equal(counts.intersection, [[0, 0, 0, 4], [0, 0, 0, 0]])
    np.testing.assert_array_equal(counts.concept_area, [0, 8, 0, 4])
    np.testing.assert_array_equal(counts.unit_area_cat, [[4, 0], [0, 0]])


def test_mask_equal_to_a_concept_region(device):
    """Concept 1's region is unit 0's mask on every image: all three counts coincide."""
    rng = np.random.default_rng(3)
    case = random_case(rng, 4, 3, (7, 7), 40, 2, 1, 6, 2, 0.9)
    mask = upsample(case["acts"][:, 0], 40, 40) > case["thresholds"][0]
    case["seg"][case["seg"] == 1] = 2
    case["seg"][:, 0][mask] = 1
    case["image_labels"][case["image_labels"] == 1] = 0
    got = run_tally(case, device)
    area = int(mask.sum())
    assert area > 0
    assert got.intersection[0, 1] == got.unit_area[0] == got.concept_area[1] == area
    assert_counts_equal(got, reference(case))


def test_silent_unit_counts_nothing(device):
    rng = np.random.default_rng(4)
    case = random_case(rng, 3, 4, (7, 7), 30, 2, 2, 8, 3, 0.5)
    case["thresholds"][2] = np.inf
    case["thresholds"][3] = case["acts"][:, 3].max() + 1e-3
    got = run_tally(case, device)
    for field in ("intersection", "unit_area_cat", "unit_area"):
        assert not getattr(got, field)[2:].any(), field
    assert got.unit_area[:2].all()
    assert_counts_equal(got, reference(case))


def test_image_labels_add_the_whole_mask(device):
    """Image-level labels (scenes): each occurrence adds |M| to the intersection and S*S to the
    concept's area; padding (0) adds nothing; a concept in two channels counts per channel."""
    acts = np.ones((1, 1, 2, 2), np.float32)
    seg = np.full((1, 2, 3, 3), 2, np.int32)  # concept 2 in both channels of every pixel
    counts = _backend.tally(
        acts,
        np.zeros(1, np.float32),
        seg,
        np.array([[4, 0, 4]], np.int32),
        np.zeros(5, np.int32),
        np.ones((1, 1), np.uint8),
        _backend.TallyCounts.zeros(1, 5, 1),
        device=device,
    )
    np.testing.assert_array_equal(counts.intersection, [[0, 0, 18, 0, 18]])
    np.testing.assert_array_equal(counts.concept_area, [0, 0, 18, 0, 18])
    np.testing.assert_array_equal(counts.unit_area, [9])


def test_two_calls_add_up_to_one(device):
    rng = np.random.default_rng(5)
    case = random_case(rng, 6, 5, (7, 7), 29, 2, 1, 12, 3, 0.95)
    whole = run_tally(case, device)
    counts = _backend.TallyCounts.zeros(5, 12, 3)
    for part in (slice(0, 2), slice(2, 6)):
        piece = {
            k: (v[part] if k not in ("thresholds", "concept_category") else v)
            for k, v in case.items()
        }
        run_tally(piece, device, counts)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(counts, field), getattr(whole, field))
    shard = run_tally(case, device)
    doubled = _backend.TallyCounts.zeros(5, 12, 3).add(whole).add(shard)
    np.testing.assert_array_equal(doubled.intersection, 2 * whole.intersection)


def test_empty_batch_and_no_units(device):
    rng = np.random.default_rng(6)
    case = random_case(rng, 2, 3, (4, 4), 9, 1, 1, 5, 2, 0.8)
    empty = {
        k: (v[:0] if k not in ("thresholds", "concept_category") else v) for k, v in case.items()
    }
    counts = run_tally(empty, device)
    for field in FIELDS:
        assert not getattr(counts, field).any()
    no_units = dict(case, acts=case["acts"][:, :0], thresholds=case["thresholds"][:0])
    counts = run_tally(no_units, device)
    assert counts.intersection.shape == (0, 5)
    np.testing.assert_array_equal(counts.concept_area, reference(case)["concept_area"])


def test_wrapper_casts_inputs(device):
    rng = np.random.default_rng(7)
    case = random_case(rng, 2, 3, (5, 5), 11, 2, 1, 6, 2, 0.8)
    want = run_tally(case, "cpu")
    cast = {
        "acts": case["acts"].astype(np.float64),
        "thresholds": case["thresholds"].tolist(),
        "seg": case["seg"].astype(np.int64),
        "image_labels": case["image_labels"].astype(np.uint16),
        "concept_category": case["concept_category"].astype(np.int8),
        "image_categories": case["image_categories"].astype(bool),
    }
    got = run_tally(cast, device)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


# --- the upsampling itself -------------------------------------------------------------------

UPSAMPLE_SHAPES = [((7, 7), (112, 112)), ((5, 3), (13, 17)), ((6, 6), (5, 4)), ((1, 4), (3, 9))]


@pytest.mark.parametrize(("hw", "size"), UPSAMPLE_SHAPES, ids=str)
def test_upsample_is_the_reference_bitwise(hw, size, device):
    rng = np.random.default_rng(8)
    acts = rng.standard_normal((2, 3, *hw), dtype=np.float32) * 10
    got = _backend.upsample_bilinear(acts, size, device=device)
    want = upsample(acts, *size)
    assert got.dtype == np.float32 and got.shape == (2, 3, *size)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize(("hw", "size"), UPSAMPLE_SHAPES, ids=str)
def test_upsample_matches_torch(hw, size, device):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    acts = rng.standard_normal((2, 3, *hw), dtype=np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(acts), size=size, mode="bilinear", align_corners=False
    ).numpy()
    got = _backend.upsample_bilinear(acts, size, device=device)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --- bad inputs ------------------------------------------------------------------------------


def good_arrays() -> dict:
    """Direct binding arguments, all valid: N=2, U=3, 4x4 maps, K=2, S=6, L=1, C=5, G=2."""
    return {
        "acts": np.zeros((2, 3, 4, 4), np.float32),
        "thresholds": np.zeros(3, np.float32),
        "seg": np.zeros((2, 2, 6, 6), np.int32),
        "image_labels": np.zeros((2, 1), np.int32),
        "concept_category": np.array([0, 0, 1, 1, 0], np.int32),
        "image_categories": np.zeros((2, 2), np.uint8),
        "intersection": np.zeros((3, 5), np.int64),
        "unit_area_cat": np.zeros((3, 2), np.int64),
        "unit_area": np.zeros(3, np.int64),
        "concept_area": np.zeros(5, np.int64),
    }


def test_good_arrays_pass(device):
    _backend.kernels(device).tally(**good_arrays())


def _set(key: str, value_fn):
    def change(arrays: dict) -> None:
        arrays[key] = value_fn(arrays[key])

    return change


def _poke(key: str, index: tuple, value):
    def change(arrays: dict) -> None:
        arrays[key][index] = value

    return change


def _readonly(arrays: dict) -> None:
    arrays["unit_area"].flags.writeable = False


BAD = [
    ("acts-dtype", _set("acts", lambda a: a.astype(np.float64)), "acts must be float32"),
    ("seg-dtype", _set("seg", lambda a: a.astype(np.int64)), "seg must be int32"),
    ("cats-dtype", _set("image_categories", lambda a: a.astype(bool)), "must be uint8"),
    ("counts-dtype", _set("intersection", lambda a: a.astype(np.int32)), "must be int64"),
    ("acts-rank", _set("acts", lambda a: a[0]), r"acts must have shape \[N, U, h, w\]"),
    ("acts-noncontig", _set("acts", lambda a: np.asfortranarray(a)), "C-contiguous"),
    (
        "counts-noncontig",
        _set("intersection", lambda a: np.zeros((5, 3), np.int64).T),
        "C-contiguous",
    ),
    ("thresholds-U", _set("thresholds", lambda a: a[:2]), "thresholds .* U = 2, expected 3"),
    ("seg-N", _set("seg", lambda a: a[:1]), "seg .* N = 1, expected 2"),
    ("labels-N", _set("image_labels", lambda a: np.zeros((3, 1), np.int32)), "N = 3"),
    ("cats-N", _set("image_categories", lambda a: a[:1]), "image_categories .* N = 1"),
    ("intersection-C", _set("intersection", lambda a: np.zeros((3, 4), np.int64)), "C = 4"),
    ("unit_area_cat-G", _set("unit_area_cat", lambda a: np.zeros((3, 3), np.int64)), "G = 3"),
    ("concept_area-C", _set("concept_area", lambda a: a[:4]), "concept_area .* C = 4"),
    ("unit_area-U", _set("unit_area", lambda a: a[:2]), "unit_area .* U = 2"),
    (
        "seg-too-large",
        _poke("seg", (1, 1, 2, 3), 5),
        r"seg\[1, 1, 2, 3\] = 5 is not a concept id .* \[0, 5\)",
    ),
    ("seg-negative", _poke("seg", (0, 0, 0, 0), -1), r"seg\[0, 0, 0, 0\] = -1"),
    ("label-too-large", _poke("image_labels", (1, 0), 9), r"image_labels\[1, 0\] = 9"),
    (
        "category-out-of-range",
        _poke("concept_category", (3,), 2),
        r"concept_category\[3\] = 2 is not a category index in \[0, 2\)",
    ),
    ("acts-nan", _poke("acts", (1, 2, 3, 0), np.nan), r"acts contains NaN at \[1, 2, 3, 0\]"),
    ("thresholds-nan", _poke("thresholds", (1,), np.nan), r"thresholds\[1\] is NaN"),
    ("readonly-counts", _readonly, "unit_area is read-only"),
    ("no-concepts", lambda a: a.update(concept_category=np.zeros(0, np.int32)), "C"),
    ("seg-S-zero", _set("seg", lambda a: np.zeros((2, 2, 0, 6), np.int32)), "seg S"),
    ("acts-h-zero", _set("acts", lambda a: np.zeros((2, 3, 0, 4), np.float32)), "acts h"),
]


@pytest.mark.parametrize(("change", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_binding_rejects_bad_inputs(change, match, device):
    arrays = good_arrays()
    change(arrays)
    with pytest.raises(ValueError, match=match):
        _backend.kernels(device).tally(**arrays)


def test_category_zero_entry_is_not_checked():
    arrays = good_arrays()
    arrays["concept_category"][0] = 99  # concept 0 (unlabelled) has no category
    _backend.kernels("cpu").tally(**arrays)


def test_wrapper_rejects_ids_beyond_int32():
    arrays = good_arrays()
    seg = arrays["seg"].astype(np.int64)
    seg[0, 0, 0, 0] = 2**32 + 1  # would wrap to 1 in a plain cast
    with pytest.raises(ValueError, match="seg holds values outside int32"):
        _backend.tally(
            arrays["acts"],
            arrays["thresholds"],
            seg,
            None,
            arrays["concept_category"],
            arrays["image_categories"],
            _backend.TallyCounts.zeros(3, 5, 2),
            device="cpu",
        )


def test_wrapper_rejects_float_ids():
    arrays = good_arrays()
    with pytest.raises(ValueError, match="seg must have an integer dtype"):
        _backend.tally(
            arrays["acts"],
            arrays["thresholds"],
            arrays["seg"].astype(np.float32),
            None,
            arrays["concept_category"],
            arrays["image_categories"],
            _backend.TallyCounts.zeros(3, 5, 2),
            device="cpu",
        )


def test_upsample_rejects_bad_inputs(device):
    module = _backend.kernels(device)
    with pytest.raises(ValueError, match="acts must be float32"):
        module.upsample_bilinear(np.zeros((1, 1, 2, 2)), 4, 4)
    with pytest.raises(ValueError, match="out_h must be >= 1"):
        module.upsample_bilinear(np.zeros((1, 1, 2, 2), np.float32), 0, 4)


# --- CUDA against CPU (skipped without a GPU) ------------------------------------------------


def test_cuda_counts_equal_cpu_at_layer_scale():
    if _backend.info()["cuda_devices"] == 0:
        pytest.skip("no CUDA device visible (or pyanalyzer._core_cuda not built)")
    rng = np.random.default_rng(10)
    case = random_case(rng, 32, 128, (7, 7), 112, 2, 1, 60, 5, 0.995)
    cpu, gpu = run_tally(case, "cpu"), run_tally(case, "cuda")
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(gpu, field), getattr(cpu, field), err_msg=field)
    assert cpu.unit_area.sum() > 0
