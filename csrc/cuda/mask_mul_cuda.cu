// Fused mask-multiply (fastprune::mask_mul, mask_mul_) and packed-mask
// application (fastprune::apply_packed_mask_) on CUDA.
//
// One launch serves any number of tensors: each tensor is cut into fixed
// chunks, a block maps a chunk to its tensor by binary search over the
// per-tensor first-chunk table and walks it with a block-stride loop. Up to
// kInline tensors travel in the kernel arguments (the single-tensor forward
// hook needs no workspace and no host-to-device copy); longer lists are a
// pointer table in device workspace. Inputs and outputs use 128-bit accesses
// when their addresses allow it.
//
// mask_mul multiplies by the mask converted to the input's dtype, exactly as
// `input * mask.to(input.dtype)` does: NaN * 0 stays NaN, inf * 0 is NaN, a
// fractional float mask scales. apply_packed_mask_ instead *sets* zero where
// the bit is 0 (masked_fill semantics: NaN becomes 0).

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "device_helpers.cuh"
#include "kernels.h"

namespace fastprune {
namespace cuda {
namespace {

using namespace detail;

constexpr int kInline = 8;
constexpr int64_t kChunk = 1 << 16;  // elements per chunk, multiple of every vector width and of 8
constexpr int kThreads = 512;

// The host descriptor as given, plus what the launcher works out about it.
struct MMEntry : MaskMulTensor {
  uint32_t vec;  // bit 0: in/out aligned to 16 bytes, bit 1: mask aligned for its vector width
  uint32_t pad;
};
static_assert(sizeof(MMEntry) == 48, "MMEntry layout");

struct PMEntry {
  void* data;
  const uint8_t* bits;
  int64_t numel;
  int32_t elem_size;
  uint32_t vec;  // bit 0: data aligned for 8-element vectors
};

// Pointer table either inline (kernel arguments, constant indices only) or in
// device memory.
template <typename E>
struct InlineTable {
  E e[kInline];
  int64_t chunk_begin[kInline + 1];
  int n;
  __device__ __forceinline__ int owner(int64_t chunk) const {
    int r = 0;
#pragma unroll
    for (int i = 1; i < kInline; ++i) r += (i < n && chunk >= chunk_begin[i]) ? 1 : 0;
    return r;
  }
  __device__ __forceinline__ E entry(int i) const {
    E out = e[0];
#pragma unroll
    for (int j = 1; j < kInline; ++j)
      if (j == i) out = e[j];
    return out;
  }
  __device__ __forceinline__ int64_t begin(int i) const {
    int64_t out = chunk_begin[0];
#pragma unroll
    for (int j = 1; j < kInline; ++j)
      if (j == i) out = chunk_begin[j];
    return out;
  }
};

template <typename E>
struct DeviceTable {
  const E* e;
  const int64_t* chunk_begin;
  int n;
  __device__ __forceinline__ int owner(int64_t chunk) const { return find_owner(chunk_begin, n, chunk); }
  __device__ __forceinline__ E entry(int i) const { return e[i]; }
  __device__ __forceinline__ int64_t begin(int i) const { return chunk_begin[i]; }
};

// Mask value converted to the input's type (through double for float masks,
// which is exact and then rounds once, as the direct conversion would).
template <int D, int M>
__device__ __forceinline__ typename Storage<D>::T mask_as(typename Storage<M>::T m) {
  using T = typename Storage<D>::T;
  if constexpr (D == kBool) {
    return nonzero<M>(m) ? 1 : 0;
  } else if constexpr (D == kHalf) {
    if constexpr (M == kHalf) {
      return m;
    } else if constexpr (M == kFloat) {
      return float_to_half_bits(m);
    } else {
      return double_to_half_bits(to_double<M>(m));
    }
  } else if constexpr (D == kBFloat16) {
    if constexpr (M == kBFloat16) {
      return m;
    } else if constexpr (M == kFloat) {
      return float_to_bf16_bits(m);
    } else {
      return double_to_bf16_bits(to_double<M>(m));
    }
  } else if constexpr (D == kFloat) {
    return to_float<M>(m);  // direct conversion (one rounding for double / int64); any non-zero bool byte is 1
  } else if constexpr (D == kDouble) {
    return to_double<M>(m);
  } else {
    // Integer input: C++ conversion (truncation toward zero for floats).
    if constexpr (M == kBool) {
      return static_cast<T>(m != 0 ? 1 : 0);
    } else if constexpr (M == kHalf || M == kBFloat16) {
      return static_cast<T>(to_float<M>(m));
    } else {
      return static_cast<T>(m);
    }
  }
}

template <int D>
__device__ __forceinline__ typename Storage<D>::T times(typename Storage<D>::T x, typename Storage<D>::T m) {
  using T = typename Storage<D>::T;
  if constexpr (D == kBool) {
    return (x != 0 && m != 0) ? 1 : 0;
  } else if constexpr (D == kHalf) {
    // The product of two binary16 values is exact in float; one rounding follows.
    return float_to_half_bits(half_bits_to_float(x) * half_bits_to_float(m));
  } else if constexpr (D == kBFloat16) {
    return float_to_bf16_bits(bf16_bits_to_float(x) * bf16_bits_to_float(m));
  } else if constexpr (D == kFloat || D == kDouble) {
    return x * m;
  } else {
    // Two's-complement wrap-around, like torch's integer multiply (64-bit
    // unsigned arithmetic so that no narrow type is promoted to signed int).
    return static_cast<T>(static_cast<uint64_t>(static_cast<int64_t>(x)) * static_cast<uint64_t>(static_cast<int64_t>(m)));
  }
}

template <int D, int M>
__device__ __forceinline__ void mask_mul_range(const MMEntry& t, int64_t begin, int64_t end) {
  using T = typename Storage<D>::T;
  using MT = typename Storage<M>::T;
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const T* in = static_cast<const T*>(t.in);
  const MT* mk = static_cast<const MT*>(t.mask);
  T* out = static_cast<T*>(t.out);
  const bool vin = (t.vec & 1u) != 0, vmask = (t.vec & 2u) != 0;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * V; i < end; i += static_cast<int64_t>(blockDim.x) * V) {
    const int nv = (end - i) >= V ? V : static_cast<int>(end - i);
    Vec<T, V> x;
    Vec<MT, V> m;
    x.load(in + i, vin, nv);
    m.load(mk + i, vmask, nv);
#pragma unroll
    for (int j = 0; j < V; ++j) x.v[j] = times<D>(x.v[j], mask_as<D, M>(m.v[j]));
    x.store(out + i, vin, nv);
  }
}

// The tensor that owns `chunk` in the pointer table, and the chunk's element range in it.
template <class Table>
__device__ __forceinline__ auto chunk_of(const Table& tab, int64_t chunk, int64_t& begin, int64_t& end) {
  const int ti = tab.owner(chunk);
  const auto t = tab.entry(ti);
  begin = (chunk - tab.begin(ti)) * kChunk;
  end = begin + kChunk < t.numel ? begin + kChunk : t.numel;
  return t;
}

template <class Table>
__global__ void __launch_bounds__(kThreads) mask_mul_kernel(Table tab, int64_t nchunks) {
  for (int64_t chunk = blockIdx.x; chunk < nchunks; chunk += gridDim.x) {
    int64_t begin, end;
    const MMEntry t = chunk_of(tab, chunk, begin, end);
    dispatch_dtype(t.dtype, [&](auto dtag) {
      dispatch_dtype(t.mask_dtype, [&](auto mtag) {
        mask_mul_range<decltype(dtag)::value, decltype(mtag)::value>(t, begin, end);
      });
    });
  }
}

// Each thread owns one packed byte, i.e. 8 consecutive elements, handled as raw
// words W (uint4 for 16-byte elements).
template <typename W>
__device__ __forceinline__ void packed_range(const PMEntry& t, int64_t begin, int64_t end) {
  W* data = static_cast<W*>(t.data);
  const bool vec = (t.vec & 1u) != 0;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * 8; i < end; i += static_cast<int64_t>(blockDim.x) * 8) {
    const int nv = (end - i) >= 8 ? 8 : static_cast<int>(end - i);
    const uint32_t valid = nv >= 8 ? 0xFFu : ((1u << nv) - 1u);
    const uint32_t bits = t.bits[i / 8] & valid;
    if (bits == valid) continue;  // nothing to clear: no load, no store
    Vec<W, 8> x;
    if (bits != 0) {
      x.load(data + i, vec, nv);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (!((bits >> j) & 1u)) x.v[j] = W{};
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) x.v[j] = W{};
    }
    x.store(data + i, vec, nv);
  }
}

template <class Table>
__global__ void __launch_bounds__(kThreads) packed_kernel(Table tab, int64_t nchunks) {
  for (int64_t chunk = blockIdx.x; chunk < nchunks; chunk += gridDim.x) {
    int64_t begin, end;
    const PMEntry t = chunk_of(tab, chunk, begin, end);
    switch (t.elem_size) {
      case 1: packed_range<uint8_t>(t, begin, end); break;
      case 2: packed_range<uint16_t>(t, begin, end); break;
      case 4: packed_range<uint32_t>(t, begin, end); break;
      case 8: packed_range<unsigned long long>(t, begin, end); break;
      case 16: packed_range<uint4>(t, begin, end); break;
      default: break;
    }
  }
}

size_t table_bytes(int n, size_t entry) {
  return n <= kInline ? 0 : round_up(entry * static_cast<size_t>(n), 256) + sizeof(int64_t) * (n + 1);
}

int grid_for(int64_t nchunks) {
  // Enough resident blocks to cover the device; chunks are grid-strided.
  int64_t g = static_cast<int64_t>(device_sm_count()) * (2048 / kThreads) * 2;
  if (g > nchunks) g = nchunks;
  return static_cast<int>(g < 1 ? 1 : g);
}

// Launches `Kernel` over the entries, inline or through a device table.
template <typename E, typename LaunchInline, typename LaunchDevice>
cudaError_t launch_table(const std::vector<E>& entries, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream, LaunchInline&& li, LaunchDevice&& ld) {
  const int n = static_cast<int>(entries.size());
  std::vector<int64_t> begin(n + 1, 0);
  for (int i = 0; i < n; ++i) begin[i + 1] = begin[i] + (entries[i].numel + kChunk - 1) / kChunk;
  const int64_t nchunks = begin[n];
  if (nchunks == 0) return cudaSuccess;
  if (n <= kInline) {
    InlineTable<E> tab{};
    for (int i = 0; i < n; ++i) tab.e[i] = entries[i];
    for (int i = 0; i <= n; ++i) tab.chunk_begin[i] = begin[i];
    for (int i = n + 1; i <= kInline; ++i) tab.chunk_begin[i] = begin[n];
    tab.n = n;
    li(tab, nchunks);
    return cudaGetLastError();
  }
  const size_t ebytes = round_up(sizeof(E) * n, 256);
  if (workspace == nullptr || workspace_bytes < table_bytes(n, sizeof(E))) return cudaErrorInvalidValue;
  std::vector<char> host(ebytes + sizeof(int64_t) * (n + 1), 0);
  std::memcpy(host.data(), entries.data(), sizeof(E) * n);
  std::memcpy(host.data() + ebytes, begin.data(), sizeof(int64_t) * (n + 1));
  FASTPRUNE_CUDA_TRY(cudaMemcpyAsync(workspace, host.data(), host.size(), cudaMemcpyHostToDevice, stream));
  DeviceTable<E> tab{static_cast<const E*>(workspace),
                     reinterpret_cast<const int64_t*>(static_cast<char*>(workspace) + ebytes), n};
  ld(tab, nchunks);
  return cudaGetLastError();
}

}  // namespace

size_t mask_mul_workspace_bytes(int ntensors) { return table_bytes(ntensors, sizeof(MMEntry)); }

cudaError_t mask_mul_cuda(const MaskMulTensor* tensors, int ntensors, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  if (ntensors <= 0) return cudaSuccess;
  std::vector<MMEntry> entries(ntensors);
  for (int i = 0; i < ntensors; ++i) {
    const MaskMulTensor& s = tensors[i];
    if (!dtype_valid(s.dtype) || !dtype_valid(s.mask_dtype)) return cudaErrorInvalidValue;
    MMEntry& e = entries[i];
    static_cast<MaskMulTensor&>(e) = s;
    e.pad = 0;
    const int v = 16 / static_cast<int>(dtype_size(s.dtype));
    e.vec = (is_aligned(s.in, 16) && is_aligned(s.out, 16)) ? 1u : 0u;
    e.vec |= wide_bit(s.mask, s.mask_dtype, v, 2u);
  }
  return launch_table(
      entries, workspace, workspace_bytes, stream,
      [&](const InlineTable<MMEntry>& tab, int64_t nchunks) {
        mask_mul_kernel<<<grid_for(nchunks), kThreads, 0, stream>>>(tab, nchunks);
      },
      [&](const DeviceTable<MMEntry>& tab, int64_t nchunks) {
        mask_mul_kernel<<<grid_for(nchunks), kThreads, 0, stream>>>(tab, nchunks);
      });
}

size_t apply_packed_mask_workspace_bytes(int ntensors) { return table_bytes(ntensors, sizeof(PMEntry)); }

cudaError_t apply_packed_mask_cuda(const PackedMaskTensor* tensors, int ntensors, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream) {
  if (ntensors <= 0) return cudaSuccess;
  std::vector<PMEntry> entries(ntensors);
  for (int i = 0; i < ntensors; ++i) {
    const PackedMaskTensor& s = tensors[i];
    const int es = s.elem_size;
    if (es != 1 && es != 2 && es != 4 && es != 8 && es != 16) return cudaErrorInvalidValue;
    // Scalar accesses need natural alignment of the word type (always true for
    // torch tensors); the 8-element vector path needs min(16, 8 * es).
    if (!is_aligned(s.data, es)) return cudaErrorMisalignedAddress;
    PMEntry& e = entries[i];
    e.data = s.data;
    e.bits = s.bits;
    e.numel = s.numel;
    e.elem_size = es;
    e.vec = is_aligned(s.data, vec_alignment(es, 8)) ? 1u : 0u;
  }
  return launch_table(
      entries, workspace, workspace_bytes, stream,
      [&](const InlineTable<PMEntry>& tab, int64_t nchunks) {
        packed_kernel<<<grid_for(nchunks), kThreads, 0, stream>>>(tab, nchunks);
      },
      [&](const DeviceTable<PMEntry>& tab, int64_t nchunks) {
        packed_kernel<<<grid_for(nchunks), kThreads, 0, stream>>>(tab, nchunks);
      });
}

}  // namespace cuda
}  // namespace fastprune
