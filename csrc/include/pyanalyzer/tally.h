// Network-dissection tally: upsample each unit's activation map bilinearly to the segmentation
// size, threshold it, and count it against concept segmentations (Bau et al., "Network
// Dissection", CVPR 2017; the counts of NetDissect-Lite's tally).
//
// Contract (shared by the CPU reference in csrc/cpu and the CUDA kernel in csrc/cuda). All
// arrays are C-contiguous.
//
//   acts             [N, U, h, w]  float32, no NaN
//   thresholds       [U]           float32, no NaN
//   seg              [N, K, Sh, Sw] int32, concept ids in [0, C); 0 = unlabelled. K >= 0 label
//                                  channels per pixel; Sh, Sw independent of h, w.
//   image_labels     [N, L]        int32, image-level concept ids in [0, C); 0 = padding
//   image_categories [N, G]        uint8, nonzero where image n is labelled in category g
//
// Counts, int64, ADDED TO (never cleared), so that batches and shards add up:
//
//   intersection  [U, C]   unit_area_cat [U, G]   unit_area [U]   concept_area [C]
//
// For every image n and unit u, with M = { pixels p of the Sh x Sw grid : up(acts[n, u])[p] >
// thresholds[u] } (strictly greater):
//   unit_area[u]        += |M|
//   unit_area_cat[u, g] += |M|                  for every g with image_categories[n, g] != 0
//   intersection[u, c]  += 1                    for every p in M and every channel k with
//                                               c = seg[n, k, p] != 0; a concept present in two
//                                               channels of one pixel counts once PER CHANNEL
//   intersection[u, c]  += |M|                  for every image label c != 0 (per occurrence)
// and, once per call and independently of the units:
//   concept_area[c]     += 1                    for every (n, k, p) with seg[n, k, p] = c != 0
//   concept_area[c]     += Sh * Sw              for every image label c != 0 of every image
// Column 0 of intersection and entry 0 of concept_area are never touched. The IoU of unit u
// and concept c of category g is then intersection[u, c] / (unit_area_cat[u, g] +
// concept_area[c] - intersection[u, c]) (the caller's business).
//
// BILINEAR UPSAMPLING, bit for bit the same on CPU, CUDA and the numpy reference in
// tests/core/reference_tally.py. It is torch.nn.functional.interpolate(mode="bilinear",
// align_corners=False) and PIL's 'F' resize (half-pixel centres, edge clamp) up to float32
// rounding of the weights. Per axis (input size `in`, output size `out`), for each output index
// d, in IEEE double (every operation rounded, no fused multiply-add):
//
//   src  = max(0.0, (d + 0.5) * (in / out) - 0.5)       [in / out: one double division]
//   lo   = min(floor(src), in - 1)
//   hi   = min(lo + 1, in - 1)
//   w_hi = (float)(src - lo)                            [round to nearest float]
//   w_lo = 1.0f - w_hi                                  [float subtraction]
//
// (bilinear_axis computes these once per call on the host; CUDA copies the same arrays.) The
// value at output pixel (Y, X), with a = acts[n, u], in IEEE float32, each product and sum
// rounded to nearest, no fused multiply-add, in exactly this order:
//
//   top = w_lo[X] * a[lo[Y], lo[X]] + w_hi[X] * a[lo[Y], hi[X]]
//   bot = w_lo[X] * a[hi[Y], lo[X]] + w_hi[X] * a[hi[Y], hi[X]]
//   v   = w_lo[Y] * top + w_hi[Y] * bot
//
// The CPU file is compiled with -ffp-contract=off; the CUDA kernel uses __fmul_rn/__fadd_rn.
//
// SPEED (why the CPU tally is fast): v is a convex combination of its four corners up to a few
// float roundings, |v - exact| <= 6.1 * 2^-24 * A with A = max |a| over the map. A cell of
// output pixels sharing the same four corners is therefore skipped only when
// (double)max(corners) < (double)t - (1e-6 * A + 1e-30): no pixel of it can exceed t, so
// skipping never changes a count. Only pixels of active cells are evaluated, and only fired
// pixels read seg.
#pragma once

#include <cstdint>
#include <vector>

namespace pyanalyzer {

// Bilinear weights along one axis (see the header comment). Output indices with lo == j form
// the contiguous range [start[j], start[j + 1]) (empty when downsampling skips row j); all of
// them share hi == min(j + 1, in - 1).
struct BilinearAxis {
  std::vector<int32_t> lo, hi;     // [out]
  std::vector<float> w_lo, w_hi;   // [out]
  std::vector<int32_t> start;      // [in + 1]
};

// Requires in >= 1, out >= 1 and in < 2^31, out < 2^31.
BilinearAxis bilinear_axis(int64_t in, int64_t out);

// Sizes of one tally call.
struct TallyShape {
  int64_t images;      // N
  int64_t units;       // U
  int64_t in_h, in_w;  // h, w (>= 1)
  int64_t channels;    // K (>= 0)
  int64_t seg_h, seg_w;  // Sh, Sw (>= 1)
  int64_t labels;      // L (>= 0)
  int64_t concepts;    // C (>= 1)
  int64_t categories;  // G (>= 0)
};

struct TallyInputs {
  const float* acts;                // [N, U, h, w]
  const float* thresholds;          // [U]
  const int32_t* seg;               // [N, K, Sh, Sw]
  const int32_t* image_labels;      // [N, L]
  const uint8_t* image_categories;  // [N, G]
};

struct TallyCounts {
  int64_t* intersection;   // [U, C]
  int64_t* unit_area_cat;  // [U, G]
  int64_t* unit_area;      // [U]
  int64_t* concept_area;   // [C]
};

// Flat index of the first value of data[0..n) outside [lo, hi), or -1. OpenMP-parallel; the
// smallest bad index is returned. Validates seg, image_labels and concept categories.
int64_t find_out_of_range(const int32_t* data, int64_t n, int32_t lo, int32_t hi);

// CPU reference: adds this batch's counts. Inputs must have been validated (no NaN, ids in
// range). OpenMP over units, in blocks of images whose seg fits in cache; every count of unit u
// is written by one thread only, so there are no races and no reductions across threads
// except for concept_area (integer sums: exact in any order).
void tally(const TallyInputs& in, const TallyShape& shape, const TallyCounts& counts);

// The upsampling alone (a debugging and testing aid): out [planes, out_h, out_w] from
// acts [planes, in_h, in_w] with the formula above. OpenMP over planes.
void upsample_bilinear(const float* acts, int64_t planes, int64_t in_h, int64_t in_w,
                       int64_t out_h, int64_t out_w, float* out);

namespace cuda {

// Same contract as pyanalyzer::tally on device `device` with HOST pointers: copies the inputs
// to the device, counts there (one warp per (image, unit) map, integer atomics) and adds the
// batch's counts to the host arrays. The caller batches large N. Throws std::runtime_error on
// any CUDA error.
void tally(const TallyInputs& in, const TallyShape& shape, const TallyCounts& counts, int device);

// The same count with `in.acts` a DEVICE pointer of device `device` (C-contiguous float32
// [N, U, h, w], e.g. an onnxruntime output bound to the GPU): the activations are read where
// they are, never copied; the other inputs are host pointers as above. When `peaks` is not
// null it receives each map's maximum (host float32 [N, U], the top images' ranking). The
// call waits for the device before it returns (the counts are on the host then).
void tally_from_device(const TallyInputs& in, const TallyShape& shape, const TallyCounts& counts,
                       int device, float* peaks);

// Flat index of the first NaN (with `finite` also: of the first infinity) among the `count`
// floats at DEVICE pointer `data` of device `device`, or -1. Waits for the answer.
int64_t find_nan_device(const float* data, int64_t count, bool finite, int device);

// Same as pyanalyzer::upsample_bilinear on device `device` (host pointers); bitwise equal.
void upsample_bilinear(const float* acts, int64_t planes, int64_t in_h, int64_t in_w,
                       int64_t out_h, int64_t out_w, float* out, int device);

}  // namespace cuda
}  // namespace pyanalyzer
