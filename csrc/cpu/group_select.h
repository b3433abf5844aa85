// CPU kernel behind row_kselect and nm_select: in each group of `length`
// consecutive units, prune the `prune` smallest keys (ties: lower index).
//
// Groups are independent, so threads split the groups. Short groups (N:M with
// m up to 32) rank each unit by counting the units that come before it in the
// order (key, index): no buffer and no branches worth mentioning. Long groups
// (rows) partition a (key, index) buffer with nth_element, O(length) each.
#pragma once

#include "../group_select_args.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace fastprune {

inline void group_select_cpu(const GroupSelectView& v) {
  if (v.groups == 0 || v.length == 0) return;
  bool* out = v.out.data_ptr<bool>();
  const int64_t L = v.length;
  const int64_t p = v.prune;
  dispatch_dtype(v.scores.scalar_type(), "group_select", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* s = v.scores.data_ptr<T>();
    if (L <= 32) {
      at::parallel_for(0, v.groups, 1024, [&](int64_t g0, int64_t g1) {
        uint64_t keys[32];
        for (int64_t g = g0; g < g1; ++g) {
          const T* row = s + g * L;
          bool* o = out + g * L;
          for (int64_t i = 0; i < L; ++i) keys[i] = select_key(row[i]);
          for (int64_t i = 0; i < L; ++i) {
            int64_t rank = 0;
            for (int64_t j = 0; j < L; ++j) rank += keys[j] < keys[i] || (keys[j] == keys[i] && j < i);
            o[i] = rank >= p;
          }
        }
      });
      return;
    }
    const int64_t grain = std::max<int64_t>(1, 32768 / L);
    at::parallel_for(0, v.groups, grain, [&](int64_t g0, int64_t g1) {
      std::vector<std::pair<uint64_t, int64_t>> buf(L);
      for (int64_t g = g0; g < g1; ++g) {
        const T* row = s + g * L;
        bool* o = out + g * L;
        std::fill(o, o + L, true);
        if (p == 0) continue;
        for (int64_t i = 0; i < L; ++i) buf[i] = {select_key(row[i]), i};
        if (p < L) std::nth_element(buf.begin(), buf.begin() + (p - 1), buf.end());
        // After nth_element the first p entries are the p smallest (key, index) pairs.
        for (int64_t i = 0; i < p; ++i) o[buf[i].second] = false;
      }
    });
  });
}

}  // namespace fastprune
