// CPU kernels for the mergeable top-k contract (see pyanalyzer/quantile.h).
#include "pyanalyzer/quantile.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

namespace pyanalyzer {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Writes the k largest of two descending runs a[0..na) and b[0..nb) into out, descending,
// padded with -inf. Adding +0.0f turns -0.0f into +0.0f and leaves every other value as it is:
// the contract stores zeros as +0.0f.
void merge_descending(const float* a, int64_t na, const float* b, int64_t nb, int64_t k,
                      float* out) {
  int64_t i = 0, j = 0, o = 0;
  while (o < k && (i < na || j < nb)) {
    if (j >= nb || (i < na && a[i] >= b[j])) {
      out[o++] = a[i++] + 0.0f;
    } else {
      out[o++] = b[j++] + 0.0f;
    }
  }
  std::fill(out + o, out + k, kNegInf);
}

// The largest of m[0..hw) (no NaN; -inf when hw = 0): four running maxima, independent
// chains the CPU can overlap, then the largest of them.
inline float peak(const float* m, int64_t hw) {
  float best[4] = {kNegInf, kNegInf, kNegInf, kNegInf};
  int64_t j = 0;
  for (; j + 4 <= hw; j += 4) {
    for (int q = 0; q < 4; ++q) best[q] = std::max(best[q], m[j + q]);
  }
  for (; j < hw; ++j) best[0] = std::max(best[0], m[j]);
  return std::max(std::max(best[0], best[1]), std::max(best[2], best[3]));
}

}  // namespace

int64_t find_nan(const float* data, int64_t n) {
  int64_t first = n;
#pragma omp parallel for schedule(static) reduction(min : first)
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(data[i]) && i < first) first = i;
  }
  return first == n ? -1 : first;
}

int64_t find_invalid_state_row(const float* state, int64_t units, int64_t k) {
  for (int64_t u = 0; u < units; ++u) {
    const float* row = state + u * k;
    for (int64_t i = 0; i < k; ++i) {
      if (std::isnan(row[i]) || (i > 0 && row[i] > row[i - 1])) return u;
    }
  }
  return -1;
}

void topk_merge(const float* state, const float* batch, int64_t units, int64_t k, int64_t n,
                int64_t hw, float* out) {
#pragma omp parallel
  {
    std::vector<float> fresh;  // per-thread buffer of candidates from the batch
#pragma omp for schedule(dynamic, 4)
    for (int64_t u = 0; u < units; ++u) {
      const float* row = state + u * k;
      // Only values above the current k-th largest can enter; an equal value would only swap
      // in an identical one. After a few batches this filter rejects almost everything.
      const float threshold = k > 0 ? row[k - 1] : std::numeric_limits<float>::infinity();
      fresh.clear();
      for (int64_t i = 0; i < n; ++i) {
        const float* plane = batch + (i * units + u) * hw;
        // The plane's peak first (a loop without branches): most planes have none above the
        // threshold, and the scan below would test every value one by one.
        if (!(peak(plane, hw) > threshold)) continue;
        for (int64_t j = 0; j < hw; ++j) {
          if (plane[j] > threshold) fresh.push_back(plane[j]);
        }
      }
      auto keep = static_cast<std::ptrdiff_t>(std::min<int64_t>(k, fresh.size()));
      if (static_cast<int64_t>(fresh.size()) > keep) {
        std::nth_element(fresh.begin(), fresh.begin() + keep, fresh.end(), std::greater<>());
      }
      std::sort(fresh.begin(), fresh.begin() + keep, std::greater<>());
      merge_descending(row, k, fresh.data(), keep, k, out + u * k);
    }
  }
}

void topk_merge_states(const float* a, const float* b, int64_t units, int64_t k, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    merge_descending(a + u * k, k, b + u * k, k, k, out + u * k);
  }
}

void map_peaks(const float* maps, int64_t count, int64_t hw, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) out[i] = peak(maps + i * hw, hw);
}

}  // namespace pyanalyzer
