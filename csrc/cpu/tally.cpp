// CPU reference for the tally contract (see pyanalyzer/tally.h). Compiled with
// -ffp-contract=off (CMakeLists.txt): the float evaluation order of the header is the law.
#include "pyanalyzer/tally.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace pyanalyzer {
namespace {

// Pixels evaluated per (image, unit) map are few; the seg planes of the images in flight are
// what must stay in cache. Images are processed in blocks whose seg takes about this much.
constexpr int64_t kSegBlockBytes = int64_t{2} << 20;

// Lower bound under which no upsampled value of a map can lie above its threshold, given the
// largest magnitude `absmax` in the map (see "SPEED" in the header): a cell whose corners all
// lie below it can be skipped without changing any count. NaN (from infinite inputs) makes
// every comparison false, so nothing is skipped.
inline double skip_below(float threshold, float absmax) {
  return static_cast<double>(threshold) - (1e-6 * static_cast<double>(absmax) + 1e-30);
}

// Counts one (image, unit) map: adds, for every pixel above `t`, one to intersection[c] for
// each of the K channels' concept c (c = 0 included: the caller restores intersection[0]).
// Returns |M|. `row` is scratch space for seg_w floats.
int64_t tally_map(const float* a, float t, const BilinearAxis& ay, const BilinearAxis& ax,
                  int64_t h, int64_t w, const int32_t* seg, int64_t channels, int64_t seg_w,
                  int64_t plane, int64_t* intersection, float* row) {
  float peak = -std::numeric_limits<float>::infinity(), absmax = 0.0f;
  for (int64_t i = 0; i < h * w; ++i) {
    peak = std::max(peak, a[i]);
    absmax = std::max(absmax, std::fabs(a[i]));
  }
  const double floor_ = skip_below(t, absmax);
  if (static_cast<double>(peak) < floor_) return 0;  // the common case: the unit is silent
  // Along one output row of a cell, v is an affine function of w_hi[x] up to float rounding
  // (w_lo = 1 - w_hi is rounded too), so its largest value sits at one end of the row: the
  // row is skipped when both ends lie below t by a margin four times the header's.
  const double row_floor = static_cast<double>(t) - (4e-6 * static_cast<double>(absmax) + 1e-30);

  int64_t area = 0;
  for (int64_t j = 0; j < h; ++j) {
    const int32_t y_begin = ay.start[j], y_end = ay.start[j + 1];
    if (y_begin == y_end) continue;
    const int64_t j1 = std::min<int64_t>(j + 1, h - 1);
    for (int64_t i = 0; i < w; ++i) {
      const int32_t x_begin = ax.start[i], x_end = ax.start[i + 1];
      if (x_begin == x_end) continue;
      const int64_t i1 = std::min<int64_t>(i + 1, w - 1);
      const float a00 = a[j * w + i], a01 = a[j * w + i1];
      const float a10 = a[j1 * w + i], a11 = a[j1 * w + i1];
      const float corner = std::max(std::max(a00, a01), std::max(a10, a11));
      if (static_cast<double>(corner) < floor_) continue;
      const float* wx_lo = ax.w_lo.data();
      const float* wx_hi = ax.w_hi.data();
      for (int32_t y = y_begin; y < y_end; ++y) {
        const float wy_lo = ay.w_lo[y], wy_hi = ay.w_hi[y];
        const auto value = [&](int32_t x) {  // the header's formula, in its order
          const float top = wx_lo[x] * a00 + wx_hi[x] * a01;
          const float bot = wx_lo[x] * a10 + wx_hi[x] * a11;
          return wy_lo * top + wy_hi * bot;
        };
        const float ends = std::max(value(x_begin), value(x_end - 1));
        if (static_cast<double>(ends) < row_floor) continue;
        for (int32_t x = x_begin; x < x_end; ++x) row[x] = value(x);  // vectorised
        const int32_t* seg_row = seg + static_cast<int64_t>(y) * seg_w;
        for (int32_t x = x_begin; x < x_end; ++x) {
          if (row[x] > t) {
            ++area;
            for (int64_t k = 0; k < channels; ++k) ++intersection[seg_row[k * plane + x]];
          }
        }
      }
    }
  }
  return area;
}

}  // namespace

BilinearAxis bilinear_axis(int64_t in, int64_t out) {
  BilinearAxis axis;
  axis.lo.resize(out);
  axis.hi.resize(out);
  axis.w_lo.resize(out);
  axis.w_hi.resize(out);
  axis.start.assign(in + 1, static_cast<int32_t>(out));
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  for (int64_t d = 0; d < out; ++d) {
    const double src = std::max(0.0, (static_cast<double>(d) + 0.5) * scale - 0.5);
    const int64_t lo = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    axis.lo[d] = static_cast<int32_t>(lo);
    axis.hi[d] = static_cast<int32_t>(std::min(lo + 1, in - 1));
    axis.w_hi[d] = static_cast<float>(src - static_cast<double>(lo));
    axis.w_lo[d] = 1.0f - axis.w_hi[d];
  }
  // start[j] = first d with lo[d] >= j (lo is non-decreasing in d).
  for (int64_t j = 0, d = 0; j <= in; ++j) {
    while (d < out && axis.lo[d] < j) ++d;
    axis.start[j] = static_cast<int32_t>(d);
  }
  return axis;
}

int64_t find_out_of_range(const int32_t* data, int64_t n, int32_t lo, int32_t hi) {
  int64_t first = n;
#pragma omp parallel for schedule(static) reduction(min : first)
  for (int64_t i = 0; i < n; ++i) {
    if ((data[i] < lo || data[i] >= hi) && i < first) first = i;
  }
  return first == n ? -1 : first;
}

void tally(const TallyInputs& in, const TallyShape& s, const TallyCounts& counts) {
  const int64_t plane = s.seg_h * s.seg_w;
  const int64_t seg_image = s.channels * plane;
  const int64_t hw = s.in_h * s.in_w;
  const int64_t concepts = s.concepts;

  // concept_area: independent of the units; histograms per thread, summed at the end. Four
  // interleaved histograms per thread: neighbouring pixels mostly share a concept, and four
  // counters break the chain of increments to one address.
#pragma omp parallel
  {
    std::vector<int64_t> local(4 * concepts, 0);
    int64_t* h0 = local.data();
    int64_t* h1 = h0 + concepts;
    int64_t* h2 = h1 + concepts;
    int64_t* h3 = h2 + concepts;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.images; ++n) {
      const int32_t* sg = in.seg + n * seg_image;
      int64_t p = 0;
      for (; p + 4 <= seg_image; p += 4) {
        ++h0[sg[p]];
        ++h1[sg[p + 1]];
        ++h2[sg[p + 2]];
        ++h3[sg[p + 3]];
      }
      for (; p < seg_image; ++p) ++h0[sg[p]];
      for (int64_t l = 0; l < s.labels; ++l) h0[in.image_labels[n * s.labels + l]] += plane;
    }
#pragma omp critical(pyanalyzer_tally_concept_area)
    for (int64_t c = 1; c < concepts; ++c) {
      counts.concept_area[c] += h0[c] + h1[c] + h2[c] + h3[c];
    }
  }

  if (s.units == 0 || s.images == 0) return;
  const BilinearAxis ay = bilinear_axis(s.in_h, s.seg_h);
  const BilinearAxis ax = bilinear_axis(s.in_w, s.seg_w);
  const int64_t block = std::clamp<int64_t>(
      kSegBlockBytes / std::max<int64_t>(1, seg_image * static_cast<int64_t>(sizeof(int32_t))),
      1, s.images);

  for (int64_t n0 = 0; n0 < s.images; n0 += block) {
    const int64_t n1 = std::min(s.images, n0 + block);
#pragma omp parallel
    {
      std::vector<float> row(s.seg_w);
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < s.units; ++u) {
        int64_t* inter = counts.intersection + u * concepts;
        const int64_t saved = inter[0];  // concept 0 (unlabelled): counted blindly, then undone
        const float t = in.thresholds[u];
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t area =
              tally_map(in.acts + (n * s.units + u) * hw, t, ay, ax, s.in_h, s.in_w,
                        in.seg + n * seg_image, s.channels, s.seg_w, plane, inter, row.data());
          if (area == 0) continue;
          counts.unit_area[u] += area;
          const uint8_t* cats = in.image_categories + n * s.categories;
          int64_t* area_cat = counts.unit_area_cat + u * s.categories;
          for (int64_t g = 0; g < s.categories; ++g) {
            if (cats[g]) area_cat[g] += area;
          }
          for (int64_t l = 0; l < s.labels; ++l) inter[in.image_labels[n * s.labels + l]] += area;
        }
        inter[0] = saved;
      }
    }
  }
}

void upsample_bilinear(const float* acts, int64_t planes, int64_t in_h, int64_t in_w,
                       int64_t out_h, int64_t out_w, float* out) {
  if (planes == 0 || out_h == 0 || out_w == 0) return;
  const BilinearAxis ay = bilinear_axis(in_h, out_h);
  const BilinearAxis ax = bilinear_axis(in_w, out_w);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float* a = acts + p * in_h * in_w;
    float* o = out + p * out_h * out_w;
    for (int64_t y = 0; y < out_h; ++y) {
      const float* row_lo = a + static_cast<int64_t>(ay.lo[y]) * in_w;
      const float* row_hi = a + static_cast<int64_t>(ay.hi[y]) * in_w;
      for (int64_t x = 0; x < out_w; ++x) {
        const float top = ax.w_lo[x] * row_lo[ax.lo[x]] + ax.w_hi[x] * row_lo[ax.hi[x]];
        const float bot = ax.w_lo[x] * row_hi[ax.lo[x]] + ax.w_hi[x] * row_hi[ax.hi[x]];
        o[y * out_w + x] = ay.w_lo[y] * top + ay.w_hi[y] * bot;
      }
    }
  }
}

}  // namespace pyanalyzer
