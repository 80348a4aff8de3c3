// CPU reference for the unpool contract (see pyanalyzer/unpool.h).
//
// Validation and scatter are one pass over the switches: each switch is checked against its
// own pool window just before its value is added, so the switches are read once and the
// check costs a few subtractions and unsigned compares (no integer division, which used to
// dominate the call).
#include "pyanalyzer/unpool.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <vector>

namespace pyanalyzer {
namespace {

// The taps of one pool window along one axis that fall inside [0, size): the first one,
// `first`, and `span` = last - first + 1 (span 0: no tap inside). Computed in uint64 with
// saturation so that absurd geometry (huge stride or padding) cannot overflow: such windows
// simply have no tap inside the map.
struct Taps {
  int64_t first = 0;
  uint64_t span = 0;
};

Taps clip_taps(int64_t o, int64_t stride, int64_t pad, int64_t kernel, int64_t dilation,
               int64_t size) {
  // Tap j sits at o * stride - pad + j * dilation; shift everything by +pad so that all
  // quantities are non-negative: tap j is inside when pad <= a + j * d < pad + size.
  const uint64_t uo = static_cast<uint64_t>(o), us = static_cast<uint64_t>(stride);
  const uint64_t d = static_cast<uint64_t>(dilation), k = static_cast<uint64_t>(kernel);
  const uint64_t lower = static_cast<uint64_t>(pad);
  const uint64_t upper = lower + static_cast<uint64_t>(size);  // < 2^64: both are < 2^63
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  const uint64_t a = (us != 0 && uo > max / us) ? max : uo * us;
  if (size <= 0 || a >= upper) return {};
  const uint64_t j_lo = a >= lower ? 0 : (lower - a + d - 1) / d;  // lower - a + d < 2^64
  if (j_lo >= k) return {};
  const uint64_t first = a + j_lo * d;  // < lower + d < 2^64
  if (first >= upper) return {};
  const uint64_t j_hi = std::min(k - 1, (upper - 1 - a) / d);
  const uint64_t last = a + j_hi * d;  // <= upper - 1
  return {static_cast<int64_t>(first - lower), last - first + 1};
}

// Where each pool output's window lies in the unpooled plane, precomputed once per call.
struct Windows {
  std::vector<int64_t> row_base;   // [Ho] flat index of the window's first row: first_row * W
  std::vector<int64_t> row_count;  // [Ho] rows of the window inside the plane
  std::vector<int64_t> col_first;  // [Wo] first column of the window inside the plane
  std::vector<uint64_t> col_span;  // [Wo] last - first + 1 of those columns (0: none)
  uint64_t row_step = 0;           // dilation_h * W: flat distance between two window rows
  uint64_t col_dilation = 1;

  Windows(const UnpoolShape& shape, const PoolGeometry& g)
      : row_base(static_cast<size_t>(shape.pooled_h)),
        row_count(static_cast<size_t>(shape.pooled_h)),
        col_first(static_cast<size_t>(shape.pooled_w)),
        col_span(static_cast<size_t>(shape.pooled_w)),
        // Wraps only when dilation_h >= H; every window then has at most one row inside,
        // and the step is never used.
        row_step(static_cast<uint64_t>(g.dilation_h) * static_cast<uint64_t>(shape.out_w)),
        col_dilation(static_cast<uint64_t>(g.dilation_w)) {
    for (int64_t oh = 0; oh < shape.pooled_h; ++oh) {
      const Taps t = clip_taps(oh, g.stride_h, g.pad_h, g.kernel_h, g.dilation_h, shape.out_h);
      row_base[oh] = t.first * shape.out_w;
      const uint64_t dh = static_cast<uint64_t>(g.dilation_h);
      row_count[oh] = t.span == 0 ? 0 : static_cast<int64_t>((t.span - 1) / dh + 1);
    }
    for (int64_t ow = 0; ow < shape.pooled_w; ++ow) {
      const Taps t = clip_taps(ow, g.stride_w, g.pad_w, g.kernel_w, g.dilation_w, shape.out_w);
      col_first[ow] = t.first;
      col_span[ow] = t.span;
    }
  }
};

// True when switch s names a pixel of the window whose first row starts at flat index
// `row_base` and whose first column is `col_first`: some window row m < rows has
// 0 <= s - (row_base + m * row_step + col_first) < span, on a column tap. Unsigned wrap-around
// makes one compare test both bounds for any int64 s (the window's pixels lie in [0, H*W), so
// the difference is exact modulo 2^64). At most one row can match, since span <= W <= row_step.
// Branch-free on purpose: which row of its window holds the maximum is random, and a branch
// on it is mispredicted about every other switch. `Rows` > 0 fixes the row count at compile
// time (unrolled); 0 reads it from `rows`.
template <int Rows>
inline bool in_window(int64_t s, int64_t row_base, int64_t rows, uint64_t row_step,
                      int64_t col_first, uint64_t span, uint64_t col_dilation) {
  uint64_t t = static_cast<uint64_t>(s) - static_cast<uint64_t>(row_base + col_first);
  uint64_t any = 0, dx = 0;
  const int64_t n = Rows > 0 ? Rows : rows;
  for (int64_t m = 0; m < n; ++m) {
    const uint64_t in = uint64_t{0} - static_cast<uint64_t>(t < span);  // all ones or zero
    any |= in;
    dx |= t & in;  // the column offset, from the one matching row
    t -= row_step;
  }
  return any != 0 && (col_dilation == 1 || dx % col_dilation == 0);
}

// One row of pool outputs (`rows` window rows inside the plane, the first at `row_base`):
// checks every switch in order and, when `Scatter`, adds its value to the pixel it names.
// Returns the index within the row of the first bad switch, or -1; the scatter stops there.
template <bool Scatter, int Rows>
int64_t run_row(const float* v, const int64_t* sw, int64_t pooled_w, int64_t row_base,
                int64_t rows, const Windows& win, float* o) {
  for (int64_t ow = 0; ow < pooled_w; ++ow) {
    const int64_t s = sw[ow];
    if (!in_window<Rows>(s, row_base, rows, win.row_step, win.col_first[ow], win.col_span[ow],
                         win.col_dilation)) {
      return ow;
    }
    if constexpr (Scatter) o[s] += v[ow];
  }
  return -1;
}

// One (n, c) plane, in row-major order of the pool outputs: the order in which shared
// switches are summed, the order the CUDA gather reproduces. Returns the index within the
// plane of the first bad switch, or -1.
template <bool Scatter>
int64_t run_plane(const float* v, const int64_t* sw, const UnpoolShape& shape,
                  const Windows& win, float* o) {
  const int64_t wo = shape.pooled_w;
  for (int64_t oh = 0; oh < shape.pooled_h; ++oh) {
    const int64_t base = win.row_base[oh], rows = win.row_count[oh], i = oh * wo;
    const float* vi = Scatter ? v + i : nullptr;
    int64_t bad;
    switch (rows) {  // the common window heights get unrolled row loops
      case 1: bad = run_row<Scatter, 1>(vi, sw + i, wo, base, rows, win, o); break;
      case 2: bad = run_row<Scatter, 2>(vi, sw + i, wo, base, rows, win, o); break;
      case 3: bad = run_row<Scatter, 3>(vi, sw + i, wo, base, rows, win, o); break;
      default: bad = run_row<Scatter, 0>(vi, sw + i, wo, base, rows, win, o); break;
    }
    if (bad >= 0) return i + bad;
  }
  return -1;
}

// Runs every plane (OpenMP, static schedule) and returns the smallest flat index of a bad
// switch, or -1: planes are independent, each reports its own first bad switch, and the
// minimum over planes does not depend on the thread count.
template <bool Scatter>
int64_t run_planes(const float* values, const int64_t* switches, const UnpoolShape& shape,
                   const PoolGeometry& g, float* out) {
  const int64_t pooled = shape.pooled_h * shape.pooled_w;
  const int64_t plane_size = shape.out_h * shape.out_w;
  const int64_t total = shape.planes * pooled;
  if (shape.planes == 0) return -1;
  const Windows win(shape, g);
  int64_t first_bad = total;  // sentinel: none found
#pragma omp parallel for schedule(static) reduction(min : first_bad)
  for (int64_t p = 0; p < shape.planes; ++p) {
    float* o = nullptr;
    if constexpr (Scatter) {
      // The plane (2.9 KB for AlexNet's 27x27) is zeroed just before its scatter, so it is
      // still in L1 for the adds; this is the output's only zero-fill pass.
      o = out + p * plane_size;
      std::fill(o, o + plane_size, 0.0f);
    }
    const float* v = Scatter ? values + p * pooled : nullptr;
    const int64_t bad = run_plane<Scatter>(v, switches + p * pooled, shape, win, o);
    if (bad >= 0) first_bad = std::min(first_bad, p * pooled + bad);
  }
  return first_bad == total ? -1 : first_bad;
}

}  // namespace

int64_t find_invalid_switch(const int64_t* switches, const UnpoolShape& shape,
                            const PoolGeometry& geometry) {
  return run_planes<false>(nullptr, switches, shape, geometry, nullptr);
}

int64_t unpool(const float* values, const int64_t* switches, const UnpoolShape& shape,
               const PoolGeometry& geometry, float* out) {
  return run_planes<true>(values, switches, shape, geometry, out);
}

}  // namespace pyanalyzer
