"""compose against the plain numpy reference (tests/core/reference_compose.py), the tally, hand
computed cases, and bad inputs. Counts must be IDENTICAL."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_compose import AND, AND_NOT, OR, reference_compose
from reference_tally import reference_tally, upsample

from pyanalyzer import _backend

FIELDS = ("f_concept", "mf_concept", "f_area", "mf_area")


def random_formulas(
    rng: np.random.Generator, units: int, beam: int, terms: int, concepts: int
) -> tuple[np.ndarray, np.ndarray]:
    """Formulas of every length 0..terms with every op; after a formula's end, garbage ids and
    ops (which the kernel must ignore)."""
    formulas = rng.integers(1, max(concepts, 2), size=(units, beam, terms)).astype(np.int32)
    formulas %= concepts  # C = 1: only the empty formula exists
    ops = rng.integers(1, 4, size=(units, beam, terms)).astype(np.int8)
    ops[:, :, 0] = rng.integers(-5, 9, size=(units, beam))  # term 0's op is never read
    lengths = rng.integers(0, terms + 1, size=(units, beam))
    if units and beam:
        lengths[0, 0] = 0  # always an empty formula
    for u in range(units):
        for b in range(beam):
            length = int(lengths[u, b])
            if length < terms:
                formulas[u, b, length] = 0
                ops[u, b, length + 1 :] = rng.integers(-5, 9, size=terms - length - 1)
    return formulas, ops


def random_case(
    rng: np.random.Generator,
    n: int,
    units: int,
    hw: tuple[int, int],
    size: tuple[int, int],
    channels: int,
    labels: int,
    concepts: int,
    beam: int,
    terms: int,
    quantile: float = 0.8,
) -> dict:
    """Random inputs with the awkward cases built in: concepts repeated across channels and
    between channels and labels, repeated labels, a silent and an always-firing unit."""
    acts = rng.standard_normal((n, units, *hw), dtype=np.float32)
    thresholds = np.zeros(units, np.float32)
    if n and units:
        per_unit = acts.transpose(1, 0, 2, 3).reshape(units, -1)
        thresholds = np.quantile(per_unit, quantile, axis=1).astype(np.float32)
    if units >= 3:
        thresholds[1] = np.inf  # silent
        thresholds[2] = -np.inf  # fires everywhere
    # few concepts per image, as in real data: each image draws from a handful
    seg = np.zeros((n, channels, *size), np.int32)
    image_labels = np.zeros((n, labels), np.int32)
    for i in range(n):
        pool = rng.integers(0, concepts, size=4)
        if channels:
            seg[i] = pool[rng.integers(0, 4, size=(channels, *size))]
            if channels >= 2:  # channel 1 repeats channel 0 on a third of the pixels
                same = rng.random(size) < 0.33
                seg[i, 1][same] = seg[i, 0][same]
        if labels:
            image_labels[i] = rng.integers(0, concepts, size=labels)
            if labels >= 2:
                image_labels[i, 1] = image_labels[i, 0]  # a label given twice
            if channels:
                image_labels[i, -1] = pool[0]  # a label also in seg
    formulas, ops = random_formulas(rng, units, beam, terms, concepts)
    return {
        "acts": acts,
        "thresholds": thresholds,
        "seg": seg,
        "image_labels": image_labels,
        "formulas": formulas,
        "ops": ops,
    }


def run_compose(case: dict, device: str, counts: _backend.ComposeCounts | None = None):
    units, beam = case["formulas"].shape[:2]
    if counts is None:
        counts = _backend.ComposeCounts.zeros(units, beam, case["concepts"])
    args = {k: v for k, v in case.items() if k != "concepts"}
    return _backend.compose(**args, counts=counts, device=device)


def reference(case: dict) -> dict:
    return reference_compose(
        case["acts"],
        case["thresholds"],
        case["seg"],
        case["image_labels"],
        case["formulas"],
        case["ops"],
        case["concepts"],
    )


def assert_counts_equal(got: _backend.ComposeCounts, want: dict) -> None:
    for field in FIELDS:
        value = getattr(got, field)
        assert value.dtype == np.int64, field
        np.testing.assert_array_equal(value, want[field], err_msg=field)


# (name, n, units, (h, w), (Sh, Sw), K, L, C, B, T)
RANDOM_CASES = [
    ("7x7->32 (16 words)", 3, 5, (7, 7), (32, 32), 3, 2, 12, 4, 3),
    ("5x3->13x11 (a partial word)", 4, 4, (5, 3), (13, 11), 2, 2, 9, 3, 3),
    ("6x6->5x4 downsampling", 3, 3, (6, 6), (5, 4), 2, 1, 7, 5, 2),
    ("1x1->4", 2, 3, (1, 1), (4, 4), 1, 0, 5, 2, 1),
    ("K=0 labels only", 3, 4, (4, 4), (9, 9), 0, 2, 6, 3, 3),
    ("L=0 seg only", 3, 4, (4, 4), (8, 8), 2, 0, 6, 3, 3),
    ("C=1 nothing but the empty formula", 2, 3, (3, 3), (5, 5), 1, 1, 1, 2, 2),
    ("length 5", 2, 3, (4, 4), (10, 10), 3, 1, 8, 4, 5),
    ("64 pixels (one full word)", 2, 3, (4, 4), (8, 8), 2, 1, 6, 2, 3),
]


@pytest.mark.parametrize("case_args", RANDOM_CASES, ids=[c[0] for c in RANDOM_CASES])
def test_random_matches_reference(case_args, device):
    _, n, units, hw, size, k, labels, concepts, beam, terms = case_args
    rng = np.random.default_rng(RANDOM_CASES.index(case_args))
    case = random_case(rng, n, units, hw, size, k, labels, concepts, beam, terms)
    case["concepts"] = concepts
    assert_counts_equal(run_compose(case, device), reference(case))


def test_wide_beam_and_many_concepts(device):
    """More concepts than one CUDA block's shared memory holds for a wide beam (the concepts
    are split into ranges there): the same counts."""
    rng = np.random.default_rng(11)
    case = random_case(rng, 2, 2, (3, 3), (6, 7), 3, 2, 200, 40, 2)  # 2 ranges of 150
    case["concepts"] = 200
    assert_counts_equal(run_compose(case, device), reference(case))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 3),
    units=st.integers(0, 4),
    hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    channels=st.integers(0, 3),
    labels=st.integers(0, 3),
    concepts=st.integers(1, 8),
    beam=st.integers(0, 4),
    terms=st.integers(1, 4),
)
def test_hypothesis_matches_reference(
    device, seed, n, units, hw, size, channels, labels, concepts, beam, terms
):
    rng = np.random.default_rng(seed)
    case = random_case(rng, n, units, hw, size, channels, labels, concepts, beam, terms, 0.7)
    case["concepts"] = concepts
    assert_counts_equal(run_compose(case, device), reference(case))


def test_empty_formula_is_the_tally(device):
    """With one seg channel and labels that are distinct and absent from seg, set semantics
    and the tally's per-channel counting agree: the empty formula's counts are the tally's."""
    rng = np.random.default_rng(12)
    n, units, size, concepts = 5, 6, (29, 23), 10
    acts = rng.standard_normal((n, units, 7, 7), dtype=np.float32)
    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(units, -1), 0.9, axis=1)
    thresholds = thresholds.astype(np.float32)
    seg = rng.integers(0, 7, size=(n, 1, *size)).astype(np.int32)
    image_labels = np.stack([rng.permutation(np.arange(7, 10))[:2] for _ in range(n)])
    image_labels = image_labels.astype(np.int32)
    counts = _backend.compose(
        acts, thresholds, seg, image_labels, np.zeros((units, 1, 1), np.int32),
        np.zeros((units, 1, 1), np.int8), _backend.ComposeCounts.zeros(units, 1, concepts),
        device=device,
    )  # fmt: skip
    tally = reference_tally(acts, thresholds, seg, image_labels, concepts, np.ones((n, 1)))
    np.testing.assert_array_equal(counts.mf_concept[:, 0], tally["intersection"])
    np.testing.assert_array_equal(counts.mf_area[:, 0], tally["unit_area"])
    np.testing.assert_array_equal(counts.f_area[:, 0], n * size[0] * size[1])
    for u in range(units):
        np.testing.assert_array_equal(counts.f_concept[u, 0], tally["concept_area"])


def test_hand_computed(device):
    """2x2 -> 4x4: a single 1 in the top-left corner upsamples to the outer product of
    [1, .75, .25, 0]; > 0.5 keeps the top-left 2x2 quadrant. Concept 1 = the top half, 2 = the
    left half (channel 1), 3 = an image label. Formulas: 1 AND 2 (the quadrant), 1 OR 2,
    1 AND NOT 2, (1 OR 2) AND NOT 3 (nothing), 2 AND 3."""
    acts = np.zeros((1, 1, 2, 2), np.float32)
    acts[0, 0, 0, 0] = 1.0
    seg = np.zeros((1, 2, 4, 4), np.int32)
    seg[0, 0, :2, :] = 1
    seg[0, 1, :, :2] = 2
    formulas = np.array([[[1, 2, 0], [1, 2, 0], [1, 2, 0], [1, 2, 3], [2, 3, 0]]], np.int32)
    ops = np.array(
        [[[0, AND, 0], [0, OR, 0], [0, AND_NOT, 0], [0, OR, AND_NOT], [0, AND, 0]]], np.int8
    )
    counts = _backend.compose(
        acts, np.array([0.5], np.float32), seg, np.array([[3]], np.int32), formulas, ops,
        _backend.ComposeCounts.zeros(1, 5, 4), device=device,
    )  # fmt: skip
    np.testing.assert_array_equal(counts.f_area, [[4, 12, 4, 0, 8]])
    np.testing.assert_array_equal(counts.mf_area, [[4, 4, 0, 0, 4]])
    # |F ∧ c| for c = 1, 2, 3 (image label: all of F)
    np.testing.assert_array_equal(
        counts.f_concept[0], [[0, 4, 4, 4], [0, 8, 8, 12], [0, 4, 0, 4], [0, 0, 0, 0], [0, 4, 8, 8]]
    )
    np.testing.assert_array_equal(
        counts.mf_concept[0], [[0, 4, 4, 4], [0, 4, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0], [0, 4, 4, 4]]
    )


def test_a_concept_counts_once_per_pixel(device):
    """Concept 2 in both channels and among the labels (twice): one per pixel."""
    counts = _backend.compose(
        np.ones((1, 1, 2, 2), np.float32), np.zeros(1, np.float32),
        np.full((1, 2, 3, 3), 2, np.int32), np.array([[2, 2, 0]], np.int32),
        np.array([[[0], [2]]], np.int32), np.zeros((1, 2, 1), np.int8),
        _backend.ComposeCounts.zeros(1, 2, 3), device=device,
    )  # fmt: skip
    np.testing.assert_array_equal(counts.f_concept, [[[0, 0, 9], [0, 0, 9]]])
    np.testing.assert_array_equal(counts.mf_concept, [[[0, 0, 9], [0, 0, 9]]])
    np.testing.assert_array_equal(counts.f_area, [[9, 9]])


def test_two_calls_add_up_to_one(device):
    rng = np.random.default_rng(13)
    case = random_case(rng, 6, 4, (5, 5), (16, 16), 2, 1, 9, 3, 3)
    case["concepts"] = 9
    whole = run_compose(case, device)
    counts = _backend.ComposeCounts.zeros(4, 3, 9)
    for part in (slice(0, 2), slice(2, 6)):
        piece = dict(case)
        for key in ("acts", "seg", "image_labels"):
            piece[key] = case[key][part]
        run_compose(piece, device, counts)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(counts, field), getattr(whole, field))
    doubled = _backend.ComposeCounts.zeros(4, 3, 9).add(whole).add(whole)
    np.testing.assert_array_equal(doubled.f_concept, 2 * whole.f_concept)


def test_unit_mask_is_the_tallys_on_the_edge(device):
    """Thresholds equal to values the upsampled maps take: the mask is the tally's, bit for
    bit (one pixel more or less would change |M|)."""
    rng = np.random.default_rng(14)
    acts = rng.standard_normal((3, 6, 7, 7), dtype=np.float32)
    up = upsample(acts, 37, 37).transpose(1, 0, 2, 3).reshape(6, -1)
    thresholds = up[np.arange(6), rng.integers(0, up.shape[1], 6)].astype(np.float32)
    counts = _backend.compose(
        acts, thresholds, np.zeros((3, 0, 37, 37), np.int32), None,
        np.zeros((6, 1, 1), np.int32), np.zeros((6, 1, 1), np.int8),
        _backend.ComposeCounts.zeros(6, 1, 2), device=device,
    )  # fmt: skip
    want = (up > thresholds[:, None]).sum(axis=1)
    np.testing.assert_array_equal(counts.mf_area[:, 0], want)


def test_wrapper_casts_inputs(device):
    rng = np.random.default_rng(15)
    case = random_case(rng, 2, 3, (5, 5), (11, 11), 2, 1, 6, 2, 3)
    case["concepts"] = 6
    want = run_compose(case, "cpu")
    cast = dict(
        case,
        acts=case["acts"].astype(np.float64),
        thresholds=case["thresholds"].tolist(),
        seg=case["seg"].astype(np.int64),
        image_labels=case["image_labels"].astype(np.uint16),
        formulas=case["formulas"].astype(np.int64),
        ops=case["ops"].astype(np.int32),
    )
    got = run_compose(cast, device)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


# --- bad inputs ------------------------------------------------------------------------------


def good_arrays() -> dict:
    """Direct binding arguments, all valid: N=2, U=3, 4x4 maps, K=2, 6x5 seg, L=1, C=5, B=2,
    T=3."""
    return {
        "acts": np.zeros((2, 3, 4, 4), np.float32),
        "thresholds": np.zeros(3, np.float32),
        "seg": np.zeros((2, 2, 6, 5), np.int32),
        "image_labels": np.zeros((2, 1), np.int32),
        "formulas": np.zeros((3, 2, 3), np.int32),
        "ops": np.zeros((3, 2, 3), np.int8),
        "f_concept": np.zeros((3, 2, 5), np.int64),
        "mf_concept": np.zeros((3, 2, 5), np.int64),
        "f_area": np.zeros((3, 2), np.int64),
        "mf_area": np.zeros((3, 2), np.int64),
    }


def test_good_arrays_pass(device):
    _backend.kernels(device).compose(**good_arrays())


def _set(key: str, value_fn):
    def change(arrays: dict) -> None:
        arrays[key] = value_fn(arrays[key])

    return change


def _poke(key: str, index: tuple, value):
    def change(arrays: dict) -> None:
        arrays[key][index] = value

    return change


def _formula(index: tuple, terms: list[int], ops: list[int]):
    def change(arrays: dict) -> None:
        arrays["formulas"][index] = terms
        arrays["ops"][index] = ops

    return change


def _readonly(arrays: dict) -> None:
    arrays["mf_area"].flags.writeable = False


BAD = [
    ("acts-dtype", _set("acts", lambda a: a.astype(np.float64)), "acts must be float32"),
    ("formulas-dtype", _set("formulas", lambda a: a.astype(np.int64)), "formulas must be int32"),
    ("ops-dtype", _set("ops", lambda a: a.astype(np.int32)), "ops must be int8"),
    ("counts-dtype", _set("f_concept", lambda a: a.astype(np.int32)), "must be int64"),
    ("formulas-rank", _set("formulas", lambda a: a[0]), r"formulas must have shape \[U, B, T\]"),
    ("acts-noncontig", _set("acts", lambda a: np.asfortranarray(a)), "C-contiguous"),
    ("thresholds-U", _set("thresholds", lambda a: a[:2]), "thresholds .* U = 2, expected 3"),
    ("seg-N", _set("seg", lambda a: a[:1]), "seg .* N = 1, expected 2"),
    ("labels-N", _set("image_labels", lambda a: np.zeros((3, 1), np.int32)), "N = 3"),
    ("formulas-U", _set("formulas", lambda a: a[:2]), "formulas .* U = 2, expected 3"),
    (
        "ops-shape",
        _set("ops", lambda a: np.zeros((3, 1, 3), np.int8)),
        "formulas and ops must have the same shape",
    ),
    ("f_concept-B", _set("f_concept", lambda a: np.zeros((3, 1, 5), np.int64)), "B = 1"),
    (
        "mf_concept-C",
        _set("mf_concept", lambda a: np.zeros((3, 2, 4), np.int64)),
        "f_concept and mf_concept",
    ),
    ("f_area-B", _set("f_area", lambda a: np.zeros((3, 1), np.int64)), r"f_area .* B = 1"),
    ("mf_area-shape", _set("mf_area", lambda a: a[:2]), "f_area and mf_area"),
    (
        "formula-id-too-large",
        _poke("formulas", (2, 1, 0), 5),
        r"formulas\[2, 1, 0\] = 5 is not a concept id .* \[0, 5\)",
    ),
    ("formula-id-negative", _poke("formulas", (0, 0, 2), -1), r"formulas\[0, 0, 2\] = -1"),
    ("seg-too-large", _poke("seg", (1, 1, 2, 3), 7), r"seg\[1, 1, 2, 3\] = 7"),
    ("label-negative", _poke("image_labels", (1, 0), -2), r"image_labels\[1, 0\] = -2"),
    (
        "bad-op",
        _formula((1, 1), [3, 2, 4], [0, 2, 7]),
        r"ops\[1, 1, 2\] = 7 is not an operator \(1 = AND, 2 = OR, 3 = AND NOT\)",
    ),
    ("zero-op", _formula((0, 1), [3, 2, 0], [0, 0, 1]), r"ops\[0, 1, 1\] = 0 is not an operator"),
    ("acts-nan", _poke("acts", (1, 2, 3, 0), np.nan), r"acts contains NaN at \[1, 2, 3, 0\]"),
    ("thresholds-nan", _poke("thresholds", (1,), np.nan), r"thresholds\[1\] is NaN"),
    ("readonly-counts", _readonly, "mf_area is read-only"),
    ("no-terms", _set("formulas", lambda a: np.zeros((3, 2, 0), np.int32)), r"T \(formulas"),
    ("no-concepts", _set("f_concept", lambda a: np.zeros((3, 2, 0), np.int64)), r"C \(f_concept"),
    ("seg-Sh-zero", _set("seg", lambda a: np.zeros((2, 2, 0, 5), np.int32)), "seg Sh"),
]


@pytest.mark.parametrize(("change", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_binding_rejects_bad_inputs(change, match, device):
    arrays = good_arrays()
    change(arrays)
    with pytest.raises(ValueError, match=match):
        _backend.kernels(device).compose(**arrays)


def test_ops_after_the_end_are_not_read(device):
    arrays = good_arrays()
    arrays["formulas"][1, 0] = [3, 0, 4]  # ends after one term: ops[1, 0, 1:] are not read
    arrays["ops"][1, 0] = [99, -7, 42]
    arrays["formulas"][2, 1] = [0, 2, 3]  # the empty formula: nothing after term 0 is read
    arrays["ops"][2, 1] = [5, 5, 5]
    _backend.kernels(device).compose(**arrays)


def test_wrapper_rejects_ops_beyond_int8():
    arrays = good_arrays()
    ops = arrays["ops"].astype(np.int32)
    ops[0, 0, 1] = 257  # would wrap to 1 in a plain cast
    with pytest.raises(ValueError, match="ops holds values outside int8"):
        _backend.compose(
            arrays["acts"], arrays["thresholds"], arrays["seg"], arrays["image_labels"],
            arrays["formulas"], ops, _backend.ComposeCounts.zeros(3, 2, 5), device="cpu",
        )  # fmt: skip
