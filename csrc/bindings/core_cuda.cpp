// pybind11 module pyanalyzer._core_cuda: the CUDA kernels, host numpy arrays in and out.
// The CUDA runtime is linked statically, so this imports on a machine without a GPU or driver
// and then reports device_count() == 0.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "checks.h"
#include "pyanalyzer/unpool.h"
#include "unpool_args.h"

namespace py = pybind11;
using namespace pyanalyzer;
using namespace pyanalyzer::bindings;

namespace {

void require_device(int device, const char* func) {
  const int count = cuda::device_count();
  if (device < 0 || device >= count) {
    throw py::value_error(std::string(func) + ": CUDA device " + std::to_string(device) +
                          " is not available (" + std::to_string(count) +
                          " device(s) visible)");
  }
}

py::array_t<float> unpool_cuda(const py::array& values, const py::array& switches,
                               int64_t out_h, int64_t out_w, const Pair& kernel,
                               const Pair& stride, const Pair& padding, const Pair& dilation,
                               int device) {
  const UnpoolArgs args =
      check_unpool_args(values, switches, out_h, out_w, kernel, stride, padding, dilation);
  require_device(device, "unpool");
  py::array_t<float> out(args.out_shape);
  const auto* v = static_cast<const float*>(values.data());
  const auto* s = static_cast<const int64_t*>(switches.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    cuda::unpool(v, s, args.shape, args.geometry, o, device);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core_cuda, m) {
  m.doc() = "pyanalyzer CUDA kernels (private: use pyanalyzer._backend).";

  m.def("device_count", &cuda::device_count,
        "Number of visible CUDA devices; 0 when none (never raises).");

  m.def("device_name", &cuda::device_name, py::arg("index"),
        "Name of CUDA device `index`; IndexError when out of range.");

  m.def("unpool", &unpool_cuda, py::arg("values"), py::arg("switches"), py::arg("out_h"),
        py::arg("out_w"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("device") = 0,
        R"doc(Same contract as pyanalyzer._core.unpool, run on CUDA device `device`.

Host arrays in and out (copied to the device and back). Switches are checked on the host
before the kernel runs, exactly as on the CPU; the result is bitwise equal to the CPU's.
)doc");
}
