// Per-channel L_p norms (fastprune::channel_norms) on CUDA.
//
// The input is a contiguous [A, C, B] array (C = the kept dim). The norm of
// channel c reduces the A * B elements x[a, c, b]. Two-stage reduction, no
// float atomics, so the result depends only on the shape:
//   stage 1 writes partial results for fixed slices of every channel,
//   stage 2 (one thread per channel) combines them in a fixed order and applies
//   the final root.
// Two stage-1 layouts keep the loads coalesced:
//   - "rows" (B >= kRowsMinB): a block reduces one slice of one channel, its
//     threads reading consecutive b of each row a (warp shuffles + shared
//     memory, fixed tree).
//   - "cols" (small B, e.g. the last dim of a Linear weight): a thread owns one
//     column j = c * B + b of the [A, C * B] matrix and walks a slice of rows.
// Accumulation is float, double for double input.

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "device_helpers.cuh"
#include "kernels.h"

namespace fastprune {
namespace cuda {
namespace {

using namespace detail;

enum NormKind : int32_t { kP0 = 0, kP1 = 1, kP2 = 2, kPInf = 3, kPNegInf = 4, kPGeneral = 5 };

constexpr int kThreads = 256;
constexpr int64_t kRowsMinB = 64;
constexpr int64_t kRowsSliceElems = 8192;  // elements per stage-1 block (rows layout)
constexpr int64_t kRowsMaxSlices = 1024;
constexpr int64_t kColsMaxSlices = 64;
constexpr int64_t kColsMinRows = 32;
constexpr int64_t kColsTargetThreads = 1 << 18;
constexpr int64_t kMaxGridY = 65535;

struct Plan {
  bool rows;
  int64_t slices;   // S
  int64_t partials; // number of Acc values in the workspace
};

Plan make_plan(int64_t A, int64_t C, int64_t B) {
  Plan p;
  p.rows = B >= kRowsMinB;
  if (p.rows) {
    const int64_t n = A * B;
    int64_t s = (n + kRowsSliceElems - 1) / kRowsSliceElems;
    if (s > kRowsMaxSlices) s = kRowsMaxSlices;
    if (s < 1) s = 1;
    p.slices = s;
    p.partials = C * s;
  } else {
    const int64_t w = C * B;
    int64_t s = (kColsTargetThreads + w - 1) / w;
    const int64_t by_rows = (A + kColsMinRows - 1) / kColsMinRows;
    if (s > by_rows) s = by_rows;
    if (s > kColsMaxSlices) s = kColsMaxSlices;
    if (s < 1) s = 1;
    p.slices = s;
    p.partials = s * w;
  }
  return p;
}

int kind_of(double p) {
  if (p == 0.0) return kP0;
  if (p == 1.0) return kP1;
  if (p == 2.0) return kP2;
  if (std::isinf(p)) return p > 0 ? kPInf : kPNegInf;
  return kPGeneral;
}

template <typename Acc> __device__ inline Acc acc_abs(Acc x);
template <> __device__ inline float acc_abs<float>(float x) { return fabsf(x); }
template <> __device__ inline double acc_abs<double>(double x) { return fabs(x); }
template <typename Acc> __device__ inline Acc acc_pow(Acc x, Acc y);
template <> __device__ inline float acc_pow<float>(float x, float y) { return powf(x, y); }
template <> __device__ inline double acc_pow<double>(double x, double y) { return pow(x, y); }

template <int K, typename Acc>
__device__ inline Acc identity() {
  if constexpr (K == kPNegInf) {
    return static_cast<Acc>(INFINITY);
  } else {
    return Acc(0);
  }
}

// NaN-propagating max / min, as torch's inf / -inf norms.
template <int K, typename Acc>
__device__ inline Acc combine(Acc a, Acc b) {
  if constexpr (K == kPInf) {
    return (a != a || a > b) ? a : b;
  } else if constexpr (K == kPNegInf) {
    return (a != a || a < b) ? a : b;
  } else {
    return a + b;
  }
}

template <int K, typename Acc>
__device__ inline Acc transform(Acc x, Acc p) {
  if constexpr (K == kP0) {
    return x != Acc(0) ? Acc(1) : Acc(0);  // NaN counts as non-zero
  } else if constexpr (K == kP2) {
    return x * x;
  } else if constexpr (K == kPGeneral) {
    return acc_pow<Acc>(acc_abs<Acc>(x), p);
  } else {
    return acc_abs<Acc>(x);
  }
}

template <int D, typename Acc>
__device__ inline Acc load_acc(const typename Storage<D>::T* x, int64_t i) {
  if constexpr (std::is_same<Acc, double>::value) {
    return to_double<D>(x[i]);
  } else {
    return to_float<D>(x[i]);
  }
}

// Fixed-shape block reduction (deterministic for a given blockDim).
template <int K, typename Acc>
__device__ inline Acc block_reduce(Acc v) {
  __shared__ Acc warp_vals[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = combine<K, Acc>(v, __shfl_down_sync(0xFFFFFFFFu, v, off));
  if (lane == 0) warp_vals[warp] = v;
  __syncthreads();
  Acc r = identity<K, Acc>();
  if (warp == 0) {
    r = lane < kThreads / 32 ? warp_vals[lane] : identity<K, Acc>();
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) r = combine<K, Acc>(r, __shfl_down_sync(0xFFFFFFFFu, r, off));
  }
  return r;  // valid in thread 0
}

template <int D, int K, typename Acc>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(const typename Storage<D>::T* __restrict__ x, int64_t A, int64_t C, int64_t B, int64_t slices,
                Acc p, Acc* __restrict__ partial) {
  const int64_t c = blockIdx.x;
  const int64_t s = blockIdx.y;
  const int64_t n = A * B;
  const int64_t len = (n + slices - 1) / slices;
  const int64_t e0 = s * len;
  const int64_t e1 = (e0 + len) < n ? (e0 + len) : n;
  Acc acc = identity<K, Acc>();
  if (e0 < e1) {
    for (int64_t a = e0 / B; a * B < e1; ++a) {
      const int64_t row = a * B;
      const int64_t lo = e0 > row ? e0 - row : 0;
      const int64_t hi = (e1 - row) < B ? (e1 - row) : B;
      const typename Storage<D>::T* base = x + (a * C + c) * B;
      for (int64_t b = lo + threadIdx.x; b < hi; b += kThreads) {
        acc = combine<K, Acc>(acc, transform<K, Acc>(load_acc<D, Acc>(base, b), p));
      }
    }
  }
  const Acc r = block_reduce<K, Acc>(acc);
  if (threadIdx.x == 0) partial[c * slices + s] = r;
}

template <int D, int K, typename Acc>
__global__ void __launch_bounds__(kThreads)
    cols_kernel(const typename Storage<D>::T* __restrict__ x, int64_t A, int64_t W, int64_t slices, Acc p,
                Acc* __restrict__ partial) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= W) return;
  const int64_t s = blockIdx.y;
  const int64_t len = (A + slices - 1) / slices;
  const int64_t a0 = s * len;
  const int64_t a1 = (a0 + len) < A ? (a0 + len) : A;
  Acc acc = identity<K, Acc>();
  for (int64_t a = a0; a < a1; ++a) acc = combine<K, Acc>(acc, transform<K, Acc>(load_acc<D, Acc>(x, a * W + j), p));
  partial[s * W + j] = acc;
}

template <int K, typename Acc>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const Acc* __restrict__ partial, int64_t C, int64_t B, int64_t slices, bool rows, Acc p,
                  Acc* __restrict__ out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  Acc acc = identity<K, Acc>();
  if (rows) {
    for (int64_t s = 0; s < slices; ++s) acc = combine<K, Acc>(acc, partial[c * slices + s]);
  } else {
    const int64_t W = C * B;
    for (int64_t s = 0; s < slices; ++s)
      for (int64_t b = 0; b < B; ++b) acc = combine<K, Acc>(acc, partial[s * W + c * B + b]);
  }
  if constexpr (K == kP2) {
    acc = sqrt(acc);
  } else if constexpr (K == kPGeneral) {
    acc = acc_pow<Acc>(acc, Acc(1) / p);
  }
  out[c] = acc;
}

template <int D, int K>
cudaError_t launch(const void* input, int64_t A, int64_t C, int64_t B, double p, void* out, void* workspace,
                   const Plan& plan, cudaStream_t stream) {
  using Acc = typename std::conditional<D == kDouble, double, float>::type;
  using T = typename Storage<D>::T;
  const T* x = static_cast<const T*>(input);
  Acc* partial = static_cast<Acc*>(workspace);
  const Acc pa = static_cast<Acc>(p);
  if (plan.rows) {
    const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(plan.slices));
    rows_kernel<D, K, Acc><<<grid, kThreads, 0, stream>>>(x, A, C, B, plan.slices, pa, partial);
  } else {
    const int64_t W = C * B;
    const dim3 grid(static_cast<unsigned>((W + kThreads - 1) / kThreads), static_cast<unsigned>(plan.slices));
    cols_kernel<D, K, Acc><<<grid, kThreads, 0, stream>>>(x, A, W, plan.slices, pa, partial);
  }
  FASTPRUNE_CUDA_TRY(cudaGetLastError());
  finish_kernel<K, Acc><<<static_cast<unsigned>((C + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      partial, C, B, plan.slices, plan.rows, pa, static_cast<Acc*>(out));
  return cudaGetLastError();
}

template <int D>
cudaError_t launch_kind(int kind, const void* input, int64_t A, int64_t C, int64_t B, double p, void* out,
                        void* workspace, const Plan& plan, cudaStream_t stream) {
  switch (kind) {
    case kP0: return launch<D, kP0>(input, A, C, B, p, out, workspace, plan, stream);
    case kP1: return launch<D, kP1>(input, A, C, B, p, out, workspace, plan, stream);
    case kP2: return launch<D, kP2>(input, A, C, B, p, out, workspace, plan, stream);
    case kPInf: return launch<D, kPInf>(input, A, C, B, p, out, workspace, plan, stream);
    case kPNegInf: return launch<D, kPNegInf>(input, A, C, B, p, out, workspace, plan, stream);
    default: return launch<D, kPGeneral>(input, A, C, B, p, out, workspace, plan, stream);
  }
}

}  // namespace

size_t channel_norms_workspace_bytes(int64_t A, int64_t C, int64_t B, int32_t dtype) {
  if (A <= 0 || B <= 0 || C <= 0) return 0;
  const Plan plan = make_plan(A, C, B);
  return static_cast<size_t>(plan.partials) * (dtype == kDouble ? sizeof(double) : sizeof(float));
}

cudaError_t channel_norms_cuda(const void* input, int32_t dtype, int64_t A, int64_t C, int64_t B, double p, void* out,
                               void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (!dtype_valid(dtype) || A < 0 || B < 0 || C < 0) return cudaErrorInvalidValue;
  if (C == 0) return cudaSuccess;
  const size_t acc_bytes = dtype == kDouble ? sizeof(double) : sizeof(float);
  if (A == 0 || B == 0) {
    // The norm of nothing is 0 (also for -inf, as in the reference).
    return cudaMemsetAsync(out, 0, acc_bytes * static_cast<size_t>(C), stream);
  }
  const Plan plan = make_plan(A, C, B);
  if (plan.rows && C > 0x7FFFFFFFll) return cudaErrorInvalidValue;
  if (plan.slices > kMaxGridY) return cudaErrorInvalidValue;
  if (workspace == nullptr || workspace_bytes < static_cast<size_t>(plan.partials) * acc_bytes)
    return cudaErrorInvalidValue;
  const int kind = kind_of(p);
  switch (dtype) {
    case kBool: return launch_kind<kBool>(kind, input, A, C, B, p, out, workspace, plan, stream);
    case kUInt8: return launch_kind<kUInt8>(kind, input, A, C, B, p, out, workspace, plan, stream);
    case kInt8: return launch_kind<kInt8>(kind, input, A, C, B, p, out, workspace, plan, stream);
    case kInt16: return launch_kind<kInt16>(kind, input, A, C, B, p, out, workspace, plan, stream);
    case kInt32: return launch_kind<kInt32>(kind, input, A, C, B, p, out, workspace, plan, stream);
    case kInt64: return launch_kind<kInt64>(kind, input, A, C, B, p, out, workspace, plan, stream);
    case kHalf: return launch_kind<kHalf>(kind, input, A, C, B, p, out, workspace, plan, stream);
    case kBFloat16: return launch_kind<kBFloat16>(kind, input, A, C, B, p, out, workspace, plan, stream);
    case kFloat: return launch_kind<kFloat>(kind, input, A, C, B, p, out, workspace, plan, stream);
    default: return launch_kind<kDouble>(kind, input, A, C, B, p, out, workspace, plan, stream);
  }
}

}  // namespace cuda
}  // namespace fastprune
