// Helpers shared by the torch-facing CUDA wrappers (csrc/cuda/*_wrapper.cpp):
// argument checks that name the argument, the dtype code the kernels take,
// and turning a cudaError_t into a torch error. The kernels themselves
// (csrc/cuda/*.cu) never see torch.
#pragma once

#include "../common.h"
#include "kernels.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime_api.h>

namespace fastprune {
namespace cuda {

// Same wording as check_cpu (csrc/common.h), for the CUDA backend: every tensor
// of one call must live on the CUDA device of its first tensor.
inline void check_cuda(const at::Tensor& t, const c10::Device& device, const char* op, const char* name,
                       int64_t index = -1) {
  FP_CHECK(t.device().is_cuda(), op, ": ", arg_name(name, index), " must be a CUDA tensor, got a tensor on ",
           t.device());
  FP_CHECK(t.device() == device, op, ": ", arg_name(name, index), " must be on ", device, " like the other tensors, got ",
           t.device());
  FP_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", arg_name(name, index), " must be a dense (strided) tensor");
}

// The device check of the shared argument checks (csrc/op_args.h) for the CUDA
// backend: check_cuda against the device of the call's first tensor. A call
// without tensors checks none, so any device will do there.
struct OnDevice {
  explicit OnDevice(const at::Tensor& only) : device(only.device()) {}
  explicit OnDevice(at::TensorList first)
      : device(first.empty() ? c10::Device(c10::DeviceType::CUDA) : first[0].device()) {}
  c10::Device device;
  void operator()(const at::Tensor& t, const char* op, const char* name, int64_t index = -1) const {
    check_cuda(t, device, op, name, index);
  }
};

inline int32_t dtype_code(at::ScalarType st) {
  switch (st) {
    case at::kBool: return kBool;
    case at::kByte: return kUInt8;
    case at::kChar: return kInt8;
    case at::kShort: return kInt16;
    case at::kInt: return kInt32;
    case at::kLong: return kInt64;
    case at::kHalf: return kHalf;
    case at::kBFloat16: return kBFloat16;
    case at::kFloat: return kFloat;
    case at::kDouble: return kDouble;
    default: return -1;
  }
}

inline void check_launch(cudaError_t err, const char* op) {
  FP_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorName(err), " (",
           cudaGetErrorString(err), ")");
}

// Device workspace from torch's caching allocator (stream-ordered reuse).
inline at::Tensor workspace(size_t bytes, const c10::Device& device) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)},
                   at::TensorOptions().dtype(at::kByte).device(device));
}

}  // namespace cuda
}  // namespace fastprune
