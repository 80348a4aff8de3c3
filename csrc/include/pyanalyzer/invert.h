// One optimiser step of network inversion by optimisation (Mahendran & Vedaldi 2015) after the
// data term's backward pass, in one pass over the image: the closed-form gradients of the
// alpha-norm and total-variation priors added to the data term's gradient, momentum SGD
// (torch.optim.SGD's update: no dampening, no Nesterov) and the clamp to the pixel box. The
// CPU render loop of pyanalyzer/methods/inversion/optim.py runs it instead of about thirty
// small tensor operations and the optimiser's Python.
//
// Contract (u is the image in units of x0: x = u * x0 are centred 0-255 pixels):
//
//   u       [N, C, H, W] float32, C-contiguous, updated in place
//   grad    [N, C, H, W] float32: the data term's gradient with respect to u (read only)
//   buffer  [N, C, H, W] float32: the momentum buffer, updated in place (overwritten when
//           `fresh`, torch's first step after the buffer was cleared)
//   lam_tv  [N] float32: the TV weight of each image
//   lo, hi  [C] float32: the box of each channel (-inf, +inf: none)
//
//   x = u * x0, a = max(|x| / b, floor), d = H * W
//   dRa/dx   = alpha / (b d) * a^(alpha - 1) * sign(x)               (sign(0) = 0)
//   xn = x / v; dh = xn[i+1, j] - xn[i, j], dw = xn[i, j+1] - xn[i, j] (0 past the last row or
//   column); f = 2 (beta = 2) or beta (dh^2 + dw^2 + eps)^(beta/2 - 1); gh = f dh, gw = f dw
//   dRtv/dx  = (gh[i-1, j] - gh[i, j] + gw[i, j-1] - gw[i, j]) / (v d)  (absent terms are 0)
//   g        = grad + x0 * (lambda_alpha * dRa/dx + lam_tv[n] * dRtv/dx)
//   buffer   = fresh ? g : momentum * buffer + g
//   u        = min(max(u - lr * buffer, lo[c]), hi[c])
//
// That is the float32 torch sequence of optim.py to float rounding (the operations are grouped
// differently). A whole alpha - 1 in 0..31 is raised by multiplications, another by powf.
// OpenMP over the N * C planes; each plane's alpha and TV terms are computed from the old
// values first (the TV term reads the neighbours), then the update is written in place.
#pragma once

#include <cstdint>

namespace pyanalyzer {

struct InversionStep {
  int64_t n, channels, height, width;
  float x0;
  float alpha, lambda_alpha, b, floor;  // the alpha-norm
  float beta, v, eps;                   // total variation
  float lr, momentum;
  bool fresh;
};

void inversion_step(float* u, const float* grad, float* buffer, const float* lam_tv,
                    const float* lo, const float* hi, const InversionStep& step);

// The inversion loop's image to the model's input: u in units of x0, rolled by whole pixels
// (the jitter; torch.roll's direction) and normalised, in one pass.
//
//   u    [N, C, H, W] float32, C-contiguous
//   out  [N, H, W, C] (channels_last) or [N, C, H, W] float32
//   out[n, k, i, j] = scale[k] * u[n, source[k], (i - shift_y) mod H, (j - shift_x) mod W]
//                     + offset[k]
//
// The backward pass gathers too (a roll is a permutation): grad_u[n, source[k], i, j] =
// scale[k] * grad_out[n, k, (i + shift_y) mod H, (j + shift_x) mod W]. OpenMP over images.
struct RollShape {
  int64_t n, channels, height, width;
  int64_t shift_y, shift_x;  // already reduced to 0..H-1 and 0..W-1
  bool channels_last;
};

void roll_normalize(const float* u, const float* scale, const float* offset,
                    const int64_t* source, const RollShape& shape, float* out);

void roll_normalize_backward(const float* grad_out, const float* scale, const int64_t* source,
                             const RollShape& shape, float* grad_u);

}  // namespace pyanalyzer
