// Device copies of tally.h's bilinear weight tables and the upsampled value in tally.h's float
// order, shared by the CUDA tally and compose kernels (the unit's mask is the same in both).
// Internal to csrc/cuda (not part of the public headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "pyanalyzer/tally.h"

namespace pyanalyzer {
namespace cuda {
namespace detail {

// Device copies of one BilinearAxis.
struct AxisView {
  const int32_t* lo;
  const int32_t* hi;
  const float* w_lo;
  const float* w_hi;
  const int32_t* start;
};

class DeviceAxis {
 public:
  explicit DeviceAxis(const BilinearAxis& axis)
      : lo_(axis.lo.size()),
        hi_(axis.hi.size()),
        w_lo_(axis.w_lo.size()),
        w_hi_(axis.w_hi.size()),
        start_(axis.start.size()) {
    upload(lo_.get(), axis.lo.data(), axis.lo.size(), "cudaMemcpy (axis lo)");
    upload(hi_.get(), axis.hi.data(), axis.hi.size(), "cudaMemcpy (axis hi)");
    upload(w_lo_.get(), axis.w_lo.data(), axis.w_lo.size(), "cudaMemcpy (axis w_lo)");
    upload(w_hi_.get(), axis.w_hi.data(), axis.w_hi.size(), "cudaMemcpy (axis w_hi)");
    upload(start_.get(), axis.start.data(), axis.start.size(), "cudaMemcpy (axis start)");
  }
  AxisView view() const { return {lo_.get(), hi_.get(), w_lo_.get(), w_hi_.get(), start_.get()}; }

 private:
  DeviceBuffer<int32_t> lo_, hi_;
  DeviceBuffer<float> w_lo_, w_hi_;
  DeviceBuffer<int32_t> start_;
};

// The header's formula, in its order, each operation rounded on its own.
__device__ __forceinline__ float bilinear(float w_lo_y, float w_hi_y, float w_lo_x, float w_hi_x,
                                          float a00, float a01, float a10, float a11) {
  const float top = __fadd_rn(__fmul_rn(w_lo_x, a00), __fmul_rn(w_hi_x, a01));
  const float bot = __fadd_rn(__fmul_rn(w_lo_x, a10), __fmul_rn(w_hi_x, a11));
  return __fadd_rn(__fmul_rn(w_lo_y, top), __fmul_rn(w_hi_y, bot));
}

}  // namespace detail
}  // namespace cuda
}  // namespace pyanalyzer
