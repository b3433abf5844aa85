// Radix select over a chunk table (algorithm: csrc/README.md).
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
  // Listed unit = tensor index << kPosBits | unit index within the tensor.
  static constexpr int kPosBits = 44;
  static constexpr uint64_t kPosMask = (uint64_t(1) << kPosBits) - 1;
  // Largest undecided set finished from a list (positions + keys: 16 MB at most).
  static constexpr int64_t kListCap = int64_t(1) << 20;

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

  // Writes every mask: units below [lo, hi] selected, above kept, inside kept
  // for now and counted per chunk (and listed when `collect`). Works through
  // each chunk in sub-blocks small enough for the per-unit buffers to stay in L1.
  void write_pass(bool select_any, key_t lo, key_t hi, bool collect) {
    constexpr int64_t kSub = 4096;  // multiple of 8
    ties_.assign(chunks_.size(), 0);
    std::mutex list_mutex;
    at::parallel_for(0, static_cast<int64_t>(chunks_.size()), 1, [&](int64_t cb, int64_t ce) {
      alignas(64) uint8_t keep[kSub + 8];
      alignas(64) uint8_t cls[kSub];
      std::vector<uint64_t> listed;
      std::vector<key_t> listed_keys;
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
            classify_units(ch.t, b, n, cls, lo, hi);
            uint32_t sub_tie = 0;
            if (exclude_) {
              for (int64_t j = 0; j < n; ++j) {
                const uint8_t e = keep[j];
                sub_tie += e & uint8_t(cls[j] == 1);
                keep[j] = e & uint8_t(cls[j] != 0);
              }
            } else {
              for (int64_t j = 0; j < n; ++j) {
                sub_tie += uint8_t(cls[j] == 1);
                keep[j] = keep[j] & uint8_t(cls[j] != 0);
              }
            }
            if (collect && sub_tie > 0) {
              // After the loop above, an undecided unit is a candidate iff it is
              // kept, unless every unit is a candidate. memchr skips the (many)
              // decided units quickly; the key is taken while the scores are in cache.
              const at::Tensor& score = scores_[ch.t];
              dispatch_score<K>(score.scalar_type(), [&](auto tag) {
                using S = typename decltype(tag)::type;
                const S* sp = score.data_ptr<S>() + b;
                const uint8_t* cp = cls;
                const void* hit;
                int64_t j = 0;
                while (j < n && (hit = std::memchr(cp + j, 1, n - j)) != nullptr) {
                  j = static_cast<const uint8_t*>(hit) - cp;
                  if (!exclude_ || keep[j]) {
                    listed.push_back((uint64_t(ch.t) << kPosBits) | uint64_t(b + j));
                    listed_keys.push_back(make_key<K>(sp[j]) ^ inv_);
                  }
                  ++j;
                }
              });
            }
            tie += sub_tie;
          }
          store_keep(out, packed_, b, n, keep);
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
    std::sort(lists_.begin(), lists_.end(), [](const Listed& a, const Listed& b) { return a.first_chunk < b.first_chunk; });
    std::vector<uint64_t> pos;
    std::vector<key_t> keys;
    for (auto& l : lists_) {
      pos.insert(pos.end(), l.pos.begin(), l.pos.end());
      keys.insert(keys.end(), l.keys.begin(), l.keys.end());
    }
    lists_.clear();
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
    const at::Tensor& out = outs_[p >> kPosBits];
    const int64_t idx = static_cast<int64_t>(p & kPosMask);
    if (packed_) {
      out.data_ptr<uint8_t>()[idx >> 3] &= static_cast<uint8_t>(~(1u << (idx & 7)));
    } else {
      // All-zero bytes are 0 / +0.0 / false in every supported dtype.
      std::memset(static_cast<char*>(out.data_ptr()) + idx * out.element_size(), 0, out.element_size());
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
      }
    });
  }

  std::vector<at::Tensor> scores_, masks_, outs_;
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
                int64_t k, double fraction, bool largest, bool exclude_masked, bool packed) {
  RadixSelect<K> sel(std::move(scores), std::move(masks), std::move(outs), largest, exclude_masked, packed);
  const int64_t candidates = sel.count_candidates();
  if (k < 0) k = k_from_fraction(fraction, candidates);
  FP_CHECK_VALUE(k <= candidates, "kselect_: k=", k, " must be between 0 and the number of selectable units (",
                 candidates, ")");
  sel.run(k);
}


}  // namespace FASTPRUNE_KSELECT_NS
