// CUDA implementation of the unpool contract (see pyanalyzer/unpool.h).
//
// A gather, not a scatter: one thread per output pixel walks the pool outputs whose window can
// cover that pixel, in row-major order of pool outputs, and adds the values whose switch names
// the pixel. No atomics, so the result is deterministic and sums in the same order as the CPU
// scatter: the two are bitwise equal.
#include "pyanalyzer/unpool.h"

#include "common.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace pyanalyzer {
namespace cuda {
namespace {

using detail::check;
using detail::DeviceBuffer;
using detail::DeviceGuard;

// Index is int32_t when every flat index fits (integer division is much cheaper), else int64_t.
template <typename Index>
__global__ void unpool_gather(const float* __restrict__ values,
                              const int64_t* __restrict__ switches, Index total, Index out_h,
                              Index out_w, Index pooled_h, Index pooled_w, PoolGeometry geom,
                              float* __restrict__ out) {
  const Index kh = static_cast<Index>(geom.kernel_h), kw = static_cast<Index>(geom.kernel_w);
  const Index sh = static_cast<Index>(geom.stride_h), sw = static_cast<Index>(geom.stride_w);
  const Index ph = static_cast<Index>(geom.pad_h), pw = static_cast<Index>(geom.pad_w);
  const Index dh = static_cast<Index>(geom.dilation_h), dw = static_cast<Index>(geom.dilation_w);
  const Index step = static_cast<Index>(gridDim.x) * static_cast<Index>(blockDim.x);
  for (Index idx = static_cast<Index>(blockIdx.x) * static_cast<Index>(blockDim.x) + threadIdx.x;
       idx < total; idx += step) {
    const Index x = idx % out_w;
    const Index y = (idx / out_w) % out_h;
    const Index plane = idx / (out_w * out_h);
    const int64_t target = static_cast<int64_t>(y) * out_w + x;
    const float* v = values + static_cast<int64_t>(plane) * pooled_h * pooled_w;
    const int64_t* s = switches + static_cast<int64_t>(plane) * pooled_h * pooled_w;
    float acc = 0.0f;
    // Tap i of pool row oh covers y = oh * sh - ph + i * dh; larger i means smaller oh, so
    // walking i downwards visits pool rows (and, below, columns) in increasing order.
    for (Index i = kh - 1; i >= 0; --i) {
      const Index ty = y + ph - i * dh;
      if (ty < 0 || ty % sh != 0) continue;
      const Index oh = ty / sh;
      if (oh >= pooled_h) continue;
      for (Index j = kw - 1; j >= 0; --j) {
        const Index tx = x + pw - j * dw;
        if (tx < 0 || tx % sw != 0) continue;
        const Index ow = tx / sw;
        if (ow >= pooled_w) continue;
        const Index o = oh * pooled_w + ow;
        // __fadd_rn: a plain round-to-nearest add, never contracted, as on the CPU.
        if (s[o] == target) acc = __fadd_rn(acc, v[o]);
      }
    }
    out[idx] = acc;
  }
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // reset the last-error state so later calls start clean
    return 0;
  }
  return count;
}

std::string device_name(int index) {
  const int count = device_count();
  if (index < 0 || index >= count) {
    throw std::out_of_range("CUDA device index " + std::to_string(index) +
                            " out of range: " + std::to_string(count) + " device(s) visible");
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  return std::string(prop.name);
}

void unpool(const float* values, const int64_t* switches, const UnpoolShape& shape,
            const PoolGeometry& geometry, float* out, int device) {
  const int64_t pooled = shape.planes * shape.pooled_h * shape.pooled_w;
  const int64_t total = shape.planes * shape.out_h * shape.out_w;
  if (total == 0) return;

  DeviceGuard guard(device);
  DeviceBuffer<float> d_values(pooled);
  DeviceBuffer<int64_t> d_switches(pooled);
  DeviceBuffer<float> d_out(total);
  if (pooled > 0) {
    check(cudaMemcpy(d_values.get(), values, sizeof(float) * pooled, cudaMemcpyHostToDevice),
          "cudaMemcpy (values)");
    check(cudaMemcpy(d_switches.get(), switches, sizeof(int64_t) * pooled,
                     cudaMemcpyHostToDevice),
          "cudaMemcpy (switches)");
  }

  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  // int32 indexing needs every flat index (plus one grid stride past the end) and every
  // intermediate coordinate of the window arithmetic to fit.
  const int64_t reach_h = shape.out_h + geometry.pad_h + (geometry.kernel_h - 1) * geometry.dilation_h;
  const int64_t reach_w = shape.out_w + geometry.pad_w + (geometry.kernel_w - 1) * geometry.dilation_w;
  const int64_t limit = std::numeric_limits<int32_t>::max() / 2;
  const bool small = total + blocks * kThreads < limit && pooled < limit && reach_h < limit &&
                     reach_w < limit && geometry.stride_h < limit && geometry.stride_w < limit;
  if (small) {
    unpool_gather<int32_t><<<static_cast<unsigned>(blocks), kThreads>>>(
        d_values.get(), d_switches.get(), static_cast<int32_t>(total),
        static_cast<int32_t>(shape.out_h), static_cast<int32_t>(shape.out_w),
        static_cast<int32_t>(shape.pooled_h), static_cast<int32_t>(shape.pooled_w), geometry,
        d_out.get());
  } else {
    unpool_gather<int64_t><<<static_cast<unsigned>(blocks), kThreads>>>(
        d_values.get(), d_switches.get(), total, shape.out_h, shape.out_w, shape.pooled_h,
        shape.pooled_w, geometry, d_out.get());
  }
  check(cudaGetLastError(), "unpool_gather launch");
  check(cudaMemcpy(out, d_out.get(), sizeof(float) * total, cudaMemcpyDeviceToHost),
        "cudaMemcpy (out)");
}

}  // namespace cuda
}  // namespace pyanalyzer
