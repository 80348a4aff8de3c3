// Argument checks for compose, shared by the CPU (_core) and CUDA (_core_cuda) modules so both
// accept and reject exactly the same inputs.
#pragma once

#include <cstdint>
#include <string>

#include "checks.h"
#include "pyanalyzer/compose.h"
#include "pyanalyzer/quantile.h"
#include "pyanalyzer/tally.h"
#include "quantile_args.h"
#include "tally_args.h"

namespace pyanalyzer::bindings {

struct ComposeArgs {
  ComposeShape shape;
  ComposeInputs inputs;
  ComposeCounts counts;
};

// Checks dtypes, ranks, contiguity, named shapes, writeable counts, NaN in acts/thresholds,
// the range of every id (seg, image labels and formulas in [0, C)) and the ops of the terms
// that are read (1, 2 or 3).
inline ComposeArgs check_compose_args(const py::array& acts, const py::array& thresholds,
                                      const py::array& seg, const py::array& image_labels,
                                      const py::array& formulas, const py::array& ops,
                                      py::array& f_concept, py::array& mf_concept,
                                      py::array& f_area, py::array& mf_area) {
  constexpr const char* f = "compose";
  require_array<float>(acts, f, "acts", 4, "[N, U, h, w]");
  require_array<float>(thresholds, f, "thresholds", 1, "[U]");
  require_array<int32_t>(seg, f, "seg", 4, "[N, K, Sh, Sw]");
  require_array<int32_t>(image_labels, f, "image_labels", 2, "[N, L]");
  require_array<int32_t>(formulas, f, "formulas", 3, "[U, B, T]");
  require_array<int8_t>(ops, f, "ops", 3, "[U, B, T]");
  require_array<int64_t>(f_concept, f, "f_concept", 3, "[U, B, C]");
  require_array<int64_t>(mf_concept, f, "mf_concept", 3, "[U, B, C]");
  require_array<int64_t>(f_area, f, "f_area", 2, "[U, B]");
  require_array<int64_t>(mf_area, f, "mf_area", 2, "[U, B]");

  const int64_t n = acts.shape(0), units = acts.shape(1);
  const int64_t beam = formulas.shape(1), terms = formulas.shape(2);
  const int64_t concepts = f_concept.shape(2);
  require_at_least(acts.shape(2), 1, f, "acts h (shape[2])");
  require_at_least(acts.shape(3), 1, f, "acts w (shape[3])");
  require_at_least(seg.shape(2), 1, f, "seg Sh (shape[2])");
  require_at_least(seg.shape(3), 1, f, "seg Sw (shape[3])");
  require_at_least(terms, 1, f, "T (formulas.shape[2])");
  require_at_least(concepts, 1, f, "C (f_concept.shape[2])");
  require_size_fits_int32(acts.shape(2), f, "acts h");
  require_size_fits_int32(acts.shape(3), f, "acts w");
  require_size_fits_int32(seg.shape(2), f, "seg Sh (shape[2])");
  require_size_fits_int32(seg.shape(3), f, "seg Sw (shape[3])");
  require_size_fits_int32(seg.shape(2) * seg.shape(3), f, "seg Sh * Sw");
  require_size_fits_int32(concepts, f, "C");

  require_dim(thresholds, "thresholds", 0, units, f, "[U]", "U");
  require_dim(seg, "seg", 0, n, f, "[N, K, Sh, Sw]", "N");
  require_dim(image_labels, "image_labels", 0, n, f, "[N, L]", "N");
  require_dim(formulas, "formulas", 0, units, f, "[U, B, T]", "U");
  require_same_shape(formulas, "formulas", ops, "ops", f, "[U, B, T]");
  require_dim(f_concept, "f_concept", 0, units, f, "[U, B, C]", "U");
  require_dim(f_concept, "f_concept", 1, beam, f, "[U, B, C]", "B");
  require_same_shape(f_concept, "f_concept", mf_concept, "mf_concept", f, "[U, B, C]");
  require_dim(f_area, "f_area", 0, units, f, "[U, B]", "U");
  require_dim(f_area, "f_area", 1, beam, f, "[U, B]", "B");
  require_same_shape(f_area, "f_area", mf_area, "mf_area", f, "[U, B]");
  require_writeable(f_concept, f, "f_concept");
  require_writeable(mf_concept, f, "mf_concept");
  require_writeable(f_area, f, "f_area");
  require_writeable(mf_area, f, "mf_area");

  require_no_nan_4d(acts, f, "acts");
  require_no_nan_1d(thresholds, f, "thresholds");
  require_ids_in_range(seg, f, "seg", 0, concepts, "a concept id (0 = unlabelled)");
  require_ids_in_range(image_labels, f, "image_labels", 0, concepts,
                       "a concept id (0 = padding)");
  require_ids_in_range(formulas, f, "formulas", 0, concepts,
                       "a concept id (0 = end of the formula)");
  {
    const auto* fp = static_cast<const int32_t*>(formulas.data());
    const auto* op = static_cast<const int8_t*>(ops.data());
    int64_t bad = -1;
    {
      py::gil_scoped_release release;
      bad = find_bad_op(fp, op, units * beam, terms);
    }
    if (bad >= 0) {
      throw py::value_error(std::string(f) + ": ops" + index_str(ops, bad) + " = " +
                            std::to_string(static_cast<int>(op[bad])) +
                            " is not an operator (1 = AND, 2 = OR, 3 = AND NOT)");
    }
  }

  ComposeArgs args{};
  args.shape = ComposeShape{n,           units,        acts.shape(2), acts.shape(3),
                            seg.shape(1), seg.shape(2), seg.shape(3),  image_labels.shape(1),
                            concepts,    beam,         terms};
  args.inputs = ComposeInputs{static_cast<const float*>(acts.data()),
                              static_cast<const float*>(thresholds.data()),
                              static_cast<const int32_t*>(seg.data()),
                              static_cast<const int32_t*>(image_labels.data()),
                              static_cast<const int32_t*>(formulas.data()),
                              static_cast<const int8_t*>(ops.data())};
  args.counts = ComposeCounts{static_cast<int64_t*>(f_concept.mutable_data()),
                              static_cast<int64_t*>(mf_concept.mutable_data()),
                              static_cast<int64_t*>(f_area.mutable_data()),
                              static_cast<int64_t*>(mf_area.mutable_data())};
  return args;
}

}  // namespace pyanalyzer::bindings
