// Radix select over a chunk table (see kselect_cpu.cpp for the algorithm).
// Included by kselect_cpu.cpp once per instruction set: inside the namespace
// FASTPRUNE_KSELECT_NS, after the key helpers and load_keep/store_keep.
#ifndef FASTPRUNE_KSELECT_NS
#error "include kselect_radix.h only from kselect_cpu.cpp"
#endif

namespace FASTPRUNE_KSELECT_NS {

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

  void classify_units(int64_t t, int64_t begin, int64_t n, uint8_t* cls, key_t T) const {
    const at::Tensor& score = scores_[t];
    dispatch_score<K>(score.scalar_type(), [&](auto tag) {
      using S = typename decltype(tag)::type;
      classify<S>(score.data_ptr<S>() + begin, n, cls, inv_, T);
    });
  }

  // Works through each chunk in sub-blocks small enough for the per-unit
  // buffers to stay in L1.
  void write_pass(bool select_any, key_t T) {
    constexpr int64_t kSub = 4096;  // multiple of 8
    ties_.assign(chunks_.size(), 0);
    at::parallel_for(0, static_cast<int64_t>(chunks_.size()), 1, [&](int64_t cb, int64_t ce) {
      alignas(64) uint8_t keep[kSub + 8];
      alignas(64) uint8_t cls[kSub];
      for (int64_t c = cb; c < ce; ++c) {
        const Chunk& ch = chunks_[c];
        const at::Tensor& mask = masks_[ch.t];
        const at::Tensor& out = outs_[ch.t];
        uint32_t tie = 0;
        for (int64_t b = ch.begin; b < ch.end; b += kSub) {
          const int64_t n = std::min(kSub, ch.end - b);
          if (mask.defined()) {
            load_keep(mask, packed_, b, n, keep);
          } else {
            std::memset(keep, 1, n);
          }
          std::memset(keep + n, 0, 8);
          if (select_any) {
            classify_units(ch.t, b, n, cls, T);
            if (exclude_) {
              for (int64_t j = 0; j < n; ++j) {
                const uint8_t e = keep[j];
                tie += e & uint8_t(cls[j] == 1);
                keep[j] = e & uint8_t(cls[j] != 0);
              }
            } else {
              for (int64_t j = 0; j < n; ++j) {
                tie += uint8_t(cls[j] == 1);
                keep[j] = keep[j] & uint8_t(cls[j] != 0);
              }
            }
          }
          store_keep(out, packed_, b, n, keep);
        }
        ties_[c] = tie;
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
        classify_units(ch.t, ch.begin, n, cls.data(), T);
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


}  // namespace FASTPRUNE_KSELECT_NS
