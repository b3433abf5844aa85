// Exact k-selection over a list of tensors (fastprune::kselect_ on CUDA): a
// radix select on the bit pattern of the ranking key, never a sort and never a
// concatenated copy of the scores. The algorithm is described in csrc/README.md
// ("k-selection: the radix select"); what is specific to this CUDA version
// (shared-memory pass 0, warp-aggregated atomics, CUB tie ranking, the single
// host round trip) in csrc/cuda/README.md.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include "device_helpers.cuh"
#include "kernels.h"

namespace fastprune {
namespace cuda {
namespace {

using namespace detail;

constexpr int64_t kChunk = 16384;   // units per chunk (multiple of 8 * every block size)
constexpr int kUnits = 8;           // units per thread per step: one packed byte
constexpr int kDigitBits = 16;
constexpr int kBins = 1 << kDigitBits;
constexpr int kSharedBins = 1 << (kDigitBits - 1);  // pass-0 digits (top key bit is 0)
constexpr int kSharedHistThreads = 1024;
constexpr int kThreads = 256;

enum KeyMode : int32_t {
  kKeyHalf = 0,   // fp16 bit pattern, 16-bit keys
  kKeyBF16 = 1,   // bf16 bit pattern, 16-bit keys
  kKeyF32 = 2,    // value widened to float, 32-bit keys
  kKeyF64 = 3,    // value widened to double (integers via their int64 key), 64-bit keys
  kKeyInt = 4,    // |integer| as unsigned, INT64_MIN ranked as INT64_MAX, 16/32/64-bit keys
};

struct KeyParams {
  int32_t mode;
  int32_t bits;     // W
  uint64_t flip;    // 0, or 2^(W-1) - 1 for `largest`
};

// A caller's tensor descriptor as the kernels read it from the device table:
// with `packed`, mask_dtype and out_dtype are set to kUInt8.
struct TableEntry : KSelectTensor {
  uint32_t vec;  // bit 0: score, bit 1: mask, bit 2: out may use wide accesses
};

struct SelectState {
  unsigned long long prefix;    // key digits chosen so far; the threshold T after the last pass
  unsigned long long k_rem;     // units still to select inside the current bucket
  unsigned long long total;     // selectable units (set by pass 0)
  unsigned long long count_eq;  // selectable units in the chosen bucket
  unsigned long long invalid;   // k exceeded the selectable units
  unsigned long long pad[3];
};

struct Flags {
  bool exclude_masked;
  bool packed;
};

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

__device__ __forceinline__ uint64_t int_key(int64_t x) {
  // |INT64_MIN| does not fit; ranking it with INT64_MAX is what the reference does.
  if (x == INT64_MIN) return static_cast<uint64_t>(INT64_MAX);
  return static_cast<uint64_t>(x < 0 ? -x : x);
}

template <int D>
__device__ __forceinline__ uint64_t integer_key(typename Storage<D>::T v) {
  if constexpr (D == kBool) {
    return v != 0 ? 1u : 0u;
  } else if constexpr (D == kUInt8) {
    return v;
  } else {
    return int_key(static_cast<int64_t>(v));
  }
}

__device__ __forceinline__ uint64_t f32_key(float f) {
  uint32_t u = __float_as_uint(f) & 0x7FFFFFFFu;
  return u > 0x7F800000u ? 0x7FFFFFFFull : u;
}

__device__ __forceinline__ uint64_t f64_key(double d) {
  uint64_t u = static_cast<uint64_t>(__double_as_longlong(d)) & 0x7FFFFFFFFFFFFFFFull;
  return u > 0x7FF0000000000000ull ? 0x7FFFFFFFFFFFFFFFull : u;
}

// Key of one stored value; the mode is uniform over the launch and only the
// combinations the host can choose are meaningful (others still compile).
template <int D, int M>
__device__ __forceinline__ uint64_t make_key(typename Storage<D>::T v) {
  constexpr bool is_int = !(D == kHalf || D == kBFloat16 || D == kFloat || D == kDouble);
  if constexpr (M == kKeyHalf || M == kKeyBF16) {
    if constexpr (D == kHalf || D == kBFloat16) {
      uint32_t a = static_cast<uint32_t>(v) & 0x7FFFu;
      constexpr uint32_t inf = (M == kKeyHalf) ? 0x7C00u : 0x7F80u;
      return a > inf ? 0x7FFFull : a;
    } else {
      return 0;
    }
  } else if constexpr (M == kKeyF32) {
    if constexpr (is_int) {
      return 0;
    } else {
      return f32_key(to_float<D>(v));
    }
  } else if constexpr (M == kKeyF64) {
    if constexpr (is_int) {
      // The reference converts the int64 key (not the value) to float64.
      return f64_key(static_cast<double>(static_cast<long long>(integer_key<D>(v))));
    } else {
      return f64_key(to_double<D>(v));
    }
  } else {
    if constexpr (is_int) {
      return integer_key<D>(v);
    } else {
      return 0;
    }
  }
}

// Key type of a mode: 32 bits for the 16/32-bit float key spaces (the hot
// paths), 64 bits otherwise.
template <int M>
using KeyOf = typename std::conditional<M == kKeyF64 || M == kKeyInt, uint64_t, uint32_t>::type;

template <int D, int M>
__device__ __forceinline__ void keys_of(const TableEntry& t, int64_t u0, int nvalid, KeyOf<M> flip, KeyOf<M> (&key)[kUnits]) {
  using T = typename Storage<D>::T;
  Vec<T, kUnits> v;
  v.load(static_cast<const T*>(t.score) + u0, (t.vec & 1u) != 0, nvalid);
#pragma unroll
  for (int j = 0; j < kUnits; ++j) key[j] = static_cast<KeyOf<M>>(make_key<D, M>(v.v[j])) ^ flip;
}

template <int M> struct MTag { static constexpr int value = M; };

// Calls f(DTag<score dtype>, MTag<key mode>) for the combinations choose_keys
// can produce (others cannot reach the device), once per chunk, so that the
// per-unit loops are specialised.
template <typename F>
__device__ __forceinline__ void dispatch_keys(int32_t score_dtype, int32_t mode, F&& f) {
  switch (mode) {
    case kKeyHalf:
      f(DTag<kHalf>{}, MTag<kKeyHalf>{});
      break;
    case kKeyBF16:
      f(DTag<kBFloat16>{}, MTag<kKeyBF16>{});
      break;
    case kKeyF32:
      switch (score_dtype) {
        case kHalf: f(DTag<kHalf>{}, MTag<kKeyF32>{}); break;
        case kBFloat16: f(DTag<kBFloat16>{}, MTag<kKeyF32>{}); break;
        default: f(DTag<kFloat>{}, MTag<kKeyF32>{}); break;
      }
      break;
    case kKeyF64:
      dispatch_dtype(score_dtype, [&](auto d) { f(d, MTag<kKeyF64>{}); });
      break;
    default:
      switch (score_dtype) {
        case kBool: f(DTag<kBool>{}, MTag<kKeyInt>{}); break;
        case kUInt8: f(DTag<kUInt8>{}, MTag<kKeyInt>{}); break;
        case kInt8: f(DTag<kInt8>{}, MTag<kKeyInt>{}); break;
        case kInt16: f(DTag<kInt16>{}, MTag<kKeyInt>{}); break;
        case kInt32: f(DTag<kInt32>{}, MTag<kKeyInt>{}); break;
        default: f(DTag<kInt64>{}, MTag<kKeyInt>{}); break;
      }
      break;
  }
}

// Bit j set = unit u0 + j is kept by the existing mask (and exists).
__device__ __forceinline__ uint32_t load_keep(const TableEntry& t, int64_t u0, int nvalid, bool packed) {
  const uint32_t valid = (nvalid >= kUnits) ? 0xFFu : ((1u << (nvalid > 0 ? nvalid : 0)) - 1u);
  if (t.mask == nullptr || nvalid <= 0) return valid;
  if (packed) return static_cast<const uint8_t*>(t.mask)[u0 / 8] & valid;
  uint32_t bits = 0;
  dispatch_dtype(t.mask_dtype, [&](auto tag) {
    constexpr int D = decltype(tag)::value;
    using T = typename Storage<D>::T;
    Vec<T, kUnits> v;
    v.load(static_cast<const T*>(t.mask) + u0, (t.vec & 2u) != 0, nvalid);
#pragma unroll
    for (int j = 0; j < kUnits; ++j) bits |= (nonzero<D>(v.v[j]) ? 1u : 0u) << j;
  });
  return bits & valid;
}

template <int D>
__device__ __forceinline__ typename Storage<D>::T one_value() {
  if constexpr (D == kHalf) {
    return 0x3C00u;
  } else if constexpr (D == kBFloat16) {
    return 0x3F80u;
  } else {
    return typename Storage<D>::T(1);
  }
}

__device__ __forceinline__ void store_keep(const TableEntry& t, int64_t u0, int nvalid, bool packed, uint32_t keep) {
  if (nvalid <= 0) return;
  if (packed) {
    // One thread owns the whole byte (u0 is a multiple of 8); padding bits are 0.
    static_cast<uint8_t*>(t.out)[u0 / 8] = static_cast<uint8_t>(keep);
    return;
  }
  dispatch_dtype(t.out_dtype, [&](auto tag) {
    constexpr int D = decltype(tag)::value;
    using T = typename Storage<D>::T;
    Vec<T, kUnits> v;
#pragma unroll
    for (int j = 0; j < kUnits; ++j) v.v[j] = ((keep >> j) & 1u) ? one_value<D>() : T(0);
    v.store(static_cast<T*>(t.out) + u0, (t.vec & 4u) != 0, nvalid);
  });
}

struct ChunkRange {
  int tensor;
  int64_t begin;  // first unit (tensor-local)
  int64_t end;
};

__device__ __forceinline__ ChunkRange chunk_range(const TableEntry* tab, const int64_t* chunk_begin, int n, int64_t chunk) {
  ChunkRange r;
  r.tensor = find_owner(chunk_begin, n, chunk);
  r.begin = (chunk - chunk_begin[r.tensor]) * kChunk;
  int64_t e = r.begin + kChunk;
  r.end = e < tab[r.tensor].numel ? e : tab[r.tensor].numel;
  return r;
}

__device__ __forceinline__ int clamp_valid(int64_t end, int64_t u0) {
  int64_t d = end - u0;
  return d <= 0 ? 0 : (d >= kUnits ? kUnits : static_cast<int>(d));
}

// Digit of `key` for `pass`, or -1 when the unit is not in the current bucket.
template <typename K>
__device__ __forceinline__ int digit_of(K key, int pass, int bits, uint64_t prefix) {
  const int low = bits - kDigitBits * (pass + 1);
  if (pass > 0 && static_cast<uint64_t>(key >> (low + kDigitBits)) != prefix) return -1;
  return static_cast<int>((key >> low) & (kBins - 1));
}

__device__ __forceinline__ uint32_t valid_bits(int nv) {
  return nv >= kUnits ? 0xFFu : ((1u << (nv > 0 ? nv : 0)) - 1u);
}

// ---------------------------------------------------------------------------
// Histogram passes
// ---------------------------------------------------------------------------

// Pass 0 with a shared-memory privatised histogram (2^15 x u32 = 128 KiB).
// Each block handles at most 2^31 units (the launcher sizes the grid), so its
// 32-bit counters cannot overflow.
template <int D, int M>
__device__ __forceinline__ void hist_shared_chunk(const TableEntry& t, const ChunkRange& cr, const KeyParams& kp,
                                         const Flags& fl, uint32_t* sh) {
  using K = KeyOf<M>;
  const int low = kp.bits - kDigitBits;
  const K flip = static_cast<K>(kp.flip);
  const int64_t step = static_cast<int64_t>(blockDim.x) * kUnits;
  // Two groups per iteration for 32-bit keys (both loads issued before the
  // atomics); one group for 64-bit keys, which would not fit the 64 registers
  // a 1024-thread block allows.
  constexpr int kGroups = sizeof(K) == 4 ? 2 : 1;
  for (int64_t base = cr.begin; base < cr.end; base += kGroups * step) {
    const int64_t ua = base + threadIdx.x * kUnits;
    const int64_t ub = ua + step;
    const int na = clamp_valid(cr.end, ua), nb = kGroups == 2 ? clamp_valid(cr.end, ub) : 0;
    K ka[kUnits], kb[kUnits];
    uint32_t ea = 0, eb = 0;
    if (na > 0) {
      keys_of<D, M>(t, ua, na, flip, ka);
      ea = fl.exclude_masked ? load_keep(t, ua, na, fl.packed) : valid_bits(na);
    }
    if (nb > 0) {
      keys_of<D, M>(t, ub, nb, flip, kb);
      eb = fl.exclude_masked ? load_keep(t, ub, nb, fl.packed) : valid_bits(nb);
    }
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      if ((ea >> j) & 1u) atomicAdd(&sh[static_cast<uint32_t>(ka[j] >> low)], 1u);
    }
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      if ((eb >> j) & 1u) atomicAdd(&sh[static_cast<uint32_t>(kb[j] >> low)], 1u);
    }
  }
}

__global__ void __launch_bounds__(kSharedHistThreads)
    hist_shared_kernel(const TableEntry* __restrict__ tab, const int64_t* __restrict__ chunk_begin, int n,
                       int64_t nchunks, KeyParams kp, Flags fl, unsigned long long* __restrict__ ghist) {
  extern __shared__ uint32_t sh[];
  for (int i = threadIdx.x; i < kSharedBins; i += blockDim.x) sh[i] = 0;
  __syncthreads();
  for (int64_t chunk = blockIdx.x; chunk < nchunks; chunk += gridDim.x) {
    const ChunkRange cr = chunk_range(tab, chunk_begin, n, chunk);
    const TableEntry t = tab[cr.tensor];
    dispatch_keys(t.score_dtype, kp.mode, [&](auto d, auto m) {
      hist_shared_chunk<decltype(d)::value, decltype(m)::value>(t, cr, kp, fl, sh);
    });
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kSharedBins; i += blockDim.x) {
    const uint32_t c = sh[i];
    if (c) atomicAdd(&ghist[i], static_cast<unsigned long long>(c));
  }
}

// Any pass straight into the global histogram, warp-aggregated. Loops are
// uniform over the block so that every lane reaches __match_any_sync.
template <int D, int M>
__device__ __forceinline__ void hist_global_chunk(const TableEntry& t, const ChunkRange& cr, const KeyParams& kp,
                                         const Flags& fl, int pass, uint64_t prefix,
                                         unsigned long long* __restrict__ ghist) {
  using K = KeyOf<M>;
  const K flip = static_cast<K>(kp.flip);
  const unsigned lane = threadIdx.x & 31u;
  for (int64_t base = cr.begin; base < cr.end; base += static_cast<int64_t>(blockDim.x) * kUnits) {
    const int64_t u0 = base + threadIdx.x * kUnits;
    const int nv = clamp_valid(cr.end, u0);
    K key[kUnits];
    uint32_t elig = 0;
    if (nv > 0) {
      keys_of<D, M>(t, u0, nv, flip, key);
      elig = fl.exclude_masked ? load_keep(t, u0, nv, fl.packed) : valid_bits(nv);
    }
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      int d = -1;
      if ((elig >> j) & 1u) d = digit_of<K>(key[j], pass, kp.bits, prefix);
      // In later passes most warps hold no unit of the bucket: skip the match.
      if (__ballot_sync(0xFFFFFFFFu, d >= 0) == 0u) continue;
      const unsigned peers = __match_any_sync(0xFFFFFFFFu, d);
      if (d >= 0 && lane == static_cast<unsigned>(__ffs(peers) - 1)) {
        atomicAdd(&ghist[d], static_cast<unsigned long long>(__popc(peers)));
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    hist_global_kernel(const TableEntry* __restrict__ tab, const int64_t* __restrict__ chunk_begin, int n,
                       int64_t nchunks, KeyParams kp, Flags fl, int pass, const SelectState* __restrict__ st,
                       unsigned long long* __restrict__ ghist) {
  if (st->invalid) return;
  const uint64_t prefix = pass > 0 ? st->prefix : 0;
  for (int64_t chunk = blockIdx.x; chunk < nchunks; chunk += gridDim.x) {
    const ChunkRange cr = chunk_range(tab, chunk_begin, n, chunk);
    const TableEntry t = tab[cr.tensor];
    dispatch_keys(t.score_dtype, kp.mode, [&](auto d, auto m) {
      hist_global_chunk<decltype(d)::value, decltype(m)::value>(t, cr, kp, fl, pass, prefix, ghist);
    });
  }
}

// Picks the bucket of the k-th smallest key from the pass's histogram.
constexpr int kSelectThreads = 1024;
constexpr int kBinsPerThread = kBins / kSelectThreads;

__global__ void __launch_bounds__(kSelectThreads)
    select_bucket_kernel(const unsigned long long* __restrict__ ghist, SelectState* st, int pass, int64_t k,
                         double fraction) {
  using Scan = cub::BlockScan<unsigned long long, kSelectThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const bool invalid = st->invalid != 0;
  unsigned long long k_rem = pass == 0 ? static_cast<unsigned long long>(k) : st->k_rem;
  const unsigned long long prefix = pass == 0 ? 0ull : st->prefix;
  const int first = threadIdx.x * kBinsPerThread;
  unsigned long long local = 0;
#pragma unroll 8
  for (int i = 0; i < kBinsPerThread; ++i) local += ghist[first + i];
  unsigned long long excl = 0, total = 0;
  Scan(tmp).ExclusiveSum(local, excl, total);
  __syncthreads();  // every thread has read st before anyone writes it
  if (invalid) return;
  // k as a fraction of the selectable units, which pass 0's histogram counts
  // (rint: half to even, as the host's nearbyint).
  if (pass == 0 && fraction >= 0.0) k_rem = static_cast<unsigned long long>(rint(fraction * static_cast<double>(total)));
  if (pass == 0 && threadIdx.x == 0) st->total = total;
  if (excl < k_rem && k_rem <= excl + local) {
    unsigned long long c = excl;
    for (int i = 0; i < kBinsPerThread; ++i) {
      const unsigned long long h = ghist[first + i];
      if (c + h >= k_rem) {
        st->prefix = (prefix << kDigitBits) | static_cast<unsigned long long>(first + i);
        st->k_rem = k_rem - c;
        st->count_eq = h;
        break;
      }
      c += h;
    }
  }
  if (threadIdx.x == 0 && total < k_rem) st->invalid = 1;
}

// ---------------------------------------------------------------------------
// Tie counting and mask writing
// ---------------------------------------------------------------------------

// Selectable units of a group: the kept ones with exclude_masked, else all.
__device__ __forceinline__ uint32_t selectable_bits(int nv, const Flags& fl, uint32_t keep) {
  return fl.exclude_masked ? keep : valid_bits(nv);
}

template <int D, int M>
__device__ __forceinline__ unsigned int tie_count_chunk(const TableEntry& t, const ChunkRange& cr, const KeyParams& kp,
                                               const Flags& fl, uint64_t threshold) {
  using K = KeyOf<M>;
  const K flip = static_cast<K>(kp.flip);
  const K T = static_cast<K>(threshold);
  unsigned int count = 0;
  for (int64_t base = cr.begin; base < cr.end; base += static_cast<int64_t>(blockDim.x) * kUnits) {
    const int64_t u0 = base + threadIdx.x * kUnits;
    const int nv = clamp_valid(cr.end, u0);
    if (nv <= 0) continue;
    K key[kUnits];
    keys_of<D, M>(t, u0, nv, flip, key);
    const uint32_t keep = fl.exclude_masked ? load_keep(t, u0, nv, fl.packed) : 0u;
    const uint32_t sel = selectable_bits(nv, fl, keep);
#pragma unroll
    for (int j = 0; j < kUnits; ++j) count += (((sel >> j) & 1u) && key[j] == T) ? 1u : 0u;
  }
  return count;
}

// Number of selectable units with key == T in every chunk (0 everywhere when
// every tie is selected and no ranking is needed).
__global__ void __launch_bounds__(kThreads)
    tie_count_kernel(const TableEntry* __restrict__ tab, const int64_t* __restrict__ chunk_begin, int n,
                     int64_t nchunks, KeyParams kp, Flags fl, const SelectState* __restrict__ st,
                     unsigned long long* __restrict__ chunk_ties) {
  using Reduce = cub::BlockReduce<unsigned int, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const bool need = !st->invalid && st->count_eq > st->k_rem;
  const uint64_t T = st->prefix;
  for (int64_t chunk = blockIdx.x; chunk < nchunks; chunk += gridDim.x) {
    if (!need) {
      if (threadIdx.x == 0) chunk_ties[chunk] = 0;
      continue;
    }
    const ChunkRange cr = chunk_range(tab, chunk_begin, n, chunk);
    const TableEntry t = tab[cr.tensor];
    unsigned int count = 0;
    dispatch_keys(t.score_dtype, kp.mode, [&](auto d, auto m) {
      count = tie_count_chunk<decltype(d)::value, decltype(m)::value>(t, cr, kp, fl, T);
    });
    const unsigned int sum = Reduce(tmp).Sum(count);
    if (threadIdx.x == 0) chunk_ties[chunk] = sum;
    __syncthreads();  // tmp is reused by the next chunk
  }
}

using WriteScan = cub::BlockScan<unsigned int, kThreads>;

// keep = existing AND NOT selected for one chunk. `running` = ties of this
// chunk's predecessors in global order (only used when `need`).
template <int D, int M>
__device__ __forceinline__ void write_chunk(const TableEntry& t, const ChunkRange& cr, const KeyParams& kp, const Flags& fl,
                                   uint64_t threshold, unsigned long long r, bool need, unsigned long long running,
                                   typename WriteScan::TempStorage& tmp) {
  using K = KeyOf<M>;
  const K flip = static_cast<K>(kp.flip);
  const K T = static_cast<K>(threshold);
  for (int64_t base = cr.begin; base < cr.end; base += static_cast<int64_t>(blockDim.x) * kUnits) {
    const int64_t u0 = base + threadIdx.x * kUnits;
    const int nv = clamp_valid(cr.end, u0);
    // Reads of the existing mask happen before the write of the same units by
    // the same thread, which is what lets out alias the mask.
    const uint32_t keep = load_keep(t, u0, nv, fl.packed);
    uint32_t lt = 0, eq = 0;
    if (nv > 0) {
      K key[kUnits];
      keys_of<D, M>(t, u0, nv, flip, key);
      const uint32_t cand = selectable_bits(nv, fl, keep);
#pragma unroll
      for (int j = 0; j < kUnits; ++j) {
        const uint32_t c = (cand >> j) & 1u;
        lt |= (c & (key[j] < T ? 1u : 0u)) << j;
        eq |= (c & (key[j] == T ? 1u : 0u)) << j;
      }
    }
    uint32_t selected;
    if (!need) {
      selected = lt | eq;
    } else {
      // `need` is uniform over the block and the loop trip count too, so every
      // thread takes part in the scan.
      unsigned int before = 0, in_step = 0;
      WriteScan(tmp).ExclusiveSum(static_cast<unsigned int>(__popc(eq)), before, in_step);
      __syncthreads();
      unsigned long long rank = running + before;
      selected = lt;
#pragma unroll
      for (int j = 0; j < kUnits; ++j) {
        if ((eq >> j) & 1u) {
          if (rank < r) selected |= 1u << j;
          ++rank;
        }
      }
      running += in_step;
    }
    store_keep(t, u0, nv, fl.packed, keep & ~selected);
  }
}

__device__ __forceinline__ void copy_chunk(const TableEntry& t, const ChunkRange& cr, const Flags& fl) {
  for (int64_t base = cr.begin; base < cr.end; base += static_cast<int64_t>(blockDim.x) * kUnits) {
    const int64_t u0 = base + threadIdx.x * kUnits;
    const int nv = clamp_valid(cr.end, u0);
    store_keep(t, u0, nv, fl.packed, load_keep(t, u0, nv, fl.packed));
  }
}

// With select_none (k == 0) only copies the existing mask. chunk_offsets[c] =
// ties in the chunks before c (exclusive scan of tie_count_kernel's output).
__global__ void __launch_bounds__(kThreads)
    write_kernel(const TableEntry* __restrict__ tab, const int64_t* __restrict__ chunk_begin, int n,
                 int64_t nchunks, KeyParams kp, Flags fl, const SelectState* __restrict__ st,
                 const unsigned long long* __restrict__ chunk_offsets, bool select_none) {
  __shared__ typename WriteScan::TempStorage tmp;
  uint64_t T = 0;
  unsigned long long r = 0;
  bool need = false;
  if (!select_none) {
    if (st->invalid) return;
    T = st->prefix;
    r = st->k_rem;
    need = st->count_eq > r;
  }
  for (int64_t chunk = blockIdx.x; chunk < nchunks; chunk += gridDim.x) {
    const ChunkRange cr = chunk_range(tab, chunk_begin, n, chunk);
    const TableEntry t = tab[cr.tensor];
    if (select_none) {
      copy_chunk(t, cr, fl);
      continue;
    }
    const unsigned long long running = need ? chunk_offsets[chunk] : 0ull;
    dispatch_keys(t.score_dtype, kp.mode, [&](auto d, auto m) {
      write_chunk<decltype(d)::value, decltype(m)::value>(t, cr, kp, fl, T, r, need, running, tmp);
    });
  }
}

// ---------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------

KeyParams choose_keys(const KSelectTensor* ts, int n, bool largest) {
  bool any_float = false, any_int = false, f16 = false, bf16 = false, f32 = false, f64 = false;
  int int_bits = 16;
  for (int i = 0; i < n; ++i) {
    switch (ts[i].score_dtype) {
      case kHalf: any_float = f16 = true; break;
      case kBFloat16: any_float = bf16 = true; break;
      case kFloat: any_float = f32 = true; break;
      case kDouble: any_float = f64 = true; break;
      case kInt16: any_int = true; int_bits = int_bits < 32 ? 32 : int_bits; break;  // |-32768| needs bit 15
      case kInt32:
      case kInt64: any_int = true; int_bits = 64; break;  // |INT32_MIN| needs bit 31
      default: any_int = true; break;                     // bool, uint8, int8: <= 255
    }
  }
  KeyParams kp;
  if (any_float && (any_int || f64)) {
    kp.mode = kKeyF64;
    kp.bits = 64;
  } else if (any_float && (f32 || (f16 && bf16))) {
    kp.mode = kKeyF32;
    kp.bits = 32;
  } else if (any_float) {
    kp.mode = f16 ? kKeyHalf : kKeyBF16;
    kp.bits = 16;
  } else {
    kp.mode = kKeyInt;
    kp.bits = int_bits;
  }
  kp.flip = largest ? ((1ull << (kp.bits - 1)) - 1ull) : 0ull;
  return kp;
}

struct Layout {
  size_t state, hist, table, chunk_begin, chunk_ties, cub_temp, cub_bytes, total;
  int64_t nchunks;
};

cudaError_t make_layout(const KSelectTensor* ts, int n, Layout* L) {
  int64_t nchunks = 0;
  for (int i = 0; i < n; ++i) nchunks += (ts[i].numel + kChunk - 1) / kChunk;
  L->nchunks = nchunks;
  size_t cub_bytes = 0;
  if (nchunks > 0) {
    // In-place scan (d_in == d_out, which DeviceScan supports), spelled with
    // both pointers so that no overload can read nchunks as an iterator.
    unsigned long long* none = nullptr;
    FASTPRUNE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, cub_bytes, none, none, nchunks, static_cast<cudaStream_t>(0)));
  }
  size_t off = 0;
  L->state = off;
  off = round_up(off + sizeof(SelectState), 256);
  L->hist = off;
  off = round_up(off + sizeof(unsigned long long) * kBins, 256);
  L->table = off;
  off = round_up(off + sizeof(TableEntry) * static_cast<size_t>(n), 256);
  L->chunk_begin = off;
  off = round_up(off + sizeof(int64_t) * static_cast<size_t>(n + 1), 256);
  L->chunk_ties = off;
  off = round_up(off + sizeof(unsigned long long) * static_cast<size_t>(nchunks), 256);
  L->cub_temp = off;
  L->cub_bytes = cub_bytes;
  off = round_up(off + cub_bytes, 256);
  L->total = off;
  return cudaSuccess;
}

// Whether this device can give hist_shared_kernel its 128 KiB (cached per device).
// FASTPRUNE_CUDA_GLOBAL_HIST=1 forces the global-histogram kernel for pass 0
// (what devices with less shared memory run), so tests can cover both paths.
bool shared_hist_available() {
  const char* force = std::getenv("FASTPRUNE_CUDA_GLOBAL_HIST");
  if (force && force[0] == '1') return false;
  static int cache[64] = {0};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (dev >= 0 && dev < 64 && cache[dev]) return cache[dev] == 1;
  int optin = 0;
  bool ok = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess &&
            optin >= static_cast<int>(kSharedBins * sizeof(uint32_t));
  if (ok) {
    ok = cudaFuncSetAttribute(hist_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(kSharedBins * sizeof(uint32_t))) == cudaSuccess;
  }
  if (!ok) (void)cudaGetLastError();  // clear a sticky-free error from the attribute call
  if (dev >= 0 && dev < 64) cache[dev] = ok ? 1 : 2;
  return ok;
}

int grid_for(int64_t nchunks, int blocks_per_sm) {
  int64_t g = static_cast<int64_t>(device_sm_count()) * blocks_per_sm;
  if (g > nchunks) g = nchunks;
  if (g < 1) g = 1;
  return static_cast<int>(g);
}

}  // namespace

cudaError_t kselect_workspace_bytes(const KSelectTensor* tensors, int ntensors, size_t* bytes) {
  Layout L;
  FASTPRUNE_CUDA_TRY(make_layout(tensors, ntensors, &L));
  *bytes = L.total;
  return cudaSuccess;
}

KSelectStatus kselect_cuda(const KSelectTensor* tensors, int ntensors, int64_t k, double fraction, bool largest,
                           bool exclude_masked, bool packed, int64_t known_selectable, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  KSelectStatus status;
  auto fail = [&](cudaError_t e) {
    status.error = e;
    return status;
  };
  if (ntensors <= 0) return status;
  Layout L;
  cudaError_t e = make_layout(tensors, ntensors, &L);
  if (e != cudaSuccess) return fail(e);
  if (L.nchunks == 0) return status;  // nothing to select from or write (k was validated as 0)
  if (fraction >= 0.0 && known_selectable >= 0) return fail(cudaErrorInvalidValue);  // the caller resolves k then
  if (workspace == nullptr || workspace_bytes < L.total) return fail(cudaErrorInvalidValue);

  char* ws = static_cast<char*>(workspace);
  SelectState* st = reinterpret_cast<SelectState*>(ws + L.state);
  unsigned long long* hist = reinterpret_cast<unsigned long long*>(ws + L.hist);
  TableEntry* dtab = reinterpret_cast<TableEntry*>(ws + L.table);
  int64_t* dchunk = reinterpret_cast<int64_t*>(ws + L.chunk_begin);
  unsigned long long* ties = reinterpret_cast<unsigned long long*>(ws + L.chunk_ties);

  // Pointer table + chunk map, uploaded with one copy (table and chunk_begin
  // are adjacent in the workspace).
  std::vector<char> host(L.chunk_begin - L.table + sizeof(int64_t) * (ntensors + 1), 0);
  TableEntry* htab = reinterpret_cast<TableEntry*>(host.data());
  int64_t* hchunk = reinterpret_cast<int64_t*>(host.data() + (L.chunk_begin - L.table));
  int64_t c = 0;
  for (int i = 0; i < ntensors; ++i) {
    const KSelectTensor& s = tensors[i];
    TableEntry& t = htab[i];
    static_cast<KSelectTensor&>(t) = s;
    if (packed) t.mask_dtype = t.out_dtype = kUInt8;
    t.vec = wide_bit(s.score, s.score_dtype, kUnits, 1u);
    if (!packed && s.mask) t.vec |= wide_bit(s.mask, s.mask_dtype, kUnits, 2u);
    if (!packed) t.vec |= wide_bit(s.out, s.out_dtype, kUnits, 4u);
    hchunk[i] = c;
    c += (s.numel + kChunk - 1) / kChunk;
  }
  hchunk[ntensors] = c;
  e = cudaMemcpyAsync(dtab, host.data(), host.size(), cudaMemcpyHostToDevice, stream);
  if (e != cudaSuccess) return fail(e);

  const KeyParams kp = choose_keys(tensors, ntensors, largest);
  const Flags fl{exclude_masked, packed};
  const int grid = grid_for(L.nchunks, 2048 / kThreads);

  bool select = k > 0 || fraction >= 0.0;  // with a fraction, k is known after pass 0
  if (select) {
    if ((e = cudaMemsetAsync(st, 0, sizeof(SelectState), stream)) != cudaSuccess) return fail(e);
    const int passes = kp.bits / kDigitBits;
    for (int pass = 0; pass < passes; ++pass) {
      if ((e = cudaMemsetAsync(hist, 0, sizeof(unsigned long long) * kBins, stream)) != cudaSuccess) return fail(e);
      if (pass == 0 && shared_hist_available()) {
        // One resident block per SM (128 KiB each); at least one block per 2^31
        // units so that the 32-bit shared counters cannot overflow.
        int64_t total_units = 0;
        for (int i = 0; i < ntensors; ++i) total_units += tensors[i].numel;
        int64_t g = device_sm_count();
        const int64_t min_blocks = (total_units >> 31) + 1;
        if (g < min_blocks) g = min_blocks;
        if (g > L.nchunks) g = L.nchunks;
        hist_shared_kernel<<<static_cast<unsigned>(g), kSharedHistThreads, kSharedBins * sizeof(uint32_t), stream>>>(
            dtab, dchunk, ntensors, L.nchunks, kp, fl, hist);
      } else {
        hist_global_kernel<<<grid, kThreads, 0, stream>>>(dtab, dchunk, ntensors, L.nchunks, kp, fl, pass, st, hist);
      }
      if ((e = cudaGetLastError()) != cudaSuccess) return fail(e);
      select_bucket_kernel<<<1, kSelectThreads, 0, stream>>>(hist, st, pass, k, fraction);
      if ((e = cudaGetLastError()) != cudaSuccess) return fail(e);
      if (pass == 0 && known_selectable < 0) {
        // The call's only host round trip: the number of selectable units.
        SelectState h;
        if ((e = cudaMemcpyAsync(&h, st, sizeof(h), cudaMemcpyDeviceToHost, stream)) != cudaSuccess) return fail(e);
        if ((e = cudaStreamSynchronize(stream)) != cudaSuccess) return fail(e);
        status.selectable = static_cast<int64_t>(h.total);
        if (fraction >= 0.0) {
          k = static_cast<int64_t>(std::nearbyint(fraction * static_cast<double>(h.total)));
          if (k == 0) {  // nothing to select: only the masks are written
            select = false;
            break;
          }
        } else if (h.total < static_cast<unsigned long long>(k)) {
          status.k_out_of_range = true;
          return status;
        }
      }
    }
  }
  if (select) {
    tie_count_kernel<<<grid, kThreads, 0, stream>>>(dtab, dchunk, ntensors, L.nchunks, kp, fl, st, ties);
    if ((e = cudaGetLastError()) != cudaSuccess) return fail(e);
    size_t cub_bytes = L.cub_bytes;
    e = cub::DeviceScan::ExclusiveSum(ws + L.cub_temp, cub_bytes, ties, ties, L.nchunks, stream);
    if (e != cudaSuccess) return fail(e);
  }
  write_kernel<<<grid, kThreads, 0, stream>>>(dtab, dchunk, ntensors, L.nchunks, kp, fl, st, ties, !select);
  if ((e = cudaGetLastError()) != cudaSuccess) return fail(e);
  return status;
}

}  // namespace cuda
}  // namespace fastprune
