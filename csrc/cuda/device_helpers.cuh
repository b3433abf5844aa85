// Device helpers shared by the fastprune CUDA kernels (CUDA + CUB only).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels.h"

namespace fastprune {
namespace cuda {
namespace detail {

#define FASTPRUNE_CUDA_TRY(expr)                  \
  do {                                            \
    cudaError_t fastprune_err_ = (expr);          \
    if (fastprune_err_ != cudaSuccess) return fastprune_err_; \
  } while (0)

// Storage type of each dtype code. Half and bfloat16 are handled as their bit
// patterns so that no arithmetic ever goes through a 16-bit type by accident.
template <int D> struct Storage;
template <> struct Storage<kBool> { using T = uint8_t; };
template <> struct Storage<kUInt8> { using T = uint8_t; };
template <> struct Storage<kInt8> { using T = int8_t; };
template <> struct Storage<kInt16> { using T = int16_t; };
template <> struct Storage<kInt32> { using T = int32_t; };
template <> struct Storage<kInt64> { using T = int64_t; };
template <> struct Storage<kHalf> { using T = uint16_t; };
template <> struct Storage<kBFloat16> { using T = uint16_t; };
template <> struct Storage<kFloat> { using T = float; };
template <> struct Storage<kDouble> { using T = double; };

__device__ __forceinline__ float half_bits_to_float(uint16_t b) {
  return __half2float(__ushort_as_half(b));
}
__device__ __forceinline__ float bf16_bits_to_float(uint16_t b) {
  // bfloat16 is the upper half of a float: the widening is exact.
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}
__device__ __forceinline__ uint16_t float_to_half_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
__device__ __forceinline__ uint16_t double_to_half_bits(double d) { return __half_as_ushort(__double2half(d)); }
__device__ __forceinline__ uint16_t double_to_bf16_bits(double d) {
  return __bfloat16_as_ushort(__double2bfloat16(d));
}

// Value of a stored element as double (exact for every float type; integers
// above 2^53 round to nearest, as static_cast<double> does on the CPU).
template <int D>
__device__ __forceinline__ double to_double(typename Storage<D>::T v) {
  if constexpr (D == kBool) {
    return v != 0 ? 1.0 : 0.0;
  } else if constexpr (D == kHalf) {
    return static_cast<double>(half_bits_to_float(v));
  } else if constexpr (D == kBFloat16) {
    return static_cast<double>(bf16_bits_to_float(v));
  } else {
    return static_cast<double>(v);
  }
}

// Value as float (the accumulation type of every non-double input).
template <int D>
__device__ __forceinline__ float to_float(typename Storage<D>::T v) {
  if constexpr (D == kBool) {
    return v != 0 ? 1.0f : 0.0f;
  } else if constexpr (D == kHalf) {
    return half_bits_to_float(v);
  } else if constexpr (D == kBFloat16) {
    return bf16_bits_to_float(v);
  } else {
    return static_cast<float>(v);
  }
}

// Non-zero test with the semantics of `x != 0`: NaN is non-zero, -0 is zero.
template <int D>
__device__ __forceinline__ bool nonzero(typename Storage<D>::T v) {
  if constexpr (D == kHalf || D == kBFloat16) {
    return (v & 0x7FFFu) != 0;
  } else {
    return v != 0;
  }
}

// Loads or stores N consecutive elements of type T starting at p. With
// `vec` the address must be aligned to min(16, N * sizeof(T)) bytes and the
// access uses the widest loads that alignment allows (up to 128 bits each).
template <typename T, int N>
struct Vec {
  static constexpr int kBytes = static_cast<int>(sizeof(T)) * N;
  union {
    T v[N];
    uint4 u4[kBytes >= 16 ? kBytes / 16 : 1];
    uint2 u2;
    uint32_t u1;
    uint16_t u0;
    uint8_t b;
  };

  __device__ __forceinline__ void load(const T* p, bool vec, int nvalid) {
    if (vec && nvalid == N) {
      if constexpr (kBytes >= 16) {
        const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
        for (int i = 0; i < kBytes / 16; ++i) u4[i] = q[i];
        return;
      } else if constexpr (kBytes == 8) {
        u2 = *reinterpret_cast<const uint2*>(p);
        return;
      } else if constexpr (kBytes == 4) {
        u1 = *reinterpret_cast<const uint32_t*>(p);
        return;
      } else if constexpr (kBytes == 2) {
        u0 = *reinterpret_cast<const uint16_t*>(p);
        return;
      }
    }
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = i < nvalid ? p[i] : T{};
  }

  __device__ __forceinline__ void store(T* p, bool vec, int nvalid) const {
    if (vec && nvalid == N) {
      if constexpr (kBytes >= 16) {
        uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
        for (int i = 0; i < kBytes / 16; ++i) q[i] = u4[i];
        return;
      } else if constexpr (kBytes == 8) {
        *reinterpret_cast<uint2*>(p) = u2;
        return;
      } else if constexpr (kBytes == 4) {
        *reinterpret_cast<uint32_t*>(p) = u1;
        return;
      } else if constexpr (kBytes == 2) {
        *reinterpret_cast<uint16_t*>(p) = u0;
        return;
      }
    }
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i < nvalid) p[i] = v[i];
  }
};

// Alignment (in bytes) that Vec<T, N> needs for its wide path.
__host__ __device__ __forceinline__ int vec_alignment(int elem_bytes, int n) {
  int bytes = elem_bytes * n;
  return bytes >= 16 ? 16 : bytes;
}

inline bool is_aligned(const void* p, int alignment) {
  return alignment <= 1 || (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(alignment)) == 0;
}

// Host side, for the pointer tables: `bit` when the operand at p (elements of
// dtype code dt) is aligned for the wide path of Vec<T, n>, 0 otherwise.
inline uint32_t wide_bit(const void* p, int32_t dt, int n, uint32_t bit) {
  return is_aligned(p, vec_alignment(static_cast<int>(dtype_size(dt)), n)) ? bit : 0u;
}

// Index of the table entry owning `chunk`: the last t with chunk_begin[t] <= chunk
// (empty tensors own no chunk and are skipped naturally).
__device__ __forceinline__ int find_owner(const int64_t* chunk_begin, int n, int64_t chunk) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (chunk_begin[mid] <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Calls f(std::integral_constant-like tag) with the dtype as a template constant.
template <int D> struct DTag { static constexpr int value = D; };

template <typename F>
__device__ __forceinline__ void dispatch_dtype(int32_t dt, F&& f) {
  switch (dt) {
    case kBool: f(DTag<kBool>{}); break;
    case kUInt8: f(DTag<kUInt8>{}); break;
    case kInt8: f(DTag<kInt8>{}); break;
    case kInt16: f(DTag<kInt16>{}); break;
    case kInt32: f(DTag<kInt32>{}); break;
    case kInt64: f(DTag<kInt64>{}); break;
    case kHalf: f(DTag<kHalf>{}); break;
    case kBFloat16: f(DTag<kBFloat16>{}); break;
    case kFloat: f(DTag<kFloat>{}); break;
    case kDouble: f(DTag<kDouble>{}); break;
    default: break;
  }
}

inline int device_sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 80;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) return 80;
  return sms;
}

inline size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace detail
}  // namespace cuda
}  // namespace fastprune
