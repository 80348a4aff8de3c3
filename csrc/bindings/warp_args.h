// Argument checks for warp_normalize and its backward pass (see pyanalyzer/warp.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "checks.h"
#include "pyanalyzer/warp.h"

namespace pyanalyzer::bindings {

// scale, shift (when given) [C] float32; source [C] int64, a permutation of 0..C-1.
inline void check_channel_params(const char* f, const py::array& scale, const py::array* shift,
                                 const py::array& source, int64_t c) {
  require_array<float>(scale, f, "scale", 1, "[C]");
  require_array<int64_t>(source, f, "source", 1, "[C]");
  std::vector<const py::array*> per_channel{&scale, &source};
  if (shift != nullptr) {
    require_array<float>(*shift, f, "shift", 1, "[C]");
    per_channel.push_back(shift);
  }
  for (const py::array* a : per_channel) {
    if (a->shape(0) != c) {
      throw py::value_error(std::string(f) + ": scale, shift and source must have C = " +
                            std::to_string(c) + " entries, got shape " + shape_str(*a));
    }
  }
  const auto* s = static_cast<const int64_t*>(source.data());
  std::vector<bool> seen(static_cast<size_t>(c), false);
  for (int64_t k = 0; k < c; ++k) {
    if (s[k] < 0 || s[k] >= c || seen[static_cast<size_t>(s[k])]) {
      throw py::value_error(std::string(f) + ": source must be a permutation of 0.." +
                            std::to_string(c - 1));
    }
    seen[static_cast<size_t>(s[k])] = true;
  }
}

// theta [N, 2, 3] finite, and the per-channel parameters.
inline void check_warp_params(const char* f, const py::array& theta, const py::array& scale,
                              const py::array* shift, const py::array& source, int64_t n,
                              int64_t c) {
  require_array<double>(theta, f, "theta", 3, "[N, 2, 3]");
  if (theta.shape(0) != n || theta.shape(1) != 2 || theta.shape(2) != 3) {
    throw py::value_error(std::string(f) + ": theta must have shape [N, 2, 3] with N = " +
                          std::to_string(n) + ", got " + shape_str(theta));
  }
  const auto* t = static_cast<const double*>(theta.data());
  for (int64_t k = 0; k < n * 6; ++k) {
    if (!std::isfinite(t[k])) throw py::value_error(std::string(f) + ": theta is not finite");
  }
  check_channel_params(f, scale, shift, source, c);
}

inline WarpShape check_warp_args(const py::array& x, const py::array& theta,
                                 const py::array& scale, const py::array& shift,
                                 const py::array& source, double fill, int64_t out_h,
                                 int64_t out_w) {
  constexpr const char* f = "warp_normalize";
  require_array<float>(x, f, "x", 4, "[N, C, H, W]");
  const int64_t n = x.shape(0), c = x.shape(1);
  check_warp_params(f, theta, scale, &shift, source, n, c);
  require_at_least(out_h, 1, f, "out_h");
  require_at_least(out_w, 1, f, "out_w");
  if (!std::isfinite(fill)) throw py::value_error(std::string(f) + ": fill is not finite");
  return WarpShape{n, c, x.shape(2), x.shape(3), out_h, out_w};
}

inline WarpShape check_warp_backward_args(const py::array& grad_out, const py::array& theta,
                                          const py::array& scale, const py::array& source,
                                          int64_t in_h, int64_t in_w) {
  constexpr const char* f = "warp_normalize_backward";
  require_array<float>(grad_out, f, "grad_out", 4, "[N, Ho, Wo, C]");
  const int64_t n = grad_out.shape(0), c = grad_out.shape(3);
  check_warp_params(f, theta, scale, nullptr, source, n, c);
  require_at_least(in_h, 1, f, "in_h");
  require_at_least(in_w, 1, f, "in_w");
  return WarpShape{n, c, in_h, in_w, grad_out.shape(1), grad_out.shape(2)};
}

}  // namespace pyanalyzer::bindings
