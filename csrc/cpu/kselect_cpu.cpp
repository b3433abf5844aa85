// k-selection over a list of tensors: exactly k units with the smallest (or
// largest) |score|, ties broken by lower global flat index, written as keep-masks.
// The radix select and its CPU specifics are described in csrc/README.md
// ("k-selection: the radix select"); the semantics are fastprune/ops/reference.py.
// Small inputs (up to kDirectMax units) take direct_select instead (csrc/README.md).
#include "../op_args.h"

#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>

namespace fastprune {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;  // multiple of 8: packed bytes never straddle chunks
constexpr int kDigitBits = 16;
constexpr int64_t kBins = int64_t(1) << kDigitBits;

// Key spaces. The reference compares every unit as int64 when all scores are
// bool/integer and as float64 otherwise; each kind below orders units exactly
// as that comparison does for the dtypes it is chosen for.
enum class KeyKind { F16, BF16, F32, F64, U16, U32, U64 };

template <KeyKind K>
struct KeyTraits {
  using type = std::conditional_t<K == KeyKind::F64 || K == KeyKind::U64, uint64_t,
                                  std::conditional_t<K == KeyKind::F32 || K == KeyKind::U32, uint32_t, uint16_t>>;
  static constexpr int bits = 8 * sizeof(type);
};

template <KeyKind K, typename S>
constexpr bool valid_combo() {
  constexpr bool small_int = std::is_same_v<S, bool> || std::is_same_v<S, uint8_t> || std::is_same_v<S, int8_t> ||
                             std::is_same_v<S, int16_t>;
  constexpr bool any_int = small_int || std::is_same_v<S, int32_t> || std::is_same_v<S, int64_t>;
  switch (K) {
    case KeyKind::F16: return std::is_same_v<S, at::Half>;
    case KeyKind::BF16: return std::is_same_v<S, at::BFloat16>;
    case KeyKind::F32:
      return small_int || std::is_same_v<S, at::Half> || std::is_same_v<S, at::BFloat16> || std::is_same_v<S, float>;
    case KeyKind::F64: return true;
    case KeyKind::U16: return small_int;
    case KeyKind::U32: return small_int || std::is_same_v<S, int32_t>;
    case KeyKind::U64: return any_int;
  }
  return false;
}

// |v| as an unsigned integer; int64's minimum ranks like int64's maximum, as in
// the reference (which clamps |INT64_MIN| to INT64_MAX).
template <typename S>
C10_ALWAYS_INLINE uint64_t int_abs(S v) {
  if constexpr (std::is_same_v<S, bool> || std::is_unsigned_v<S>) {
    return static_cast<uint64_t>(v);
  } else if constexpr (std::is_same_v<S, int64_t>) {
    if (v == std::numeric_limits<int64_t>::min()) return static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    return v < 0 ? uint64_t(0) - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  } else {
    const int64_t w = v;
    return w < 0 ? static_cast<uint64_t>(-w) : static_cast<uint64_t>(w);
  }
}

template <KeyKind K, typename S>
C10_ALWAYS_INLINE typename KeyTraits<K>::type make_key(S v) {
  using key_t = typename KeyTraits<K>::type;
  if constexpr (K == KeyKind::F16) {
    const uint16_t b = v.x & 0x7FFF;
    return b > 0x7C00 ? uint16_t(0x7FFF) : b;
  } else if constexpr (K == KeyKind::BF16) {
    const uint16_t b = v.x & 0x7FFF;
    return b > 0x7F80 ? uint16_t(0x7FFF) : b;
  } else if constexpr (K == KeyKind::F32) {
    const float f = static_cast<float>(v);
    uint32_t b;
    std::memcpy(&b, &f, sizeof(b));
    b &= 0x7FFFFFFFu;
    return b > 0x7F800000u ? 0x7FFFFFFFu : b;
  } else if constexpr (K == KeyKind::F64) {
    double d;
    if constexpr (std::is_same_v<S, at::Half> || std::is_same_v<S, at::BFloat16>) {
      d = static_cast<double>(static_cast<float>(v));
    } else if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
      d = static_cast<double>(v);
    } else {
      d = static_cast<double>(static_cast<int64_t>(int_abs(v)));
    }
    uint64_t b;
    std::memcpy(&b, &d, sizeof(b));
    b &= 0x7FFFFFFFFFFFFFFFull;
    return b > 0x7FF0000000000000ull ? 0x7FFFFFFFFFFFFFFFull : b;
  } else {
    return static_cast<key_t>(int_abs(v));
  }
}

// Calls f(Tag<scalar_t>{}) for score dtypes valid under key kind K; the others
// cannot happen (choose_kind picks K from the score dtypes).
template <KeyKind K, typename F>
void dispatch_score(at::ScalarType st, F&& f) {
  dispatch_dtype(st, "kselect_", [&](auto tag) {
    using S = typename decltype(tag)::type;
    if constexpr (valid_combo<K, S>()) {
      f(tag);
    } else {
      TORCH_INTERNAL_ASSERT(false, "kselect_: score dtype ", st, " is not valid for the chosen key kind");
    }
  });
}

KeyKind choose_kind(at::TensorList scores) {
  bool any_float = false, any_f64 = false, all_f16 = true, all_bf16 = true, any_int = false;
  int int_bits = 0;
  for (const auto& s : scores) {
    const auto st = s.scalar_type();
    if (at::isFloatingType(st)) {
      any_float = true;
      any_f64 |= st == at::kDouble;
      all_f16 &= st == at::kHalf;
      all_bf16 &= st == at::kBFloat16;
    } else {
      any_int = true;
      all_f16 = all_bf16 = false;
      const int bits = st == at::kShort ? 16 : st == at::kInt ? 32 : st == at::kLong ? 64 : 8;
      int_bits = std::max(int_bits, bits);
    }
  }
  if (!any_float) return int_bits <= 16 ? KeyKind::U16 : int_bits == 32 ? KeyKind::U32 : KeyKind::U64;
  if (!any_int) {
    if (all_f16) return KeyKind::F16;
    if (all_bf16) return KeyKind::BF16;
    return any_f64 ? KeyKind::F64 : KeyKind::F32;
  }
  // Mixed integer and float scores compare as float64 in the reference; fp32
  // holds all those values exactly when the integers are at most 16 bits wide.
  return (!any_f64 && int_bits <= 16) ? KeyKind::F32 : KeyKind::F64;
}

// load_keep / store_keep for the direct path; kselect_radix.h includes its own
// copy in each instruction-set namespace.
#include "kselect_keep.h"

// Which way a call went, counted for kselect_cpu_path_counts (tests and diagnostics).
std::atomic<int64_t> g_path_counts[kKSelectPaths];

void count_path(KSelectPath p) { g_path_counts[static_cast<int>(p)].fetch_add(1, std::memory_order_relaxed); }

enum class Sampled { kNotTried, kHit, kMissed };

// The radix select is compiled for the baseline instruction set, and on x86-64
// with GCC also for AVX2 (twice as wide vectors for key computation and
// classification) and AVX-512 (twice as wide again, with unsigned compares
// into mask registers), chosen at run time.
#define FASTPRUNE_KSELECT_NS baseline
#include "kselect_radix.h"
#undef FASTPRUNE_KSELECT_NS

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTPRUNE_KSELECT_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2")
#define FASTPRUNE_KSELECT_NS avx2
#include "kselect_radix.h"
#undef FASTPRUNE_KSELECT_NS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")
#define FASTPRUNE_KSELECT_NS avx512
#include "kselect_radix.h"
#undef FASTPRUNE_KSELECT_NS
#pragma GCC pop_options
#endif

// Inputs up to this many units in all take the direct path below instead of
// the radix select, whose fixed cost (2^16-bin histograms allocated, zeroed,
// merged and scanned per pass) dominates for small tensors. The direct path is
// single-threaded and its nth_element costs ~5-10 ns a unit (mispredicted
// branches): at about 8K units it costs as much as the radix select.
constexpr int64_t kDirectMax = int64_t(1) << 12;

// FASTPRUNE_KSELECT_DIRECT_MAX overrides kDirectMax; the tests set it to 0 (radix
// select only) or to a huge value (direct path only) to compare both on the same inputs.
int64_t direct_max() {
  const char* env = std::getenv("FASTPRUNE_KSELECT_DIRECT_MAX");
  return env && *env ? std::strtoll(env, nullptr, 10) : kDirectMax;
}

// Direct selection: every unit's key in one buffer, the k-th smallest candidate
// key T by nth_element, then one pass in global order that selects the keys
// below T and the first tied ones. Same result as the radix select (smallest
// keys, ties by lower global index); allocates O(units), which is why it is only
// used for small inputs.
template <KeyKind K>
void direct_select(const std::vector<at::Tensor>& scores, const std::vector<at::Tensor>& masks,
                   const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& values,
                   const std::vector<at::Tensor>& applied, int64_t k, double fraction, bool largest,
                   bool exclude_masked, bool packed) {
  using key_t = typename KeyTraits<K>::type;
  const key_t inv = largest ? static_cast<key_t>(~key_t(0)) : key_t(0);
  const size_t nt = scores.size();
  // Each tensor's units start at a multiple of 8 in the buffers, and the gap
  // after them stays 0: store_keep in packed mode reads whole bytes of keep.
  std::vector<int64_t> off(nt + 1, 0);
  for (size_t i = 0; i < nt; ++i) off[i + 1] = off[i] + (scores[i].numel() + 7) / 8 * 8;
  std::vector<key_t> keys(off[nt]);
  std::vector<uint8_t> keep(off[nt] + 8, 0);
  std::vector<key_t> cand;
  cand.reserve(off[nt]);
  for (size_t i = 0; i < nt; ++i) {
    const int64_t n = scores[i].numel();
    key_t* kp = keys.data() + off[i];
    uint8_t* e = keep.data() + off[i];
    if (masks[i].defined()) {
      load_keep(masks[i], packed, 0, n, e);
    } else {
      std::memset(e, 1, n);
    }
    dispatch_score<K>(scores[i].scalar_type(), [&](auto tag) {
      using S = typename decltype(tag)::type;
      const S* s = scores[i].template data_ptr<S>();
      for (int64_t j = 0; j < n; ++j) kp[j] = make_key<K>(s[j]) ^ inv;
    });
    if (exclude_masked) {
      for (int64_t j = 0; j < n; ++j) {
        if (e[j]) cand.push_back(kp[j]);
      }
    } else {
      cand.insert(cand.end(), kp, kp + n);
    }
  }
  const int64_t candidates = static_cast<int64_t>(cand.size());
  if (k < 0) k = k_from_fraction(fraction, candidates);
  FP_CHECK_VALUE(k <= candidates, "kselect_: k=", k, " must be between 0 and the number of selectable units (",
                 candidates, ")");
  if (k > 0) {
    std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end());
    const key_t T = cand[k - 1];
    // cand[0, k-1) holds keys <= T; those equal to T take tied places first.
    int64_t tied = k;
    for (int64_t j = 0; j < k - 1; ++j) tied -= int64_t(cand[j] < T);
    for (size_t i = 0; i < nt; ++i) {
      const int64_t n = scores[i].numel();
      const key_t* kp = keys.data() + off[i];
      uint8_t* e = keep.data() + off[i];
      for (int64_t j = 0; j < n; ++j) {
        if (exclude_masked && !e[j]) continue;
        const key_t key = kp[j];
        if (key < T) {
          e[j] = 0;
        } else if (key == T && tied > 0) {
          e[j] = 0;
          --tied;
        }
      }
    }
  }
  for (size_t i = 0; i < nt; ++i) {
    store_keep(outs[i], packed, 0, scores[i].numel(), keep.data() + off[i]);
    if (!applied.empty()) apply_keep(values[i], applied[i], 0, scores[i].numel(), keep.data() + off[i]);
  }
}

// k = -1: select k_from_fraction(fraction, selectable units), counted by the
// selection's first pass.
template <KeyKind K>
void run_select(std::vector<at::Tensor> scores, std::vector<at::Tensor> masks, std::vector<at::Tensor> outs,
                std::vector<at::Tensor> values, std::vector<at::Tensor> applied, int64_t k, double fraction,
                bool largest, bool exclude_masked, bool packed) {
  int64_t total = 0;
  for (const auto& s : scores) total += s.numel();
  if (total <= direct_max()) {
    count_path(KSelectPath::kDirect);
    direct_select<K>(scores, masks, outs, values, applied, k, fraction, largest, exclude_masked, packed);
    return;
  }
#ifdef FASTPRUNE_KSELECT_AVX2
  static const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                                 !std::getenv("FASTPRUNE_NO_AVX512");
  if (has_avx512) {
    avx512::run_select<K>(std::move(scores), std::move(masks), std::move(outs), std::move(values),
                          std::move(applied), k, fraction, largest, exclude_masked, packed);
    return;
  }
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) {
    avx2::run_select<K>(std::move(scores), std::move(masks), std::move(outs), std::move(values), std::move(applied),
                        k, fraction, largest, exclude_masked, packed);
    return;
  }
#endif
  baseline::run_select<K>(std::move(scores), std::move(masks), std::move(outs), std::move(values),
                          std::move(applied), k, fraction, largest, exclude_masked, packed);
}

void kselect_cpu(at::TensorList scores, const c10::List<std::optional<at::Tensor>>& masks, at::TensorList out,
                 int64_t k, bool largest, bool exclude_masked, bool packed, std::optional<double> fraction,
                 std::optional<at::TensorList> values, std::optional<at::TensorList> applied) {
  KSelectArgs a =
      check_kselect_args(scores, masks, out, k, exclude_masked, packed, fraction, values, applied, CheckCpu{});
  k = a.k;
  const double frac = a.fraction;
  if (a.scores.empty()) return;
  const KSelectWrites w = stage_kselect(a);
  const std::vector<at::Tensor>& s = a.scores;
  const std::vector<at::Tensor>& m = a.masks;
  const std::vector<at::Tensor>& write = w.write;
  const std::vector<at::Tensor>& v = w.values;
  const std::vector<at::Tensor>& ap = w.write_applied;

  const KeyKind kind = choose_kind(s);
  switch (kind) {
    case KeyKind::F16: run_select<KeyKind::F16>(s, m, write, v, ap, k, frac, largest, exclude_masked, packed); break;
    case KeyKind::BF16: run_select<KeyKind::BF16>(s, m, write, v, ap, k, frac, largest, exclude_masked, packed); break;
    case KeyKind::F32: run_select<KeyKind::F32>(s, m, write, v, ap, k, frac, largest, exclude_masked, packed); break;
    case KeyKind::F64: run_select<KeyKind::F64>(s, m, write, v, ap, k, frac, largest, exclude_masked, packed); break;
    case KeyKind::U16: run_select<KeyKind::U16>(s, m, write, v, ap, k, frac, largest, exclude_masked, packed); break;
    case KeyKind::U32: run_select<KeyKind::U32>(s, m, write, v, ap, k, frac, largest, exclude_masked, packed); break;
    case KeyKind::U64: run_select<KeyKind::U64>(s, m, write, v, ap, k, frac, largest, exclude_masked, packed); break;
  }
  w.copy_back(a.out, a.applied);
}

}  // namespace

std::array<int64_t, kKSelectPaths> kselect_cpu_path_counts() {
  std::array<int64_t, kKSelectPaths> counts{};
  for (int i = 0; i < kKSelectPaths; ++i) counts[i] = g_path_counts[i].load(std::memory_order_relaxed);
  return counts;
}

TORCH_LIBRARY_IMPL(fastprune, CPU, m) { m.impl("kselect_", &kselect_cpu); }

}  // namespace fastprune
