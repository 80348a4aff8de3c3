// Exact upper quantiles by mergeable top-k selection.
//
// A state [U, k] float32 holds, per unit, the k largest values seen so far, sorted descending
// and padded with -inf while fewer than k have been seen. Merging a batch or another state
// keeps the k largest of the union, so batches and shards combine exactly in any order (the
// result is a multiset; equal values are indistinguishable). Zeros are stored as +0.0f (a -0.0f
// input is kept as +0.0f), so that a state, a descending row of canonical floats, has exactly one
// bit pattern: the CPU and CUDA results are bitwise equal. The q-th upper quantile of a unit
// over T values is then read off its state when k >= ceil((1 - q) * T).
#pragma once

#include <cstdint>

namespace pyanalyzer {

// Flat index of the first NaN in `data` (n floats), or -1. OpenMP-parallel.
int64_t find_nan(const float* data, int64_t n);

// Index u of the first row of `state` [units, k] that contains NaN or is not sorted
// descending, or -1 when every row is a valid state.
int64_t find_invalid_state_row(const float* state, int64_t units, int64_t k);

// out[u] = the k largest of state[u] and batch[:, u, :, :], sorted descending, padded with
// -inf. state [units, k]; batch [n, units, hw] (hw = h * w); out [units, k], may not alias.
// The state must be valid and the batch free of NaN. OpenMP over units.
void topk_merge(const float* state, const float* batch, int64_t units, int64_t k, int64_t n,
                int64_t hw, float* out);

// out[u] = the k largest of a[u] and b[u], sorted descending. a, b, out [units, k].
void topk_merge_states(const float* a, const float* b, int64_t units, int64_t k, float* out);

// out[i] = the largest of the hw values of map i, for maps [count, hw] free of NaN (the
// dissection ranks its top images by these peaks; its maps passed topk_merge's check). A
// maximum does not depend on the order it is taken in, so the result equals numpy's max up to
// the sign of a zero peak; hw = 0 gives -inf. OpenMP over maps.
void map_peaks(const float* maps, int64_t count, int64_t hw, float* out);

namespace cuda {

// Same contracts on device `device` with HOST pointers (inputs validated by the caller): the
// state row and the unit's batch values form one segment per unit, sorted descending by CUB's
// segmented radix sort; the first k are kept. Bitwise equal to the CPU. Throws
// std::runtime_error on any CUDA error.
void topk_merge(const float* state, const float* batch, int64_t units, int64_t k, int64_t n,
                int64_t hw, float* out, int device);
void topk_merge_states(const float* a, const float* b, int64_t units, int64_t k, float* out,
                       int device);

// topk_merge with `batch` a DEVICE pointer of device `device` (C-contiguous float32
// [n, units, hw], validated by the caller: no NaN); state and out are host pointers. The batch
// is read where it is, never copied; bitwise the CPU's result.
void topk_merge_from_device(const float* state, const float* batch, int64_t units, int64_t k,
                            int64_t n, int64_t hw, float* out, int device);

}  // namespace cuda

}  // namespace pyanalyzer
