// CUDA kernel behind row_kselect and nm_select: in each group of `length`
// consecutive scores, prune the `prune` smallest keys, ties by lower index.
//
// Short groups (N:M, length <= 32): one thread per group ranks each unit by
// counting the units that precede it in the order (key, index).
// Long groups (rows): one thread block per row. A radix select over the 64-bit
// keys, one byte per pass from the top, finds the key T of the prune-th
// smallest unit with a shared-memory histogram; then one pass in index order
// prunes every key < T and, among the keys == T, the first ones (a block-wide
// prefix count over each chunk of the row), so exactly `prune` go.
//
// Keys are order-preserving unsigned integers of |score|: the bit pattern of
// |x| as a double for floats (NaN -> all ones, above +inf), |x| for integers
// (INT64_MIN ranked with INT64_MAX), 0/1 for bool, as in the CPU kernel.
#include "group_select_kernels.h"
#include "kernels.h"

#include <cuda_fp16.h>

#include <cub/block/block_scan.cuh>

#include <climits>
#include <cstdint>

namespace fastprune {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSmallGroup = 32;

__device__ __forceinline__ uint64_t double_key(double d) {
  if (d != d) return ~0ull;
  return static_cast<uint64_t>(__double_as_longlong(fabs(d)));
}

__device__ __forceinline__ uint64_t load_key(const void* p, int32_t dtype, int64_t i) {
  switch (dtype) {
    case kBool: return static_cast<const uint8_t*>(p)[i] != 0 ? 1ull : 0ull;
    case kUInt8: return static_cast<const uint8_t*>(p)[i];
    case kInt8: { const int64_t v = static_cast<const int8_t*>(p)[i]; return static_cast<uint64_t>(v < 0 ? -v : v); }
    case kInt16: { const int64_t v = static_cast<const int16_t*>(p)[i]; return static_cast<uint64_t>(v < 0 ? -v : v); }
    case kInt32: { const int64_t v = static_cast<const int32_t*>(p)[i]; return static_cast<uint64_t>(v < 0 ? -v : v); }
    case kInt64: {
      const int64_t v = static_cast<const int64_t*>(p)[i];
      if (v == LLONG_MIN) return static_cast<uint64_t>(LLONG_MAX);
      return static_cast<uint64_t>(v < 0 ? -v : v);
    }
    case kHalf: {
      const uint16_t bits = static_cast<const uint16_t*>(p)[i];
      return double_key(static_cast<double>(__half2float(__ushort_as_half(bits))));
    }
    case kBFloat16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
      return double_key(static_cast<double>(__uint_as_float(bits)));
    }
    case kFloat: return double_key(static_cast<double>(static_cast<const float*>(p)[i]));
    default: return double_key(static_cast<const double*>(p)[i]);
  }
}

__global__ void small_groups_kernel(const void* scores, int32_t dtype, int64_t groups, int length, int prune,
                                    uint8_t* out) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  uint64_t keys[kSmallGroup];
  const int64_t base = g * length;
  for (int i = 0; i < length; ++i) keys[i] = load_key(scores, dtype, base + i);
  for (int i = 0; i < length; ++i) {
    int rank = 0;
    for (int j = 0; j < length; ++j) rank += keys[j] < keys[i] || (keys[j] == keys[i] && j < i);
    out[base + i] = rank >= prune ? 1 : 0;
  }
}

__global__ void __launch_bounds__(kThreads) row_select_kernel(const void* scores, int32_t dtype, int64_t length,
                                                              int64_t prune, uint8_t* out) {
  using BlockScan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ int64_t hist[256];
  __shared__ uint64_t s_prefix;
  __shared__ int64_t s_remaining;

  const int64_t base = static_cast<int64_t>(blockIdx.x) * length;
  uint8_t* o = out + base;
  if (prune == 0) {
    for (int64_t i = threadIdx.x; i < length; i += kThreads) o[i] = 1;
    return;
  }
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_remaining = prune;  // rank (1-based) of the threshold among the candidates
  }
  __syncthreads();
  // Radix select, most significant byte first.
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) hist[b] = 0;
    __syncthreads();
    const uint64_t prefix = s_prefix;
    const uint64_t high_mask = shift == 56 ? 0ull : (~0ull << (shift + 8));
    for (int64_t i = threadIdx.x; i < length; i += kThreads) {
      const uint64_t k = load_key(scores, dtype, base + i);
      if ((k & high_mask) == prefix) {
        atomicAdd(reinterpret_cast<unsigned long long*>(&hist[(k >> shift) & 0xFF]), 1ull);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t remaining = s_remaining;
      int b = 0;
      for (; b < 255; ++b) {
        if (hist[b] >= remaining) break;
        remaining -= hist[b];
      }
      s_remaining = remaining;
      s_prefix = prefix | (static_cast<uint64_t>(b) << shift);
    }
    __syncthreads();
  }
  const uint64_t threshold = s_prefix;
  const int64_t need_equal = s_remaining;  // units with key == threshold to prune, lowest index first
  int64_t equal_before = 0;               // keys == threshold in earlier chunks
  for (int64_t start = 0; start < length; start += kThreads) {
    const int64_t i = start + threadIdx.x;
    uint64_t k = 0;
    int64_t eq = 0;
    if (i < length) {
      k = load_key(scores, dtype, base + i);
      eq = k == threshold ? 1 : 0;
    }
    int64_t pos = 0;
    int64_t total = 0;
    BlockScan(scan_storage).ExclusiveSum(eq, pos, total);
    if (i < length) {
      const bool pruned = k < threshold || (eq && equal_before + pos < need_equal);
      o[i] = pruned ? 0 : 1;
    }
    equal_before += total;
    __syncthreads();  // scan_storage is reused by the next chunk
  }
}

}  // namespace

cudaError_t group_select_cuda(const void* scores, int32_t dtype, int64_t groups, int64_t length, int64_t prune,
                              uint8_t* out, cudaStream_t stream) {
  if (groups <= 0 || length <= 0) return cudaSuccess;
  if (length <= kSmallGroup) {
    const int64_t blocks = (groups + kThreads - 1) / kThreads;
    small_groups_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        scores, dtype, groups, static_cast<int>(length), static_cast<int>(prune), out);
    return cudaGetLastError();
  }
  // One block per row; grid.x allows 2^31 - 1 rows.
  row_select_kernel<<<static_cast<unsigned>(groups), kThreads, 0, stream>>>(scores, dtype, length, prune, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastprune
