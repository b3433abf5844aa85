// k-selection over a list of tensors: exactly k units with the smallest (or
// largest) |score|, ties broken by lower global flat index, written as keep-masks.
//
// Radix select on the bit pattern of |score| (see fastprune/_reference.py for the
// exact semantics). Nothing proportional to the number of units is allocated:
//   1. a chunk table over all tensors (chunks of kChunk units, global order);
//   2. histogram passes over 16-bit digits of the key, most significant first,
//      counting only units whose higher digits match the prefix found so far
//      (per-thread 2^16-bin histograms, merged). After the last pass the exact
//      threshold key T is known, and r = how many units with key == T must
//      still be selected;
//   3. one write pass: key < T -> selected, key == T -> kept for now, counting
//      such tied candidates per chunk;
//   4. an exclusive prefix over the per-chunk tie counts picks the chunks that
//      hold the first r tied candidates in global order; only those are
//      rewritten (fix-up pass).
// Keys are unsigned integers whose order is the order of |score|: the IEEE bit
// pattern without the sign bit (every NaN mapped to the largest key), or the
// unsigned absolute value of an integer. largest=True inverts the key.
#include "../common.h"

#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>

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

// keep[j] = (unit j of the chunk is non-zero in `mask`), 0/1.
void load_keep(const at::Tensor& mask, bool packed, int64_t begin, int64_t n, uint8_t* keep) {
  if (packed) {
    const uint8_t* p = mask.data_ptr<uint8_t>() + begin / 8;
    for (int64_t j = 0; j < n; ++j) keep[j] = (p[j >> 3] >> (j & 7)) & 1;
    return;
  }
  dispatch_dtype(mask.scalar_type(), "kselect_", [&](auto tag) {
    using M = typename decltype(tag)::type;
    const M* m = mask.data_ptr<M>() + begin;
    for (int64_t j = 0; j < n; ++j) keep[j] = nonzero<M>(m[j]);
  });
}

// Writes keep[0..n) (0/1) to `out` at units [begin, begin + n). In packed mode
// `keep` must hold zeros up to the next multiple of 8 (padding bits are 0).
void store_keep(const at::Tensor& out, bool packed, int64_t begin, int64_t n, const uint8_t* keep) {
  if (packed) {
    uint8_t* p = out.data_ptr<uint8_t>() + begin / 8;
    const int64_t nbytes = (n + 7) / 8;
    for (int64_t b = 0; b < nbytes; ++b) {
      const uint8_t* q = keep + 8 * b;
      p[b] = uint8_t(q[0] | (q[1] << 1) | (q[2] << 2) | (q[3] << 3) | (q[4] << 4) | (q[5] << 5) | (q[6] << 6) |
                     (q[7] << 7));
    }
    return;
  }
  dispatch_dtype(out.scalar_type(), "kselect_", [&](auto tag) {
    using O = typename decltype(tag)::type;
    O* o = out.data_ptr<O>() + begin;
    if constexpr (sizeof(O) == 1) {
      std::memcpy(o, keep, n);  // bool/uint8/int8 0/1 have the same bytes
    } else {
      for (int64_t j = 0; j < n; ++j) o[j] = zero_or_one<O>(keep[j]);
    }
  });
}

template <KeyKind K>
class RadixSelect {
  using key_t = typename KeyTraits<K>::type;
  static constexpr int kBits = KeyTraits<K>::bits;
  static constexpr int kPasses = kBits / kDigitBits;

 public:
  RadixSelect(std::vector<at::Tensor> scores, std::vector<at::Tensor> masks, std::vector<at::Tensor> outs,
              bool largest, bool exclude_masked, bool packed)
      : scores_(std::move(scores)),
        masks_(std::move(masks)),
        outs_(std::move(outs)),
        inv_(largest ? static_cast<key_t>(~key_t(0)) : key_t(0)),
        exclude_(exclude_masked),
        packed_(packed) {
    std::vector<int64_t> numels;
    for (const auto& s : scores_) numels.push_back(s.numel());
    chunks_ = make_chunks(numels, kChunk);
  }

  // Number of units that may be selected, computed without touching `out`.
  int64_t count_candidates() {
    if (!exclude_) return total_units();
    bool any_mask = false;
    for (const auto& m : masks_) any_mask |= m.defined();
    if (!any_mask) return total_units();
    // Counting needs a pass over the masks; the first histogram pass does it.
    histogram(0, 0);
    int64_t total = 0;
    for (int64_t b = 0; b < kBins; ++b) total += hist_[b];
    have_first_hist_ = true;
    return total;
  }

  void run(int64_t k) {
    key_t T = 0;
    int64_t r = 0;
    const bool select_any = k > 0;
    if (select_any) {
      int64_t remaining = k;
      uint64_t prefix = 0;
      for (int pass = 0; pass < kPasses; ++pass) {
        if (!(pass == 0 && have_first_hist_)) histogram(pass, prefix);
        int64_t below = 0;
        int64_t b = 0;
        for (; b < kBins; ++b) {
          if (below + int64_t(hist_[b]) >= remaining) break;
          below += hist_[b];
        }
        TORCH_INTERNAL_ASSERT(b < kBins, "kselect_: histogram does not hold k units");
        remaining -= below;
        prefix = (prefix << kDigitBits) | uint64_t(b);
      }
      T = static_cast<key_t>(prefix);
      r = remaining;
    }
    write_pass(select_any, T);
    if (select_any) fixup_pass(T, r);
  }

 private:
  int64_t total_units() const {
    int64_t n = 0;
    for (const auto& s : scores_) n += s.numel();
    return n;
  }

  // Keys and digits are computed a block at a time in a vectorisable loop; only
  // the scattered increments are scalar. In the later passes few units match
  // the prefix, so a block without a match costs no increments at all.
  template <typename S>
  static void hist_chunk(const S* s, const uint8_t* elig, int64_t n, uint32_t* h, key_t inv, int pass,
                         uint64_t prefix) {
    constexpr int64_t B = 64;
    const int shift = kBits - kDigitBits * (pass + 1);
    alignas(64) uint16_t dig[B];
    alignas(64) uint8_t hit[B];
    const int64_t full = n - n % B;
    if (pass == 0) {
      for (int64_t j0 = 0; j0 < full; j0 += B) {
        for (int64_t j = 0; j < B; ++j) dig[j] = static_cast<uint16_t>((make_key<K>(s[j0 + j]) ^ inv) >> shift);
        if (elig) {
          for (int64_t j = 0; j < B; ++j) h[dig[j]] += elig[j0 + j];
        } else {
          for (int64_t j = 0; j < B; ++j) h[dig[j]]++;
        }
      }
      for (int64_t j = full; j < n; ++j) h[(make_key<K>(s[j]) ^ inv) >> shift] += elig ? elig[j] : 1;
      return;
    }
    const int pshift = shift + kDigitBits;
    const key_t want = static_cast<key_t>(prefix);
    for (int64_t j0 = 0; j0 < full; j0 += B) {
      uint8_t any = 0;
      for (int64_t j = 0; j < B; ++j) {
        const key_t key = make_key<K>(s[j0 + j]) ^ inv;
        dig[j] = static_cast<uint16_t>(key >> shift);
        hit[j] = uint8_t((key >> pshift) == want);
        any |= hit[j];
      }
      if (!any) continue;
      if (elig) {
        for (int64_t j = 0; j < B; ++j) h[dig[j]] += hit[j] & elig[j0 + j];
      } else {
        for (int64_t j = 0; j < B; ++j) h[dig[j]] += hit[j];
      }
    }
    for (int64_t j = full; j < n; ++j) {
      const key_t key = make_key<K>(s[j]) ^ inv;
      if ((key >> pshift) == want && (!elig || elig[j])) h[static_cast<uint16_t>(key >> shift)]++;
    }
  }

  // hist_ = histogram of digit `pass` over candidates whose higher digits equal `prefix`.
  void histogram(int pass, uint64_t prefix) {
    hist_.assign(kBins, 0);
    std::mutex merge_mutex;
    at::parallel_for(0, static_cast<int64_t>(chunks_.size()), 1, [&](int64_t cb, int64_t ce) {
      std::vector<uint32_t> h(kBins, 0);
      std::vector<uint8_t> elig(kChunk);
      int64_t pending = 0;
      auto flush = [&]() {
        std::lock_guard<std::mutex> lock(merge_mutex);
        for (int64_t b = 0; b < kBins; ++b) hist_[b] += h[b];
        std::fill(h.begin(), h.end(), 0u);
        pending = 0;
      };
      for (int64_t c = cb; c < ce; ++c) {
        const Chunk& ch = chunks_[c];
        const int64_t n = ch.end - ch.begin;
        const at::Tensor& mask = masks_[ch.t];
        const uint8_t* e = nullptr;
        if (exclude_ && mask.defined()) {
          load_keep(mask, packed_, ch.begin, n, elig.data());
          e = elig.data();
        }
        const at::Tensor& score = scores_[ch.t];
        dispatch_score<K>(score.scalar_type(), [&](auto tag) {
          using S = typename decltype(tag)::type;
          hist_chunk<S>(score.data_ptr<S>() + ch.begin, e, n, h.data(), inv_, pass, prefix);
        });
        pending += n;
        if (pending > (int64_t(1) << 31)) flush();  // uint32 bins cannot overflow
      }
      flush();
    });
  }

  template <typename S>
  static void classify(const S* s, int64_t n, uint8_t* cls, key_t inv, key_t T) {
    // 0: key < T (selected), 1: key == T (tied), 2: key > T (kept)
    for (int64_t j = 0; j < n; ++j) {
      const key_t key = make_key<K>(s[j]) ^ inv;
      cls[j] = uint8_t(key >= T) + uint8_t(key > T);
    }
  }

  void classify_chunk(const Chunk& ch, uint8_t* cls, key_t T) const {
    const at::Tensor& score = scores_[ch.t];
    dispatch_score<K>(score.scalar_type(), [&](auto tag) {
      using S = typename decltype(tag)::type;
      classify<S>(score.data_ptr<S>() + ch.begin, ch.end - ch.begin, cls, inv_, T);
    });
  }

  void write_pass(bool select_any, key_t T) {
    ties_.assign(chunks_.size(), 0);
    at::parallel_for(0, static_cast<int64_t>(chunks_.size()), 1, [&](int64_t cb, int64_t ce) {
      std::vector<uint8_t> keep(kChunk + 8, 0);
      std::vector<uint8_t> cls(kChunk, 2);
      for (int64_t c = cb; c < ce; ++c) {
        const Chunk& ch = chunks_[c];
        const int64_t n = ch.end - ch.begin;
        const at::Tensor& mask = masks_[ch.t];
        if (mask.defined()) {
          load_keep(mask, packed_, ch.begin, n, keep.data());
        } else {
          std::memset(keep.data(), 1, n);
        }
        std::memset(keep.data() + n, 0, 8);
        if (!select_any) {
          store_keep(outs_[ch.t], packed_, ch.begin, n, keep.data());
          continue;
        }
        classify_chunk(ch, cls.data(), T);
        uint8_t* kp = keep.data();
        const uint8_t* cp = cls.data();
        uint32_t tie = 0;
        if (exclude_) {
          for (int64_t j = 0; j < n; ++j) {
            const uint8_t e = kp[j];
            tie += e & uint8_t(cp[j] == 1);
            kp[j] = e & uint8_t(cp[j] != 0);
          }
        } else {
          for (int64_t j = 0; j < n; ++j) {
            tie += uint8_t(cp[j] == 1);
            kp[j] = kp[j] & uint8_t(cp[j] != 0);
          }
        }
        ties_[c] = tie;
        store_keep(outs_[ch.t], packed_, ch.begin, n, kp);
      }
    });
  }

  // Deselects the first r tied candidates in global order.
  void fixup_pass(key_t T, int64_t r) {
    std::vector<int64_t> todo_chunk, todo_quota;
    int64_t before = 0;
    for (size_t c = 0; c < chunks_.size() && before < r; ++c) {
      const int64_t q = std::min<int64_t>(ties_[c], r - before);
      if (q > 0) {
        todo_chunk.push_back(static_cast<int64_t>(c));
        todo_quota.push_back(q);
      }
      before += ties_[c];
    }
    TORCH_INTERNAL_ASSERT(before >= r, "kselect_: fewer tied units than needed");
    at::parallel_for(0, static_cast<int64_t>(todo_chunk.size()), 1, [&](int64_t ib, int64_t ie) {
      std::vector<uint8_t> keep(kChunk + 8, 0);
      std::vector<uint8_t> cls(kChunk);
      for (int64_t i = ib; i < ie; ++i) {
        const Chunk& ch = chunks_[todo_chunk[i]];
        const int64_t n = ch.end - ch.begin;
        int64_t quota = todo_quota[i];
        classify_chunk(ch, cls.data(), T);
        // After the write pass a tied unit that is a candidate is still kept
        // (out != 0) when candidates are the unmasked units; otherwise every
        // tied unit is a candidate.
        load_keep(outs_[ch.t], packed_, ch.begin, n, keep.data());
        std::memset(keep.data() + n, 0, 8);
        for (int64_t j = 0; j < n && quota > 0; ++j) {
          if (cls[j] == 1 && (!exclude_ || keep[j])) {
            keep[j] = 0;
            --quota;
          }
        }
        store_keep(outs_[ch.t], packed_, ch.begin, n, keep.data());
      }
    });
  }

  std::vector<at::Tensor> scores_, masks_, outs_;
  key_t inv_;
  bool exclude_, packed_;
  std::vector<Chunk> chunks_;
  std::vector<uint64_t> hist_;
  bool have_first_hist_ = false;
  std::vector<uint32_t> ties_;
};

template <KeyKind K>
void run_select(std::vector<at::Tensor> scores, std::vector<at::Tensor> masks, std::vector<at::Tensor> outs,
                int64_t k, bool largest, bool exclude_masked, bool packed) {
  RadixSelect<K> sel(std::move(scores), std::move(masks), std::move(outs), largest, exclude_masked, packed);
  const int64_t candidates = sel.count_candidates();
  FP_CHECK_VALUE(k <= candidates, "kselect_: k=", k, " must be between 0 and the number of selectable units (",
                 candidates, ")");
  sel.run(k);
}

// Would writing `out` directly change what a later read of `t` sees?
bool clobbers(const at::Tensor& out, const at::Tensor& t, bool same_index) {
  const auto status = at::get_overlap_status(out, t);
  if (status == at::MemOverlapStatus::No) return false;
  // out[i] == masks[i] element for element is fine: each unit is read before it is written.
  return !(same_index && status == at::MemOverlapStatus::Full && out.is_contiguous() && t.is_contiguous() &&
           out.data_ptr() == t.data_ptr() && out.element_size() == t.element_size() && out.numel() == t.numel());
}

void kselect_cpu(at::TensorList scores, const c10::List<std::optional<at::Tensor>>& masks, at::TensorList out,
                 int64_t k, bool largest, bool exclude_masked, bool packed) {
  const int64_t n = static_cast<int64_t>(scores.size());
  FP_CHECK_VALUE(static_cast<int64_t>(masks.size()) == n && static_cast<int64_t>(out.size()) == n,
                 "kselect_: scores, masks and out must have the same length, got ", n, ", ", masks.size(), " and ",
                 out.size());
  FP_CHECK_VALUE(k >= 0, "kselect_: k=", k, " must be between 0 and the number of selectable units");

  std::vector<at::Tensor> s(n), m(n), o(n);
  for (int64_t i = 0; i < n; ++i) {
    s[i] = scores[i];
    check_cpu(s[i], "kselect_", "scores", i);
    check_dtype(s[i], "kselect_", "scores", i);
    const int64_t numel = s[i].numel();
    const int64_t want = packed ? packed_numel(numel) : numel;
    const char* unit = packed ? " bytes (packed)" : " elements";
    const std::optional<at::Tensor> mi = masks[i];
    if (mi.has_value() && mi->defined()) {
      m[i] = *mi;
      check_cpu(m[i], "kselect_", "masks", i);
      if (packed) {
        FP_CHECK_TYPE(m[i].scalar_type() == at::kByte, "kselect_: masks[", i,
                      "] must be uint8 in packed mode, got ", m[i].scalar_type());
      } else {
        check_dtype(m[i], "kselect_", "masks", i);
      }
      FP_CHECK_VALUE(m[i].numel() == want, "kselect_: masks[", i, "] must have ", want, unit, ", got ",
                     m[i].numel());
    }
    o[i] = out[i];
    check_cpu(o[i], "kselect_", "out", i);
    if (packed) {
      FP_CHECK_TYPE(o[i].scalar_type() == at::kByte, "kselect_: out[", i, "] must be uint8 in packed mode, got ",
                    o[i].scalar_type());
    } else {
      check_dtype(o[i], "kselect_", "out", i);
    }
    FP_CHECK_VALUE(o[i].numel() == want, "kselect_: out[", i, "] must have ", want, unit, ", got ", o[i].numel());
  }
  if (n == 0) {
    FP_CHECK_VALUE(k == 0, "kselect_: k=", k, " must be between 0 and the number of selectable units (0)");
    return;
  }
  int64_t total = 0;
  for (const auto& t : s) total += t.numel();
  FP_CHECK_VALUE(k <= total, "kselect_: k=", k, " must be between 0 and the number of selectable units (at most ",
                 total, ")");

  // Outputs that cannot be written in place are computed into contiguous
  // temporaries and copied back at the end.
  std::vector<at::Tensor> write(n);
  std::vector<bool> direct(n);
  for (int64_t i = 0; i < n; ++i) {
    direct[i] = o[i].is_contiguous();
    write[i] = direct[i] ? o[i] : at::empty({o[i].numel()}, o[i].options());
  }
  // Inputs that a direct write would clobber before they are read get a copy.
  std::unordered_map<const void*, std::vector<int64_t>> out_by_storage;
  for (int64_t i = 0; i < n; ++i) {
    if (direct[i] && o[i].numel() > 0) out_by_storage[o[i].storage().unsafeGetStorageImpl()].push_back(i);
  }
  auto protect = [&](at::Tensor& t, int64_t idx, bool is_mask) {
    if (!t.defined() || t.numel() == 0) return;
    auto it = out_by_storage.find(t.storage().unsafeGetStorageImpl());
    if (it == out_by_storage.end()) return;
    for (int64_t i : it->second) {
      if (clobbers(o[i], t, is_mask && i == idx)) {
        t = t.clone(at::MemoryFormat::Contiguous);
        return;
      }
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    protect(s[i], i, false);
    protect(m[i], i, true);
    s[i] = s[i].contiguous();
    if (m[i].defined()) m[i] = m[i].contiguous();
  }

  const KeyKind kind = choose_kind(s);
  switch (kind) {
    case KeyKind::F16: run_select<KeyKind::F16>(s, m, write, k, largest, exclude_masked, packed); break;
    case KeyKind::BF16: run_select<KeyKind::BF16>(s, m, write, k, largest, exclude_masked, packed); break;
    case KeyKind::F32: run_select<KeyKind::F32>(s, m, write, k, largest, exclude_masked, packed); break;
    case KeyKind::F64: run_select<KeyKind::F64>(s, m, write, k, largest, exclude_masked, packed); break;
    case KeyKind::U16: run_select<KeyKind::U16>(s, m, write, k, largest, exclude_masked, packed); break;
    case KeyKind::U32: run_select<KeyKind::U32>(s, m, write, k, largest, exclude_masked, packed); break;
    case KeyKind::U64: run_select<KeyKind::U64>(s, m, write, k, largest, exclude_masked, packed); break;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!direct[i]) o[i].copy_(write[i].view(o[i].sizes()));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CPU, m) { m.impl("kselect_", &kselect_cpu); }

}  // namespace fastprune
