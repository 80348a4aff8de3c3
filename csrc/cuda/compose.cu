// CUDA implementation of the compose contract (see pyanalyzer/compose.h).
//
// One block per (unit, chunk of images, range of concepts). For each image and formula the
// block's threads sweep the Sh x Sw pixels: a pixel in the formula (evaluated term by term
// against the image's labels and seg channels, set semantics) adds one to the image's |F| and,
// when the unit fires there (tally.h's value, __fmul_rn/__fadd_rn on the host-computed weight
// tables: bitwise the CPU's), to |M ∧ F|; each distinct seg concept of the pixel that is not
// an image label adds one to its shared-memory counters. Once the image's sweep is done, its
// image labels add the image's |F| and |M ∧ F| (a label covers every pixel), each distinct
// label once. The shared counters are 32-bit and are flushed to the 64-bit global counters
// before they could overflow (at most Sh * Sw per image) and at the end. Integer sums do not
// depend on their order: the counts equal the CPU's exactly.
#include "pyanalyzer/compose.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bilinear.cuh"
#include "common.cuh"
#include "pyanalyzer/tally.h"

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

constexpr int kThreads = 256;
constexpr int64_t kSharedBytes = int64_t{48} << 10;  // no opt-in needed below this
constexpr int64_t kTargetBlocks = 4096;
constexpr int64_t kMaxGridYZ = 65535;

// Per-launch sizes the host works out.
struct Launch {
  int64_t chunk;        // images per block (grid.y = ceil(N / chunk))
  int64_t flush_every;  // images between flushes of the 32-bit shared counters
  int64_t range;        // concepts per block (grid.z = ceil((C - 1) / range))
};

// Whether concept c != 0 is present at pixel p (set semantics: any label, any channel).
__device__ __forceinline__ bool present(int32_t c, const int32_t* __restrict__ labels,
                                        int64_t n_labels, const int32_t* __restrict__ seg,
                                        int64_t channels, int64_t plane, int64_t p) {
  for (int64_t l = 0; l < n_labels; ++l) {
    if (labels[l] == c) return true;
  }
  for (int64_t k = 0; k < channels; ++k) {
    if (seg[k * plane + p] == c) return true;
  }
  return false;
}

// Whether pixel p is in the formula (terms, ops), read left to right as the header says.
__device__ __forceinline__ bool in_formula(const int32_t* __restrict__ terms,
                                           const int8_t* __restrict__ ops, int64_t n_terms,
                                           const int32_t* __restrict__ labels, int64_t n_labels,
                                           const int32_t* __restrict__ seg, int64_t channels,
                                           int64_t plane, int64_t p) {
  if (terms[0] == 0) return true;  // the empty formula
  bool f = present(terms[0], labels, n_labels, seg, channels, plane, p);
  for (int64_t t = 1; t < n_terms && terms[t] != 0; ++t) {
    const int8_t op = ops[t];
    if (op == kComposeAnd) {
      if (f) f = present(terms[t], labels, n_labels, seg, channels, plane, p);
    } else if (op == kComposeOr) {
      if (!f) f = present(terms[t], labels, n_labels, seg, channels, plane, p);
    } else {  // kComposeAndNot (validated on the host)
      if (f) f = !present(terms[t], labels, n_labels, seg, channels, plane, p);
    }
  }
  return f;
}

// Adds the shared counters of this block's concepts to the global ones and clears them. Every
// thread of the block must call it.
__device__ void flush(unsigned int* s_f, unsigned int* s_mf, int64_t beam, int64_t range,
                      int64_t c_lo, int64_t c_hi, int64_t concepts, int64_t u,
                      unsigned long long* __restrict__ f_concept,
                      unsigned long long* __restrict__ mf_concept) {
  __syncthreads();
  for (int64_t i = threadIdx.x; i < beam * range; i += blockDim.x) {
    const int64_t b = i / range, c = c_lo + i % range;
    if (c < c_hi) {
      const int64_t at = (u * beam + b) * concepts + c;
      if (s_f[i] != 0) atomicAdd(f_concept + at, static_cast<unsigned long long>(s_f[i]));
      if (s_mf[i] != 0) atomicAdd(mf_concept + at, static_cast<unsigned long long>(s_mf[i]));
    }
    s_f[i] = 0;
    s_mf[i] = 0;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads)
    compose_counts(const float* __restrict__ acts, const float* __restrict__ thresholds,
                   const int32_t* __restrict__ seg, const int32_t* __restrict__ labels,
                   const int32_t* __restrict__ formulas, const int8_t* __restrict__ ops,
                   AxisView ay, AxisView ax, ComposeShape s, Launch launch,
                   unsigned long long* __restrict__ f_concept,
                   unsigned long long* __restrict__ mf_concept,
                   unsigned long long* __restrict__ f_area,
                   unsigned long long* __restrict__ mf_area) {
  extern __shared__ unsigned long long shared[];
  const int64_t beam = s.beam, range = launch.range;
  unsigned long long* s_area_f = shared;         // [B] this block's |F|, all its images
  unsigned long long* s_area_mf = shared + beam;  // [B] this block's |M ∧ F|
  unsigned int* s_img_f = reinterpret_cast<unsigned int*>(shared + 2 * beam);  // [B] one image
  unsigned int* s_img_mf = s_img_f + beam;                                     // [B]
  unsigned int* s_f = s_img_mf + beam;   // [B, range] |F ∧ c| since the last flush
  unsigned int* s_mf = s_f + beam * range;  // [B, range] |M ∧ F ∧ c|

  const int64_t u = blockIdx.x;
  const int64_t n_begin = static_cast<int64_t>(blockIdx.y) * launch.chunk;
  const int64_t n_end = min(s.images, n_begin + launch.chunk);
  const int64_t c_lo = 1 + static_cast<int64_t>(blockIdx.z) * range;
  const int64_t c_hi = min(s.concepts, c_lo + range);
  const bool counts_areas = blockIdx.z == 0;  // one range counts |F| and |M ∧ F|
  const int64_t plane = s.seg_h * s.seg_w, hw = s.in_h * s.in_w, w = s.in_w;
  const float t = thresholds[u];

  for (int64_t i = threadIdx.x; i < 2 * beam; i += blockDim.x) {
    shared[i] = 0;
    s_img_f[i] = 0;  // s_img_f and s_img_mf are contiguous: 2B entries
  }
  for (int64_t i = threadIdx.x; i < 2 * beam * range; i += blockDim.x) s_f[i] = 0;
  __syncthreads();

  int64_t since_flush = 0;
  for (int64_t n = n_begin; n < n_end; ++n) {  // the same bounds for every thread
    if (since_flush == launch.flush_every) {
      flush(s_f, s_mf, beam, range, c_lo, c_hi, s.concepts, u, f_concept, mf_concept);
      since_flush = 0;
    }
    const float* a = acts + (n * s.units + u) * hw;
    const int32_t* sg = seg + n * s.channels * plane;
    const int32_t* lab = labels + n * s.labels;
    for (int64_t b = 0; b < beam; ++b) {
      const int32_t* terms = formulas + (u * beam + b) * s.terms;
      const int8_t* term_ops = ops + (u * beam + b) * s.terms;
      unsigned int cf = 0, cmf = 0;
      for (int64_t p = threadIdx.x; p < plane; p += blockDim.x) {
        if (!in_formula(terms, term_ops, s.terms, lab, s.labels, sg, s.channels, plane, p)) {
          continue;
        }
        const int64_t y = p / s.seg_w, x = p % s.seg_w;
        const int64_t ylo = ay.lo[y], yhi = ay.hi[y], xlo = ax.lo[x], xhi = ax.hi[x];
        const float v = bilinear(ay.w_lo[y], ay.w_hi[y], ax.w_lo[x], ax.w_hi[x],
                                 a[ylo * w + xlo], a[ylo * w + xhi], a[yhi * w + xlo],
                                 a[yhi * w + xhi]);
        const bool fires = v > t;
        ++cf;
        cmf += fires ? 1u : 0u;
        for (int64_t k = 0; k < s.channels; ++k) {
          const int32_t c = sg[k * plane + p];
          if (c < c_lo || c >= c_hi) continue;  // another block's concepts, or 0
          bool seen = false;                    // set semantics: count c once per pixel
          for (int64_t l = 0; l < s.labels && !seen; ++l) seen = lab[l] == c;
          for (int64_t k2 = 0; k2 < k && !seen; ++k2) seen = sg[k2 * plane + p] == c;
          if (seen) continue;
          const int64_t at = b * range + (c - c_lo);
          atomicAdd(s_f + at, 1u);
          if (fires) atomicAdd(s_mf + at, 1u);
        }
      }
      if (cf != 0) atomicAdd(s_img_f + b, cf);
      if (cmf != 0) atomicAdd(s_img_mf + b, cmf);
    }
    __syncthreads();
    // The image's labels cover all of F: they add its |F| and |M ∧ F|, each label once.
    for (int64_t b = threadIdx.x; b < beam; b += blockDim.x) {
      const unsigned int img_f = s_img_f[b], img_mf = s_img_mf[b];
      if (counts_areas) {
        s_area_f[b] += img_f;
        s_area_mf[b] += img_mf;
      }
      if (img_f != 0) {
        for (int64_t l = 0; l < s.labels; ++l) {
          const int32_t c = lab[l];
          if (c < c_lo || c >= c_hi) continue;
          bool seen = false;
          for (int64_t l2 = 0; l2 < l && !seen; ++l2) seen = lab[l2] == c;
          if (seen) continue;
          s_f[b * range + (c - c_lo)] += img_f;
          s_mf[b * range + (c - c_lo)] += img_mf;
        }
      }
      s_img_f[b] = 0;
      s_img_mf[b] = 0;
    }
    __syncthreads();
    ++since_flush;
  }
  flush(s_f, s_mf, beam, range, c_lo, c_hi, s.concepts, u, f_concept, mf_concept);
  if (counts_areas) {
    for (int64_t b = threadIdx.x; b < beam; b += blockDim.x) {
      if (s_area_f[b] != 0) atomicAdd(f_area + u * beam + b, s_area_f[b]);
      if (s_area_mf[b] != 0) atomicAdd(mf_area + u * beam + b, s_area_mf[b]);
    }
  }
}

// counts[i] += device[i] for i < count (device counts start from zero on every call).
void add_counts(int64_t* counts, const unsigned long long* device, int64_t count,
                const char* what) {
  if (count <= 0) return;
  std::vector<unsigned long long> host(count);
  download(host.data(), device, count, what);
  for (int64_t i = 0; i < count; ++i) counts[i] += static_cast<int64_t>(host[i]);
}

}  // namespace

void compose(const ComposeInputs& in, const ComposeShape& s, const ComposeCounts& counts,
             int device) {
  if (s.images == 0 || s.units == 0 || s.beam == 0) return;
  const int64_t plane = s.seg_h * s.seg_w;
  // Shared memory: 2B 64-bit areas, 2B 32-bit image areas, 2 * B * range 32-bit counters.
  const int64_t fixed = s.beam * (2 * 8 + 2 * 4);
  const int64_t per_concept = s.beam * 2 * 4;
  const int64_t fit = (kSharedBytes - fixed) / per_concept;
  if (fit < 1) {
    throw std::runtime_error("compose (CUDA): a beam of " + std::to_string(s.beam) +
                             " formulas per unit does not fit in shared memory; use a narrower "
                             "beam or the CPU");
  }
  Launch launch{};
  launch.range = std::max<int64_t>(1, std::min(s.concepts - 1, fit));
  const int64_t ranges = std::max<int64_t>(1, (s.concepts - 1 + launch.range - 1) / launch.range);
  if (ranges > kMaxGridYZ || s.units > int64_t{0x7fffffff}) {
    throw std::runtime_error("compose (CUDA): too many units or concepts for one launch");
  }
  const int64_t want_chunks =
      std::clamp<int64_t>((kTargetBlocks + s.units * ranges - 1) / (s.units * ranges), 1,
                          std::min<int64_t>(s.images, kMaxGridYZ));
  launch.chunk = (s.images + want_chunks - 1) / want_chunks;
  const int64_t chunks = (s.images + launch.chunk - 1) / launch.chunk;
  // An image adds at most Sh * Sw to a 32-bit counter.
  launch.flush_every = std::max<int64_t>(1, int64_t{0xffffffff} / std::max<int64_t>(1, plane));

  DeviceGuard guard(device);
  const int64_t n_acts = s.images * s.units * s.in_h * s.in_w;
  const int64_t n_seg = s.images * s.channels * plane;
  const int64_t n_labels = s.images * s.labels;
  const int64_t n_formulas = s.units * s.beam * s.terms;
  const int64_t n_concept = s.units * s.beam * s.concepts, n_area = s.units * s.beam;
  const DeviceAxis ay(bilinear_axis(s.in_h, s.seg_h)), ax(bilinear_axis(s.in_w, s.seg_w));
  DeviceBuffer<float> d_acts(n_acts), d_thresholds(s.units);
  DeviceBuffer<int32_t> d_seg(n_seg), d_labels(n_labels), d_formulas(n_formulas);
  DeviceBuffer<int8_t> d_ops(n_formulas);
  DeviceBuffer<unsigned long long> d_f(n_concept), d_mf(n_concept), d_fa(n_area), d_mfa(n_area);
  upload(d_acts.get(), in.acts, n_acts, "cudaMemcpy (acts)");
  upload(d_thresholds.get(), in.thresholds, s.units, "cudaMemcpy (thresholds)");
  upload(d_seg.get(), in.seg, n_seg, "cudaMemcpy (seg)");
  upload(d_labels.get(), in.image_labels, n_labels, "cudaMemcpy (image_labels)");
  upload(d_formulas.get(), in.formulas, n_formulas, "cudaMemcpy (formulas)");
  upload(d_ops.get(), in.ops, n_formulas, "cudaMemcpy (ops)");
  check(cudaMemset(d_f.get(), 0, sizeof(unsigned long long) * n_concept), "cudaMemset (f)");
  check(cudaMemset(d_mf.get(), 0, sizeof(unsigned long long) * n_concept), "cudaMemset (mf)");
  check(cudaMemset(d_fa.get(), 0, sizeof(unsigned long long) * n_area), "cudaMemset (f_area)");
  check(cudaMemset(d_mfa.get(), 0, sizeof(unsigned long long) * n_area), "cudaMemset (mf_area)");

  const dim3 grid(static_cast<unsigned>(s.units), static_cast<unsigned>(chunks),
                  static_cast<unsigned>(ranges));
  const size_t shared = static_cast<size_t>(fixed + per_concept * launch.range);
  compose_counts<<<grid, kThreads, shared>>>(
      d_acts.get(), d_thresholds.get(), d_seg.get(), d_labels.get(), d_formulas.get(),
      d_ops.get(), ay.view(), ax.view(), s, launch, d_f.get(), d_mf.get(), d_fa.get(),
      d_mfa.get());
  check(cudaGetLastError(), "compose_counts launch");
  add_counts(counts.f_concept, d_f.get(), n_concept, "cudaMemcpy (f_concept)");
  add_counts(counts.mf_concept, d_mf.get(), n_concept, "cudaMemcpy (mf_concept)");
  add_counts(counts.f_area, d_fa.get(), n_area, "cudaMemcpy (f_area)");
  add_counts(counts.mf_area, d_mfa.get(), n_area, "cudaMemcpy (mf_area)");
}

}  // namespace cuda
}  // namespace pyanalyzer
