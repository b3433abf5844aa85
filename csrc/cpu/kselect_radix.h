// Radix select over a chunk table (algorithm: csrc/README.md).
// Included by kselect_cpu.cpp once per instruction set: inside the namespace
// FASTPRUNE_KSELECT_NS, after the key helpers and load_keep/store_keep.
#ifndef FASTPRUNE_KSELECT_NS
#error "include kselect_radix.h only from kselect_cpu.cpp"
#endif

namespace FASTPRUNE_KSELECT_NS {

#include "kselect_keep.h"

// Units per sub-block of the bracket scan and the write pass (a multiple of 8): the
// per-unit byte buffers of one sub-block stay in L1. A namespace constant, and the
// buffers reached through plain pointers inside the generic lambdas below: GCC 13
// crashes (internal compiler error in tsubst_copy) on a function-local constexpr
// array bound whose array a generic lambda of a class template captures.
constexpr int64_t kSubBlock = 4096;

// Unsigned integer as wide as S, for reading and writing S's bit patterns.
template <typename S>
using bits_t = std::conditional_t<sizeof(S) == 8, uint64_t, std::conditional_t<sizeof(S) == 4, uint32_t, uint16_t>>;

template <typename S>
constexpr bool is_float_v = std::is_floating_point_v<S> || std::is_same_v<S, at::Half> ||
                            std::is_same_v<S, at::BFloat16>;

// The per-unit loops compare keys as signed integers: x86 has one-instruction
// signed vector compares only. Flipping the top bit of the keys (folded into
// the xor with `inv`) and of the bounds keeps the unsigned order.
#define FASTPRUNE_SIGNED_BOUNDS                                                                   \
  constexpr key_t kFlip = static_cast<key_t>(key_t(1) << (kBits - 1));                           \
  const key_t invf = static_cast<key_t>(inv ^ kFlip);                                             \
  const skey_t lof = static_cast<skey_t>(static_cast<key_t>(lo ^ kFlip));                         \
  const skey_t hif = static_cast<skey_t>(static_cast<key_t>(hi ^ kFlip))

template <KeyKind K>
class RadixSelect {
  using key_t = typename KeyTraits<K>::type;
  using skey_t = std::make_signed_t<key_t>;
  static constexpr int kBits = KeyTraits<K>::bits;
  static constexpr int kPasses = kBits / kDigitBits;
  // Listed unit = tensor index << kPosBits | unit index within the tensor.
  static constexpr int kPosBits = 44;
  static constexpr uint64_t kPosMask = (uint64_t(1) << kPosBits) - 1;
  // Largest undecided set finished from a list (positions + keys: 16 MB at most).
  static constexpr int64_t kListCap = int64_t(1) << 20;
  // Sampled bracket: tried from kSampleMin units; kSampleStrata runs of
  // kSampleRun units drawn (up to 2^18 keys); given up beforehand when the
  // bracket is expected to hold more than kBracketCap candidates; the scan
  // stops past 2 x kBracketCap gathered keys (32 MB of 32-bit keys, 64 MB of 64-bit).
  static constexpr int64_t kSampleMin = int64_t(1) << 20;
  static constexpr int64_t kSampleStrata = int64_t(1) << 14;
  static constexpr int64_t kSampleRun = 16;
  static constexpr int64_t kBracketCap = int64_t(1) << 22;

  // What the bracket's scan found: candidates, those below lo, the keys of
  // those inside [lo, hi] (one list per parallel task), and whether it stopped
  // early because more than its limit were inside.
  struct BracketScan {
    int64_t eligible = 0, below = 0, gathered = 0;
    bool aborted = false;
    std::vector<std::vector<key_t>> keys;
  };

 public:
  // values/applied: empty, or applied[i] = values[i] * out[i] is written too.
  RadixSelect(std::vector<at::Tensor> scores, std::vector<at::Tensor> masks, std::vector<at::Tensor> outs,
              std::vector<at::Tensor> values, std::vector<at::Tensor> applied, bool largest, bool exclude_masked,
              bool packed)
      : scores_(std::move(scores)),
        masks_(std::move(masks)),
        outs_(std::move(outs)),
        values_(std::move(values)),
        applied_(std::move(applied)),
        inv_(largest ? static_cast<key_t>(~key_t(0)) : key_t(0)),
        exclude_(exclude_masked),
        packed_(packed) {
    std::vector<int64_t> numels;
    for (const auto& s : scores_) numels.push_back(s.numel());
    chunks_ = make_chunks(numels, kChunk);
    for (size_t t = 0; t < scores_.size(); ++t) {
      const at::ScalarType st = scores_[t].scalar_type();
      const bool same_mask = masks_[t].defined() && !packed && masks_[t].scalar_type() == st;
      mask_bits_.push_back(same_mask && at::isFloatingType(st));
      fused_.push_back(!packed && at::isFloatingType(st) && outs_[t].scalar_type() == st &&
                       (!masks_[t].defined() || same_mask));
    }
    for (const auto& o : outs_) {
      out_base_.push_back(o.numel() > 0 ? static_cast<char*>(o.data_ptr()) : nullptr);
      out_size_.push_back(o.element_size());
    }
    list_ok_ = numels.size() < (size_t(1) << (64 - kPosBits));
    for (int64_t n : numels) list_ok_ = list_ok_ && uint64_t(n) <= kPosMask;
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

  // The sampled bracket (csrc/README.md): a sample of the keys brackets the
  // threshold by [lo, hi]; one read-only pass counts the candidates and those
  // below lo and gathers the keys of the candidates inside the bracket, which
  // give the exact threshold T and its tie count; then the write pass and tie
  // fix-up of the radix select. Replaces the radix select's histogram passes
  // when the bracket holds the threshold (kHit). kNotTried: it does not apply;
  // kMissed: the bracket missed. Nothing is written unless kHit.
  // k = -1: k_from_fraction(fraction, candidates), counted by the pass.
  Sampled try_sampled(int64_t k, double fraction) {
    // 16-bit keys: the radix select's one histogram pass gives the exact
    // threshold already, for less than the bracket's scan.
    if (k == 0 || kBits == 16) return Sampled::kNotTried;
    const int64_t total = total_units();
    if (total < sample_min()) return Sampled::kNotTried;
    bool any_mask = false;
    for (const auto& m : masks_) any_mask |= m.defined();
    const bool count_eligible = exclude_ && any_mask;

    int64_t visited = 0;
    std::vector<key_t> sample = draw_sample(total, count_eligible, &visited);
    const int64_t s = static_cast<int64_t>(sample.size());
    if (s < 32) return Sampled::kNotTried;
    const double cand_est = count_eligible ? double(total) * double(s) / double(visited) : double(total);
    const double q = std::min(1.0, k < 0 ? fraction : double(k) / cand_est);
    const double r = q * double(s);
    const double m = sample_margin(r * (1.0 - q));
    // Sample ranks of lo and hi (any values are correct: a miss is detected).
    const int64_t r_lo = std::min<int64_t>(static_cast<int64_t>(std::floor(r - m)), s - 1);
    const int64_t r_hi = std::max<int64_t>(static_cast<int64_t>(std::ceil(r + m)), 0);
    key_t lo = 0, hi = static_cast<key_t>(~key_t(0));
    std::vector<int64_t> ranks;
    if (r_lo >= 0) ranks.push_back(r_lo);
    if (r_hi < s) ranks.push_back(r_hi);
    const std::vector<key_t> at_ranks = ranked_keys({&sample}, ranks);
    if (r_lo >= 0) lo = at_ranks.front();
    if (r_hi < s) hi = at_ranks.back();
    int64_t in_bracket = 0;
    for (const key_t key : sample) in_bracket += int64_t(key >= lo && key <= hi);
    const double expect = double(in_bracket) / double(s) * cand_est;
    if (expect > double(kBracketCap)) return Sampled::kNotTried;  // heavy ties at the threshold
    const int64_t limit = std::min<int64_t>(2 * kBracketCap, static_cast<int64_t>(2.0 * expect) + 65536);

    const BracketScan sc = scan_bracket(lo, hi, limit);
    const int64_t candidates = count_eligible ? sc.eligible : total;
    if (k < 0) k = k_from_fraction(fraction, candidates);
    FP_CHECK_VALUE(k <= candidates, "kselect_: k=", k, " must be between 0 and the number of selectable units (",
                   candidates, ")");
    if (sc.aborted || sc.below > k || k > sc.below + sc.gathered) return Sampled::kMissed;
    if (k == 0) {
      write_pass(false, 0, 0, false);
      return Sampled::kHit;
    }
    // Threshold T and the number of units with key == T to select. k == below:
    // exactly the keys below lo, i.e. T = lo with no tie selected.
    key_t T = lo;
    int64_t ties = 0;
    if (k > sc.below) {
      std::vector<const std::vector<key_t>*> parts;
      for (const auto& g : sc.keys) parts.push_back(&g);
      T = ranked_keys(parts, {k - sc.below - 1}).front();
      ties = k - sc.below;
      for (const auto& g : sc.keys) {
        for (const key_t key : g) ties -= int64_t(key < T);
      }
    }
    write_pass(true, T, T, false);
    fixup_pass(T, ties);
    return Sampled::kHit;
  }

  void run(int64_t k) {
    if (k == 0) {
      write_pass(false, 0, 0, false);
      return;
    }
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
      const int shift = kBits - kDigitBits * (pass + 1);
      if (shift > 0 && list_ok_ && int64_t(hist_[b]) <= list_cap()) {
        // Few units share the threshold's leading digits: write the masks now,
        // keeping those units for the moment and listing their positions, then
        // finish the selection on the list instead of reading everything again.
        const key_t lo = static_cast<key_t>(prefix << shift);
        const key_t hi = static_cast<key_t>(lo | ((key_t(1) << shift) - 1));
        write_pass(true, lo, hi, true);
        resolve_list(shift, prefix, remaining);
        return;
      }
    }
    const key_t T = static_cast<key_t>(prefix);
    write_pass(true, T, T, false);
    fixup_pass(T, remaining);
  }

 private:
  // FASTPRUNE_KSELECT_LIST_CAP overrides kListCap; the tests set it to 0 to
  // exercise the histogram-and-fix-up path on small inputs.
  static int64_t list_cap() {
    const char* env = std::getenv("FASTPRUNE_KSELECT_LIST_CAP");
    return env && *env ? std::strtoll(env, nullptr, 10) : kListCap;
  }

  // FASTPRUNE_KSELECT_SAMPLE_MIN: fewest units for which the sampled bracket
  // is tried (the tests set 0 to try it on small inputs, or a huge value to
  // run the exact path alone). FASTPRUNE_KSELECT_SAMPLE_MARGIN: the bracket's
  // half-width in sample ranks instead of the default (the tests force misses with 0).
  static int64_t sample_min() {
    const char* env = std::getenv("FASTPRUNE_KSELECT_SAMPLE_MIN");
    return env && *env ? std::strtoll(env, nullptr, 10) : kSampleMin;
  }

  // Half-width of the bracket in sample ranks around the threshold's expected
  // rank r, for var = r (1 - q), the variance of that rank if the sample units
  // were independent draws: 6 standard deviations, plus 8 ranks for small samples.
  static double sample_margin(double var) {
    const char* env = std::getenv("FASTPRUNE_KSELECT_SAMPLE_MARGIN");
    if (env && *env) return std::strtod(env, nullptr);
    return 6.0 * std::sqrt(std::max(var, 0.0)) + 8.0;
  }

  // Keys of a stratified sample: the units are cut into equal strata and a run
  // of up to kSampleRun units (a 64-byte line of fp32) is read at a
  // pseudo-random place in each. The places are computed first and prefetched
  // a few draws ahead, so the cache misses overlap. Only candidates are kept;
  // *visited counts every unit read. The draw is fixed: the result never
  // depends on it, only the speed.
  std::vector<key_t> draw_sample(int64_t total, bool count_eligible, int64_t* visited) const {
    struct Draw {
      int64_t t, off, n;
    };
    const int64_t nt = static_cast<int64_t>(scores_.size());
    const int64_t strata = std::max<int64_t>(1, std::min<int64_t>(kSampleStrata, total / kSampleRun));
    const int64_t width = total / strata;
    std::vector<Draw> draws;
    draws.reserve(strata);
    int64_t t = 0, t_begin = 0;  // tensor holding the current global position, and its first unit
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (int64_t b = 0; b < strata; ++b) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const uint64_t h = state ^ (state >> 29);
      const int64_t g =
          b * width + static_cast<int64_t>(h % static_cast<uint64_t>(std::max<int64_t>(width - kSampleRun, 1)));
      while (t < nt && g >= t_begin + scores_[t].numel()) t_begin += scores_[t++].numel();
      if (t == nt) break;
      const int64_t off = (g - t_begin) / 8 * 8;  // packed masks: whole bytes
      draws.push_back({t, off, std::min<int64_t>(kSampleRun, scores_[t].numel() - off)});
    }
    constexpr size_t kAhead = 16;
    auto prefetch = [&](size_t i) {
      if (i >= draws.size()) return;
      const Draw& d = draws[i];
      __builtin_prefetch(static_cast<const char*>(scores_[d.t].data_ptr()) + d.off * scores_[d.t].element_size());
    };
    for (size_t i = 0; i < kAhead; ++i) prefetch(i);
    std::vector<key_t> sample;
    sample.reserve(draws.size() * kSampleRun);
    alignas(64) uint8_t elig_buf[kSampleRun + 8];
    uint8_t* const elig = elig_buf;  // a pointer in the generic lambda below (see kSubBlock)
    for (size_t i = 0; i < draws.size(); ++i) {
      prefetch(i + kAhead);
      const Draw& d = draws[i];
      const at::Tensor& mask = masks_[d.t];
      const bool check = count_eligible && mask.defined();
      if (check) load_keep(mask, packed_, d.off, d.n, elig);
      const at::Tensor& score = scores_[d.t];
      dispatch_score<K>(score.scalar_type(), [&](auto tag) {
        using S = typename decltype(tag)::type;
        const S* sp = score.data_ptr<S>() + d.off;
        for (int64_t j = 0; j < d.n; ++j) {
          if (!check || elig[j]) sample.push_back(make_key<K>(sp[j]) ^ inv_);
        }
      });
      *visited += d.n;
    }
    return sample;
  }

  // The keys of 0-based ranks `ranks` (ascending) among all keys of `parts`:
  // one histogram of at most 2^16 bins over their range, then nth_element on
  // the few keys of each bin that holds one of the ranks.
  static std::vector<key_t> ranked_keys(const std::vector<const std::vector<key_t>*>& parts,
                                        const std::vector<int64_t>& ranks) {
    key_t mn = static_cast<key_t>(~key_t(0)), mx = 0;
    for (const auto* p : parts) {
      for (const key_t k : *p) {
        mn = std::min(mn, k);
        mx = std::max(mx, k);
      }
    }
    const uint64_t range = uint64_t(mx - mn);
    int shift = 0;
    while ((range >> shift) >= uint64_t(kBins)) ++shift;
    std::vector<int64_t> h((range >> shift) + 1, 0);
    for (const auto* p : parts) {
      for (const key_t k : *p) h[uint64_t(k - mn) >> shift]++;
    }
    std::vector<key_t> out;
    size_t b = 0;
    int64_t below = 0;  // keys in bins before b
    for (const int64_t r : ranks) {
      while (b < h.size() && below + h[b] <= r) below += h[b++];
      TORCH_INTERNAL_ASSERT(b < h.size(), "kselect_: listed units do not hold k units");
      if (shift == 0) {
        out.push_back(static_cast<key_t>(mn + b));
        continue;
      }
      std::vector<key_t> in_bin;
      in_bin.reserve(h[b]);
      for (const auto* p : parts) {
        for (const key_t k : *p) {
          if ((uint64_t(k - mn) >> shift) == b) in_bin.push_back(k);
        }
      }
      std::nth_element(in_bin.begin(), in_bin.begin() + (r - below), in_bin.end());
      out.push_back(in_bin[r - below]);
    }
    return out;
  }

  // The units listed by a collecting write pass, in global order.
  void take_lists(std::vector<uint64_t>& pos, std::vector<key_t>& keys) {
    std::sort(lists_.begin(), lists_.end(), [](const Listed& a, const Listed& b) { return a.first_chunk < b.first_chunk; });
    size_t n = 0;
    for (const auto& l : lists_) n += l.pos.size();
    pos.reserve(n);
    keys.reserve(n);
    for (auto& l : lists_) {
      pos.insert(pos.end(), l.pos.begin(), l.pos.end());
      keys.insert(keys.end(), l.keys.begin(), l.keys.end());
    }
    lists_.clear();
  }

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
  static void classify(const S* s, int64_t n, uint8_t* cls, key_t inv, key_t lo, key_t hi) {
    // 0: key < lo (selected), 1: lo <= key <= hi (undecided), 2: key > hi (kept)
    for (int64_t j = 0; j < n; ++j) {
      const key_t key = make_key<K>(s[j]) ^ inv;
      cls[j] = uint8_t(key >= lo) + uint8_t(key > hi);
    }
  }

  void classify_units(int64_t t, int64_t begin, int64_t n, uint8_t* cls, key_t lo, key_t hi) const {
    const at::Tensor& score = scores_[t];
    dispatch_score<K>(score.scalar_type(), [&](auto tag) {
      using S = typename decltype(tag)::type;
      classify<S>(score.data_ptr<S>() + begin, n, cls, inv_, lo, hi);
    });
  }

  // One sub-block of the bracket's scan: inb[j] = 1 for the candidates with
  // lo <= key <= hi; counts of the candidates below lo and of the units the old
  // mask keeps. Mode 0: every unit is a candidate (m unused); 1: candidates are
  // the units with m[j] != 0, m the keep bytes; 2: m holds the old mask in S's
  // own dtype, read as bit patterns (-0.0 is 0, NaN non-zero, as nonzero()).
  // Branch-free, the counters as wide as the keys: the loop vectorises without
  // widening (a sub-block's counts fit any key width).
  template <typename S, int Mode>
  static void scan_block(const S* __restrict s, const void* __restrict m, int64_t n, uint8_t* __restrict inb,
                         key_t inv, key_t lo, key_t hi, uint32_t& below, uint32_t& elig) {
    FASTPRUNE_SIGNED_BOUNDS;
    using B = bits_t<S>;
    constexpr B kAbs = static_cast<B>(static_cast<B>(~B(0)) >> 1);  // ~ promotes 16-bit B to int
    const uint8_t* __restrict mk = static_cast<const uint8_t*>(m);
    const B* __restrict mb = static_cast<const B*>(m);
    key_t bl = 0, el = 0;
    for (int64_t j = 0; j < n; ++j) {
      const skey_t key = static_cast<skey_t>(make_key<K>(s[j]) ^ invf);  // signed order = unsigned order
      key_t e = 1;
      if constexpr (Mode == 1) e = mk[j];
      if constexpr (Mode == 2) e = key_t((mb[j] & kAbs) != 0);
      const key_t lt = key < lof;
      inb[j] = uint8_t(e & key_t(key <= hif) & (lt ^ 1));
      bl += e & lt;
      el += e;
    }
    below = static_cast<uint32_t>(bl);
    elig = static_cast<uint32_t>(el);
  }

  // f(j) for each j < n with flag[j] != 0, in order. The flagged units are few
  // and far apart, so the flags are read eight at a time. flag must have room
  // for n + 8 bytes (the tail is zeroed here).
  template <typename F>
  static void for_each_flagged(uint8_t* flag, int64_t n, F&& f) {
    std::memset(flag + n, 0, 8);
    for (int64_t w = 0; w < n; w += 8) {
      uint64_t x;
      std::memcpy(&x, flag + w, 8);
      while (x) {
        f(w + (__builtin_ctzll(x) >> 3));
        x &= x - 1;
      }
    }
  }

  // Asks for units [begin, begin + n) of t to be brought into cache while the
  // current sub-block is worked on: the passes do enough arithmetic per byte
  // that the hardware prefetcher alone leaves them waiting on memory.
  static void prefetch_ahead(const at::Tensor& t, int64_t begin, int64_t n) {
    if (n <= 0) return;
    const char* p = static_cast<const char*>(t.data_ptr()) + begin * t.element_size();
    const int64_t bytes = n * t.element_size();
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off);
  }

  // Counts the candidates and those with key < lo, and gathers the keys of
  // those with lo <= key <= hi; reads the scores (and the masks when they
  // exclude units) once and writes nothing. Stops once more than `limit` keys
  // are gathered.
  BracketScan scan_bracket(key_t lo, key_t hi, int64_t limit) {
    BracketScan sc;
    std::mutex merge_mutex;
    std::atomic<int64_t> gathered{0};
    std::atomic<bool> abort{false};
    std::vector<std::pair<int64_t, std::vector<key_t>>> parts;
    at::parallel_for(0, static_cast<int64_t>(chunks_.size()), 1, [&](int64_t cb, int64_t ce) {
      alignas(64) uint8_t keep_buf[kSubBlock + 8];
      alignas(64) uint8_t inb_buf[kSubBlock + 8];
      uint8_t* const keep = keep_buf;
      uint8_t* const inb = inb_buf;
      std::vector<key_t> keys;
      int64_t eligible = 0, below = 0;
      for (int64_t c = cb; c < ce && !abort.load(std::memory_order_relaxed); ++c) {
        const Chunk& ch = chunks_[c];
        const at::Tensor& mask = masks_[ch.t];
        const at::Tensor& score = scores_[ch.t];
        const size_t before = keys.size();
        for (int64_t b = ch.begin; b < ch.end; b += kSubBlock) {
          const int64_t n = std::min(kSubBlock, ch.end - b);
          prefetch_ahead(score, b + kSubBlock, std::min(kSubBlock, ch.end - b - kSubBlock));
          const bool masked = exclude_ && mask.defined();
          const bool bits = masked && mask_bits_[ch.t];
          if (masked && !bits) load_keep(mask, packed_, b, n, keep);
          dispatch_score<K>(score.scalar_type(), [&](auto tag) {
            using S = typename decltype(tag)::type;
            const S* sp = score.data_ptr<S>() + b;
            uint32_t bl = 0, el = 0;
            if (!masked) {
              scan_block<S, 0>(sp, nullptr, n, inb, inv_, lo, hi, bl, el);
            } else if (!bits) {
              scan_block<S, 1>(sp, keep, n, inb, inv_, lo, hi, bl, el);
            } else {
              scan_block<S, 2>(sp, static_cast<const char*>(mask.data_ptr()) + b * sizeof(S), n, inb, inv_, lo, hi,
                               bl, el);
            }
            below += bl;
            eligible += el;
            for_each_flagged(inb, n, [&](int64_t j) { keys.push_back(make_key<K>(sp[j]) ^ inv_); });
          });
        }
        const int64_t added = static_cast<int64_t>(keys.size() - before);
        if (gathered.fetch_add(added, std::memory_order_relaxed) + added > limit) abort.store(true);
      }
      std::lock_guard<std::mutex> lock(merge_mutex);
      sc.eligible += eligible;
      sc.below += below;
      sc.gathered += static_cast<int64_t>(keys.size());
      parts.emplace_back(cb, std::move(keys));
    });
    sc.aborted = abort.load();
    std::sort(parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& p : parts) sc.keys.push_back(std::move(p.second));
    return sc;
  }

  // One sub-block of a write pass. In: keep[j] = the unit's old mask (0/1).
  // Out: keep[j] cleared for candidates with key < lo; inb[j] = 1 for
  // candidates with lo <= key <= hi. Candidates: the units the old mask keeps
  // when Exclude, else all.
  template <typename S, bool Exclude>
  static void bracket_block(const S* __restrict s, int64_t n, uint8_t* __restrict keep, uint8_t* __restrict inb,
                            key_t inv, key_t lo, key_t hi) {
    FASTPRUNE_SIGNED_BOUNDS;
    for (int64_t j = 0; j < n; ++j) {
      const skey_t key = static_cast<skey_t>(make_key<K>(s[j]) ^ invf);  // signed order = unsigned order
      const key_t lt = key < lof;
      const key_t e = keep[j];
      const key_t cand = Exclude ? e : key_t(1);
      inb[j] = uint8_t(cand & key_t(key <= hif) & (lt ^ 1));
      keep[j] = uint8_t(e & (lt ^ 1));
    }
  }

  // bracket_block for scores, old mask (when HasMask) and out all of the
  // floating dtype S, writing out directly. Masks are read and written as bit
  // patterns (0/1 in S: all-zero / the bits of 1; -0.0 counts as 0, NaN as
  // non-zero, as nonzero() does), which keeps every lane the same width.
  // Collect: inb written (the bracket's units, to be listed); otherwise only
  // counted into `ties` (the write pass of a known threshold, lo == hi). With
  // `ap` (float and double only, where the product is one native multiply):
  // ap[j] = v[j] * new mask, the pruned values, in the same loop.
  template <typename S, bool Exclude, bool HasMask, bool Collect>
  static void fused_block(const S* __restrict s, const S* __restrict m, S* __restrict o, int64_t n,
                          uint8_t* __restrict inb, key_t inv, key_t lo, key_t hi, uint32_t& ties,
                          const S* __restrict v = nullptr, S* __restrict ap = nullptr) {
    // (Streaming stores through an L1 buffer were measured here: they cost
    // first calls more than they save on warm ones, since the kernel has
    // just zeroed each new page in cache.)
    if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
      if (ap != nullptr) {
        ties = fused_loop<S, Exclude, HasMask, Collect, true>(s, m, o, n, inb, inv, lo, hi, v, ap);
        return;
      }
    }
    ties = fused_loop<S, Exclude, HasMask, Collect, false>(s, m, o, n, inb, inv, lo, hi, nullptr, nullptr);
  }

  template <typename S, bool Exclude, bool HasMask, bool Collect, bool Apply>
  static uint32_t fused_loop(const S* __restrict s, const S* __restrict m, S* __restrict o, int64_t n,
                             uint8_t* __restrict inb, key_t inv, key_t lo, key_t hi, const S* __restrict v,
                             S* __restrict ap) {
    FASTPRUNE_SIGNED_BOUNDS;
    using B = bits_t<S>;
    B one;
    const S one_s = zero_or_one<S>(1);
    std::memcpy(&one, &one_s, sizeof(B));
    constexpr B kAbs = static_cast<B>(static_cast<B>(~B(0)) >> 1);  // ~ promotes 16-bit B to int
    const B* __restrict mb = reinterpret_cast<const B*>(m);
    B* __restrict ob = reinterpret_cast<B*>(o);
    key_t tie = 0;
    for (int64_t j = 0; j < n; ++j) {
      const skey_t key = static_cast<skey_t>(make_key<K>(s[j]) ^ invf);  // signed order = unsigned order
      const key_t lt = key < lof;
      key_t e = 1;
      if constexpr (HasMask) e = key_t((mb[j] & kAbs) != 0);
      const key_t cand = Exclude ? e : key_t(1);
      const key_t in = cand & key_t(key <= hif) & (lt ^ 1);
      if constexpr (Collect) {
        inb[j] = uint8_t(in);
      } else {
        tie += in;
      }
      const key_t keep = e & (lt ^ 1);
      const B bits = static_cast<B>(one & (B(0) - static_cast<B>(keep)));
      ob[j] = bits;
      if constexpr (Apply) {
        S f;
        std::memcpy(&f, &bits, sizeof(S));  // 0.0 or 1.0
        ap[j] = v[j] * f;
      }
    }
    return static_cast<uint32_t>(tie);
  }

  // Writes every mask: units below [lo, hi] selected, above kept, inside kept
  // for now and counted per chunk (and listed when `collect`). Works through
  // each chunk in sub-blocks small enough for the per-unit buffers to stay in L1.
  void write_pass(bool select_any, key_t lo, key_t hi, bool collect) {
    ties_.assign(chunks_.size(), 0);
    std::mutex list_mutex;
    at::parallel_for(0, static_cast<int64_t>(chunks_.size()), 1, [&](int64_t cb, int64_t ce) {
      alignas(64) uint8_t keep_buf[kSubBlock + 8];
      alignas(64) uint8_t inb_buf[kSubBlock + 8];
      uint8_t* const keep = keep_buf;
      uint8_t* const inb = inb_buf;
      std::vector<uint64_t> listed;
      std::vector<key_t> listed_keys;
      for (int64_t c = cb; c < ce; ++c) {
        const Chunk& ch = chunks_[c];
        const at::Tensor& mask = masks_[ch.t];
        const at::Tensor& out = outs_[ch.t];
        const at::Tensor& score = scores_[ch.t];
        uint32_t tie = 0;
        for (int64_t b = ch.begin; b < ch.end; b += kSubBlock) {
          const int64_t n = std::min(kSubBlock, ch.end - b);
          bool applied_done = false, tie_counted = false;
          uint32_t sub_tie = 0;
          if (select_any && fused_[ch.t]) {
            // Scores, old mask and out of one floating dtype: one loop reads the
            // scores and the old mask and writes out, no keep bytes in between.
            dispatch_score<K>(score.scalar_type(), [&](auto tag) {
              using S = typename decltype(tag)::type;
              if constexpr (is_float_v<S>) {
                const S* sp = score.data_ptr<S>() + b;
                S* op = out.data_ptr<S>() + b;
                const S* mp = mask.defined() ? mask.data_ptr<S>() + b : nullptr;
                const S* vp = nullptr;
                S* ap = nullptr;
                if (!applied_.empty() && values_[ch.t].scalar_type() == score.scalar_type() &&
                    (std::is_same_v<S, float> || std::is_same_v<S, double>)) {
                  vp = values_[ch.t].data_ptr<S>() + b;
                  ap = applied_[ch.t].data_ptr<S>() + b;
                  applied_done = true;
                }
                auto run = [&](auto collect) {
                  constexpr bool C = decltype(collect)::value;
                  if (!mask.defined()) {
                    fused_block<S, false, false, C>(sp, mp, op, n, inb, inv_, lo, hi, sub_tie, vp, ap);
                  } else if (exclude_) {
                    fused_block<S, true, true, C>(sp, mp, op, n, inb, inv_, lo, hi, sub_tie, vp, ap);
                  } else {
                    fused_block<S, false, true, C>(sp, mp, op, n, inb, inv_, lo, hi, sub_tie, vp, ap);
                  }
                };
                if (collect) {
                  run(std::true_type{});
                } else {
                  run(std::false_type{});
                  tie_counted = true;
                }
              } else {
                TORCH_INTERNAL_ASSERT(false, "kselect_: fused write pass on a non-floating dtype");
              }
            });
          } else {
            if (mask.defined()) {
              load_keep(mask, packed_, b, n, keep);
            } else {
              std::memset(keep, 1, n);
            }
            std::memset(keep + n, 0, 8);
            if (select_any) {
              dispatch_score<K>(score.scalar_type(), [&](auto tag) {
                using S = typename decltype(tag)::type;
                const S* sp = score.data_ptr<S>() + b;
                if (exclude_) {
                  bracket_block<S, true>(sp, n, keep, inb, inv_, lo, hi);
                } else {
                  bracket_block<S, false>(sp, n, keep, inb, inv_, lo, hi);
                }
              });
            }
            store_keep(out, packed_, b, n, keep);
          }
          if (!applied_.empty() && !applied_done) {
            // The pruned values while the scores (often the same tensor) and
            // the new mask are still in cache.
            if (select_any && fused_[ch.t]) load_keep(out, false, b, n, keep);
            apply_keep(values_[ch.t], applied_[ch.t], b, n, keep);
          }
          if (!select_any) continue;
          if (tie_counted) {
            tie += sub_tie;
            continue;
          }
          // inb: the candidates inside [lo, hi], counted and, when collecting,
          // listed. Scanned eight units at a time: they are few and far apart;
          // their keys are taken while the scores are in cache.
          std::memset(inb + n, 0, 8);
          if (!collect) {
            for (int64_t w = 0; w < n; w += 8) {
              uint64_t x;
              std::memcpy(&x, inb + w, 8);
              tie += static_cast<uint32_t>(__builtin_popcountll(x));
            }
            continue;
          }
          dispatch_score<K>(score.scalar_type(), [&](auto tag) {
            using S = typename decltype(tag)::type;
            const S* sp = score.data_ptr<S>() + b;
            for_each_flagged(inb, n, [&](int64_t j) {
              ++tie;
              listed.push_back((uint64_t(ch.t) << kPosBits) | uint64_t(b + j));
              listed_keys.push_back(make_key<K>(sp[j]) ^ inv_);
            });
          });
        }
        ties_[c] = tie;
      }
      if (collect) {
        std::lock_guard<std::mutex> lock(list_mutex);
        lists_.push_back({cb, std::move(listed), std::move(listed_keys)});
      }
    });
  }

  // Finishes a selection started by a collecting write pass: the listed units
  // share the leading digits `prefix`; `remaining` of them, the smallest keys
  // and among equal keys the first listed (= lowest global index), are
  // deselected. `shift` = number of key bits below the prefix.
  void resolve_list(int shift, uint64_t prefix, int64_t remaining) {
    std::vector<uint64_t> pos;
    std::vector<key_t> keys;
    take_lists(pos, keys);
    const int64_t m = static_cast<int64_t>(pos.size());
    std::vector<int64_t> h(kBins);
    while (shift > 0) {
      shift -= kDigitBits;
      std::fill(h.begin(), h.end(), 0);
      for (int64_t i = 0; i < m; ++i) {
        if (uint64_t(keys[i] >> (shift + kDigitBits)) == prefix) h[(keys[i] >> shift) & (kBins - 1)]++;
      }
      int64_t below = 0, b = 0;
      for (; b < kBins; ++b) {
        if (below + h[b] >= remaining) break;
        below += h[b];
      }
      TORCH_INTERNAL_ASSERT(b < kBins, "kselect_: listed units do not hold k units");
      remaining -= below;
      prefix = (prefix << kDigitBits) | uint64_t(b);
    }
    const key_t T = static_cast<key_t>(prefix);
    for (int64_t i = 0; i < m; ++i) {
      if (keys[i] < T || (keys[i] == T && remaining-- > 0)) deselect(pos[i]);
    }
  }

  void deselect(uint64_t p) {
    const size_t t = p >> kPosBits;
    const int64_t idx = static_cast<int64_t>(p & kPosMask);
    if (!applied_.empty()) {
      const uint8_t pruned = 0;
      apply_keep(values_[t], applied_[t], idx, 1, &pruned);
    }
    char* base = out_base_[t];
    if (packed_) {
      reinterpret_cast<uint8_t*>(base)[idx >> 3] &= static_cast<uint8_t>(~(1u << (idx & 7)));
      return;
    }
    // All-zero bytes are 0 / +0.0 / false in every supported dtype.
    switch (out_size_[t]) {
      case 1: base[idx] = 0; break;
      case 2: reinterpret_cast<uint16_t*>(base)[idx] = 0; break;
      case 4: reinterpret_cast<uint32_t*>(base)[idx] = 0; break;
      default: std::memset(base + idx * out_size_[t], 0, out_size_[t]); break;
    }
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
        classify_units(ch.t, ch.begin, n, cls.data(), T, T);
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
        if (!applied_.empty()) apply_keep(values_[ch.t], applied_[ch.t], ch.begin, n, keep.data());
      }
    });
  }

  std::vector<at::Tensor> scores_, masks_, outs_, values_, applied_;
  std::vector<bool> fused_;      // per tensor: write_pass may take fused_block
  std::vector<bool> mask_bits_;  // per tensor: scan_bracket may read the mask's bits (scan_block mode 2)
  std::vector<char*> out_base_;  // outs_[t]'s data and element size, for deselect
  std::vector<int64_t> out_size_;
  key_t inv_;
  bool exclude_, packed_;
  std::vector<Chunk> chunks_;
  std::vector<uint64_t> hist_;
  bool have_first_hist_ = false;
  bool list_ok_ = true;
  std::vector<uint32_t> ties_;
  struct Listed {
    int64_t first_chunk;         // of the parallel task that listed them
    std::vector<uint64_t> pos;   // tensor << kPosBits | unit
    std::vector<key_t> keys;
  };
  std::vector<Listed> lists_;
};

template <KeyKind K>
void run_select(std::vector<at::Tensor> scores, std::vector<at::Tensor> masks, std::vector<at::Tensor> outs,
                std::vector<at::Tensor> values, std::vector<at::Tensor> applied, int64_t k, double fraction,
                bool largest, bool exclude_masked, bool packed) {
  RadixSelect<K> sel(std::move(scores), std::move(masks), std::move(outs), std::move(values), std::move(applied),
                     largest, exclude_masked, packed);
  const Sampled sampled = sel.try_sampled(k, fraction);
  if (sampled == Sampled::kHit) {
    count_path(KSelectPath::kSampled);
    return;
  }
  count_path(sampled == Sampled::kMissed ? KSelectPath::kSampledMissed : KSelectPath::kRadix);
  const int64_t candidates = sel.count_candidates();
  if (k < 0) k = k_from_fraction(fraction, candidates);
  FP_CHECK_VALUE(k <= candidates, "kselect_: k=", k, " must be between 0 and the number of selectable units (",
                 candidates, ")");
  sel.run(k);
}


}  // namespace FASTPRUNE_KSELECT_NS

#undef FASTPRUNE_SIGNED_BOUNDS
