// CUDA backend of fastprune::kselect_: the argument checks and the contiguity
// and aliasing handling shared with the CPU backend (csrc/op_args.h), then the
// torch-free launcher in kselect_cuda.cu.
#include "wrapper_helpers.h"
#include "../op_args.h"

#include <torch/library.h>

#include <optional>
#include <vector>

namespace fastprune {
namespace cuda {
namespace {

// applied[i] = values[i] * (out[i] != 0) in values[i]'s dtype, from the final
// masks, into the staged (contiguous) outputs of stage_kselect. On the GPU this
// is one more elementwise pass (the CPU kernel writes it in its write pass
// instead, where a memory-bound pass costs what a copy does).
void apply_masks(const KSelectWrites& w, bool packed) {
  for (size_t i = 0; i < w.write_applied.size(); ++i) {
    const at::Tensor& v = w.values[i];
    const at::Tensor& out = w.write[i];
    at::Tensor keep;
    if (packed) {
      const at::Tensor bits = at::arange(8, out.options().dtype(at::kByte));
      keep = out.reshape({-1, 1}).bitwise_right_shift(bits).bitwise_and(1).reshape({-1}).narrow(0, 0, v.numel());
    } else {
      keep = out.reshape({-1}).ne(0);
    }
    w.write_applied[i].view({-1}).copy_(v.reshape({-1}).mul(keep.to(v.scalar_type())));
  }
}

void kselect_cuda_op(at::TensorList scores, const c10::List<std::optional<at::Tensor>>& masks, at::TensorList out,
                     int64_t k, bool largest, bool exclude_masked, bool packed, std::optional<double> fraction,
                     std::optional<at::TensorList> values, std::optional<at::TensorList> applied) {
  const OnDevice on_device(scores);
  KSelectArgs a =
      check_kselect_args(scores, masks, out, k, exclude_masked, packed, fraction, values, applied, on_device);
  const int64_t n = static_cast<int64_t>(a.scores.size());
  if (n == 0) return;
  const c10::Device device = on_device.device;
  const c10::cuda::CUDAGuard guard(device);
  const KSelectWrites w = stage_kselect(a);
  const std::vector<at::Tensor>& s = a.scores;
  const std::vector<at::Tensor>& m = a.masks;
  const std::vector<at::Tensor>& write = w.write;

  std::vector<KSelectTensor> desc(n);
  for (int64_t i = 0; i < n; ++i) {
    KSelectTensor& d = desc[i];
    d.score = s[i].data_ptr();
    d.mask = m[i].defined() ? m[i].data_ptr() : nullptr;
    d.out = write[i].data_ptr();
    d.numel = s[i].numel();
    d.score_dtype = dtype_code(s[i].scalar_type());
    d.mask_dtype = m[i].defined() ? dtype_code(m[i].scalar_type()) : kBool;
    d.out_dtype = dtype_code(write[i].scalar_type());
    d.reserved = 0;
  }
  // Without masks to exclude, every unit is selectable and k was checked (or
  // resolved from the fraction) above; otherwise the launcher counts the
  // selectable units on the device, and resolves k = -1 from the fraction.
  const int64_t known = (!exclude_masked || !a.any_mask) ? a.total : -1;
  const double frac = a.k < 0 ? a.fraction : -1.0;
  size_t bytes = 0;
  check_launch(kselect_workspace_bytes(desc.data(), static_cast<int>(n), &bytes), "kselect_");
  at::Tensor ws = workspace(bytes, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const KSelectStatus st = kselect_cuda(
      desc.data(), static_cast<int>(n), a.k, frac, largest, exclude_masked, packed, known, ws.data_ptr(), bytes, stream);
  check_launch(st.error, "kselect_");
  FP_CHECK_VALUE(!st.k_out_of_range, "kselect_: k=", a.k, " must be between 0 and the number of selectable units (",
                 st.selectable, ")");
  apply_masks(w, packed);
  w.copy_back(a.out, a.applied);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CUDA, m) { m.impl("kselect_", &kselect_cuda_op); }

}  // namespace cuda
}  // namespace fastprune
