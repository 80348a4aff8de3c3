// CPU implementation of the inversion step (see pyanalyzer/invert.h).
//
// Each plane takes three passes without data-dependent branches, so that they vectorise: the
// alpha term; the TV term's gh, gw (into buffers padded with a zero row above and a zero
// column on the left, so that the last pass reads its neighbours without tests); the update.
#include "pyanalyzer/invert.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace pyanalyzer {
namespace {

struct Consts {
  float x0, b, floor, e, alpha_scale, to_xn, beta, half, eps, tv_scale, lr, momentum;
  int bits;  // the whole exponent e, or -1
};

// ga[k] = the alpha-norm's gradient term at x = u[k] * x0 (times lambda_alpha).
void alpha_pass(const float* u, int64_t count, const Consts& k, float* ga) {
  if (k.bits >= 0) {
    for (int64_t at = 0; at < count; ++at) {
      const float x = u[at] * k.x0;
      float sq = std::max(std::fabs(x) / k.b, k.floor), pw = 1.0f;
#pragma GCC unroll 5
      for (int bit = 0; bit < 5; ++bit) {
        pw *= (k.bits >> bit) & 1 ? sq : 1.0f;
        sq *= sq;
      }
      const float sign = static_cast<float>(x > 0.0f) - static_cast<float>(x < 0.0f);
      ga[at] = pw * sign * k.alpha_scale;
    }
  } else {
    for (int64_t at = 0; at < count; ++at) {
      const float x = u[at] * k.x0;
      const float a = std::max(std::fabs(x) / k.b, k.floor);
      const float sign = static_cast<float>(x > 0.0f) - static_cast<float>(x < 0.0f);
      ga[at] = std::pow(a, k.e) * sign * k.alpha_scale;
    }
  }
}

// One row's gh, gw: dh with the row below (`below`, null for the last row: dh = 0), dw with
// the next column (0 in the last one); f = 2 for beta = 2, else beta (dh^2 + dw^2 + eps)^half.
template <bool Quadratic>
void tv_row(const float* row, const float* below, int64_t w, const Consts& k, float* gh,
            float* gw) {
  auto f = [&](float dh, float dw) {
    return Quadratic ? 2.0f : k.beta * std::pow(dh * dh + dw * dw + k.eps, k.half);
  };
  for (int64_t j = 0; j + 1 < w; ++j) {
    const float xn = row[j] * k.to_xn;
    const float dh = below != nullptr ? below[j] * k.to_xn - xn : 0.0f;
    const float dw = row[j + 1] * k.to_xn - xn;
    const float g = f(dh, dw);
    gh[j] = g * dh;
    gw[j] = g * dw;
  }
  const int64_t j = w - 1;
  const float dh = below != nullptr ? below[j] * k.to_xn - row[j] * k.to_xn : 0.0f;
  gh[j] = f(dh, 0.0f) * dh;
  gw[j] = 0.0f;
}

// The update of one row: g = grad + x0 (ga + lam * tv), the momentum buffer, the clamp.
template <bool Fresh>
void update_row(float* u, const float* grad, float* buf, const float* ga, const float* gh_above,
                const float* gh, const float* gw_left, const float* gw, int64_t w, float lam,
                float low, float high, const Consts& k) {
  for (int64_t j = 0; j < w; ++j) {
    const float g_tv = (gh_above[j] - gh[j] + gw_left[j] - gw[j]) * k.tv_scale;
    const float g = grad[j] + k.x0 * (ga[j] + lam * g_tv);
    const float b = Fresh ? g : k.momentum * buf[j] + g;
    buf[j] = b;
    u[j] = std::min(std::max(u[j] - k.lr * b, low), high);
  }
}

}  // namespace

void inversion_step(float* u, const float* grad, float* buffer, const float* lam_tv,
                    const float* lo, const float* hi, const InversionStep& s) {
  const int64_t h = s.height, w = s.width, plane = h * w, planes = s.n * s.channels;
  const float e = s.alpha - 1.0f;
  const bool whole = e == std::floor(e) && e >= 0.0f && e <= 31.0f;
  const float d = static_cast<float>(plane);
  const Consts k{s.x0,
                 s.b,
                 s.floor,
                 e,
                 s.alpha / (s.b * d) * s.lambda_alpha,
                 s.x0 / s.v,
                 s.beta,
                 s.beta / 2.0f - 1.0f,
                 s.eps,
                 1.0f / (s.v * d),
                 s.lr,
                 s.momentum,
                 whole ? static_cast<int>(e) : -1};
  const bool quadratic = s.beta == 2.0f;
  const int64_t pw = w + 1;  // the padded gw's row length
#pragma omp parallel
  {
    std::vector<float> ga(static_cast<size_t>(plane));
    std::vector<float> gh(static_cast<size_t>((h + 1) * w), 0.0f);  // row 0: zeros
    std::vector<float> gw(static_cast<size_t>(h * pw), 0.0f);       // column 0: zeros
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t img = p / s.channels, c = p % s.channels;
      float* up = u + p * plane;
      const float* gp = grad + p * plane;
      float* bp = buffer + p * plane;
      alpha_pass(up, plane, k, ga.data());
      for (int64_t i = 0; i < h; ++i) {
        const float* below = i + 1 < h ? up + (i + 1) * w : nullptr;
        float* rh = gh.data() + (i + 1) * w;
        float* rw = gw.data() + i * pw + 1;
        if (quadratic) {
          tv_row<true>(up + i * w, below, w, k, rh, rw);
        } else {
          tv_row<false>(up + i * w, below, w, k, rh, rw);
        }
      }
      for (int64_t i = 0; i < h; ++i) {
        const int64_t at = i * w;
        const float* rh = gh.data() + (i + 1) * w;
        const float* rw = gw.data() + i * pw + 1;
        if (s.fresh) {
          update_row<true>(up + at, gp + at, bp + at, ga.data() + at, rh - w, rh, rw - 1, rw, w,
                           lam_tv[img], lo[c], hi[c], k);
        } else {
          update_row<false>(up + at, gp + at, bp + at, ga.data() + at, rh - w, rh, rw - 1, rw, w,
                            lam_tv[img], lo[c], hi[c], k);
        }
      }
    }
  }
}

void roll_normalize(const float* u, const float* scale, const float* offset,
                    const int64_t* source, const RollShape& s, float* out) {
  const int64_t c = s.channels, h = s.height, w = s.width, plane = h * w;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.n; ++b) {
    for (int64_t i = 0; i < h; ++i) {
      const int64_t si = (i - s.shift_y + h) % h;
      for (int64_t k = 0; k < c; ++k) {
        const float* row = u + (b * c + source[k]) * plane + si * w;
        const float a = scale[k], o = offset[k];
        const int64_t split = s.shift_x;  // columns j < split read row[j - split + w]
        if (s.channels_last) {
          float* dst = out + ((b * h + i) * w) * c + k;
          for (int64_t j = 0; j < split; ++j) dst[j * c] = a * row[j - split + w] + o;
          for (int64_t j = split; j < w; ++j) dst[j * c] = a * row[j - split] + o;
        } else {
          float* dst = out + ((b * c + k) * h + i) * w;
          for (int64_t j = 0; j < split; ++j) dst[j] = a * row[j - split + w] + o;
          for (int64_t j = split; j < w; ++j) dst[j] = a * row[j - split] + o;
        }
      }
    }
  }
}

void roll_normalize_backward(const float* grad_out, const float* scale, const int64_t* source,
                             const RollShape& s, float* grad_u) {
  const int64_t c = s.channels, h = s.height, w = s.width, plane = h * w;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.n; ++b) {
    for (int64_t i = 0; i < h; ++i) {
      const int64_t oi = (i + s.shift_y) % h;  // the output row that read input row i
      for (int64_t k = 0; k < c; ++k) {
        float* dst = grad_u + (b * c + source[k]) * plane + i * w;
        const float a = scale[k];
        // input column j was read by output column (j + shift_x) mod W
        const int64_t split = w - s.shift_x;  // columns j < split map to j + shift_x
        if (s.channels_last) {
          const float* src = grad_out + ((b * h + oi) * w) * c + k;
          for (int64_t j = 0; j < split; ++j) dst[j] = a * src[(j + s.shift_x) * c];
          for (int64_t j = split; j < w; ++j) dst[j] = a * src[(j + s.shift_x - w) * c];
        } else {
          const float* src = grad_out + ((b * c + k) * h + oi) * w;
          for (int64_t j = 0; j < split; ++j) dst[j] = a * src[j + s.shift_x];
          for (int64_t j = split; j < w; ++j) dst[j] = a * src[j + s.shift_x - w];
        }
      }
    }
  }
}

}  // namespace pyanalyzer
