// CUDA backend of fastprune::mask_mul, mask_mul_ and apply_packed_mask_:
// the checks and fallbacks shared with the CPU backend (csrc/op_args.h), then
// the torch-free launchers in mask_mul_cuda.cu. Same-shape pairs with a contiguous input take
// the fused kernel; broadcast masks and strided inputs are handed to ATen,
// exactly as on the CPU, so both devices give the same results and errors.
#include "wrapper_helpers.h"
#include "../op_args.h"

#include <torch/library.h>

#include <vector>

namespace fastprune {
namespace cuda {
namespace {

at::Tensor mask_mul_cuda_op(const at::Tensor& input, const at::Tensor& mask) {
  const c10::Device device = input.device();
  check_cuda(input, device, "mask_mul", "input");
  check_cuda(mask, device, "mask_mul", "mask");
  if (!mask_mul_fast_pair(input, mask)) {
    return at::mul(input, mask.to(input.scalar_type()));
  }
  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor m = mask.contiguous();
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (input.numel() == 0) return out;
  MaskMulTensor d;
  d.in = input.data_ptr();
  d.mask = m.data_ptr();
  d.out = out.data_ptr();
  d.numel = input.numel();
  d.dtype = dtype_code(input.scalar_type());
  d.mask_dtype = dtype_code(m.scalar_type());
  // One tensor always fits in the kernel arguments: no workspace.
  check_launch(mask_mul_cuda(&d, 1, nullptr, 0, c10::cuda::getCurrentCUDAStream(device.index()).stream()),
               "mask_mul");
  return out;
}

void mask_mul__cuda_op(at::TensorList inputs, at::TensorList masks) {
  const OnDevice on_device(inputs);
  const std::vector<bool> fast = check_mask_mul__args(inputs, masks, on_device);
  const int64_t n = static_cast<int64_t>(fast.size());
  if (n == 0) return;
  const c10::Device device = on_device.device;
  const c10::cuda::CUDAGuard guard(device);
  std::vector<at::Tensor> keep_alive;  // contiguous mask copies, alive until the launch is queued
  std::vector<MaskMulTensor> desc;
  for (int64_t i = 0; i < n; ++i) {
    if (!fast[i] || inputs[i].numel() == 0) continue;
    at::Tensor m = masks[i].contiguous();
    MaskMulTensor d;
    d.in = inputs[i].data_ptr();
    d.mask = m.data_ptr();
    d.out = inputs[i].data_ptr();
    d.numel = inputs[i].numel();
    d.dtype = dtype_code(inputs[i].scalar_type());
    d.mask_dtype = dtype_code(m.scalar_type());
    desc.push_back(d);
    keep_alive.push_back(std::move(m));
  }
  if (!desc.empty()) {
    const int count = static_cast<int>(desc.size());
    const size_t bytes = mask_mul_workspace_bytes(count);
    at::Tensor ws;
    if (bytes > 0) ws = workspace(bytes, device);
    check_launch(mask_mul_cuda(desc.data(), count, bytes > 0 ? ws.data_ptr() : nullptr, bytes,
                                                c10::cuda::getCurrentCUDAStream(device.index()).stream()),
                 "mask_mul_");
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!fast[i]) inputs[i].mul_(masks[i].to(inputs[i].scalar_type()));
  }
}

void apply_packed_mask__cuda_op(at::TensorList inputs, at::TensorList packed) {
  const OnDevice on_device(inputs);
  check_apply_packed_mask__args(inputs, packed, on_device);
  const int64_t n = static_cast<int64_t>(inputs.size());
  if (n == 0) return;
  const c10::Device device = on_device.device;
  const c10::cuda::CUDAGuard guard(device);
  const PackedMaskViews v = packed_mask_views(inputs, packed);
  const std::vector<at::Tensor>& xs = v.xs;
  const std::vector<at::Tensor>& ps = v.ps;
  std::vector<PackedMaskTensor> desc;
  for (int64_t i = 0; i < n; ++i) {
    if (xs[i].numel() == 0) continue;
    PackedMaskTensor d;
    d.data = xs[i].data_ptr();
    d.bits = ps[i].data_ptr<uint8_t>();
    d.numel = xs[i].numel();
    d.elem_size = static_cast<int32_t>(xs[i].element_size());
    d.reserved = 0;
    desc.push_back(d);
  }
  if (!desc.empty()) {
    const int count = static_cast<int>(desc.size());
    const size_t bytes = apply_packed_mask_workspace_bytes(count);
    at::Tensor ws;
    if (bytes > 0) ws = workspace(bytes, device);
    check_launch(apply_packed_mask_cuda(desc.data(), count, bytes > 0 ? ws.data_ptr() : nullptr,
                                                         bytes, c10::cuda::getCurrentCUDAStream(device.index()).stream()),
                 "apply_packed_mask_");
  }
  v.copy_back(inputs);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CUDA, m) {
  m.impl("mask_mul", &mask_mul_cuda_op);
  m.impl("mask_mul_", &mask_mul__cuda_op);
  m.impl("apply_packed_mask_", &apply_packed_mask__cuda_op);
}

}  // namespace cuda
}  // namespace fastprune
