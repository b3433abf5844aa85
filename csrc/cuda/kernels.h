// Plain C++ interface between the CUDA kernels (csrc/cuda/*.cu, CUDA + CUB only)
// and their torch-facing wrappers (csrc/cuda/*_wrapper.cpp) or the standalone test (tests/cuda/).
//
// Nothing here depends on torch: tensors are raw device pointers plus one of the
// dtype codes below and an element count; every launch takes a cudaStream_t.
// Multi-tensor launches take a host array of descriptors (a "pointer table" in
// the style of apex's multi_tensor_apply); the launcher copies it to device
// workspace when it does not fit in the kernel arguments.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastprune {
namespace cuda {

// Element types the kernels understand. Bool is one byte holding 0 or 1
// (any non-zero byte reads as true). Half/BFloat16 are the IEEE binary16 and
// bfloat16 bit patterns.
enum DType : int32_t {
  kBool = 0,
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kHalf = 6,
  kBFloat16 = 7,
  kFloat = 8,
  kDouble = 9,
};
constexpr int kNumDTypes = 10;

inline size_t dtype_size(int32_t dt) {
  switch (dt) {
    case kBool:
    case kUInt8:
    case kInt8:
      return 1;
    case kInt16:
    case kHalf:
    case kBFloat16:
      return 2;
    case kInt32:
    case kFloat:
      return 4;
    case kInt64:
    case kDouble:
      return 8;
    default:
      return 0;
  }
}

inline bool dtype_valid(int32_t dt) { return dt >= 0 && dt < kNumDTypes; }
inline bool dtype_is_float(int32_t dt) {
  return dt == kHalf || dt == kBFloat16 || dt == kFloat || dt == kDouble;
}

// ---------------------------------------------------------------------------
// k-selection (kselect_)
// ---------------------------------------------------------------------------

// One score tensor with its existing mask (nullptr = keeps everything) and its
// output. All three are contiguous, in the tensor's row-major order. With
// `packed`, mask and out are ceil(numel / 8) bytes of bits (unit i = bit i % 8
// of byte i / 8) and their dtype fields are ignored. `out` may equal `mask`.
struct KSelectTensor {
  const void* score;
  const void* mask;
  void* out;
  int64_t numel;
  int32_t score_dtype;
  int32_t mask_dtype;
  int32_t out_dtype;
  int32_t reserved;
};

struct KSelectStatus {
  cudaError_t error = cudaSuccess;
  // Set when the number of selectable units had to be counted on the device
  // (masks present with exclude_masked) and k exceeds it: nothing was written.
  bool k_out_of_range = false;
  int64_t selectable = -1;
};

// Bytes of device workspace kselect_cuda needs for these tensors (counts only
// numel and the number of tensors). Needs a current CUDA device (CUB query).
cudaError_t kselect_workspace_bytes(const KSelectTensor* tensors, int ntensors, size_t* bytes);

// Writes, for every tensor, keep = existing_keep AND NOT selected, where exactly
// k units are selected: those with the smallest |score| (largest with
// `largest`), NaN above +inf, ties by lower global flat index. Semantics are
// those of fastprune/ops/reference.py::kselect_.
//
// `known_selectable`: the number of selectable units when the caller knows it
// (no masks, or exclude_masked == false) and has already checked
// 0 <= k <= known_selectable; -1 when it must be counted on the device, which
// costs the call's one device-to-host read (and a stream synchronisation)
// right after the first histogram pass.
//
// `fraction` >= 0 (then k = -1 and known_selectable = -1): select
// nearbyint(fraction * selectable units) (half to even), the count taken in the
// first histogram pass, so the caller needs no pass of its own over the masks.
// A negative `fraction` means k is given.
KSelectStatus kselect_cuda(const KSelectTensor* tensors, int ntensors, int64_t k, double fraction, bool largest,
                           bool exclude_masked, bool packed, int64_t known_selectable, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream);

// ---------------------------------------------------------------------------
// Fused mask-multiply (mask_mul, mask_mul_) and packed masks
// ---------------------------------------------------------------------------

// out = in * mask.to(in.dtype), elementwise, numel elements; out may equal in.
struct MaskMulTensor {
  const void* in;
  const void* mask;
  void* out;
  int64_t numel;
  int32_t dtype;       // of in and out
  int32_t mask_dtype;  // any DType
};

// Device workspace for a launch over ntensors descriptors (0 when they fit in
// the kernel arguments).
size_t mask_mul_workspace_bytes(int ntensors);
cudaError_t mask_mul_cuda(const MaskMulTensor* tensors, int ntensors, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

// data[i] = 0 wherever bit i of `bits` is 0 (ceil(numel / 8) bytes). Works on
// raw elements of elem_size bytes (1, 2, 4, 8 or 16): clearing every bit gives
// +0 / 0 / false in every dtype, complex included.
struct PackedMaskTensor {
  void* data;
  const uint8_t* bits;
  int64_t numel;
  int32_t elem_size;
  int32_t reserved;
};

size_t apply_packed_mask_workspace_bytes(int ntensors);
cudaError_t apply_packed_mask_cuda(const PackedMaskTensor* tensors, int ntensors, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream);

// ---------------------------------------------------------------------------
// Per-channel norms (channel_norms)
// ---------------------------------------------------------------------------

// Input viewed as a contiguous [A, C, B] array (C = channel dim). out receives
// C values of the accumulation type (double for kDouble input, float
// otherwise): the L_p norm over the A * B elements of each channel, p any
// double including 0 (count of non-zeros), +inf and -inf. A * B must be > 0.
// The reduction order depends only on the shape, so results are bit-for-bit
// reproducible run to run and device to device.
size_t channel_norms_workspace_bytes(int64_t A, int64_t C, int64_t B, int32_t dtype);
cudaError_t channel_norms_cuda(const void* input, int32_t dtype, int64_t A, int64_t C, int64_t B, double p,
                               void* out, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastprune
