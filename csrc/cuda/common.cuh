// Host-side helpers shared by the CUDA kernels' translation units: error checks, a device
// guard and RAII device buffers. Internal to csrc/cuda (not part of the public headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyanalyzer {
namespace cuda {
namespace detail {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

// Selects a device for the lifetime of the guard and restores the previous one afterwards, so
// callers (torch, other libraries) keep their current device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Device allocation freed on scope exit, also when a later CUDA call throws.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t count) {
    if (count > 0) {
      check(cudaMalloc(reinterpret_cast<void**>(&ptr_), sizeof(T) * count), "cudaMalloc");
    }
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
};

// Host -> device copy of `count` elements; a no-op for count == 0.
template <typename T>
void upload(T* device_ptr, const T* host_ptr, int64_t count, const char* what) {
  if (count > 0) {
    check(cudaMemcpy(device_ptr, host_ptr, sizeof(T) * count, cudaMemcpyHostToDevice), what);
  }
}

// Device -> host copy of `count` elements; a no-op for count == 0.
template <typename T>
void download(T* host_ptr, const T* device_ptr, int64_t count, const char* what) {
  if (count > 0) {
    check(cudaMemcpy(host_ptr, device_ptr, sizeof(T) * count, cudaMemcpyDeviceToHost), what);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace pyanalyzer
