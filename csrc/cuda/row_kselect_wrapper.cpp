// CUDA backend of fastprune::row_kselect (exactly k units pruned in every row, one block per row): the checks shared with
// the CPU backend (csrc/group_select_args.h), then the torch-free launcher in
// group_select_cuda.cu.
#include "wrapper_helpers.h"
#include "group_select_kernels.h"
#include "../group_select_args.h"

#include <torch/library.h>

namespace fastprune {
namespace cuda {
namespace {

at::Tensor row_kselect_cuda_op(const at::Tensor& scores, int64_t k) {
  const OnDevice on_device(scores);
  GroupSelectView v = check_row_kselect_args(scores, k, on_device);
  if (v.groups == 0 || v.length == 0) return v.out;
  const c10::cuda::CUDAGuard guard(on_device.device);
  check_launch(group_select_cuda(v.scores.data_ptr(), dtype_code(v.scores.scalar_type()), v.groups,
                                                  v.length, v.prune, reinterpret_cast<uint8_t*>(v.out.data_ptr<bool>()),
                                                  c10::cuda::getCurrentCUDAStream(on_device.device.index()).stream()),
               "row_kselect");
  return v.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CUDA, m) { m.impl("row_kselect", &row_kselect_cuda_op); }

}  // namespace cuda
}  // namespace fastprune
