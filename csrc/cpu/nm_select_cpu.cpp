// nm_select on the CPU: n units pruned in every group of m consecutive units.
#include "../op_args.h"
#include "group_select.h"

#include <torch/library.h>

namespace fastprune {
namespace {

at::Tensor nm_select_cpu(const at::Tensor& scores, int64_t n, int64_t m) {
  GroupSelectView v = check_nm_select_args(scores, n, m, CheckCpu{});
  group_select_cpu(v);
  return v.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CPU, m) { m.impl("nm_select", &nm_select_cpu); }

}  // namespace fastprune
