// CUDA backend of fastprune::channel_norms: the CPU kernel's checks (same
// messages), the [outer, C, inner] view, then the torch-free launcher in
// channel_norms_cuda.cu.
#include "wrapper_common.h"

#include <torch/library.h>

#include <cmath>

namespace fastprune {
namespace cuda_ops {
namespace {

at::Tensor channel_norms_cuda_op(const at::Tensor& t, int64_t dim, double p) {
  const c10::Device device = t.device();
  check_cuda(t, device, "channel_norms", "t");
  check_dtype(t, "channel_norms", "t");
  FP_CHECK_VALUE(t.dim() > 0, "channel_norms: t must have at least one dimension");
  const int64_t nd = t.dim();
  FP_CHECK_INDEX(dim >= -nd && dim < nd, "channel_norms: dim=", dim, " is out of range for t with ", nd,
                 " dimensions (expected to be in range of [", -nd, ", ", nd - 1, "])");
  if (dim < 0) dim += nd;
  FP_CHECK_VALUE(!std::isnan(p), "channel_norms: p must not be NaN");

  const c10::cuda::CUDAGuard guard(device);
  const at::ScalarType acc_type = t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t C = t.size(dim);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= t.size(d);
  for (int64_t d = dim + 1; d < nd; ++d) inner *= t.size(d);
  at::Tensor out = at::empty({C}, t.options().dtype(acc_type));
  if (C == 0) return out;
  if (outer == 0 || inner == 0) return out.zero_();  // the norm of nothing is 0

  const at::Tensor x = t.contiguous();
  const int32_t code = dtype_code(x.scalar_type());
  const size_t bytes = fastprune::cuda::channel_norms_workspace_bytes(outer, C, inner, code);
  at::Tensor ws = workspace(bytes, device);
  check_launch(fastprune::cuda::channel_norms_cuda(x.data_ptr(), code, outer, C, inner, p, out.data_ptr(),
                                                   ws.data_ptr(), bytes,
                                                   c10::cuda::getCurrentCUDAStream(device.index()).stream()),
               "channel_norms");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CUDA, m) { m.impl("channel_norms", &channel_norms_cuda_op); }

}  // namespace cuda_ops
}  // namespace fastprune
