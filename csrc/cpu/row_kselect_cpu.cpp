// row_kselect on the CPU: exactly k units pruned in every row, all rows in one call.
#include "../op_args.h"
#include "group_select.h"

#include <torch/library.h>

namespace fastprune {
namespace {

at::Tensor row_kselect_cpu(const at::Tensor& scores, int64_t k) {
  GroupSelectView v = check_row_kselect_args(scores, k, CheckCpu{});
  group_select_cpu(v);
  return v.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CPU, m) { m.impl("row_kselect", &row_kselect_cpu); }

}  // namespace fastprune
