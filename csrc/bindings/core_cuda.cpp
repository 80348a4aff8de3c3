// pybind11 module pyanalyzer._core_cuda: the CUDA kernels, host numpy arrays in and out (and,
// for unpool, the tally and the top-k merge, also device pointers in place, for torch tensors
// and onnxruntime outputs that already live on the GPU).
// The CUDA runtime is linked statically, so this imports on a machine without a GPU or driver
// and then reports device_count() == 0.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>

#include "checks.h"
#include "compose_args.h"
#include "pyanalyzer/compose.h"
#include "pyanalyzer/quantile.h"
#include "pyanalyzer/tally.h"
#include "pyanalyzer/unpool.h"
#include "quantile_args.h"
#include "tally_args.h"
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
  validate_switches(switches, args);  // the gather needs valid switches; checked on the host
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

// The product of sizes, or a ValueError naming `what` when it does not fit in int64.
int64_t checked_product(std::initializer_list<int64_t> sizes, const char* what,
                        const char* func = "unpool_device") {
  int64_t total = 1;
  for (const int64_t s : sizes) {
    if (s != 0 && total > std::numeric_limits<int64_t>::max() / s) {
      throw py::value_error(std::string(func) + ": " + what + " has too many elements");
    }
    total *= s;
  }
  return total;
}

// `ptr` must be memory of device `device` whenever `count` > 0.
void require_device_pointer(std::uintptr_t ptr, int64_t count, int device, const char* name,
                            const char* func = "unpool_device") {
  if (count == 0) return;
  if (!cuda::is_device_pointer(reinterpret_cast<const void*>(ptr), device)) {
    throw py::value_error(std::string(func) + ": " + name + " is not memory of CUDA device " +
                          std::to_string(device) +
                          " (pass the data pointer of a tensor on that device)");
  }
}

void unpool_device_cuda(std::uintptr_t values, std::uintptr_t switches, std::uintptr_t out,
                        int64_t n, int64_t c, int64_t pooled_h, int64_t pooled_w, int64_t out_h,
                        int64_t out_w, const Pair& kernel, const Pair& stride,
                        const Pair& padding, const Pair& dilation, int device,
                        std::uintptr_t stream) {
  constexpr const char* f = "unpool_device";
  require_at_least(n, 0, f, "N");
  require_at_least(c, 0, f, "C");
  require_at_least(pooled_h, 0, f, "Ho");
  require_at_least(pooled_w, 0, f, "Wo");
  const UnpoolArgs args =
      check_unpool_sizes(n, c, pooled_h, pooled_w, out_h, out_w, kernel, stride, padding,
                         dilation);
  const int64_t pooled = checked_product({n, c, pooled_h, pooled_w}, "values");
  const int64_t total = checked_product({n, c, out_h, out_w}, "out");
  require_device(device, "unpool_device");
  require_device_pointer(values, pooled, device, "values");
  require_device_pointer(switches, pooled, device, "switches");
  require_device_pointer(out, total, device, "out");
  const auto* v = reinterpret_cast<const float*>(values);
  const auto* s = reinterpret_cast<const int64_t*>(switches);
  auto* o = reinterpret_cast<float*>(out);
  int64_t bad = -1, value = 0;
  {
    // The gather needs valid switches: checked on the device, as the host path checks them
    // on the host (same rule, same first bad index).
    py::gil_scoped_release release;
    bad = cuda::find_invalid_switch_device(s, args.shape, args.geometry, device, stream, &value);
  }
  if (bad >= 0) raise_invalid_switch(bad, value, args);
  py::gil_scoped_release release;
  cuda::unpool_device(v, s, args.shape, args.geometry, o, device, stream);
}

py::array_t<float> topk_merge_cuda(const py::array& state, const py::array& batch, int device) {
  check_topk_merge_args(state, batch);
  require_device(device, "topk_merge");
  const int64_t units = state.shape(0), k = state.shape(1), n = batch.shape(0),
                hw = batch.shape(2) * batch.shape(3);
  const auto* st = static_cast<const float*>(state.data());
  const auto* b = static_cast<const float*>(batch.data());
  py::array_t<float> out({static_cast<py::ssize_t>(units), static_cast<py::ssize_t>(k)});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    cuda::topk_merge(st, b, units, k, n, hw, o, device);
  }
  return out;
}

py::array_t<float> topk_merge_states_cuda(const py::array& a, const py::array& b, int device) {
  check_topk_merge_states_args(a, b);
  require_device(device, "topk_merge_states");
  const int64_t units = a.shape(0), k = a.shape(1);
  py::array_t<float> out({static_cast<py::ssize_t>(units), static_cast<py::ssize_t>(k)});
  const auto* pa = static_cast<const float*>(a.data());
  const auto* pb = static_cast<const float*>(b.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    cuda::topk_merge_states(pa, pb, units, k, o, device);
  }
  return out;
}

void tally_cuda(const py::array& acts, const py::array& thresholds, const py::array& seg,
                const py::array& image_labels, const py::array& concept_category,
                const py::array& image_categories, py::array intersection,
                py::array unit_area_cat, py::array unit_area, py::array concept_area,
                int device) {
  const TallyArgs args =
      check_tally_args(acts, thresholds, seg, image_labels, concept_category, image_categories,
                       intersection, unit_area_cat, unit_area, concept_area);
  require_device(device, "tally");
  py::gil_scoped_release release;
  cuda::tally(args.inputs, args.shape, args.counts, device);
}

// The float32 [n, u, h, w] at device pointer `ptr`: the shape checked, the pointer checked to be
// memory of `device`, and no NaN (with `finite`: no infinity either) there; returns n*u*h*w.
int64_t require_device_maps(std::uintptr_t ptr, const std::array<int64_t, 4>& shape, int device,
                            bool finite, const char* func, const char* name) {
  const char* dims[4] = {"N", "U", "h", "w"};
  for (int i = 0; i < 4; ++i) {
    require_at_least(shape[i], 0, func, std::string(name) + " " + dims[i]);
  }
  const int64_t total = checked_product({shape[0], shape[1], shape[2], shape[3]}, name, func);
  require_device(device, func);
  require_device_pointer(ptr, total, device, name, func);
  int64_t bad = -1;
  {
    py::gil_scoped_release release;
    bad = cuda::find_nan_device(reinterpret_cast<const float*>(ptr), total, finite, device);
  }
  if (bad >= 0) {
    const int64_t hw = shape[2] * shape[3];
    throw py::value_error(std::string(func) + ": " + name + " contains " +
                          (finite ? "NaN or infinity" : "NaN") + " at [" +
                          std::to_string(bad / (shape[1] * hw)) + ", " +
                          std::to_string((bad / hw) % shape[1]) + ", " +
                          std::to_string((bad / shape[3]) % shape[2]) + ", " +
                          std::to_string(bad % shape[3]) + "]");
  }
  return total;
}

int64_t find_nan_device_cuda(std::uintptr_t ptr, int64_t count, bool finite, int device) {
  constexpr const char* f = "find_nan_device";
  require_at_least(count, 0, f, "count");
  require_device(device, f);
  require_device_pointer(ptr, count, device, "data", f);
  py::gil_scoped_release release;
  return cuda::find_nan_device(reinterpret_cast<const float*>(ptr), count, finite, device);
}

py::array_t<float> topk_merge_device_cuda(const py::array& state, std::uintptr_t batch,
                                          const std::array<int64_t, 4>& shape, int device) {
  constexpr const char* f = "topk_merge_device";
  require_state(state, f, "state");
  if (shape[1] != state.shape(0)) {
    throw py::value_error(std::string(f) + ": batch [N, U, h, w] has U = " +
                          std::to_string(shape[1]) + " units but state [U, k] has U = " +
                          std::to_string(state.shape(0)));
  }
  require_device_maps(batch, shape, device, /*finite=*/false, f, "batch");
  const int64_t units = state.shape(0), k = state.shape(1);
  const auto* st = static_cast<const float*>(state.data());
  py::array_t<float> out({static_cast<py::ssize_t>(units), static_cast<py::ssize_t>(k)});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    cuda::topk_merge_from_device(st, reinterpret_cast<const float*>(batch), units, k, shape[0],
                                 shape[2] * shape[3], o, device);
  }
  return out;
}

void tally_device_cuda(std::uintptr_t acts, const std::array<int64_t, 4>& shape,
                       const py::array& thresholds, const py::array& seg,
                       const py::array& image_labels, const py::array& concept_category,
                       const py::array& image_categories, py::array intersection,
                       py::array unit_area_cat, py::array unit_area, py::array concept_area,
                       std::optional<py::array> peaks, int device) {
  const TallyArgs args = check_tally_args_shaped(
      shape, reinterpret_cast<const float*>(acts), nullptr, thresholds, seg, image_labels,
      concept_category, image_categories, intersection, unit_area_cat, unit_area, concept_area);
  float* peaks_out = nullptr;
  if (peaks.has_value()) {
    require_array<float>(*peaks, "tally_device", "peaks", 2, "[N, U]");
    require_dim(*peaks, "peaks", 0, shape[0], "tally_device", "[N, U]", "N");
    require_dim(*peaks, "peaks", 1, shape[1], "tally_device", "[N, U]", "U");
    require_writeable(*peaks, "tally_device", "peaks");
    peaks_out = static_cast<float*>(peaks->mutable_data());
  }
  require_device_maps(acts, shape, device, /*finite=*/false, "tally_device", "acts");
  py::gil_scoped_release release;
  cuda::tally_from_device(args.inputs, args.shape, args.counts, device, peaks_out);
}

void compose_cuda(const py::array& acts, const py::array& thresholds, const py::array& seg,
                  const py::array& image_labels, const py::array& formulas,
                  const py::array& ops, py::array f_concept, py::array mf_concept,
                  py::array f_area, py::array mf_area, int device) {
  const ComposeArgs args = check_compose_args(acts, thresholds, seg, image_labels, formulas, ops,
                                              f_concept, mf_concept, f_area, mf_area);
  require_device(device, "compose");
  py::gil_scoped_release release;
  cuda::compose(args.inputs, args.shape, args.counts, device);
}

py::array_t<float> upsample_bilinear_cuda(const py::array& acts, int64_t out_h, int64_t out_w,
                                          int device) {
  const auto out_shape = check_upsample_args(acts, out_h, out_w);
  require_device(device, "upsample_bilinear");
  py::array_t<float> out(out_shape);
  const auto* a = static_cast<const float*>(acts.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    cuda::upsample_bilinear(a, acts.shape(0) * acts.shape(1), acts.shape(2), acts.shape(3),
                            out_h, out_w, o, device);
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

  m.def("unpool_device", &unpool_device_cuda, py::arg("values_ptr"), py::arg("switches_ptr"),
        py::arg("out_ptr"), py::arg("n"), py::arg("c"), py::arg("pooled_h"), py::arg("pooled_w"),
        py::arg("out_h"), py::arg("out_w"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("device"), py::arg("stream") = 0,
        R"doc(The unpool contract on CUDA device `device`, with device pointers (no host copies).

Args:
    values_ptr: data_ptr() of C-contiguous float32 [n, c, pooled_h, pooled_w] on the device.
    switches_ptr: data_ptr() of C-contiguous int64 of the same shape on the device.
    out_ptr: data_ptr() of C-contiguous float32 [n, c, out_h, out_w] on the device, allocated
        by the caller; overwritten.
    kernel, stride, padding, dilation: (h, w) geometry of the max-pool.
    device: the CUDA device index the three live on.
    stream: the cudaStream_t (an integer, e.g. torch.cuda.current_stream().cuda_stream; 0 is
        the legacy default stream) the work is queued on, behind what the stream holds.

The switches are checked on the device first, as the host paths check them (the call waits
for the stream to learn the answer); the gather is then queued on the stream and the call
returns without waiting for it. The result is bitwise equal to the CPU's.

Raises:
    ValueError: bad sizes or geometry, a pointer that is not memory of the device, a switch
        out of range or outside its pool window (named as the host paths name it).
)doc");

  m.def("topk_merge", &topk_merge_cuda, py::arg("state"), py::arg("batch"), py::arg("device") = 0,
        R"doc(Same contract as pyanalyzer._core.topk_merge on CUDA device `device` (host arrays in
and out, CUB segmented sort); bitwise equal to the CPU's.)doc");

  m.def("topk_merge_states", &topk_merge_states_cuda, py::arg("a"), py::arg("b"),
        py::arg("device") = 0,
        R"doc(Same contract as pyanalyzer._core.topk_merge_states on CUDA device `device`.)doc");

  m.def("tally", &tally_cuda, py::arg("acts"), py::arg("thresholds"), py::arg("seg"),
        py::arg("image_labels"), py::arg("concept_category"), py::arg("image_categories"),
        py::arg("intersection"), py::arg("unit_area_cat"), py::arg("unit_area"),
        py::arg("concept_area"), py::arg("device") = 0,
        R"doc(Same contract as pyanalyzer._core.tally on CUDA device `device`.

Host arrays in; the batch's counts are computed on the device and added to the host count
arrays in place. Inputs are checked on the host exactly as on the CPU; counts equal the CPU's.
Batch large N (all inputs of one call are copied to the device at once).
)doc");

  m.def("tally_device", &tally_device_cuda, py::arg("acts_ptr"), py::arg("shape"),
        py::arg("thresholds"), py::arg("seg"), py::arg("image_labels"),
        py::arg("concept_category"), py::arg("image_categories"), py::arg("intersection"),
        py::arg("unit_area_cat"), py::arg("unit_area"), py::arg("concept_area"),
        py::arg("peaks") = py::none(), py::arg("device") = 0,
        R"doc(The tally contract with the activations already in memory of CUDA device `device`.

Args:
    acts_ptr: the data pointer of C-contiguous float32 [N, U, h, w] on the device (an
        onnxruntime output bound to the GPU, a torch tensor's data_ptr()); never copied.
    shape: (N, U, h, w).
    thresholds ... concept_area: host arrays, as for tally.
    peaks: None, or a writeable float32 host array [N, U] that receives each map's maximum.

The activations are checked for NaN on the device, the other inputs on the host, exactly as
tally checks them; the counts are added to the host arrays and equal the CPU's for the same
activations. The call waits for the device.
)doc");

  m.def("topk_merge_device", &topk_merge_device_cuda, py::arg("state"), py::arg("batch_ptr"),
        py::arg("shape"), py::arg("device") = 0,
        R"doc(topk_merge with the batch (C-contiguous float32 [N, U, h, w], `shape`) already in
memory of CUDA device `device` (never copied); the state and the result are host arrays,
bitwise the CPU's result for the same values. NaN in the batch is refused (checked there).)doc");

  m.def("find_nan_device", &find_nan_device_cuda, py::arg("data_ptr"), py::arg("count"),
        py::arg("finite") = false, py::arg("device") = 0,
        R"doc(Flat index of the first NaN (with `finite`, of the first NaN or infinity) among
`count` float32 values at a data pointer of CUDA device `device`, or -1.)doc");

  m.def("compose", &compose_cuda, py::arg("acts"), py::arg("thresholds"), py::arg("seg"),
        py::arg("image_labels"), py::arg("formulas"), py::arg("ops"), py::arg("f_concept"),
        py::arg("mf_concept"), py::arg("f_area"), py::arg("mf_area"), py::arg("device") = 0,
        R"doc(Same contract as pyanalyzer._core.compose on CUDA device `device`.

Host arrays in; the batch's counts are computed on the device and added to the host count
arrays in place. Inputs are checked on the host exactly as on the CPU; counts equal the CPU's.
Batch large N (all inputs of one call are copied to the device at once).
)doc");

  m.def("upsample_bilinear", &upsample_bilinear_cuda, py::arg("acts"), py::arg("out_h"),
        py::arg("out_w"), py::arg("device") = 0,
        R"doc(pyanalyzer._core.upsample_bilinear on CUDA device `device`; bitwise equal.)doc");
}
