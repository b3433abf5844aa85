// Torch-free interface of the group-selection CUDA kernel
// (csrc/cuda/group_select_cuda.cu) behind row_kselect and nm_select; the
// torch-facing wrappers are row_kselect_wrapper.cpp and nm_select_wrapper.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastprune {
namespace cuda {

// scores: `groups * length` contiguous values of dtype `dtype` (a DType code of
// kernels.h). For every group of `length` consecutive values, the `prune`
// smallest keys |score| (NaN above +inf, -0 == +0, ties: lower index first)
// get out = 0, the others out = 1 (one byte each). 0 <= prune <= length.
cudaError_t group_select_cuda(const void* scores, int32_t dtype, int64_t groups, int64_t length, int64_t prune,
                              uint8_t* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastprune
