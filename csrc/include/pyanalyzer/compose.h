// Compositional explanations: count, for every unit and every formula of its beam, how the
// formula's pixels overlap each concept and the unit's mask (Mu & Andreas, "Compositional
// Explanations of Neurons", NeurIPS 2020). The beam search itself runs in Python
// (pyanalyzer/methods/dissection/compositional.py); these counts are all it needs to score
// every extension of every formula by one concept exactly.
//
// Contract (shared by the CPU reference in csrc/cpu and the CUDA kernel in csrc/cuda). All
// arrays are C-contiguous.
//
//   acts          [N, U, h, w]    float32, no NaN
//   thresholds    [U]             float32, no NaN
//   seg           [N, K, Sh, Sw]  int32, concept ids in [0, C); 0 = unlabelled; K >= 0
//   image_labels  [N, L]          int32, image-level concept ids in [0, C); 0 = padding; L >= 0
//   formulas      [U, B, T]       int32, concept ids in [0, C); T >= 1
//   ops           [U, B, T]       int8, 1 = AND, 2 = OR, 3 = AND NOT
//
// Counts, int64, ADDED TO (never cleared), so that batches and shards add up:
//
//   f_concept [U, B, C]   mf_concept [U, B, C]   f_area [U, B]   mf_area [U, B]
//
// THE UNIT'S MASK. M_u(n) = { pixels p of the Sh x Sw grid : up(acts[n, u])[p] > thresholds[u] }
// (strictly greater), with the upsampling of tally.h bit for bit (the same bilinear_axis weight
// tables and float32 evaluation order): the mask the dissection tally counts.
//
// CONCEPT PRESENCE, SET SEMANTICS. Concept c != 0 is present at pixel p of image n when
// seg[n, k, p] == c for ANY channel k, or c is ANY of image_labels[n, :] (an image label
// covers the whole image). A concept found in several channels, or both in a channel and among
// the labels, is present once: every count below counts a pixel at most once per concept.
// (The tally counts per channel and per label occurrence; here a pixel is in a set or not.)
//
// FORMULAS. Formula (u, b) is read from formulas[u, b, :] and ops[u, b, :], left to right:
//   F = present(formulas[u, b, 0]); for t = 1, 2, ... while formulas[u, b, t] != 0:
//       F = F AND c | F OR c | F AND NOT c     for ops[u, b, t] = 1 | 2 | 3, c = formulas[u, b, t]
// i.e. ((c0 op1 c1) op2 c2) ... The first 0 id ends the formula: the terms after it are
// ignored (ids still range-checked), and so is ops[u, b, 0]. A formula whose term 0 is 0 is
// the EMPTY formula: every pixel. The ops of the terms read (t >= 1, before the end) must be
// 1, 2 or 3 (find_bad_op; the bindings check it).
//
// COUNTS. For every image n, unit u and formula b, with F the formula's pixels in image n and M
// the unit's mask:
//   f_area[u, b]         += |F|
//   mf_area[u, b]        += |M ∧ F|
//   f_concept[u, b, c]   += |F ∧ c|          for every concept c != 0 (set semantics)
//   mf_concept[u, b, c]  += |M ∧ F ∧ c|
// Column 0 of f_concept and mf_concept is never touched. With the empty formula these are
// |c|, |M ∧ c|, the number of pixels and |M|. From them the beam search gets the exact IoU of
// F op c with M for every c and op (F AND c: |M ∧ F ∧ c| and |F ∧ c|; F OR c and F AND NOT c
// by inclusion-exclusion with the empty formula's counts).
//
// SPEED (CPU). For each block of images the concepts present in each image become bitsets of
// its Sh * Sw pixels (one 64-bit word per 64 pixels; an image label a full set), so that F,
// M ∧ F and their overlaps with every concept present are word-wise AND/OR and popcounts, over
// the words where both sets have pixels only (each set's span of nonzero words is kept).
// Concepts absent from an image cost nothing; so do units whose map cannot reach the threshold
// (tally.h's skip bound: no pixel of M, the M counts are 0 without evaluating a pixel).
#pragma once

#include <cstdint>

namespace pyanalyzer {

// The operators of a formula's terms t >= 1 (ops[u, b, t]).
enum ComposeOp : int8_t { kComposeAnd = 1, kComposeOr = 2, kComposeAndNot = 3 };

// Sizes of one compose call.
struct ComposeShape {
  int64_t images;        // N
  int64_t units;         // U
  int64_t in_h, in_w;    // h, w (>= 1)
  int64_t channels;      // K (>= 0)
  int64_t seg_h, seg_w;  // Sh, Sw (>= 1; Sh * Sw < 2^31)
  int64_t labels;        // L (>= 0)
  int64_t concepts;      // C (>= 1)
  int64_t beam;          // B (>= 0)
  int64_t terms;         // T (>= 1)
};

struct ComposeInputs {
  const float* acts;            // [N, U, h, w]
  const float* thresholds;      // [U]
  const int32_t* seg;           // [N, K, Sh, Sw]
  const int32_t* image_labels;  // [N, L]
  const int32_t* formulas;      // [U, B, T]
  const int8_t* ops;            // [U, B, T]
};

struct ComposeCounts {
  int64_t* f_concept;   // [U, B, C]
  int64_t* mf_concept;  // [U, B, C]
  int64_t* f_area;      // [U, B]
  int64_t* mf_area;     // [U, B]
};

// Flat index (into [count, terms]) of the first op of a term that is read (t >= 1, before the
// formula's first 0 id) and is not 1, 2 or 3; -1 when all are valid. `count` formulas of
// `terms` terms each.
int64_t find_bad_op(const int32_t* formulas, const int8_t* ops, int64_t count, int64_t terms);

// CPU reference: adds this batch's counts. Inputs must have been validated (no NaN, ids in
// range, valid ops). OpenMP over units, in blocks of images whose concept bitsets fit in cache;
// every count of unit u is written by one thread only (no races, no reductions).
void compose(const ComposeInputs& in, const ComposeShape& shape, const ComposeCounts& counts);

namespace cuda {

// Same contract as pyanalyzer::compose on device `device` with HOST pointers: copies the inputs
// to the device, counts there (a block per unit and chunk of images, per-pixel formula
// evaluation, 32-bit shared-memory counters flushed to 64-bit global counters before they can
// overflow) and adds the batch's counts to the host arrays. Integer counts: equal to the CPU's.
// The caller batches large N. Throws std::runtime_error on any CUDA error.
void compose(const ComposeInputs& in, const ComposeShape& shape, const ComposeCounts& counts,
             int device);

}  // namespace cuda
}  // namespace pyanalyzer
