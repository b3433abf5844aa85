// CUDA backend of fastprune::channel_norms: the checks and the [outer, C, inner]
// view shared with the CPU backend (csrc/op_args.h), then the torch-free
// launcher in channel_norms_cuda.cu.
#include "wrapper_helpers.h"
#include "../op_args.h"

#include <torch/library.h>

namespace fastprune {
namespace cuda {
namespace {

at::Tensor channel_norms_cuda_op(const at::Tensor& t, int64_t dim, double p) {
  const OnDevice on_device(t);
  dim = check_channel_norms_args(t, dim, p, on_device);
  const c10::Device device = on_device.device;
  const c10::cuda::CUDAGuard guard(device);
  ChannelNormsView v = channel_norms_view(t, dim);
  if (v.done) return v.out;

  const at::Tensor x = t.contiguous();
  const int32_t code = dtype_code(x.scalar_type());
  const size_t bytes = channel_norms_workspace_bytes(v.outer, v.C, v.inner, code);
  at::Tensor ws = workspace(bytes, device);
  check_launch(channel_norms_cuda(x.data_ptr(), code, v.outer, v.C, v.inner, p, v.out.data_ptr(),
                                                   ws.data_ptr(), bytes,
                                                   c10::cuda::getCurrentCUDAStream(device.index()).stream()),
               "channel_norms");
  return v.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CUDA, m) { m.impl("channel_norms", &channel_norms_cuda_op); }

}  // namespace cuda
}  // namespace fastprune
