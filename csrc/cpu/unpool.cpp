// CPU reference for the unpool contract (see pyanalyzer/unpool.h).
#include "pyanalyzer/unpool.h"

#include <algorithm>
#include <cstddef>

namespace pyanalyzer {
namespace {

// True when offset t (pixel coordinate minus window start) hits one of `taps` taps spaced
// `dilation` apart. The dilation-1 case, by far the most common, needs no division.
inline bool on_window(int64_t t, int64_t taps, int64_t dilation) {
  if (dilation == 1) return t >= 0 && t < taps;
  return t >= 0 && t % dilation == 0 && t / dilation < taps;
}

// First bad switch of one plane (index within the plane), or -1. `Div` is the unsigned type
// used to split a switch into row and column: 32-bit division is several times cheaper, and
// this check runs on every call.
template <typename Div>
int64_t first_invalid_in_plane(const int64_t* sw, const UnpoolShape& shape,
                               const PoolGeometry& g) {
  const int64_t plane_size = shape.out_h * shape.out_w;
  const Div out_w = static_cast<Div>(shape.out_w);
  for (int64_t oh = 0, o = 0; oh < shape.pooled_h; ++oh) {
    const int64_t y0 = oh * g.stride_h - g.pad_h;
    for (int64_t ow = 0; ow < shape.pooled_w; ++ow, ++o) {
      const int64_t s = sw[o];
      if (s < 0 || s >= plane_size) return o;
      const int64_t y = static_cast<int64_t>(static_cast<Div>(s) / out_w);
      const int64_t x = s - y * shape.out_w;
      if (!on_window(y - y0, g.kernel_h, g.dilation_h) ||
          !on_window(x - (ow * g.stride_w - g.pad_w), g.kernel_w, g.dilation_w)) {
        return o;
      }
    }
  }
  return -1;
}

}  // namespace

int64_t find_invalid_switch(const int64_t* switches, const UnpoolShape& shape,
                            const PoolGeometry& g) {
  const int64_t pooled = shape.pooled_h * shape.pooled_w;
  const int64_t total = shape.planes * pooled;
  const bool narrow = shape.out_h * shape.out_w <= int64_t{0xFFFFFFFF};
  int64_t first_bad = total;  // sentinel: none found
#pragma omp parallel for schedule(static) reduction(min : first_bad)
  for (int64_t p = 0; p < shape.planes; ++p) {
    const int64_t* sw = switches + p * pooled;
    const int64_t bad = narrow ? first_invalid_in_plane<uint32_t>(sw, shape, g)
                               : first_invalid_in_plane<uint64_t>(sw, shape, g);
    if (bad >= 0) first_bad = std::min(first_bad, p * pooled + bad);
  }
  return first_bad == total ? -1 : first_bad;
}

void unpool(const float* values, const int64_t* switches, const UnpoolShape& shape,
            const PoolGeometry& /*geometry: the scatter needs only the switches*/, float* out) {
  const int64_t pooled = shape.pooled_h * shape.pooled_w;
  const int64_t plane_size = shape.out_h * shape.out_w;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < shape.planes; ++p) {
    const float* v = values + p * pooled;
    const int64_t* sw = switches + p * pooled;
    float* o = out + p * plane_size;
    std::fill(o, o + plane_size, 0.0f);
    // Row-major order of pool outputs: this fixes the order in which shared switches are
    // summed, the order the CUDA gather reproduces.
    for (int64_t i = 0; i < pooled; ++i) o[sw[i]] += v[i];
  }
}

}  // namespace pyanalyzer
