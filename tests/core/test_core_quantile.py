"""Mergeable top-k against a plain numpy reference (np.sort over the concatenation)."""

from __future__ import annotations

import numpy as np
import pytest

from pyanalyzer import _backend


def reference(state: np.ndarray, *batches: np.ndarray) -> np.ndarray:
    """The k largest per unit of the state and all batches, descending, -inf padded."""
    units, k = state.shape
    out = np.full((units, k), -np.inf, dtype=np.float32)
    for u in range(units):
        seen = np.concatenate([state[u]] + [b[:, u].ravel() for b in batches])
        top = np.sort(seen)[::-1][:k]
        out[u, : top.size] = top
    return out


def random_batches(rng: np.random.Generator, count: int, units: int, hw=(5, 4)) -> list:
    return [
        rng.standard_normal((int(rng.integers(1, 5)), units, *hw), dtype=np.float32)
        for _ in range(count)
    ]


@pytest.mark.parametrize("k", [1, 7, 50, 300])
def test_one_shot_matches_numpy(k, device):
    rng = np.random.default_rng(7)
    batch = rng.standard_normal((6, 11, 6, 5), dtype=np.float32)
    got = _backend.topk_merge(_backend.topk_empty(11, k), batch, device=device)
    np.testing.assert_array_equal(got, reference(_backend.topk_empty(11, k), batch))


def test_incremental_equals_one_shot(device):
    rng = np.random.default_rng(11)
    batches = random_batches(rng, 8, units=9)
    state = _backend.topk_empty(9, 40)
    for batch in batches:
        state = _backend.topk_merge(state, batch, device=device)
    whole = _backend.topk_merge(_backend.topk_empty(9, 40), np.concatenate(batches))
    np.testing.assert_array_equal(state, whole)
    np.testing.assert_array_equal(state, reference(_backend.topk_empty(9, 40), *batches))


def test_merge_states_of_shards_equals_whole(device):
    rng = np.random.default_rng(12)
    batches = random_batches(rng, 6, units=5)
    shard_a, shard_b = _backend.topk_empty(5, 25), _backend.topk_empty(5, 25)
    for batch in batches[:2]:
        shard_a = _backend.topk_merge(shard_a, batch, device=device)
    for batch in batches[2:]:
        shard_b = _backend.topk_merge(shard_b, batch, device=device)
    merged = _backend.topk_merge_states(shard_a, shard_b, device=device)
    whole = reference(_backend.topk_empty(5, 25), *batches)
    np.testing.assert_array_equal(merged, whole)
    np.testing.assert_array_equal(
        _backend.topk_merge_states(shard_b, shard_a, device=device), whole
    )


def test_fewer_values_than_k_pads_with_minus_inf(device):
    batch = np.arange(2 * 3 * 2 * 1, dtype=np.float32).reshape(2, 3, 2, 1)
    got = _backend.topk_merge(_backend.topk_empty(3, 10), batch, device=device)
    assert np.all(np.isneginf(got[:, 4:]))
    np.testing.assert_array_equal(got[0, :4], [7, 6, 1, 0])
    np.testing.assert_array_equal(got[2, :4], [11, 10, 5, 4])


def test_ties_and_infinities(device):
    rng = np.random.default_rng(13)
    batch = rng.integers(-3, 4, size=(4, 6, 3, 3)).astype(np.float32)
    batch[0, 0, 0, 0] = np.inf
    batch[1, 1, 0, 0] = -np.inf
    state = _backend.topk_merge(_backend.topk_empty(6, 12), batch, device=device)
    np.testing.assert_array_equal(state, reference(_backend.topk_empty(6, 12), batch))
    again = _backend.topk_merge(state, batch, device=device)
    np.testing.assert_array_equal(again, reference(_backend.topk_empty(6, 12), batch, batch))


def test_larger_layer(device):
    rng = np.random.default_rng(14)
    batches = [rng.standard_normal((8, 64, 13, 13), dtype=np.float32) for _ in range(3)]
    state = _backend.topk_empty(64, 100)
    for batch in batches:
        state = _backend.topk_merge(state, batch, device=device)
    np.testing.assert_array_equal(state, reference(_backend.topk_empty(64, 100), *batches))


# --- bad inputs ------------------------------------------------------------------------------


def test_nan_in_batch_raises(device):
    batch = np.zeros((2, 3, 2, 2), dtype=np.float32)
    batch[1, 2, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN at \[1, 2, 0, 1\]"):
        _backend.topk_merge(_backend.topk_empty(3, 4), batch, device=device)


def test_invalid_state_raises(device):
    state = _backend.topk_empty(3, 4)
    state[1, :2] = [1.0, 2.0]  # ascending: not a state
    batch = np.zeros((1, 3, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="state row 1 is not a top-k state"):
        _backend.topk_merge(state, batch, device=device)
    with pytest.raises(ValueError, match="b row 1 is not a top-k state"):
        _backend.topk_merge_states(_backend.topk_empty(3, 4), state, device=device)


@pytest.mark.parametrize(
    ("state", "batch", "match"),
    [
        (np.full((3, 4), -np.inf), np.zeros((1, 3, 2, 2), np.float32), "state must be float32"),
        (
            _backend.topk_empty(3, 4),
            np.zeros((1, 3, 2, 2), np.float64),
            "batch must be float32",
        ),
        (_backend.topk_empty(3, 4), np.zeros((3, 2, 2), np.float32), r"\[N, U, h, w\]"),
        (np.full((3,), -np.inf, np.float32), np.zeros((1, 3, 2, 2), np.float32), r"\[U, k\]"),
        (_backend.topk_empty(3, 4), np.zeros((1, 4, 2, 2), np.float32), "U = 4 units"),
        (_backend.topk_empty(3, 0), np.zeros((1, 3, 2, 2), np.float32), "k"),
    ],
    ids=["state-dtype", "batch-dtype", "batch-rank", "state-rank", "units", "k0"],
)
def test_binding_rejects_bad_inputs(state, batch, match, device):
    with pytest.raises(ValueError, match=match):
        _backend.kernels(device).topk_merge(state, batch)


def test_merge_states_shape_mismatch(device):
    with pytest.raises(ValueError, match="same shape"):
        _backend.topk_merge_states(_backend.topk_empty(3, 4), _backend.topk_empty(3, 5))


def test_wrapper_rejects_integer_state():
    with pytest.raises(ValueError, match="state must have a float32-compatible dtype"):
        _backend.topk_merge(np.zeros((3, 4), np.int64), np.zeros((1, 3, 2, 2), np.float32))


# --- zeros, and CUDA against CPU -------------------------------------------------------------


def test_negative_zero_is_stored_as_positive_zero(device):
    """-0.0 and +0.0 are one value to the quantile; the state keeps +0.0 so that it has a
    single bit pattern (and CPU and CUDA states are bitwise equal)."""
    batch = np.array([-0.0, 0.0, -0.0, -1.0, 2.0, -0.0], np.float32).reshape(1, 1, 2, 3)
    state = _backend.topk_merge(_backend.topk_empty(1, 5), batch, device=device)
    np.testing.assert_array_equal(
        state.view(np.uint32), np.array([[2, 0, 0, 0, 0]], np.float32).view(np.uint32)
    )
    negated = np.where(state == 0, np.float32(-0.0), state)  # still descending
    merged = _backend.topk_merge_states(state, negated, device=device)
    assert not np.signbit(merged[merged == 0]).any()


def test_cuda_topk_bitwise_equals_cpu():
    """A layer of 512 units, batches of 256 images of 7x7 values, k for an exact 99.5% quantile
    over ~3 million values per unit, with ties and signed zeros."""
    if _backend.info()["cuda_devices"] == 0:
        pytest.skip("no CUDA device visible (or pyanalyzer._core_cuda not built)")
    rng = np.random.default_rng(15)
    units, k = 512, 15_510
    cpu_state = gpu_state = _backend.topk_empty(units, k)
    for i in range(3):
        batch = rng.standard_normal((256, units, 7, 7), dtype=np.float32)
        if i == 1:  # ties and zeros of both signs
            batch = np.round(batch * 4) / 4
            batch[batch == 0] *= -1
        cpu_state = _backend.topk_merge(cpu_state, batch, device="cpu")
        gpu_state = _backend.topk_merge(gpu_state, batch, device="cuda")
        np.testing.assert_array_equal(gpu_state.view(np.uint32), cpu_state.view(np.uint32))
    other = _backend.topk_merge(_backend.topk_empty(units, k), batch[:100] + 0.5, device="cpu")
    np.testing.assert_array_equal(
        _backend.topk_merge_states(gpu_state, other, device="cuda").view(np.uint32),
        _backend.topk_merge_states(cpu_state, other, device="cpu").view(np.uint32),
    )


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 4, 1, 3), (64, 130, 8, 8), (1, 2, 0, 4)])
def test_map_peaks_equals_numpy_max(shape):
    """The peak of every map against numpy (map sizes below, at and above the kernel's stride
    of four, and an empty map, whose peak is -inf), with infinities in some maps."""
    rng = np.random.default_rng(sum(shape))
    acts = rng.standard_normal(shape).astype(np.float32)
    if acts.size:
        acts.flat[:: max(1, acts.size // 5)] = np.inf
        acts.flat[1 :: max(1, acts.size // 3)] = -np.inf
    got = _backend.map_peaks(acts)
    n, u = shape[:2]
    want = acts.reshape(n, u, -1).max(axis=2) if acts.size else np.full((n, u), -np.inf, np.float32)
    assert got.dtype == np.float32 and got.shape == (n, u)
    np.testing.assert_array_equal(got, want)


def test_map_peaks_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"acts must have shape \[N, U, h, w\]"):
        _backend.map_peaks(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="acts must have a float32-compatible dtype"):
        _backend.map_peaks(np.zeros((1, 1, 2, 2), np.complex64))
