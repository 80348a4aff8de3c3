// Argument checks for tally and upsample_bilinear, shared by the CPU (_core) and CUDA
// (_core_cuda) modules so both accept and reject exactly the same inputs.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <string>

#include "checks.h"
#include "pyanalyzer/quantile.h"
#include "pyanalyzer/tally.h"
#include "quantile_args.h"

namespace pyanalyzer::bindings {

struct TallyArgs {
  TallyShape shape;
  TallyInputs inputs;
  TallyCounts counts;
};

inline void require_dim(const py::array& a, const char* name, py::ssize_t axis, int64_t want,
                        const char* func, const char* dims, const char* what) {
  if (a.shape(axis) != want) {
    throw py::value_error(std::string(func) + ": " + name + " " + dims + " has " + what + " = " +
                          std::to_string(a.shape(axis)) + ", expected " + std::to_string(want) +
                          " (got shape " + shape_str(a) + ")");
  }
}

inline void require_writeable(const py::array& a, const char* func, const char* name) {
  if (!a.writeable()) {
    throw py::value_error(std::string(func) + ": " + name +
                          " is read-only; counts are accumulated in place");
  }
}

inline void require_size_fits_int32(int64_t value, const char* func, const std::string& name) {
  if (value > std::numeric_limits<int32_t>::max()) {
    throw py::value_error(std::string(func) + ": " + name + " = " + std::to_string(value) +
                          " is too large (at most 2**31 - 1)");
  }
}

// Index tuple "[i0, i1, ...]" of flat index `flat` in array `a`.
inline std::string index_str(const py::array& a, int64_t flat) {
  std::string out;
  for (py::ssize_t axis = a.ndim() - 1; axis >= 0; --axis) {
    const int64_t extent = a.shape(axis);
    out = std::to_string(extent ? flat % extent : 0) + (out.empty() ? "" : ", ") + out;
    flat = extent ? flat / extent : 0;
  }
  return "[" + out + "]";
}

// Throws ValueError when an int32 array holds a value outside [lo, hi); `first` skips a prefix.
inline void require_ids_in_range(const py::array& a, const char* func, const char* name,
                                 int64_t lo, int64_t hi, const char* meaning, int64_t first = 0) {
  const auto* p = static_cast<const int32_t*>(a.data());
  const int64_t size = a.size();
  const int32_t lo32 = static_cast<int32_t>(lo), hi32 = static_cast<int32_t>(hi);
  int64_t bad = -1;
  if (size > first) {
    py::gil_scoped_release release;
    bad = find_out_of_range(p + first, size - first, lo32, hi32);
  }
  if (bad >= 0) {
    bad += first;
    throw py::value_error(std::string(func) + ": " + name + index_str(a, bad) + " = " +
                          std::to_string(p[bad]) + " is not " + meaning + " in [" +
                          std::to_string(lo) + ", " + std::to_string(hi) + ")");
  }
}

// The checks of check_tally_args once the activations' shape [N, U, h, w] is known. `acts_host`
// (the host array, when the activations are one) is checked for NaN here; activations in
// device memory are checked by the caller, on the device.
inline TallyArgs check_tally_args_shaped(const std::array<int64_t, 4>& acts_shape,
                                         const float* acts, const py::array* acts_host,
                                         const py::array& thresholds, const py::array& seg,
                                         const py::array& image_labels,
                                         const py::array& concept_category,
                                         const py::array& image_categories,
                                         py::array& intersection, py::array& unit_area_cat,
                                         py::array& unit_area, py::array& concept_area) {
  constexpr const char* f = "tally";
  require_array<float>(thresholds, f, "thresholds", 1, "[U]");
  require_array<int32_t>(seg, f, "seg", 4, "[N, K, S, S]");
  require_array<int32_t>(image_labels, f, "image_labels", 2, "[N, L]");
  require_array<int32_t>(concept_category, f, "concept_category", 1, "[C]");
  require_array<uint8_t>(image_categories, f, "image_categories", 2, "[N, G]");
  require_array<int64_t>(intersection, f, "intersection", 2, "[U, C]");
  require_array<int64_t>(unit_area_cat, f, "unit_area_cat", 2, "[U, G]");
  require_array<int64_t>(unit_area, f, "unit_area", 1, "[U]");
  require_array<int64_t>(concept_area, f, "concept_area", 1, "[C]");

  const int64_t n = acts_shape[0], units = acts_shape[1];
  const int64_t concepts = concept_category.shape(0), categories = image_categories.shape(1);
  require_at_least(n, 0, f, "acts N (shape[0])");
  require_at_least(units, 0, f, "acts U (shape[1])");
  require_at_least(acts_shape[2], 1, f, "acts h (shape[2])");
  require_at_least(acts_shape[3], 1, f, "acts w (shape[3])");
  require_at_least(seg.shape(2), 1, f, "seg S (shape[2])");
  require_at_least(seg.shape(3), 1, f, "seg S (shape[3])");
  require_at_least(concepts, 1, f, "C (concept_category.shape[0])");
  require_size_fits_int32(acts_shape[2], f, "acts h");
  require_size_fits_int32(acts_shape[3], f, "acts w");
  require_size_fits_int32(seg.shape(2), f, "seg S (shape[2])");
  require_size_fits_int32(seg.shape(3), f, "seg S (shape[3])");
  require_size_fits_int32(seg.shape(2) * seg.shape(3), f, "seg S * S");
  require_size_fits_int32(concepts, f, "C");
  require_size_fits_int32(categories, f, "G");

  require_dim(thresholds, "thresholds", 0, units, f, "[U]", "U");
  require_dim(seg, "seg", 0, n, f, "[N, K, S, S]", "N");
  require_dim(image_labels, "image_labels", 0, n, f, "[N, L]", "N");
  require_dim(image_categories, "image_categories", 0, n, f, "[N, G]", "N");
  require_dim(intersection, "intersection", 0, units, f, "[U, C]", "U");
  require_dim(intersection, "intersection", 1, concepts, f, "[U, C]", "C");
  require_dim(unit_area_cat, "unit_area_cat", 0, units, f, "[U, G]", "U");
  require_dim(unit_area_cat, "unit_area_cat", 1, categories, f, "[U, G]", "G");
  require_dim(unit_area, "unit_area", 0, units, f, "[U]", "U");
  require_dim(concept_area, "concept_area", 0, concepts, f, "[C]", "C");
  require_writeable(intersection, f, "intersection");
  require_writeable(unit_area_cat, f, "unit_area_cat");
  require_writeable(unit_area, f, "unit_area");
  require_writeable(concept_area, f, "concept_area");

  if (acts_host != nullptr) require_no_nan_4d(*acts_host, f, "acts");
  require_no_nan_1d(thresholds, f, "thresholds");
  require_ids_in_range(seg, f, "seg", 0, concepts, "a concept id (0 = unlabelled)");
  require_ids_in_range(image_labels, f, "image_labels", 0, concepts,
                       "a concept id (0 = padding)");
  // Entry 0 (the unlabelled id) is unused and not checked.
  require_ids_in_range(concept_category, f, "concept_category", 0, categories,
                       "a category index", /*first=*/1);

  TallyArgs args{};
  args.shape = TallyShape{n,           units,          acts_shape[2], acts_shape[3],
                          seg.shape(1), seg.shape(2),  seg.shape(3),  image_labels.shape(1),
                          concepts,    categories};
  args.inputs = TallyInputs{acts, static_cast<const float*>(thresholds.data()),
                            static_cast<const int32_t*>(seg.data()),
                            static_cast<const int32_t*>(image_labels.data()),
                            static_cast<const uint8_t*>(image_categories.data())};
  args.counts = TallyCounts{static_cast<int64_t*>(intersection.mutable_data()),
                            static_cast<int64_t*>(unit_area_cat.mutable_data()),
                            static_cast<int64_t*>(unit_area.mutable_data()),
                            static_cast<int64_t*>(concept_area.mutable_data())};
  return args;
}

// Checks dtypes, ranks, contiguity, named shapes, writeable counts, NaN in acts/thresholds and
// the range of every id (seg and image labels in [0, C), concept categories in [0, G)).
inline TallyArgs check_tally_args(const py::array& acts, const py::array& thresholds,
                                  const py::array& seg, const py::array& image_labels,
                                  const py::array& concept_category,
                                  const py::array& image_categories,
                                  py::array& intersection, py::array& unit_area_cat,
                                  py::array& unit_area, py::array& concept_area) {
  require_array<float>(acts, "tally", "acts", 4, "[N, U, h, w]");
  const std::array<int64_t, 4> shape{acts.shape(0), acts.shape(1), acts.shape(2),
                                     acts.shape(3)};
  return check_tally_args_shaped(shape, static_cast<const float*>(acts.data()), &acts,
                                 thresholds, seg, image_labels, concept_category,
                                 image_categories, intersection, unit_area_cat, unit_area,
                                 concept_area);
}

// Checks acts [N, U, h, w] and the output size for upsample_bilinear; returns [N, U, S_h, S_w].
inline std::array<py::ssize_t, 4> check_upsample_args(const py::array& acts, int64_t out_h,
                                                      int64_t out_w) {
  constexpr const char* f = "upsample_bilinear";
  require_array<float>(acts, f, "acts", 4, "[N, U, h, w]");
  require_at_least(acts.shape(2), 1, f, "acts h (shape[2])");
  require_at_least(acts.shape(3), 1, f, "acts w (shape[3])");
  require_at_least(out_h, 1, f, "out_h");
  require_at_least(out_w, 1, f, "out_w");
  require_size_fits_int32(acts.shape(2), f, "acts h");
  require_size_fits_int32(acts.shape(3), f, "acts w");
  require_size_fits_int32(out_h, f, "out_h");
  require_size_fits_int32(out_w, f, "out_w");
  return {acts.shape(0), acts.shape(1), static_cast<py::ssize_t>(out_h),
          static_cast<py::ssize_t>(out_w)};
}

}  // namespace pyanalyzer::bindings
