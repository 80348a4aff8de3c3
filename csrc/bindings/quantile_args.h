// Argument checks for the top-k kernels, shared by the CPU (_core) and CUDA (_core_cuda)
// modules so both accept and reject exactly the same inputs.
#pragma once

#include <cstdint>
#include <string>

#include "checks.h"
#include "pyanalyzer/quantile.h"

namespace pyanalyzer::bindings {

inline void require_state(const py::array& state, const char* func, const char* name) {
  require_array<float>(state, func, name, 2, "[U, k]");
  require_at_least(state.shape(1), 1, func, std::string(name) + " k (shape[1])");
  int64_t bad = -1;
  {
    const auto* p = static_cast<const float*>(state.data());
    const int64_t units = state.shape(0), k = state.shape(1);
    py::gil_scoped_release release;
    bad = find_invalid_state_row(p, units, k);
  }
  if (bad >= 0) {
    throw py::value_error(std::string(func) + ": " + name + " row " + std::to_string(bad) +
                          " is not a top-k state (NaN, or not sorted descending); start from " +
                          "a state filled with -inf");
  }
}

// Throws ValueError naming [n, u, y, x] when the float32 array [N, U, h, w] holds a NaN.
inline void require_no_nan_4d(const py::array& a, const char* func, const char* name) {
  const int64_t units = a.shape(1), h = a.shape(2), w = a.shape(3), hw = h * w;
  const auto* p = static_cast<const float*>(a.data());
  const int64_t size = a.shape(0) * units * hw;
  int64_t nan_at = -1;
  {
    py::gil_scoped_release release;
    nan_at = find_nan(p, size);
  }
  if (nan_at >= 0) {
    throw py::value_error(std::string(func) + ": " + name + " contains NaN at [" +
                          std::to_string(nan_at / (units * hw)) + ", " +
                          std::to_string((nan_at / hw) % units) + ", " +
                          std::to_string((nan_at / w) % h) + ", " + std::to_string(nan_at % w) +
                          "]");
  }
}

// Throws ValueError naming the index when the float32 vector [n] holds a NaN.
inline void require_no_nan_1d(const py::array& a, const char* func, const char* name) {
  const auto* p = static_cast<const float*>(a.data());
  int64_t nan_at = -1;
  {
    py::gil_scoped_release release;
    nan_at = find_nan(p, a.shape(0));
  }
  if (nan_at >= 0) {
    throw py::value_error(std::string(func) + ": " + name + "[" + std::to_string(nan_at) +
                          "] is NaN");
  }
}

// Checks state [U, k] and batch [N, U, h, w] for topk_merge.
inline void check_topk_merge_args(const py::array& state, const py::array& batch) {
  constexpr const char* f = "topk_merge";
  require_state(state, f, "state");
  require_array<float>(batch, f, "batch", 4, "[N, U, h, w]");
  if (batch.shape(1) != state.shape(0)) {
    throw py::value_error(std::string(f) + ": batch [N, U, h, w] has U = " +
                          std::to_string(batch.shape(1)) + " units but state [U, k] has U = " +
                          std::to_string(state.shape(0)));
  }
  require_no_nan_4d(batch, f, "batch");
}

// Checks a, b [U, k] for topk_merge_states.
inline void check_topk_merge_states_args(const py::array& a, const py::array& b) {
  constexpr const char* f = "topk_merge_states";
  require_state(a, f, "a");
  require_state(b, f, "b");
  require_same_shape(a, "a", b, "b", f, "[U, k]");
}

}  // namespace pyanalyzer::bindings
