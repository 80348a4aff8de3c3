// CUDA implementation of the mergeable top-k contract (see pyanalyzer/quantile.h).
//
// Per unit, the state row and all of the unit's batch values are gathered into one segment
// (zeros made +0.0f, as the CPU does), the segments are sorted descending by CUB's segmented
// radix sort, and the first k of each segment are the new state. The k largest of a multiset is
// one multiset, and a descending row of canonical floats (no NaN, no -0.0f) has one bit
// pattern: the result is bitwise the CPU's. Units are processed in chunks so that the sort
// buffers stay bounded whatever the batch size.
#include "pyanalyzer/quantile.h"

#include <cub/device/device_segmented_sort.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "common.cuh"

namespace pyanalyzer {
namespace cuda {
namespace {

using detail::check;
using detail::DeviceBuffer;
using detail::DeviceGuard;
using detail::upload;

// Largest number of keys sorted at once (two float buffers of this size, plus CUB's scratch).
constexpr int64_t kMaxChunkKeys = int64_t{1} << 27;

// keys[c, :] = [state[u0 + c, 0:k] | batch[:, u0 + c, :]] + 0.0f for the chunk's units c.
// batch is [n, units, hw]; each segment is k + n * hw long.
__global__ void gather_segments(const float* __restrict__ state, const float* __restrict__ batch,
                                int64_t u0, int64_t chunk, int64_t units, int64_t k, int64_t n,
                                int64_t hw, float* __restrict__ keys) {
  const int64_t len = k + n * hw;
  const int64_t total = chunk * len;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += step) {
    const int64_t c = idx / len, r = idx % len, u = u0 + c;
    float v;
    if (r < k) {
      v = state[u * k + r];
    } else {
      const int64_t q = r - k, i = q / hw, j = q % hw;
      v = batch[(i * units + u) * hw + j];
    }
    keys[idx] = __fadd_rn(v, 0.0f);  // -0.0f -> +0.0f: the radix sort tells the two apart
  }
}

__global__ void segment_offsets(int64_t count, int64_t len, int64_t* __restrict__ offsets) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i <= count) offsets[i] = i * len;
}

// out[u] = the k largest of state[u] and batch[:, u, :] (batch [n, units, hw]), descending.
// `batch_on_device`: `batch` is already memory of `device` (not copied); else a host pointer.
void topk_segments(const float* state, const float* batch, int64_t units, int64_t k, int64_t n,
                   int64_t hw, float* out, int device, bool batch_on_device) {
  if (units == 0 || k == 0) return;
  DeviceGuard guard(device);
  const int64_t len = k + n * hw;
  const int64_t chunk = std::clamp<int64_t>(kMaxChunkKeys / len, 1, units);

  DeviceBuffer<float> d_state(units * k), d_copy(batch_on_device ? 0 : n * units * hw);
  upload(d_state.get(), state, units * k, "cudaMemcpy (state)");
  if (!batch_on_device) upload(d_copy.get(), batch, n * units * hw, "cudaMemcpy (batch)");
  const float* d_batch = batch_on_device ? batch : d_copy.get();
  DeviceBuffer<float> d_keys(chunk * len), d_sorted(chunk * len);
  DeviceBuffer<int64_t> d_offsets(chunk + 1);
  segment_offsets<<<static_cast<unsigned>((chunk + 1 + 255) / 256), 256>>>(chunk, len,
                                                                          d_offsets.get());
  check(cudaGetLastError(), "segment_offsets launch");

  // CUB's scratch, sized for the largest chunk (and re-queried per chunk, never assumed).
  size_t temp_bytes = 0;
  check(cub::DeviceSegmentedSort::SortKeysDescending(
            nullptr, temp_bytes, d_keys.get(), d_sorted.get(), chunk * len, chunk,
            d_offsets.get(), d_offsets.get() + 1),
        "cub::DeviceSegmentedSort (scratch size)");
  auto d_temp = std::make_unique<DeviceBuffer<unsigned char>>(
      static_cast<int64_t>(std::max<size_t>(temp_bytes, 1)));

  for (int64_t u0 = 0; u0 < units; u0 += chunk) {
    const int64_t m = std::min(chunk, units - u0);
    const int64_t keys = m * len;
    const int64_t blocks = std::clamp<int64_t>((keys + 255) / 256, 1, int64_t{1} << 20);
    gather_segments<<<static_cast<unsigned>(blocks), 256>>>(d_state.get(), d_batch, u0, m,
                                                            units, k, n, hw, d_keys.get());
    check(cudaGetLastError(), "gather_segments launch");
    size_t bytes = 0;
    check(cub::DeviceSegmentedSort::SortKeysDescending(nullptr, bytes, d_keys.get(),
                                                       d_sorted.get(), keys, m, d_offsets.get(),
                                                       d_offsets.get() + 1),
          "cub::DeviceSegmentedSort (scratch size)");
    if (bytes > temp_bytes) {
      d_temp = std::make_unique<DeviceBuffer<unsigned char>>(static_cast<int64_t>(bytes));
      temp_bytes = bytes;
    }
    check(cub::DeviceSegmentedSort::SortKeysDescending(d_temp->get(), bytes, d_keys.get(),
                                                       d_sorted.get(), keys, m, d_offsets.get(),
                                                       d_offsets.get() + 1),
          "cub::DeviceSegmentedSort");
    // The first k keys of each sorted segment, straight into the host rows u0 .. u0 + m.
    check(cudaMemcpy2D(out + u0 * k, sizeof(float) * k, d_sorted.get(), sizeof(float) * len,
                       sizeof(float) * k, m, cudaMemcpyDeviceToHost),
          "cudaMemcpy2D (out)");
  }
}

}  // namespace

void topk_merge(const float* state, const float* batch, int64_t units, int64_t k, int64_t n,
                int64_t hw, float* out, int device) {
  topk_segments(state, batch, units, k, n, hw, out, device, /*batch_on_device=*/false);
}

void topk_merge_from_device(const float* state, const float* batch, int64_t units, int64_t k,
                            int64_t n, int64_t hw, float* out, int device) {
  topk_segments(state, batch, units, k, n, hw, out, device, /*batch_on_device=*/true);
}

void topk_merge_states(const float* a, const float* b, int64_t units, int64_t k, float* out,
                       int device) {
  // b [units, k] is a batch [1, units, k]: the k largest of a[u] and b[u].
  topk_segments(a, b, units, k, 1, k, out, device, /*batch_on_device=*/false);
}

}  // namespace cuda
}  // namespace pyanalyzer
