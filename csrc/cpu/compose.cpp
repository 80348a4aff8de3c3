// CPU reference for the compose contract (see pyanalyzer/compose.h). Compiled with
// -ffp-contract=off (CMakeLists.txt): the unit's mask is the tally's, bit for bit, so the float
// evaluation order of tally.h is the law here too.
#include "pyanalyzer/compose.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "pyanalyzer/tally.h"

// Popcounts dominate the counting. x86-64 has had the popcnt instruction since 2008, but the
// baseline ABI does not promise it: the counting loop is compiled twice and the loader picks
// the popcnt clone where the CPU has it (GCC's target_clones, an ELF ifunc).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PYANALYZER_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define PYANALYZER_POPCNT_CLONES
#endif

namespace pyanalyzer {
namespace {

using Word = uint64_t;
constexpr int64_t kWordBits = 64;

// The concept bitsets of the images of a block are kept under about this size, so that the
// units' threads find them in cache.
constexpr int64_t kBlockBytes = int64_t{4} << 20;

inline int popcount(Word w) { return __builtin_popcountll(w); }

// tally.h's skip bound: no upsampled value of a map whose largest value lies below it exceeds
// the threshold (NaN, from infinite inputs, compares false: nothing is skipped).
inline double skip_below(float threshold, float absmax) {
  return static_cast<double>(threshold) - (1e-6 * static_cast<double>(absmax) + 1e-30);
}

// The concepts present in the images of one block, as bitsets of each image's pixels.
struct ImageSets {
  int64_t words = 0;              // W = ceil(Sh * Sw / 64)
  int64_t concepts = 0;           // C
  std::vector<int64_t> first;     // [images + 1]: the slots of image i are first[i]..first[i+1)
  std::vector<int32_t> concept;   // [slots]: the concept of each slot
  std::vector<uint8_t> full;      // [slots]: an image label (every pixel)
  std::vector<int32_t> lo, hi;    // [slots]: the words [lo, hi) hold every pixel of the slot
  std::vector<Word> bits;         // [slots, W]
  std::vector<int32_t> slot_of;   // [images, C]: the slot of concept c in image i, or -1

  const Word* set(int64_t image, int32_t c) const {
    const int32_t s = slot_of[image * concepts + c];
    return s < 0 ? nullptr : bits.data() + static_cast<int64_t>(s) * words;
  }
};

// Distinct concepts (!= 0) of image n: its labels and the ids of its seg channels.
int64_t count_distinct(const int32_t* seg, int64_t seg_image, const int32_t* labels,
                       int64_t n_labels, std::vector<uint8_t>& seen,
                       std::vector<int32_t>& touched) {
  touched.clear();
  const auto visit = [&](int32_t c) {
    if (c != 0 && !seen[c]) {
      seen[c] = 1;
      touched.push_back(c);
    }
  };
  for (int64_t l = 0; l < n_labels; ++l) visit(labels[l]);
  for (int64_t i = 0; i < seg_image; ++i) visit(seg[i]);
  for (const int32_t c : touched) seen[c] = 0;
  return static_cast<int64_t>(touched.size());
}

// Fills the bitsets of images [n0, n1) (their slot counts in `distinct`).
void build_sets(const ComposeInputs& in, const ComposeShape& s, int64_t n0, int64_t n1,
                const std::vector<int64_t>& distinct, ImageSets& sets) {
  const int64_t plane = s.seg_h * s.seg_w;
  const int64_t words = (plane + kWordBits - 1) / kWordBits;
  const int64_t images = n1 - n0;
  const Word tail = plane % kWordBits == 0 ? ~Word{0} : (Word{1} << (plane % kWordBits)) - 1;
  sets.words = words;
  sets.concepts = s.concepts;
  sets.first.assign(images + 1, 0);
  for (int64_t i = 0; i < images; ++i) sets.first[i + 1] = sets.first[i] + distinct[n0 + i];
  const int64_t slots = sets.first[images];
  sets.concept.assign(slots, 0);
  sets.full.assign(slots, 0);
  sets.lo.assign(slots, 0);
  sets.hi.assign(slots, 0);
  sets.bits.assign(slots * words, 0);
  sets.slot_of.assign(images * s.concepts, -1);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < images; ++i) {
    const int64_t n = n0 + i;
    int32_t* slot_of = sets.slot_of.data() + i * s.concepts;
    int64_t next = sets.first[i];
    const auto slot = [&](int32_t c) {
      if (slot_of[c] < 0) {
        slot_of[c] = static_cast<int32_t>(next);
        sets.concept[next] = c;
        ++next;
      }
      return slot_of[c];
    };
    for (int64_t l = 0; l < s.labels; ++l) {
      const int32_t c = in.image_labels[n * s.labels + l];
      if (c == 0) continue;
      const int32_t k = slot(c);
      if (sets.full[k]) continue;
      sets.full[k] = 1;
      Word* b = sets.bits.data() + static_cast<int64_t>(k) * words;
      std::fill(b, b + words, ~Word{0});
      b[words - 1] = tail;  // the pixels past the plane stay out of every set
    }
    const int32_t* sg = in.seg + n * s.channels * plane;
    for (int64_t ch = 0; ch < s.channels; ++ch) {
      for (int64_t p = 0; p < plane; ++p) {
        const int32_t c = sg[ch * plane + p];
        if (c == 0) continue;
        const int32_t k = slot(c);
        if (sets.full[k]) continue;
        sets.bits[static_cast<int64_t>(k) * words + p / kWordBits] |= Word{1}
                                                                        << (p % kWordBits);
      }
    }
    // Each slot's span of nonzero words: concepts are regions, a few rows of the image, and
    // the overlaps below read only the words where both sets can have pixels.
    for (int64_t k = sets.first[i]; k < next; ++k) {
      const Word* b = sets.bits.data() + k * words;
      int64_t lo = 0, hi = words;
      while (lo < hi && b[lo] == 0) ++lo;
      while (hi > lo && b[hi - 1] == 0) --hi;
      sets.lo[k] = static_cast<int32_t>(lo);
      sets.hi[k] = static_cast<int32_t>(hi);
    }
  }
}

// Thread-local scratch of the counting loop.
struct Scratch {
  std::vector<Word> mask, formula, both;
};

// The unit's mask M on image n as a bitset; returns whether it has any pixel. The values are
// tally.h's formula in its order (the file is compiled with -ffp-contract=off).
bool unit_mask(const float* a, float t, const BilinearAxis& ay, const BilinearAxis& ax,
               int64_t h, int64_t w, int64_t seg_h, int64_t seg_w, Word* mask, int64_t words) {
  float peak = -std::numeric_limits<float>::infinity(), absmax = 0.0f;
  for (int64_t i = 0; i < h * w; ++i) {
    peak = std::max(peak, a[i]);
    absmax = std::max(absmax, std::fabs(a[i]));
  }
  if (static_cast<double>(peak) < skip_below(t, absmax)) return false;  // silent on this image
  std::fill(mask, mask + words, Word{0});
  bool any = false;
  for (int64_t y = 0; y < seg_h; ++y) {
    const float* row_lo = a + static_cast<int64_t>(ay.lo[y]) * w;
    const float* row_hi = a + static_cast<int64_t>(ay.hi[y]) * w;
    const float wy_lo = ay.w_lo[y], wy_hi = ay.w_hi[y];
    for (int64_t x = 0; x < seg_w; ++x) {
      const float top = ax.w_lo[x] * row_lo[ax.lo[x]] + ax.w_hi[x] * row_lo[ax.hi[x]];
      const float bot = ax.w_lo[x] * row_hi[ax.lo[x]] + ax.w_hi[x] * row_hi[ax.hi[x]];
      const float v = wy_lo * top + wy_hi * bot;
      if (v > t) {
        const int64_t p = y * seg_w + x;
        mask[p / kWordBits] |= Word{1} << (p % kWordBits);
        any = true;
      }
    }
  }
  return any;
}

// Adds the counts of unit u over the images of one block.
PYANALYZER_POPCNT_CLONES
void count_unit(const ComposeInputs& in, const ComposeShape& s, const ComposeCounts& counts,
                const BilinearAxis& ay, const BilinearAxis& ax, const ImageSets& sets,
                int64_t n0, int64_t n1, int64_t u, Scratch& scratch) {
  const int64_t words = sets.words, hw = s.in_h * s.in_w, plane = s.seg_h * s.seg_w;
  const Word tail = plane % kWordBits == 0 ? ~Word{0} : (Word{1} << (plane % kWordBits)) - 1;
  Word* mask = scratch.mask.data();
  Word* f = scratch.formula.data();
  Word* mf = scratch.both.data();
  const float t = in.thresholds[u];
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t i = n - n0;
    const bool fires = unit_mask(in.acts + (n * s.units + u) * hw, t, ay, ax, s.in_h, s.in_w,
                                 s.seg_h, s.seg_w, mask, words);
    const int64_t slot_begin = sets.first[i], slot_end = sets.first[i + 1];
    for (int64_t b = 0; b < s.beam; ++b) {
      const int64_t fb = u * s.beam + b;
      const int32_t* terms = in.formulas + fb * s.terms;
      const int8_t* ops = in.ops + fb * s.terms;
      // F, left to right.
      if (terms[0] == 0) {
        std::fill(f, f + words, ~Word{0});
        f[words - 1] = tail;
      } else if (const Word* c0 = sets.set(i, terms[0])) {
        std::copy(c0, c0 + words, f);
      } else {
        std::fill(f, f + words, Word{0});
      }
      for (int64_t k = 1; terms[0] != 0 && k < s.terms && terms[k] != 0; ++k) {
        const Word* c = sets.set(i, terms[k]);
        switch (ops[k]) {
          case kComposeAnd:
            if (c == nullptr) {
              std::fill(f, f + words, Word{0});
            } else {
              for (int64_t j = 0; j < words; ++j) f[j] &= c[j];
            }
            break;
          case kComposeOr:
            if (c != nullptr) {
              for (int64_t j = 0; j < words; ++j) f[j] |= c[j];
            }
            break;
          default:  // kComposeAndNot (validated by the caller)
            if (c != nullptr) {
              for (int64_t j = 0; j < words; ++j) f[j] &= ~c[j];
            }
            break;
        }
      }
      int64_t f_area = 0, f_lo = words, f_hi = 0;
      for (int64_t j = 0; j < words; ++j) {
        if (f[j] == 0) continue;
        f_area += popcount(f[j]);
        f_lo = std::min(f_lo, j);
        f_hi = j + 1;
      }
      if (f_area == 0) continue;  // nothing to count
      int64_t mf_area = 0;
      if (fires) {
        for (int64_t j = 0; j < words; ++j) {
          mf[j] = mask[j] & f[j];
          mf_area += popcount(mf[j]);
        }
      }
      counts.f_area[fb] += f_area;
      counts.mf_area[fb] += mf_area;
      int64_t* f_concept = counts.f_concept + fb * s.concepts;
      int64_t* mf_concept = counts.mf_concept + fb * s.concepts;
      for (int64_t k = slot_begin; k < slot_end; ++k) {
        const int32_t c = sets.concept[k];
        if (sets.full[k]) {  // an image label: every pixel
          f_concept[c] += f_area;
          mf_concept[c] += mf_area;
          continue;
        }
        const Word* cb = sets.bits.data() + k * words;
        const int64_t lo = std::max<int64_t>(f_lo, sets.lo[k]);
        const int64_t hi = std::min<int64_t>(f_hi, sets.hi[k]);
        int64_t fc = 0;
        for (int64_t j = lo; j < hi; ++j) fc += popcount(f[j] & cb[j]);
        if (fc == 0) continue;
        f_concept[c] += fc;
        if (mf_area == 0) continue;
        int64_t mfc = 0;
        for (int64_t j = lo; j < hi; ++j) mfc += popcount(mf[j] & cb[j]);
        mf_concept[c] += mfc;
      }
    }
  }
}

}  // namespace

int64_t find_bad_op(const int32_t* formulas, const int8_t* ops, int64_t count, int64_t terms) {
  for (int64_t i = 0; i < count; ++i) {
    const int32_t* f = formulas + i * terms;
    const int8_t* o = ops + i * terms;
    if (f[0] == 0) continue;  // the empty formula: nothing after it is read
    for (int64_t t = 1; t < terms && f[t] != 0; ++t) {
      if (o[t] < kComposeAnd || o[t] > kComposeAndNot) return i * terms + t;
    }
  }
  return -1;
}

void compose(const ComposeInputs& in, const ComposeShape& s, const ComposeCounts& counts) {
  if (s.images == 0 || s.units == 0 || s.beam == 0) return;
  const int64_t plane = s.seg_h * s.seg_w;
  const int64_t words = (plane + kWordBits - 1) / kWordBits;
  const int64_t seg_image = s.channels * plane;

  // Distinct concepts of each image (the size of its bitsets).
  std::vector<int64_t> distinct(s.images, 0);
#pragma omp parallel
  {
    std::vector<uint8_t> seen(s.concepts, 0);
    std::vector<int32_t> touched;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.images; ++n) {
      distinct[n] = count_distinct(in.seg + n * seg_image, seg_image,
                                   in.image_labels + n * s.labels, s.labels, seen, touched);
    }
  }

  const BilinearAxis ay = bilinear_axis(s.in_h, s.seg_h);
  const BilinearAxis ax = bilinear_axis(s.in_w, s.seg_w);
  ImageSets sets;
  for (int64_t n0 = 0; n0 < s.images;) {
    // Images while their bitsets (and slot tables) stay under kBlockBytes; at least one.
    int64_t n1 = n0, bytes = 0;
    do {
      bytes += distinct[n1] * words * static_cast<int64_t>(sizeof(Word)) +
               s.concepts * static_cast<int64_t>(sizeof(int32_t));
      ++n1;
    } while (n1 < s.images && bytes < kBlockBytes);
    build_sets(in, s, n0, n1, distinct, sets);
#pragma omp parallel
    {
      Scratch scratch;
      scratch.mask.assign(words, 0);
      scratch.formula.assign(words, 0);
      scratch.both.assign(words, 0);
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < s.units; ++u) {
        count_unit(in, s, counts, ay, ax, sets, n0, n1, u, scratch);
      }
    }
    n0 = n1;
  }
}

}  // namespace pyanalyzer
