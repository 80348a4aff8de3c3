// CUDA implementation of the unpool contract (see pyanalyzer/unpool.h).
//
// Two entries share one launch of the gather kernel (launch_gather): `unpool` takes host
// arrays (copies in, gathers, copies out, on the legacy default stream); `unpool_device`
// takes device pointers (torch tensors' data_ptr()) and only queues the gather on the
// caller's stream. `find_invalid_switch_device` is the switch check of find_invalid_switch,
// run on the device, for the second.
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

// One axis of the switch check: whether `pos` (in [0, size)) is tap i < kernel of pool output
// `o`, i.e. pos = o * stride - pad + i * dilation. In uint64 with saturation, as the CPU's
// clip_taps, so that absurd geometry (huge stride or padding) cannot overflow: such windows
// simply hold no tap.
__device__ bool on_tap(int64_t pos, int64_t o, int64_t stride, int64_t pad, int64_t kernel,
                       int64_t dilation) {
  const uint64_t t = static_cast<uint64_t>(pos) + static_cast<uint64_t>(pad);  // both < 2^63
  const uint64_t uo = static_cast<uint64_t>(o), us = static_cast<uint64_t>(stride);
  const uint64_t a = (uo != 0 && us > ~uint64_t{0} / uo) ? ~uint64_t{0} : uo * us;
  if (t < a) return false;
  const uint64_t diff = t - a, d = static_cast<uint64_t>(dilation);
  return diff % d == 0 && diff / d < static_cast<uint64_t>(kernel);
}

// find_invalid_switch on the device: every switch out of [0, H*W) or not on a tap of its own
// window (rows and columns) lowers *first_bad to its flat index; the minimum does not depend
// on the launch geometry, as the CPU's answer does not depend on the thread count.
__global__ void first_invalid_switch(const int64_t* __restrict__ switches, int64_t total,
                                     int64_t pooled_h, int64_t pooled_w, int64_t out_h,
                                     int64_t out_w, PoolGeometry g,
                                     unsigned long long* __restrict__ first_bad) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += step) {
    const int64_t s = switches[idx];
    const int64_t ow = idx % pooled_w, oh = (idx / pooled_w) % pooled_h;
    // out_h * out_w is the size of a plane of the caller's output: it fits.
    bool ok = s >= 0 && s < out_h * out_w;
    if (ok) {
      ok = on_tap(s / out_w, oh, g.stride_h, g.pad_h, g.kernel_h, g.dilation_h) &&
           on_tap(s % out_w, ow, g.stride_w, g.pad_w, g.kernel_w, g.dilation_w);
    }
    if (!ok) atomicMin(first_bad, static_cast<unsigned long long>(idx));
  }
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Stream-ordered scratch memory (cudaMallocAsync), or plain cudaMalloc where the device has
// no memory pools; freed on scope exit, also when a later CUDA call throws.
template <typename T>
class StreamBuffer {
 public:
  StreamBuffer(int64_t count, cudaStream_t stream) : stream_(stream) {
    const cudaError_t status =
        cudaMallocAsync(reinterpret_cast<void**>(&ptr_), sizeof(T) * count, stream);
    if (status == cudaErrorNotSupported) {
      cudaGetLastError();
      pooled_ = false;
      check(cudaMalloc(reinterpret_cast<void**>(&ptr_), sizeof(T) * count), "cudaMalloc");
    } else {
      check(status, "cudaMallocAsync");
    }
  }
  ~StreamBuffer() {
    if (pooled_) {
      cudaFreeAsync(ptr_, stream_);
    } else {
      cudaFree(ptr_);
    }
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool pooled_ = true;
};

// The one launch of the gather, for the host-array and the device-pointer paths: device
// pointers in, `out` (planes * out_h * out_w floats) overwritten, queued on `stream`.
void launch_gather(const float* values, const int64_t* switches, const UnpoolShape& shape,
                   const PoolGeometry& geometry, float* out, cudaStream_t stream) {
  const int64_t pooled = shape.planes * shape.pooled_h * shape.pooled_w;
  const int64_t total = shape.planes * shape.out_h * shape.out_w;
  if (total == 0) return;
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
    unpool_gather<int32_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        values, switches, static_cast<int32_t>(total), static_cast<int32_t>(shape.out_h),
        static_cast<int32_t>(shape.out_w), static_cast<int32_t>(shape.pooled_h),
        static_cast<int32_t>(shape.pooled_w), geometry, out);
  } else {
    unpool_gather<int64_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        values, switches, total, shape.out_h, shape.out_w, shape.pooled_h, shape.pooled_w,
        geometry, out);
  }
  check(cudaGetLastError(), "unpool_gather launch");
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
  launch_gather(d_values.get(), d_switches.get(), shape, geometry, d_out.get(), nullptr);
  check(cudaMemcpy(out, d_out.get(), sizeof(float) * total, cudaMemcpyDeviceToHost),
        "cudaMemcpy (out)");
}

void unpool_device(const float* values, const int64_t* switches, const UnpoolShape& shape,
                   const PoolGeometry& geometry, float* out, int device, std::uintptr_t stream) {
  const int64_t total = shape.planes * shape.out_h * shape.out_w;
  if (total == 0) return;
  DeviceGuard guard(device);
  launch_gather(values, switches, shape, geometry, out, as_stream(stream));
}

int64_t find_invalid_switch_device(const int64_t* switches, const UnpoolShape& shape,
                                   const PoolGeometry& geometry, int device,
                                   std::uintptr_t stream, int64_t* value) {
  const int64_t pooled = shape.planes * shape.pooled_h * shape.pooled_w;
  if (pooled == 0) return -1;
  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  StreamBuffer<unsigned long long> first_bad(1, s);
  // All bits set: the "none found" sentinel, larger than any flat index.
  check(cudaMemsetAsync(first_bad.get(), 0xFF, sizeof(unsigned long long), s),
        "cudaMemsetAsync (first bad switch)");
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((pooled + kThreads - 1) / kThreads, int64_t{1} << 20);
  first_invalid_switch<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
      switches, pooled, shape.pooled_h, shape.pooled_w, shape.out_h, shape.out_w, geometry,
      first_bad.get());
  check(cudaGetLastError(), "first_invalid_switch launch");
  unsigned long long bad = 0;
  check(cudaMemcpyAsync(&bad, first_bad.get(), sizeof bad, cudaMemcpyDeviceToHost, s),
        "cudaMemcpyAsync (first bad switch)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (switch check)");
  if (bad == ~0ULL) return -1;
  const int64_t index = static_cast<int64_t>(bad);
  if (value != nullptr) {
    check(cudaMemcpyAsync(value, switches + index, sizeof(int64_t), cudaMemcpyDeviceToHost, s),
          "cudaMemcpyAsync (bad switch)");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize (bad switch)");
  }
  return index;
}

bool is_device_pointer(const void* ptr, int device) noexcept {
  cudaPointerAttributes attrs{};
  if (cudaPointerGetAttributes(&attrs, ptr) != cudaSuccess) {
    cudaGetLastError();  // reset the last-error state so later calls start clean
    return false;
  }
  return (attrs.type == cudaMemoryTypeDevice || attrs.type == cudaMemoryTypeManaged) &&
         attrs.device == device;
}

}  // namespace cuda
}  // namespace pyanalyzer
