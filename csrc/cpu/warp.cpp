// CPU implementation of the fused resampling and normalisation (see pyanalyzer/warp.h).
#include "pyanalyzer/warp.h"

#include <algorithm>
#include <cstdint>

namespace pyanalyzer {
namespace {

// Where one output pixel samples its input: the top-left corner (x0, y0), the four weights
// (top-left, top-right, bottom-left, bottom-right) and which corners lie inside the input.
struct Sample {
  int64_t x0, y0;
  float w00, w01, w10, w11;
  bool left, right, top, bottom;  // x0, x0 + 1, y0, y0 + 1 inside the input
  bool inside;                    // all four
};

inline Sample sample_at(const double* t, int64_t i, int64_t j, int64_t h, int64_t w) {
  const double dj = static_cast<double>(j), di = static_cast<double>(i);
  // Clamped to [-2, size + 1]: beyond it every corner is outside, as it is at the clamp, so
  // the result is the same and the integer conversion cannot overflow. Shifted by +2 the
  // coordinate is >= 0, where truncation is the floor (no libm call).
  const double sx = std::min(std::max(t[0] * dj + t[1] * di + t[2], -2.0), w + 1.0) + 2.0;
  const double sy = std::min(std::max(t[3] * dj + t[4] * di + t[5], -2.0), h + 1.0) + 2.0;
  const int64_t ix = static_cast<int64_t>(sx), iy = static_cast<int64_t>(sy);
  Sample s;
  s.x0 = ix - 2;
  s.y0 = iy - 2;
  const float ax = static_cast<float>(sx - static_cast<double>(ix));
  const float ay = static_cast<float>(sy - static_cast<double>(iy));
  s.w00 = (1.0f - ax) * (1.0f - ay);
  s.w01 = ax * (1.0f - ay);
  s.w10 = (1.0f - ax) * ay;
  s.w11 = ax * ay;
  s.left = s.x0 >= 0 && s.x0 < w;
  s.right = s.x0 + 1 >= 0 && s.x0 + 1 < w;
  s.top = s.y0 >= 0 && s.y0 < h;
  s.bottom = s.y0 + 1 >= 0 && s.y0 + 1 < h;
  s.inside = s.left && s.right && s.top && s.bottom;
  return s;
}

// The common case of sample_at, without its clamps and tests: where (sx, sy) lies within the
// clamp's range and all four corners are inside the input, the top-left corner and the
// fractions exactly as sample_at computes them (the same shift by +2), and true; else false.
inline bool inside_at(double sx, double sy, int64_t h, int64_t w, int64_t* x0, int64_t* y0,
                      float* ax, float* ay) {
  if (!(sx >= -2.0 && sx <= w + 1.0 && sy >= -2.0 && sy <= h + 1.0)) return false;
  const double xs = sx + 2.0, ys = sy + 2.0;
  const int64_t ix = static_cast<int64_t>(xs), iy = static_cast<int64_t>(ys);
  if (ix < 2 || ix - 1 >= w || iy < 2 || iy - 1 >= h) return false;
  *x0 = ix - 2;
  *y0 = iy - 2;
  *ax = static_cast<float>(xs - static_cast<double>(ix));
  *ay = static_cast<float>(ys - static_cast<double>(iy));
  return true;
}

// kC > 0: the channel count, fixed at compile time (the loops over channels unroll); 0: any.
template <int kC>
void forward_impl(const float* __restrict__ x, const double* theta, const float* scale,
                  const float* shift, const int64_t* source, float fill, const WarpShape& shape,
                  float* __restrict__ out) {
  const int64_t n = shape.n, c = kC > 0 ? kC : shape.channels, h = shape.in_h, w = shape.in_w;
  const int64_t oh = shape.out_h, ow = shape.out_w;
  const int64_t plane = h * w;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t i = 0; i < oh; ++i) {
      const double* t = theta + b * 6;
      const float* planes = x + b * c * plane;
      float* row = out + ((b * oh + i) * ow) * c;
      const double di = static_cast<double>(i);
      for (int64_t j = 0; j < ow; ++j) {
        const double dj = static_cast<double>(j);
        const double sx = t[0] * dj + t[1] * di + t[2], sy = t[3] * dj + t[4] * di + t[5];
        int64_t x0, y0;
        float ax, ay;
        if (inside_at(sx, sy, h, w, &x0, &y0, &ax, &ay)) {  // the sum below, without its tests
          const float w00 = (1.0f - ax) * (1.0f - ay), w01 = ax * (1.0f - ay);
          const float w10 = (1.0f - ax) * ay, w11 = ax * ay;
          const float* corner = planes + y0 * w + x0;
          for (int64_t k = 0; k < c; ++k) {
            const float* p = corner + source[k] * plane;
            const float v = w00 * (p[0] - fill) + w01 * (p[1] - fill) + w10 * (p[w] - fill) +
                            w11 * (p[w + 1] - fill);
            row[j * c + k] = scale[k] * (v + fill) + shift[k];
          }
          continue;
        }
        const Sample s = sample_at(t, i, j, h, w);
        const int64_t at = s.y0 * w + s.x0;  // only read where the corner is inside
        for (int64_t k = 0; k < c; ++k) {
          const float* p = planes + source[k] * plane;
          float v = 0.0f;
          if (s.top && s.left) v += s.w00 * (p[at] - fill);
          if (s.top && s.right) v += s.w01 * (p[at + 1] - fill);
          if (s.bottom && s.left) v += s.w10 * (p[at + w] - fill);
          if (s.bottom && s.right) v += s.w11 * (p[at + w + 1] - fill);
          row[j * c + k] = scale[k] * (v + fill) + shift[k];
        }
      }
    }
  }
}

template <int kC>
void backward_impl(const float* __restrict__ grad_out, const double* theta, const float* scale,
                   const int64_t* source, const WarpShape& shape, float* __restrict__ grad_x) {
  const int64_t n = shape.n, c = kC > 0 ? kC : shape.channels, h = shape.in_h, w = shape.in_w;
  const int64_t oh = shape.out_h, ow = shape.out_w;
  const int64_t plane = h * w;
  // One image per thread: its planes are written by that thread alone, in a fixed order.
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    float* gx = grad_x + b * c * plane;
    std::fill(gx, gx + c * plane, 0.0f);
    const double* t = theta + b * 6;
    const float* g = grad_out + b * oh * ow * c;
    for (int64_t i = 0; i < oh; ++i) {
      const double di = static_cast<double>(i);
      for (int64_t j = 0; j < ow; ++j, g += c) {
        const double dj = static_cast<double>(j);
        const double sx = t[0] * dj + t[1] * di + t[2], sy = t[3] * dj + t[4] * di + t[5];
        int64_t x0, y0;
        float ax, ay;
        if (inside_at(sx, sy, h, w, &x0, &y0, &ax, &ay)) {  // the adds below, without tests
          const float w00 = (1.0f - ax) * (1.0f - ay), w01 = ax * (1.0f - ay);
          const float w10 = (1.0f - ax) * ay, w11 = ax * ay;
          float* corner = gx + y0 * w + x0;
          for (int64_t k = 0; k < c; ++k) {
            float* p = corner + source[k] * plane;
            const float v = g[k] * scale[k];
            p[0] += w00 * v;
            p[1] += w01 * v;
            p[w] += w10 * v;
            p[w + 1] += w11 * v;
          }
          continue;
        }
        const Sample s = sample_at(t, i, j, h, w);
        const int64_t at = s.y0 * w + s.x0;
        for (int64_t k = 0; k < c; ++k) {
          float* p = gx + source[k] * plane;
          const float v = g[k] * scale[k];
          if (s.top && s.left) p[at] += s.w00 * v;
          if (s.top && s.right) p[at + 1] += s.w01 * v;
          if (s.bottom && s.left) p[at + w] += s.w10 * v;
          if (s.bottom && s.right) p[at + w + 1] += s.w11 * v;
        }
      }
    }
  }
}

}  // namespace

void warp_normalize(const float* x, const double* theta, const float* scale,
                    const float* shift, const int64_t* source, float fill,
                    const WarpShape& shape, float* out) {
  if (shape.channels == 3) {
    forward_impl<3>(x, theta, scale, shift, source, fill, shape, out);
  } else if (shape.channels == 1) {
    forward_impl<1>(x, theta, scale, shift, source, fill, shape, out);
  } else {
    forward_impl<0>(x, theta, scale, shift, source, fill, shape, out);
  }
}

void warp_normalize_backward(const float* grad_out, const double* theta, const float* scale,
                             const int64_t* source, const WarpShape& shape, float* grad_x) {
  if (shape.channels == 3) {
    backward_impl<3>(grad_out, theta, scale, source, shape, grad_x);
  } else if (shape.channels == 1) {
    backward_impl<1>(grad_out, theta, scale, source, shape, grad_x);
  } else {
    backward_impl<0>(grad_out, theta, scale, source, shape, grad_x);
  }
}

}  // namespace pyanalyzer
