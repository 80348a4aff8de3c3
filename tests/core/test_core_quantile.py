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
def test_one_shot_matches_numpy(k):
    rng = np.random.default_rng(7)
    batch = rng.standard_normal((6, 11, 6, 5), dtype=np.float32)
    got = _backend.topk_merge(_backend.topk_empty(11, k), batch)
    np.testing.assert_array_equal(got, reference(_backend.topk_empty(11, k), batch))


def test_incremental_equals_one_shot():
    rng = np.random.default_rng(11)
    batches = random_batches(rng, 8, units=9)
    state = _backend.topk_empty(9, 40)
    for batch in batches:
        state = _backend.topk_merge(state, batch)
    whole = _backend.topk_merge(_backend.topk_empty(9, 40), np.concatenate(batches))
    np.testing.assert_array_equal(state, whole)
    np.testing.assert_array_equal(state, reference(_backend.topk_empty(9, 40), *batches))


def test_merge_states_of_shards_equals_whole():
    rng = np.random.default_rng(12)
    batches = random_batches(rng, 6, units=5)
    shard_a, shard_b = _backend.topk_empty(5, 25), _backend.topk_empty(5, 25)
    for batch in batches[:2]:
        shard_a = _backend.topk_merge(shard_a, batch)
    for batch in batches[2:]:
        shard_b = _backend.topk_merge(shard_b, batch)
    merged = _backend.topk_merge_states(shard_a, shard_b)
    whole = reference(_backend.topk_empty(5, 25), *batches)
    np.testing.assert_array_equal(merged, whole)
    np.testing.assert_array_equal(_backend.topk_merge_states(shard_b, shard_a), whole)


def test_fewer_values_than_k_pads_with_minus_inf():
    batch = np.arange(2 * 3 * 2 * 1, dtype=np.float32).reshape(2, 3, 2, 1)
    got = _backend.topk_merge(_backend.topk_empty(3, 10), batch)
    assert np.all(np.isneginf(got[:, 4:]))
    np.testing.assert_array_equal(got[0, :4], [7, 6, 1, 0])
    np.testing.assert_array_equal(got[2, :4], [11, 10, 5, 4])


def test_ties_and_infinities():
    rng = np.random.default_rng(13)
    batch = rng.integers(-3, 4, size=(4, 6, 3, 3)).astype(np.float32)
    batch[0, 0, 0, 0] = np.inf
    batch[1, 1, 0, 0] = -np.inf
    state = _backend.topk_merge(_backend.topk_empty(6, 12), batch)
    np.testing.assert_array_equal(state, reference(_backend.topk_empty(6, 12), batch))
    again = _backend.topk_merge(state, batch)
    np.testing.assert_array_equal(again, reference(_backend.topk_empty(6, 12), batch, batch))


def test_larger_layer():
    rng = np.random.default_rng(14)
    batches = [rng.standard_normal((8, 64, 13, 13), dtype=np.float32) for _ in range(3)]
    state = _backend.topk_empty(64, 100)
    for batch in batches:
        state = _backend.topk_merge(state, batch)
    np.testing.assert_array_equal(state, reference(_backend.topk_empty(64, 100), *batches))


# --- bad inputs ------------------------------------------------------------------------------


def test_nan_in_batch_raises():
    batch = np.zeros((2, 3, 2, 2), dtype=np.float32)
    batch[1, 2, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN at \[1, 2, 0, 1\]"):
        _backend.topk_merge(_backend.topk_empty(3, 4), batch)


def test_invalid_state_raises():
    state = _backend.topk_empty(3, 4)
    state[1, :2] = [1.0, 2.0]  # ascending: not a state
    batch = np.zeros((1, 3, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="state row 1 is not a top-k state"):
        _backend.topk_merge(state, batch)
    with pytest.raises(ValueError, match="b row 1 is not a top-k state"):
        _backend.topk_merge_states(_backend.topk_empty(3, 4), state)


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
def test_binding_rejects_bad_inputs(state, batch, match):
    with pytest.raises(ValueError, match=match):
        _backend.kernels("cpu").topk_merge(state, batch)


def test_merge_states_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        _backend.topk_merge_states(_backend.topk_empty(3, 4), _backend.topk_empty(3, 5))


def test_wrapper_rejects_integer_state():
    with pytest.raises(ValueError, match="state must have a float32-compatible dtype"):
        _backend.topk_merge(np.zeros((3, 4), np.int64), np.zeros((1, 3, 2, 2), np.float32))
