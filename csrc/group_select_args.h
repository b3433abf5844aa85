// Argument checks and views shared by the CPU (csrc/cpu/) and CUDA
// (csrc/cuda/*_wrapper.cpp) backends of the two group-selection ops:
//
//   row_kselect(scores, k):    prune the k smallest |score| of every row
//   nm_select(scores, n, m):   prune the n smallest of every m consecutive units
//
// Both are "prune p of every group of L units": a row is a group of
// L = size(-1) units, an N:M group is one of L = m. Ranking follows the rest of
// the library: key |score|, NaN above +inf, ties by lower index. Both backends
// take the checks from here so that they raise the same errors as the reference.
#pragma once

#include "common.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace fastprune {

// scores seen as `groups` groups of `length` units, `prune` of which go.
struct GroupSelectView {
  at::Tensor scores;  // contiguous
  at::Tensor out;     // bool, scores' shape
  int64_t groups = 0;
  int64_t length = 0;
  int64_t prune = 0;
};

template <typename CheckDevice>
GroupSelectView check_row_kselect_args(const at::Tensor& scores, int64_t k, const CheckDevice& check_device) {
  check_device(scores, "row_kselect", "scores", -1);
  check_dtype(scores, "row_kselect", "scores");
  FP_CHECK_VALUE(scores.dim() > 0, "row_kselect: scores must have at least one dimension");
  const int64_t cols = scores.size(-1);
  FP_CHECK_VALUE(k >= 0 && k <= cols, "row_kselect: k=", k, " must be between 0 and the row length (", cols, ")");
  GroupSelectView v;
  v.scores = scores.contiguous();
  v.out = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  v.length = cols;
  v.groups = cols == 0 ? 0 : scores.numel() / cols;
  v.prune = k;
  return v;
}

template <typename CheckDevice>
GroupSelectView check_nm_select_args(const at::Tensor& scores, int64_t n, int64_t m, const CheckDevice& check_device) {
  check_device(scores, "nm_select", "scores", -1);
  check_dtype(scores, "nm_select", "scores");
  FP_CHECK_VALUE(scores.dim() > 0, "nm_select: scores must have at least one dimension");
  FP_CHECK_VALUE(m >= 1, "nm_select: m=", m, " must be positive");
  FP_CHECK_VALUE(n >= 0 && n < m, "nm_select: n=", n, " must satisfy 0 <= n < m=", m);
  const int64_t cols = scores.size(-1);
  FP_CHECK_VALUE(cols % m == 0, "nm_select: m=", m, " does not divide the last dimension (", cols, ")");
  GroupSelectView v;
  v.scores = scores.contiguous();
  v.out = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  v.length = m;
  v.groups = scores.numel() / m;
  v.prune = n;
  return v;
}

// (Host side; the CUDA kernel has its own loader of the same keys.)
// Order-preserving unsigned key of |v|: comparing keys compares magnitudes,
// every NaN maps to the largest key (ranked above +inf, all NaNs equal), -0
// equals +0. Integers: |INT64_MIN| does not fit and ranks with INT64_MAX, as
// in the reference.
template <typename T>
C10_ALWAYS_INLINE uint64_t select_key(T v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? 1u : 0u;
  } else if constexpr (std::is_integral_v<T>) {
    const int64_t x = static_cast<int64_t>(v);
    if (x == std::numeric_limits<int64_t>::min()) return static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    return static_cast<uint64_t>(x < 0 ? -x : x);
  } else {
    const double d = static_cast<double>(static_cast<float>(v));
    if (d != d) return ~uint64_t(0);
    const double a = std::fabs(d);  // also maps -0.0 to +0.0
    uint64_t bits;
    std::memcpy(&bits, &a, sizeof(bits));  // non-negative doubles order like their bit patterns
    return bits;
  }
}

// double keeps every bit of a double score.
template <>
C10_ALWAYS_INLINE uint64_t select_key<double>(double v) {
  if (v != v) return ~uint64_t(0);
  const double a = std::fabs(v);
  uint64_t bits;
  std::memcpy(&bits, &a, sizeof(bits));
  return bits;
}

}  // namespace fastprune
