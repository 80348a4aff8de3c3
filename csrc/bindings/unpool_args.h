// Argument checks for unpool, shared by the CPU (_core) and CUDA (_core_cuda) modules so both
// accept and reject exactly the same inputs.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "checks.h"
#include "pyanalyzer/unpool.h"

namespace pyanalyzer::bindings {

using Pair = std::array<int64_t, 2>;

struct UnpoolArgs {
  UnpoolShape shape;
  PoolGeometry geometry;
  std::array<py::ssize_t, 4> out_shape;  // [N, C, H, W]
  int64_t channels = 0;                   // C, to name a bad switch's (n, c)
};

// Checks the sizes (N, C, Ho, Wo of values and switches; H, W of the output) and the
// geometry: what both the array entries and the device-pointer entry (which has no array to
// read them from) accept.
inline UnpoolArgs check_unpool_sizes(int64_t n, int64_t c, int64_t pooled_h, int64_t pooled_w,
                                     int64_t out_h, int64_t out_w, const Pair& kernel,
                                     const Pair& stride, const Pair& padding,
                                     const Pair& dilation) {
  constexpr const char* f = "unpool";
  require_at_least(out_h, 0, f, "out_h");
  require_at_least(out_w, 0, f, "out_w");
  require_pair_at_least(kernel, 1, f, "kernel");
  require_pair_at_least(stride, 1, f, "stride");
  require_pair_at_least(padding, 0, f, "padding");
  require_pair_at_least(dilation, 1, f, "dilation");

  UnpoolArgs args{};
  args.shape = UnpoolShape{n * c, pooled_h, pooled_w, out_h, out_w};
  args.geometry = PoolGeometry{kernel[0], kernel[1],  stride[0],   stride[1],
                               padding[0], padding[1], dilation[0], dilation[1]};
  args.out_shape = {static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(c),
                    static_cast<py::ssize_t>(out_h), static_cast<py::ssize_t>(out_w)};
  args.channels = c;
  return args;
}

// Checks dtypes, ranks, contiguity, shapes and geometry. The switches themselves are checked
// by the kernel pass (CPU: pyanalyzer::unpool) or by validate_switches (CUDA), and a bad one is
// reported by raise_invalid_switch.
inline UnpoolArgs check_unpool_args(const py::array& values, const py::array& switches,
                                    int64_t out_h, int64_t out_w, const Pair& kernel,
                                    const Pair& stride, const Pair& padding,
                                    const Pair& dilation) {
  constexpr const char* f = "unpool";
  require_array<float>(values, f, "values", 4, "[N, C, Ho, Wo]");
  require_array<int64_t>(switches, f, "switches", 4, "[N, C, Ho, Wo]");
  require_same_shape(values, "values", switches, "switches", f, "[N, C, Ho, Wo]");
  return check_unpool_sizes(values.shape(0), values.shape(1), values.shape(2), values.shape(3),
                            out_h, out_w, kernel, stride, padding, dilation);
}

// Throws the ValueError for the bad switch at flat index `bad`, whose value is `s` (as
// find_invalid_switch and unpool report it): out of range, or in range but outside its pool
// window.
[[noreturn]] inline void raise_invalid_switch(int64_t bad, int64_t s, const UnpoolArgs& args) {
  constexpr const char* f = "unpool";
  const int64_t out_h = args.shape.out_h, out_w = args.shape.out_w;
  const PoolGeometry& g = args.geometry;
  const int64_t ho = args.shape.pooled_h, wo = args.shape.pooled_w;
  const int64_t c_dim = args.channels;
  const int64_t ow = bad % wo, oh = (bad / wo) % ho, c = (bad / (wo * ho)) % c_dim,
                n = bad / (wo * ho * c_dim);
  const std::string where = "switches[" + std::to_string(n) + ", " + std::to_string(c) + ", " +
                            std::to_string(oh) + ", " + std::to_string(ow) + "] = " +
                            std::to_string(s);
  if (s < 0 || s >= out_h * out_w) {
    throw py::value_error(std::string(f) + ": " + where + " is out of range for an output " +
                          "plane of " + std::to_string(out_h) + "x" + std::to_string(out_w) +
                          " (valid: 0 <= switch < " + std::to_string(out_h * out_w) + ")");
  }
  throw py::value_error(
      std::string(f) + ": " + where + " (row " + std::to_string(s / out_w) + ", column " +
      std::to_string(s % out_w) + ") is not inside the window of its pool output for " +
      "kernel (" + std::to_string(g.kernel_h) + ", " + std::to_string(g.kernel_w) +
      "), stride (" + std::to_string(g.stride_h) + ", " + std::to_string(g.stride_w) +
      "), padding (" + std::to_string(g.pad_h) + ", " + std::to_string(g.pad_w) +
      "), dilation (" + std::to_string(g.dilation_h) + ", " + std::to_string(g.dilation_w) +
      "); switches must come from a max-pool with this geometry and output size");
}

// raise_invalid_switch for host switches: reads the bad one's value from the array.
[[noreturn]] inline void raise_invalid_switch(int64_t bad, const py::array& switches,
                                              const UnpoolArgs& args) {
  raise_invalid_switch(bad, static_cast<const int64_t*>(switches.data())[bad], args);
}

// Checks that every switch lies in [0, H*W) and inside its own pool window, with the GIL
// released; throws raise_invalid_switch's ValueError for the first bad one. For kernels that
// need valid switches before they run (CUDA); the CPU kernel checks in its own pass.
inline void validate_switches(const py::array& switches, const UnpoolArgs& args) {
  const auto* sw = static_cast<const int64_t*>(switches.data());
  int64_t bad = -1;
  {
    py::gil_scoped_release release;
    bad = find_invalid_switch(sw, args.shape, args.geometry);
  }
  if (bad >= 0) raise_invalid_switch(bad, switches, args);
}

}  // namespace pyanalyzer::bindings
