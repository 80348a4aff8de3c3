// Unpooling: scatter max-pool values back to their switches.
//
// Contract (shared by the CPU reference in csrc/cpu and the CUDA kernel in csrc/cuda):
//
//   values   [N, C, Ho, Wo]  float32, C-contiguous
//   switches [N, C, Ho, Wo]  int64,   C-contiguous; each entry is the flat position y * W + x
//                            inside its (n, c) plane of the unpooled map, exactly as
//                            torch.nn.functional.max_pool2d(..., return_indices=True) gives it
//   out      [N, C, H, W]    float32, H = out_h, W = out_w
//
// Every value is added to the pixel its switch names. With overlapping pools (3x3 stride 2,
// as in AlexNet) two pool outputs can share one switch; their values are summed, which equals
// autograd's max-pool backward. Each output pixel sums its contributions in row-major order of
// the pool outputs, starting from +0.0f, on CPU and CUDA alike, so the two are bitwise equal.
//
// Switches must lie inside their own pool window (as any matching max-pool produces them):
// the CUDA kernel is a gather that only looks at the windows covering a pixel. The CPU
// `unpool` checks every switch in the same pass as its scatter; the CUDA binding of host
// arrays runs `find_invalid_switch` (the same check, no scatter) on the host before copying
// anything, and the CUDA binding of device pointers runs `cuda::find_invalid_switch_device`
// (the same check, on the device) before its gather. All report the smallest flat index of a
// bad switch, whatever the thread count.
#pragma once

#include <cstdint>
#include <string>

namespace pyanalyzer {

// Geometry of the max-pool whose switches are being undone (torch's conventions).
struct PoolGeometry {
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
};

// Sizes of one unpool call; `planes` = N * C.
struct UnpoolShape {
  int64_t planes;
  int64_t pooled_h, pooled_w;  // Ho, Wo
  int64_t out_h, out_w;        // H, W
};

// Flat index (into values/switches) of the first switch that is out of [0, H*W) or outside
// the window of its pool output (the window's taps clipped to the plane), or -1 when all are
// valid. OpenMP-parallel; the smallest bad index is returned, so the answer does not depend
// on the thread count.
int64_t find_invalid_switch(const int64_t* switches, const UnpoolShape& shape,
                            const PoolGeometry& geometry);

// CPU reference: out (N*C*H*W floats) is overwritten. OpenMP over (n, c) planes (static
// schedule); each plane is zeroed, then each switch is checked as find_invalid_switch does and
// its value scattered, in row-major order of the pool outputs. Returns what
// find_invalid_switch would return: -1 on success; otherwise the smallest flat index of a bad
// switch, and the contents of `out` are unspecified (nothing is ever written outside it).
int64_t unpool(const float* values, const int64_t* switches, const UnpoolShape& shape,
               const PoolGeometry& geometry, float* out);

namespace cuda {

// Number of visible CUDA devices; 0 when there is none or the driver is missing. Never throws.
int device_count() noexcept;

// Name of device `index`; throws std::out_of_range for a bad index, std::runtime_error on a
// CUDA error.
std::string device_name(int index);

// Same contract as pyanalyzer::unpool, on device `device`, with HOST pointers: copies the
// inputs to the device, runs the gather kernel (one thread per output pixel, no atomics) and
// copies the result back into `out`, on the legacy default stream, and returns once `out` is
// filled. Switches must have been validated by find_invalid_switch. Throws
// std::runtime_error on any CUDA error.
void unpool(const float* values, const int64_t* switches, const UnpoolShape& shape,
            const PoolGeometry& geometry, float* out, int device);

// The same gather with DEVICE pointers: `values`, `switches` and `out` (planes * out_h * out_w
// floats, allocated by the caller, overwritten) live in device `device`'s memory. The kernel
// is queued on `stream` (a cudaStream_t as an integer; 0 is the legacy default stream) behind
// whatever that stream already holds, and the call returns without waiting: read `out` in
// that stream's order (or synchronise it). Bitwise equal to the host path and to the CPU.
// Switches must have been validated (find_invalid_switch_device). Throws std::runtime_error on
// any CUDA error.
void unpool_device(const float* values, const int64_t* switches, const UnpoolShape& shape,
                   const PoolGeometry& geometry, float* out, int device, std::uintptr_t stream);

// find_invalid_switch for DEVICE switches (device `device`), computed there on `stream`: the
// smallest flat index of a switch that is out of [0, H*W) or outside its pool window, or -1.
// Waits for `stream` (the answer is read back); when a switch is bad, its value is stored in
// `*value` for the error message. Throws std::runtime_error on any CUDA error.
int64_t find_invalid_switch_device(const int64_t* switches, const UnpoolShape& shape,
                                   const PoolGeometry& geometry, int device,
                                   std::uintptr_t stream, int64_t* value);

// Whether `ptr` is memory that device `device` can read and write as its own (device or
// managed memory of that device). Never throws: false for host memory or on any CUDA error.
bool is_device_pointer(const void* ptr, int device) noexcept;

}  // namespace cuda
}  // namespace pyanalyzer
