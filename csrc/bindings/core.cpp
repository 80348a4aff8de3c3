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
#include <vector>

#include "checks.h"
#include "compose_args.h"
#include "pyanalyzer/compose.h"
#include "pyanalyzer/invert.h"
#include "pyanalyzer/quantile.h"
#include "pyanalyzer/tally.h"
#include "pyanalyzer/unpool.h"
#include "pyanalyzer/warp.h"
#include "quantile_args.h"
#include "tally_args.h"
#include "unpool_args.h"
#include "warp_args.h"

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
  int64_t bad = -1;
  {
    // One pass: each switch is checked against its pool window right before its scatter.
    py::gil_scoped_release release;
    bad = unpool(v, s, args.shape, args.geometry, o);
  }
  if (bad >= 0) raise_invalid_switch(bad, switches, args);
  return out;
}

py::array_t<float> topk_merge_cpu(const py::array& state, const py::array& batch) {
  check_topk_merge_args(state, batch);
  const int64_t units = state.shape(0), k = state.shape(1), n = batch.shape(0),
                hw = batch.shape(2) * batch.shape(3);
  const auto* st = static_cast<const float*>(state.data());
  const auto* b = static_cast<const float*>(batch.data());
  py::array_t<float> out({static_cast<py::ssize_t>(units), static_cast<py::ssize_t>(k)});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    topk_merge(st, b, units, k, n, hw, o);
  }
  return out;
}

py::array_t<float> topk_merge_states_cpu(const py::array& a, const py::array& b) {
  check_topk_merge_states_args(a, b);
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

void tally_cpu(const py::array& acts, const py::array& thresholds, const py::array& seg,
               const py::array& image_labels, const py::array& concept_category,
               const py::array& image_categories, py::array intersection,
               py::array unit_area_cat, py::array unit_area, py::array concept_area) {
  const TallyArgs args =
      check_tally_args(acts, thresholds, seg, image_labels, concept_category, image_categories,
                       intersection, unit_area_cat, unit_area, concept_area);
  py::gil_scoped_release release;
  tally(args.inputs, args.shape, args.counts);
}

void compose_cpu(const py::array& acts, const py::array& thresholds, const py::array& seg,
                 const py::array& image_labels, const py::array& formulas, const py::array& ops,
                 py::array f_concept, py::array mf_concept, py::array f_area,
                 py::array mf_area) {
  const ComposeArgs args = check_compose_args(acts, thresholds, seg, image_labels, formulas, ops,
                                              f_concept, mf_concept, f_area, mf_area);
  py::gil_scoped_release release;
  compose(args.inputs, args.shape, args.counts);
}

void inversion_step_cpu(py::array u, const py::array& grad, py::array buffer,
                        const py::array& lam_tv, const py::array& lo, const py::array& hi,
                        double x0, double alpha, double lambda_alpha, double b, double floor,
                        double beta, double v, double eps, double lr, double momentum,
                        bool fresh) {
  constexpr const char* f = "inversion_step";
  require_array<float>(u, f, "u", 4, "[N, C, H, W]");
  require_array<float>(grad, f, "grad", 4, "[N, C, H, W]");
  require_array<float>(buffer, f, "buffer", 4, "[N, C, H, W]");
  require_same_shape(u, "u", grad, "grad", f, "[N, C, H, W]");
  require_same_shape(u, "u", buffer, "buffer", f, "[N, C, H, W]");
  if (!u.writeable() || !buffer.writeable()) {
    throw py::value_error(std::string(f) + ": u and buffer must be writeable");
  }
  const int64_t n = u.shape(0), c = u.shape(1);
  require_array<float>(lam_tv, f, "lam_tv", 1, "[N]");
  require_array<float>(lo, f, "lo", 1, "[C]");
  require_array<float>(hi, f, "hi", 1, "[C]");
  if (lam_tv.shape(0) != n || lo.shape(0) != c || hi.shape(0) != c) {
    throw py::value_error(std::string(f) + ": lam_tv must have N = " + std::to_string(n) +
                          " entries and lo, hi C = " + std::to_string(c) + ", got " +
                          shape_str(lam_tv) + ", " + shape_str(lo) + ", " + shape_str(hi));
  }
  for (double value : {x0, alpha, lambda_alpha, b, floor, beta, v, eps, lr, momentum}) {
    if (!std::isfinite(value)) throw py::value_error(std::string(f) + ": a parameter is not finite");
  }
  if (b <= 0 || v <= 0) throw py::value_error(std::string(f) + ": b and v must be > 0");
  const InversionStep step{n,
                           c,
                           u.shape(2),
                           u.shape(3),
                           static_cast<float>(x0),
                           static_cast<float>(alpha),
                           static_cast<float>(lambda_alpha),
                           static_cast<float>(b),
                           static_cast<float>(floor),
                           static_cast<float>(beta),
                           static_cast<float>(v),
                           static_cast<float>(eps),
                           static_cast<float>(lr),
                           static_cast<float>(momentum),
                           fresh};
  auto* pu = static_cast<float*>(u.mutable_data());
  const auto* pg = static_cast<const float*>(grad.data());
  auto* pb = static_cast<float*>(buffer.mutable_data());
  const auto* pl = static_cast<const float*>(lam_tv.data());
  const auto* plo = static_cast<const float*>(lo.data());
  const auto* phi = static_cast<const float*>(hi.data());
  py::gil_scoped_release release;
  inversion_step(pu, pg, pb, pl, plo, phi, step);
}

// The roll is reduced to 0..size-1 here (torch.roll accepts any integer shift).
RollShape roll_shape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t shift_y,
                     int64_t shift_x, bool channels_last) {
  return RollShape{n, c, h, w, ((shift_y % h) + h) % h, ((shift_x % w) + w) % w, channels_last};
}

py::array_t<float> roll_normalize_cpu(const py::array& u, const py::array& scale,
                                      const py::array& offset, const py::array& source,
                                      int64_t shift_y, int64_t shift_x, bool channels_last) {
  constexpr const char* f = "roll_normalize";
  require_array<float>(u, f, "u", 4, "[N, C, H, W]");
  const int64_t n = u.shape(0), c = u.shape(1), h = u.shape(2), w = u.shape(3);
  check_channel_params(f, scale, &offset, source, c);
  if (h < 1 || w < 1) throw py::value_error(std::string(f) + ": u has no pixels");
  const RollShape shape = roll_shape(n, c, h, w, shift_y, shift_x, channels_last);
  const auto sn = static_cast<py::ssize_t>(n), sc = static_cast<py::ssize_t>(c),
             sh = static_cast<py::ssize_t>(h), sw = static_cast<py::ssize_t>(w);
  py::array_t<float> out(channels_last ? std::vector<py::ssize_t>{sn, sh, sw, sc}
                                       : std::vector<py::ssize_t>{sn, sc, sh, sw});
  const auto* pu = static_cast<const float*>(u.data());
  const auto* ps = static_cast<const float*>(scale.data());
  const auto* po = static_cast<const float*>(offset.data());
  const auto* src = static_cast<const int64_t*>(source.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    roll_normalize(pu, ps, po, src, shape, o);
  }
  return out;
}

py::array_t<float> roll_normalize_backward_cpu(const py::array& grad_out, const py::array& scale,
                                               const py::array& source, int64_t shift_y,
                                               int64_t shift_x, bool channels_last) {
  constexpr const char* f = "roll_normalize_backward";
  require_array<float>(grad_out, f, "grad_out", 4,
                       channels_last ? "[N, H, W, C]" : "[N, C, H, W]");
  const int64_t n = grad_out.shape(0);
  const int64_t c = channels_last ? grad_out.shape(3) : grad_out.shape(1);
  const int64_t h = channels_last ? grad_out.shape(1) : grad_out.shape(2);
  const int64_t w = channels_last ? grad_out.shape(2) : grad_out.shape(3);
  check_channel_params(f, scale, nullptr, source, c);
  if (h < 1 || w < 1) throw py::value_error(std::string(f) + ": grad_out has no pixels");
  const RollShape shape = roll_shape(n, c, h, w, shift_y, shift_x, channels_last);
  py::array_t<float> grad_u({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(c),
                             static_cast<py::ssize_t>(h), static_cast<py::ssize_t>(w)});
  const auto* pg = static_cast<const float*>(grad_out.data());
  const auto* ps = static_cast<const float*>(scale.data());
  const auto* src = static_cast<const int64_t*>(source.data());
  float* o = grad_u.mutable_data();
  {
    py::gil_scoped_release release;
    roll_normalize_backward(pg, ps, src, shape, o);
  }
  return grad_u;
}

py::array_t<float> map_peaks_cpu(const py::array& acts) {
  require_array<float>(acts, "map_peaks", "acts", 4, "[N, U, h, w]");
  const int64_t n = acts.shape(0), u = acts.shape(1), hw = acts.shape(2) * acts.shape(3);
  py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(u)});
  const auto* a = static_cast<const float*>(acts.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    map_peaks(a, n * u, hw, o);
  }
  return out;
}

py::array_t<float> upsample_bilinear_cpu(const py::array& acts, int64_t out_h, int64_t out_w) {
  const auto out_shape = check_upsample_args(acts, out_h, out_w);
  py::array_t<float> out(out_shape);
  const auto* a = static_cast<const float*>(acts.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    upsample_bilinear(a, acts.shape(0) * acts.shape(1), acts.shape(2), acts.shape(3), out_h,
                      out_w, o);
  }
  return out;
}

py::array_t<float> warp_normalize_cpu(const py::array& x, const py::array& theta,
                                      const py::array& scale, const py::array& shift,
                                      const py::array& source, double fill, int64_t out_h,
                                      int64_t out_w) {
  const WarpShape shape = check_warp_args(x, theta, scale, shift, source, fill, out_h, out_w);
  py::array_t<float> out({static_cast<py::ssize_t>(shape.n), static_cast<py::ssize_t>(out_h),
                          static_cast<py::ssize_t>(out_w),
                          static_cast<py::ssize_t>(shape.channels)});
  const auto* px = static_cast<const float*>(x.data());
  const auto* pt = static_cast<const double*>(theta.data());
  const auto* ps = static_cast<const float*>(scale.data());
  const auto* pb = static_cast<const float*>(shift.data());
  const auto* src = static_cast<const int64_t*>(source.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    warp_normalize(px, pt, ps, pb, src, static_cast<float>(fill), shape, o);
  }
  return out;
}

py::array_t<float> warp_normalize_backward_cpu(const py::array& grad_out, const py::array& theta,
                                               const py::array& scale, const py::array& source,
                                               int64_t in_h, int64_t in_w) {
  const WarpShape shape = check_warp_backward_args(grad_out, theta, scale, source, in_h, in_w);
  py::array_t<float> grad_x({static_cast<py::ssize_t>(shape.n),
                             static_cast<py::ssize_t>(shape.channels),
                             static_cast<py::ssize_t>(in_h), static_cast<py::ssize_t>(in_w)});
  const auto* pg = static_cast<const float*>(grad_out.data());
  const auto* pt = static_cast<const double*>(theta.data());
  const auto* ps = static_cast<const float*>(scale.data());
  const auto* src = static_cast<const int64_t*>(source.data());
  float* o = grad_x.mutable_data();
  {
    py::gil_scoped_release release;
    warp_normalize_backward(pg, pt, ps, src, shape, o);
  }
  return grad_x;
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
    float32 [U, k]: per unit, the k largest of the state and the batch, descending
    (zeros stored as +0.0).
)doc");

  m.def("topk_merge_states", &topk_merge_states_cpu, py::arg("a"), py::arg("b"),
        R"doc(Merge two top-k states of the same shape [U, k] into one.)doc");

  m.def("inversion_step", &inversion_step_cpu, py::arg("u"), py::arg("grad"), py::arg("buffer"),
        py::arg("lam_tv"), py::arg("lo"), py::arg("hi"), py::arg("x0"), py::arg("alpha"),
        py::arg("lambda_alpha"), py::arg("b"), py::arg("floor"), py::arg("beta"), py::arg("v"),
        py::arg("eps"), py::arg("lr"), py::arg("momentum"), py::arg("fresh"),
        R"doc(One step of network inversion after the data term's backward pass, in place.

The alpha-norm and TV priors' gradients added to grad, momentum SGD on buffer and the clamp of
u to [lo[c], hi[c]]; see csrc/include/pyanalyzer/invert.h for the formulas.

Args:
    u, buffer: float32 [N, C, H, W], C-contiguous, writeable (updated in place).
    grad: float32 [N, C, H, W]: the data term's gradient with respect to u.
    lam_tv: float32 [N]; lo, hi: float32 [C].
    x0, alpha, lambda_alpha, b, floor, beta, v, eps, lr, momentum: finite; b, v > 0.
    fresh: the buffer holds nothing yet (it becomes the gradient).

Raises:
    ValueError: wrong dtype, rank, layout or shape; a read-only array; a bad parameter.
)doc");

  m.def("roll_normalize", &roll_normalize_cpu, py::arg("u"), py::arg("scale"), py::arg("offset"),
        py::arg("source"), py::arg("shift_y"), py::arg("shift_x"), py::arg("channels_last"),
        R"doc(Inversion's image to the model's input: out[n, k, i, j] = scale[k] *
u[n, source[k], (i - shift_y) mod H, (j - shift_x) mod W] + offset[k] (torch.roll's direction),
as float32 [N, H, W, C] when channels_last, else [N, C, H, W] (pyanalyzer/invert.h).

Raises:
    ValueError: wrong dtype, rank or layout; scale, offset, source not [C]; source not a
        permutation.
)doc");

  m.def("roll_normalize_backward", &roll_normalize_backward_cpu, py::arg("grad_out"),
        py::arg("scale"), py::arg("source"), py::arg("shift_y"), py::arg("shift_x"),
        py::arg("channels_last"),
        R"doc(The gradient of roll_normalize with respect to u: float32 [N, C, H, W] from grad_out
([N, H, W, C] when channels_last, else [N, C, H, W]).)doc");

  m.def("map_peaks", &map_peaks_cpu, py::arg("acts"),
        R"doc(The largest value of every map: float32 [N, U, h, w] -> [N, U].

The maps must be free of NaN (unchecked here: the dissection passes maps that topk_merge has
checked); h * w = 0 gives -inf.
)doc");

  m.def("tally", &tally_cpu, py::arg("acts"), py::arg("thresholds"), py::arg("seg"),
        py::arg("image_labels"), py::arg("concept_category"), py::arg("image_categories"),
        py::arg("intersection"), py::arg("unit_area_cat"), py::arg("unit_area"),
        py::arg("concept_area"),
        R"doc(Network-dissection tally of one batch, added in place to the int64 counts.

Each map acts[n, u] is upsampled bilinearly to S x S (half-pixel centres, as torch's
align_corners=False), thresholded (> thresholds[u]) and counted against seg and the image
labels; see csrc/include/pyanalyzer/tally.h for the contract and the float evaluation order.

Args:
    acts: float32 [N, U, h, w], no NaN.
    thresholds: float32 [U], no NaN.
    seg: int32 [N, K, S, S] concept ids in [0, C), 0 = unlabelled (K may be 0).
    image_labels: int32 [N, L] image-level concept ids in [0, C), 0 = padding (L may be 0).
    concept_category: int32 [C] category index in [0, G) of each concept (entry 0 unused).
    image_categories: uint8 [N, G], nonzero where image n is labelled in category g.
    intersection: int64 [U, C], accumulated in place.
    unit_area_cat: int64 [U, G], accumulated in place.
    unit_area: int64 [U], accumulated in place.
    concept_area: int64 [C], accumulated in place (once per call, not per unit).

Raises:
    ValueError: wrong dtype, rank, layout or shape; read-only counts; NaN; an id out of range.
)doc");

  m.def("compose", &compose_cpu, py::arg("acts"), py::arg("thresholds"), py::arg("seg"),
        py::arg("image_labels"), py::arg("formulas"), py::arg("ops"), py::arg("f_concept"),
        py::arg("mf_concept"), py::arg("f_area"), py::arg("mf_area"),
        R"doc(Compositional-explanation counts of one batch, added in place to the int64 counts.

For every unit u and formula b (concepts combined left to right by AND, OR, AND NOT), over
all pixels of the S_h x S_w grid of every image: |F|, |M ∧ F|, and for every concept c,
|F ∧ c| and |M ∧ F ∧ c|, where M is the unit's mask exactly as the tally thresholds it and a
concept is present at a pixel when it is in any seg channel or among the image's labels (set
semantics). See csrc/include/pyanalyzer/compose.h for the contract.

Args:
    acts: float32 [N, U, h, w], no NaN.
    thresholds: float32 [U], no NaN.
    seg: int32 [N, K, S_h, S_w] concept ids in [0, C), 0 = unlabelled (K may be 0).
    image_labels: int32 [N, L] image-level concept ids in [0, C), 0 = padding (L may be 0).
    formulas: int32 [U, B, T] concept ids in [0, C); the first 0 ends a formula; a formula
        starting with 0 is the empty formula (every pixel).
    ops: int8 [U, B, T]: ops[u, b, t] for t >= 1 combines term t: 1 = AND, 2 = OR,
        3 = AND NOT (ops[u, b, 0] is ignored).
    f_concept: int64 [U, B, C], accumulated in place (column 0 untouched).
    mf_concept: int64 [U, B, C], accumulated in place (column 0 untouched).
    f_area: int64 [U, B], accumulated in place.
    mf_area: int64 [U, B], accumulated in place.

Raises:
    ValueError: wrong dtype, rank, layout or shape; read-only counts; NaN; an id out of range;
        an operator other than 1, 2, 3 in a term that is read.
)doc");

  m.def("upsample_bilinear", &upsample_bilinear_cpu, py::arg("acts"), py::arg("out_h"),
        py::arg("out_w"),
        R"doc(The tally's bilinear upsampling alone: float32 [N, U, h, w] -> [N, U, out_h, out_w].

Bitwise what tally thresholds (see csrc/include/pyanalyzer/tally.h); within float rounding of
torch.nn.functional.interpolate(mode="bilinear", align_corners=False).
)doc");
  m.def("warp_normalize", &warp_normalize_cpu, py::arg("x"), py::arg("theta"), py::arg("scale"),
        py::arg("shift"), py::arg("source"), py::arg("fill"), py::arg("out_h"),
        py::arg("out_w"),
        R"doc(Affine bilinear resampling fused with the input normalisation (pyanalyzer/warp.h).

out[n, i, j, k] = scale[k] * (fill + sum of the in-range bilinear corners of theta[n] @ (j, i, 1)
of weight * (x[n, source[k]] - fill)) + shift[k].

Args:
    x: float32 [N, C, H, W], C-contiguous.
    theta: float64 [N, 2, 3], finite: output (column, row, 1) -> input (x, y), pixel centres
        at integer coordinates.
    scale, shift: float32 [C].
    source: int64 [C], a permutation of 0..C-1 (output channel k reads input channel source[k]).
    fill: the value outside the input.
    out_h, out_w: the output size (>= 1).

Returns:
    float32 [N, out_h, out_w, C] (channels last).

Raises:
    ValueError: wrong dtype, rank, layout or shape; theta or fill not finite; source not a
        permutation.
)doc");

  m.def("warp_normalize_backward", &warp_normalize_backward_cpu, py::arg("grad_out"),
        py::arg("theta"), py::arg("scale"), py::arg("source"), py::arg("in_h"), py::arg("in_w"),
        R"doc(The gradient of warp_normalize with respect to x: float32 [N, C, in_h, in_w] from
grad_out float32 [N, Ho, Wo, C] (C-contiguous), theta, scale and source as in warp_normalize.
)doc");
}
