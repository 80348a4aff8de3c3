// pybind11 module pyanalyzer._core: the CPU reference kernels. Glue only: checks at the
// boundary, then the kernels from csrc/cpu with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cmath>
#include <cstdint>
#include <string>

#include "checks.h"
#include "pyanalyzer/quantile.h"
#include "pyanalyzer/unpool.h"
#include "unpool_args.h"

namespace py = pybind11;
using namespace pyanalyzer;
using namespace pyanalyzer::bindings;

namespace {

py::array_t<float> unpool_cpu(const py::array& values, const py::array& switches, int64_t out_h,
                              int64_t out_w, const Pair& kernel, const Pair& stride,
                              const Pair& padding, const Pair& dilation) {
  const UnpoolArgs args =
      check_unpool_args(values, switches, out_h, out_w, kernel, stride, padding, dilation);
  py::array_t<float> out(args.out_shape);
  const auto* v = static_cast<const float*>(values.data());
  const auto* s = static_cast<const int64_t*>(switches.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    unpool(v, s, args.shape, args.geometry, o);
  }
  return out;
}

void require_state(const py::array& state, const char* func, const char* name) {
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

py::array_t<float> topk_merge_cpu(const py::array& state, const py::array& batch) {
  constexpr const char* f = "topk_merge";
  require_state(state, f, "state");
  require_array<float>(batch, f, "batch", 4, "[N, U, h, w]");
  if (batch.shape(1) != state.shape(0)) {
    throw py::value_error(std::string(f) + ": batch [N, U, h, w] has U = " +
                          std::to_string(batch.shape(1)) + " units but state [U, k] has U = " +
                          std::to_string(state.shape(0)));
  }
  const int64_t units = state.shape(0), k = state.shape(1), n = batch.shape(0),
                hw = batch.shape(2) * batch.shape(3);
  const auto* st = static_cast<const float*>(state.data());
  const auto* b = static_cast<const float*>(batch.data());
  int64_t nan_at = -1;
  {
    py::gil_scoped_release release;
    nan_at = find_nan(b, n * units * hw);
  }
  if (nan_at >= 0) {
    const int64_t w = batch.shape(3), h = batch.shape(2);
    throw py::value_error(std::string(f) + ": batch contains NaN at [" +
                          std::to_string(nan_at / (units * hw)) + ", " +
                          std::to_string((nan_at / hw) % units) + ", " +
                          std::to_string((nan_at / w) % h) + ", " + std::to_string(nan_at % w) +
                          "]");
  }
  py::array_t<float> out({static_cast<py::ssize_t>(units), static_cast<py::ssize_t>(k)});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    topk_merge(st, b, units, k, n, hw, o);
  }
  return out;
}

py::array_t<float> topk_merge_states_cpu(const py::array& a, const py::array& b) {
  constexpr const char* f = "topk_merge_states";
  require_state(a, f, "a");
  require_state(b, f, "b");
  require_same_shape(a, "a", b, "b", f, "[U, k]");
  const int64_t units = a.shape(0), k = a.shape(1);
  py::array_t<float> out({static_cast<py::ssize_t>(units), static_cast<py::ssize_t>(k)});
  const auto* pa = static_cast<const float*>(a.data());
  const auto* pb = static_cast<const float*>(b.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    topk_merge_states(pa, pb, units, k, o);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyanalyzer CPU reference kernels (private: use pyanalyzer._backend).";

  m.def("has_openmp", []() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "Whether the kernels were built with OpenMP.");

  m.def("omp_max_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  }, "Threads an OpenMP region would use now (1 without OpenMP).");

  m.def("unpool", &unpool_cpu, py::arg("values"), py::arg("switches"), py::arg("out_h"),
        py::arg("out_w"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"),
        R"doc(Scatter max-pool values to their switches, summing shared switches.

Args:
    values: float32 [N, C, Ho, Wo], C-contiguous.
    switches: int64 [N, C, Ho, Wo], flat index y * out_w + x in each (n, c) plane, as
        torch's max_pool2d(return_indices=True) gives them.
    out_h, out_w: size of the unpooled map.
    kernel, stride, padding, dilation: (h, w) geometry of the max-pool.

Returns:
    float32 [N, C, out_h, out_w].

Raises:
    ValueError: wrong dtype, rank, contiguity or shape; bad geometry; a switch out of
        range or outside its pool window.
)doc");

  m.def("topk_merge", &topk_merge_cpu, py::arg("state"), py::arg("batch"),
        R"doc(Merge a batch into a top-k state.

Args:
    state: float32 [U, k], each row sorted descending, -inf padded.
    batch: float32 [N, U, h, w], no NaN.

Returns:
    float32 [U, k]: per unit, the k largest of the state and the batch, descending.
)doc");

  m.def("topk_merge_states", &topk_merge_states_cpu, py::arg("a"), py::arg("b"),
        R"doc(Merge two top-k states of the same shape [U, k] into one.)doc");
}
