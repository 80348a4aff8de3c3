// Boundary checks shared by the pybind11 modules: dtype, rank, contiguity and named shapes.
// Every failure is a ValueError whose message names the argument and the expected shape.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace pyanalyzer::bindings {

namespace py = pybind11;

// Plain string concatenation, no iostreams: std::ostringstream crashed (inside
// basic_ostream::_M_insert<long>) on the GPU machine's image, where the extension's libstdc++
// and the process's disagree about the locale facets.
inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    s += (i ? ", " : "") + std::to_string(a.shape(i));
  }
  s += a.ndim() == 1 ? ",)" : ")";
  return s;
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// `dims` names the axes, e.g. "[N, C, Ho, Wo]"; its rank is `rank`.
template <typename T>
void require_array(const py::array& a, const char* func, const char* name, py::ssize_t rank,
                   const char* dims) {
  const auto want = py::dtype::of<T>();
  if (!a.dtype().equal(want)) {
    throw py::value_error(std::string(func) + ": " + name + " must be " +
                          py::str(want).cast<std::string>() + ", got " + dtype_str(a));
  }
  if (a.ndim() != rank) {
    throw py::value_error(std::string(func) + ": " + name + " must have shape " + dims +
                          " (rank " + std::to_string(rank) + "), got shape " + shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(func) + ": " + name +
                          " must be C-contiguous (use numpy.ascontiguousarray)");
  }
}

inline void require_same_shape(const py::array& a, const char* a_name, const py::array& b,
                               const char* b_name, const char* func, const char* dims) {
  bool same = a.ndim() == b.ndim();
  for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == b.shape(i);
  if (!same) {
    throw py::value_error(std::string(func) + ": " + a_name + " and " + b_name +
                          " must have the same shape " + dims + ", got " + shape_str(a) +
                          " and " + shape_str(b));
  }
}

inline void require_at_least(int64_t value, int64_t minimum, const char* func,
                             const std::string& name) {
  if (value < minimum) {
    throw py::value_error(std::string(func) + ": " + name + " must be >= " +
                          std::to_string(minimum) + ", got " + std::to_string(value));
  }
}

inline void require_pair_at_least(const std::array<int64_t, 2>& pair, int64_t minimum,
                                  const char* func, const char* name) {
  require_at_least(pair[0], minimum, func, std::string(name) + "[0]");
  require_at_least(pair[1], minimum, func, std::string(name) + "[1]");
}

}  // namespace pyanalyzer::bindings
