// CUDA implementation of the tally contract (see pyanalyzer/tally.h).
//
// One warp per (image, unit) map. The warp reduces the map's peak and magnitude, leaves at once
// when the unit is silent (most maps at a top-quantile threshold), else ballots the active
// cells (those whose four corners reach the skip bound of the header) and sweeps each active
// cell's output pixels, 32 at a time. Fired pixels read seg and add to intersection[u, c] with
// integer atomics, aggregated over the lanes that share a concept (__match_any_sync); integer
// sums do not depend on their order, so the counts equal the CPU's exactly. The upsampled
// values use __fmul_rn/__fadd_rn (never contracted into an FMA) on the host-computed weight
// tables, so they are bitwise the CPU's too.
#include "pyanalyzer/tally.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bilinear.cuh"
#include "common.cuh"

namespace pyanalyzer {
namespace cuda {
namespace {

using detail::AxisView;
using detail::bilinear;
using detail::check;
using detail::DeviceAxis;
using detail::DeviceBuffer;
using detail::DeviceGuard;
using detail::download;
using detail::upload;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = 8;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// Adds `amount` to counts[c] for every lane's c != 0, one atomic per distinct c in the warp.
// Every lane of the warp must call it.
__device__ __forceinline__ void warp_count(unsigned long long* counts, int32_t c,
                                           unsigned long long amount_per_lane) {
  const unsigned peers = __match_any_sync(kFullMask, c);
  const int lane = static_cast<int>(threadIdx.x & 31);
  if (c != 0 && lane == __ffs(peers) - 1) {
    atomicAdd(counts + c, amount_per_lane * static_cast<unsigned long long>(__popc(peers)));
  }
}

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    tally_maps(const float* __restrict__ acts, const float* __restrict__ thresholds,
               const int32_t* __restrict__ seg, const int32_t* __restrict__ labels,
               const uint8_t* __restrict__ image_categories, AxisView ay, AxisView ax,
               TallyShape s, unsigned long long* __restrict__ intersection,
               unsigned long long* __restrict__ unit_area_cat,
               unsigned long long* __restrict__ unit_area, float* __restrict__ peaks) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t h = s.in_h, w = s.in_w, hw = h * w;
  const int64_t plane = s.seg_h * s.seg_w;
  const int64_t maps = s.images * s.units;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  // The loop bound is the same for the 32 lanes of a warp: every *_sync below sees all of them.
  for (int64_t map = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
       map < maps; map += warps) {
    const int64_t n = map / s.units, u = map % s.units;
    const float* a = acts + map * hw;
    const float t = thresholds[u];

    float peak = -INFINITY, absmax = 0.0f;
    for (int64_t i = lane; i < hw; i += 32) {
      peak = fmaxf(peak, a[i]);
      absmax = fmaxf(absmax, fabsf(a[i]));
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      peak = fmaxf(peak, __shfl_xor_sync(kFullMask, peak, offset));
      absmax = fmaxf(absmax, __shfl_xor_sync(kFullMask, absmax, offset));
    }
    if (peaks != nullptr && lane == 0) peaks[map] = peak;
    // The header's skip bound; NaN (infinite inputs) compares false and skips nothing.
    const double floor_ = static_cast<double>(t) - (1e-6 * static_cast<double>(absmax) + 1e-30);
    if (static_cast<double>(peak) < floor_) continue;  // the unit is silent on this image

    const int32_t* sg = seg + n * s.channels * plane;
    unsigned long long* inter = intersection + u * s.concepts;
    unsigned long long area = 0;  // this lane's fired pixels
    for (int64_t base = 0; base < hw; base += 32) {
      const int64_t cell = base + lane;
      bool active = false;
      if (cell < hw) {
        const int64_t j = cell / w, i = cell % w;
        if (ay.start[j] < ay.start[j + 1] && ax.start[i] < ax.start[i + 1]) {
          const int64_t j1 = min(j + 1, h - 1), i1 = min(i + 1, w - 1);
          const float corner = fmaxf(fmaxf(a[j * w + i], a[j * w + i1]),
                                     fmaxf(a[j1 * w + i], a[j1 * w + i1]));
          active = !(static_cast<double>(corner) < floor_);
        }
      }
      unsigned pending = __ballot_sync(kFullMask, active);
      while (pending) {  // the same for all lanes
        const int64_t cell_b = base + __ffs(pending) - 1;
        pending &= pending - 1;
        const int64_t j = cell_b / w, i = cell_b % w;
        const int64_t j1 = min(j + 1, h - 1), i1 = min(i + 1, w - 1);
        const float a00 = a[j * w + i], a01 = a[j * w + i1];
        const float a10 = a[j1 * w + i], a11 = a[j1 * w + i1];
        const int32_t y0 = ay.start[j], x0 = ax.start[i];
        const int32_t nx = ax.start[i + 1] - x0;
        const int32_t count = (ay.start[j + 1] - y0) * nx;
        for (int32_t p0 = 0; p0 < count; p0 += 32) {
          const int32_t p = p0 + lane;
          bool fire = false;
          int64_t pixel = 0;
          if (p < count) {
            const int32_t y = y0 + p / nx, x = x0 + p % nx;
            const float v = bilinear(ay.w_lo[y], ay.w_hi[y], ax.w_lo[x], ax.w_hi[x], a00, a01,
                                     a10, a11);
            fire = v > t;
            pixel = static_cast<int64_t>(y) * s.seg_w + x;
          }
          area += fire ? 1 : 0;
          if (__any_sync(kFullMask, fire)) {
            for (int64_t k = 0; k < s.channels; ++k) {
              warp_count(inter, fire ? sg[k * plane + pixel] : 0, 1);
            }
          }
        }
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      area += __shfl_xor_sync(kFullMask, area, offset);
    }
    if (area == 0) continue;
    if (lane == 0) atomicAdd(unit_area + u, area);
    for (int64_t g = lane; g < s.categories; g += 32) {
      if (image_categories[n * s.categories + g]) {
        atomicAdd(unit_area_cat + u * s.categories + g, area);
      }
    }
    for (int64_t l = lane; l < s.labels; l += 32) {
      const int32_t c = labels[n * s.labels + l];
      if (c != 0) atomicAdd(inter + c, area);
    }
  }
}

// concept_area: pixels of each concept over all images and channels, plus plane per image label.
__global__ void concept_areas(const int32_t* __restrict__ seg, int64_t seg_total,
                              const int32_t* __restrict__ labels, int64_t label_total,
                              unsigned long long plane,
                              unsigned long long* __restrict__ concept_area) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t base = warp * 32; base < seg_total; base += warps * 32) {  // warp-uniform
    const int64_t i = base + lane;
    warp_count(concept_area, i < seg_total ? seg[i] : 0, 1);
  }
  for (int64_t i = warp * 32 + lane; i < label_total; i += warps * 32) {
    if (labels[i] != 0) atomicAdd(concept_area + labels[i], plane);
  }
}

__global__ void upsample(const float* __restrict__ acts, int64_t total, int64_t in_h,
                         int64_t in_w, int64_t out_h, int64_t out_w, AxisView ay, AxisView ax,
                         float* __restrict__ out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += step) {
    const int64_t x = idx % out_w, y = (idx / out_w) % out_h, p = idx / (out_w * out_h);
    const float* a = acts + p * in_h * in_w;
    const float* row_lo = a + static_cast<int64_t>(ay.lo[y]) * in_w;
    const float* row_hi = a + static_cast<int64_t>(ay.hi[y]) * in_w;
    out[idx] = bilinear(ay.w_lo[y], ay.w_hi[y], ax.w_lo[x], ax.w_hi[x], row_lo[ax.lo[x]],
                        row_lo[ax.hi[x]], row_hi[ax.lo[x]], row_hi[ax.hi[x]]);
  }
}

// first = the smallest index i < count with data[i] NaN (with `finite`: or infinite).
__global__ void first_nan(const float* __restrict__ data, int64_t count, bool finite,
                          unsigned long long* __restrict__ first) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += step) {
    const float v = data[i];
    if (finite ? !isfinite(v) : isnan(v)) {
      atomicMin(first, static_cast<unsigned long long>(i));
      return;  // this thread's later indices are larger
    }
  }
}

int64_t blocks_for(int64_t work, int64_t per_block) {
  return std::clamp<int64_t>((work + per_block - 1) / per_block, 1, kMaxBlocks);
}

// counts[i] += device[i] for i < count (device counts start from zero on every call).
void add_back(int64_t* counts, const unsigned long long* device, int64_t count, const char* what) {
  if (count <= 0) return;
  std::vector<unsigned long long> host(count);
  download(host.data(), device, count, what);
  for (int64_t i = 0; i < count; ++i) counts[i] += static_cast<int64_t>(host[i]);
}

// The tally with in.acts on the host (copied) or, with `acts_on_device`, already memory of
// `device`; `peaks` (host [N, U]) receives each map's maximum when not null.
void tally_impl(const TallyInputs& in, const TallyShape& s, const TallyCounts& counts,
                int device, bool acts_on_device, float* peaks) {
  DeviceGuard guard(device);
  const int64_t plane = s.seg_h * s.seg_w;
  const int64_t n_acts = s.images * s.units * s.in_h * s.in_w;
  const int64_t n_seg = s.images * s.channels * plane;
  const int64_t n_labels = s.images * s.labels;
  const int64_t n_cats = s.images * s.categories;
  const int64_t n_inter = s.units * s.concepts, n_area_cat = s.units * s.categories;

  DeviceBuffer<int32_t> d_seg(n_seg), d_labels(n_labels);
  DeviceBuffer<unsigned long long> d_concept_area(s.concepts);
  upload(d_seg.get(), in.seg, n_seg, "cudaMemcpy (seg)");
  upload(d_labels.get(), in.image_labels, n_labels, "cudaMemcpy (image_labels)");
  check(cudaMemset(d_concept_area.get(), 0, sizeof(unsigned long long) * s.concepts),
        "cudaMemset (concept_area)");
  if (n_seg + n_labels > 0) {
    concept_areas<<<static_cast<unsigned>(blocks_for(n_seg + n_labels, 256 * 8)), 256>>>(
        d_seg.get(), n_seg, d_labels.get(), n_labels, static_cast<unsigned long long>(plane),
        d_concept_area.get());
    check(cudaGetLastError(), "concept_areas launch");
  }

  const int64_t maps = s.images * s.units;
  if (maps > 0) {
    const DeviceAxis ay(bilinear_axis(s.in_h, s.seg_h)), ax(bilinear_axis(s.in_w, s.seg_w));
    DeviceBuffer<float> d_copy(acts_on_device ? 0 : n_acts), d_thresholds(s.units);
    DeviceBuffer<float> d_peaks(peaks != nullptr ? maps : 0);
    DeviceBuffer<uint8_t> d_cats(n_cats);
    DeviceBuffer<unsigned long long> d_inter(n_inter), d_area_cat(n_area_cat), d_area(s.units);
    if (!acts_on_device) upload(d_copy.get(), in.acts, n_acts, "cudaMemcpy (acts)");
    const float* d_acts = acts_on_device ? in.acts : d_copy.get();
    upload(d_thresholds.get(), in.thresholds, s.units, "cudaMemcpy (thresholds)");
    upload(d_cats.get(), in.image_categories, n_cats, "cudaMemcpy (image_categories)");
    check(cudaMemset(d_inter.get(), 0, sizeof(unsigned long long) * n_inter),
          "cudaMemset (intersection)");
    if (n_area_cat > 0) {
      check(cudaMemset(d_area_cat.get(), 0, sizeof(unsigned long long) * n_area_cat),
            "cudaMemset (unit_area_cat)");
    }
    check(cudaMemset(d_area.get(), 0, sizeof(unsigned long long) * s.units),
          "cudaMemset (unit_area)");
    tally_maps<<<static_cast<unsigned>(blocks_for(maps, kWarpsPerBlock)),
                 kWarpsPerBlock * 32>>>(d_acts, d_thresholds.get(), d_seg.get(), d_labels.get(),
                                        d_cats.get(), ay.view(), ax.view(), s, d_inter.get(),
                                        d_area_cat.get(), d_area.get(), d_peaks.get());
    check(cudaGetLastError(), "tally_maps launch");
    if (peaks != nullptr) download(peaks, d_peaks.get(), maps, "cudaMemcpy (peaks)");
    add_back(counts.intersection, d_inter.get(), n_inter, "cudaMemcpy (intersection)");
    add_back(counts.unit_area_cat, d_area_cat.get(), n_area_cat, "cudaMemcpy (unit_area_cat)");
    add_back(counts.unit_area, d_area.get(), s.units, "cudaMemcpy (unit_area)");
  }
  add_back(counts.concept_area, d_concept_area.get(), s.concepts, "cudaMemcpy (concept_area)");
}

}  // namespace

void tally(const TallyInputs& in, const TallyShape& s, const TallyCounts& counts, int device) {
  tally_impl(in, s, counts, device, /*acts_on_device=*/false, nullptr);
}

void tally_from_device(const TallyInputs& in, const TallyShape& s, const TallyCounts& counts,
                       int device, float* peaks) {
  tally_impl(in, s, counts, device, /*acts_on_device=*/true, peaks);
}

int64_t find_nan_device(const float* data, int64_t count, bool finite, int device) {
  if (count <= 0) return -1;
  DeviceGuard guard(device);
  constexpr unsigned long long kNone = ~0ull;
  DeviceBuffer<unsigned long long> d_first(1);
  upload(d_first.get(), &kNone, 1, "cudaMemcpy (first)");
  first_nan<<<static_cast<unsigned>(blocks_for(count, 256 * 8)), 256>>>(data, count, finite,
                                                                        d_first.get());
  check(cudaGetLastError(), "first_nan launch");
  unsigned long long first = kNone;
  download(&first, d_first.get(), 1, "cudaMemcpy (first)");
  return first == kNone ? -1 : static_cast<int64_t>(first);
}

void upsample_bilinear(const float* acts, int64_t planes, int64_t in_h, int64_t in_w,
                       int64_t out_h, int64_t out_w, float* out, int device) {
  const int64_t total = planes * out_h * out_w;
  if (total == 0) return;
  DeviceGuard guard(device);
  const DeviceAxis ay(bilinear_axis(in_h, out_h)), ax(bilinear_axis(in_w, out_w));
  const int64_t n_in = planes * in_h * in_w;
  DeviceBuffer<float> d_acts(n_in), d_out(total);
  upload(d_acts.get(), acts, n_in, "cudaMemcpy (acts)");
  upsample<<<static_cast<unsigned>(blocks_for(total, 256)), 256>>>(
      d_acts.get(), total, in_h, in_w, out_h, out_w, ay.view(), ax.view(), d_out.get());
  check(cudaGetLastError(), "upsample launch");
  download(out, d_out.get(), total, "cudaMemcpy (out)");
}

}  // namespace cuda
}  // namespace pyanalyzer
