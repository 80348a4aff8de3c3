// Affine resampling fused with the model's input normalisation: activation maximization's
// transforms (pad, jitter, scale, rotate and the crop back, one matrix per image) and the
// preprocessing (scale, mean, std, channel order, channels-last layout) in one pass, forward
// and backward. The CPU render loop calls it once per step instead of an affine grid, a
// bilinear grid sample, a normalisation and a layout copy (and their backward passes).
//
// Contract:
//
//   x      [N, C, H, W]    float32, C-contiguous: the images (RGB or gray, 0..1)
//   theta  [N, 2, 3]       float64: output pixel (column j, row i) of image n samples the
//                          input at (sx, sy) = theta[n] @ (j, i, 1), in pixel coordinates
//                          whose integer points are pixel centres (sx along W, sy along H)
//   scale, shift [C]       float32: the normalisation of output channel k
//   source [C]             int64, a permutation of 0..C-1: output channel k reads input
//                          channel source[k] (the reversed order for a BGR model)
//   out    [N, Ho, Wo, C]  float32: channels last (NHWC)
//
//   out[n, i, j, k] = scale[k] * (fill + sum over the four bilinear corners (yc, xc) of
//                     (sx, sy) inside the H x W input of  weight * (x[n, source[k], yc, xc]
//                     - fill)) + shift[k]
//
// with weights (1 - fx)(1 - fy), fx (1 - fy), (1 - fx) fy, fx fy of the fractions fx, fy of
// (sx, sy): bilinear sampling with `fill` outside the input, blending into it across the edge
// pixels. That is torch.nn.functional.grid_sample(x - fill, grid, "bilinear", "zeros",
// align_corners=False) + fill for the grid of the same matrix, then the normalisation, to
// float rounding (the coordinates are computed here in float64, the weights in float32).
//
// The backward pass is the transpose: grad_x[n, source[k], yc, xc] += weight * scale[k] *
// grad_out[n, i, j, k] over every output pixel and corner, summed per image in the order of
// the output pixels (rows, then columns, then the corners in the order above), so the result
// does not depend on the thread count. No gradient flows to theta, scale or shift.
#pragma once

#include <cstdint>

namespace pyanalyzer {

struct WarpShape {
  int64_t n, channels;
  int64_t in_h, in_w;
  int64_t out_h, out_w;
};

// out [N, Ho, Wo, C] from x; OpenMP-parallel over images and output rows.
void warp_normalize(const float* x, const double* theta, const float* scale,
                    const float* shift, const int64_t* source, float fill,
                    const WarpShape& shape, float* out);

// grad_x [N, C, H, W] (overwritten) from grad_out [N, Ho, Wo, C]; OpenMP-parallel over images.
void warp_normalize_backward(const float* grad_out, const double* theta, const float* scale,
                             const int64_t* source, const WarpShape& shape, float* grad_x);

}  // namespace pyanalyzer
