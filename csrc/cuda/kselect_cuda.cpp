// CUDA backend of fastprune::kselect_: argument checks (the CPU kernel's, with
// the same messages), contiguity and aliasing handling, then the torch-free
// launcher in kselect_cuda.cu.
#include "wrapper_common.h"

#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <optional>
#include <unordered_map>
#include <vector>

namespace fastprune {
namespace cuda_ops {
namespace {

// Would writing `out` directly change what a later read of `t` sees? out[i]
// aliasing masks[i] exactly is fine: the kernel reads each unit's mask before
// the same thread writes it.
bool clobbers(const at::Tensor& out, const at::Tensor& t, bool same_index) {
  const auto status = at::get_overlap_status(out, t);
  if (status == at::MemOverlapStatus::No) return false;
  return !(same_index && status == at::MemOverlapStatus::Full && out.is_contiguous() && t.is_contiguous() &&
           out.data_ptr() == t.data_ptr() && out.element_size() == t.element_size() && out.numel() == t.numel());
}

void kselect_cuda_op(at::TensorList scores, const c10::List<std::optional<at::Tensor>>& masks, at::TensorList out,
                     int64_t k, bool largest, bool exclude_masked, bool packed) {
  const int64_t n = static_cast<int64_t>(scores.size());
  FP_CHECK_VALUE(static_cast<int64_t>(masks.size()) == n && static_cast<int64_t>(out.size()) == n,
                 "kselect_: scores, masks and out must have the same length, got ", n, ", ", masks.size(), " and ",
                 out.size());
  FP_CHECK_VALUE(k >= 0, "kselect_: k=", k, " must be between 0 and the number of selectable units");
  if (n == 0) {
    FP_CHECK_VALUE(k == 0, "kselect_: k=", k, " must be between 0 and the number of selectable units (0)");
    return;
  }
  const c10::Device device = scores[0].device();
  std::vector<at::Tensor> s(n), m(n), o(n);
  for (int64_t i = 0; i < n; ++i) {
    s[i] = scores[i];
    check_cuda(s[i], device, "kselect_", "scores", i);
    check_dtype(s[i], "kselect_", "scores", i);
    const int64_t numel = s[i].numel();
    const int64_t want = packed ? packed_numel(numel) : numel;
    const char* unit = packed ? " bytes (packed)" : " elements";
    const std::optional<at::Tensor> mi = masks[i];
    if (mi.has_value() && mi->defined()) {
      m[i] = *mi;
      check_cuda(m[i], device, "kselect_", "masks", i);
      if (packed) {
        FP_CHECK_TYPE(m[i].scalar_type() == at::kByte, "kselect_: masks[", i, "] must be uint8 in packed mode, got ",
                      m[i].scalar_type());
      } else {
        check_dtype(m[i], "kselect_", "masks", i);
      }
      FP_CHECK_VALUE(m[i].numel() == want, "kselect_: masks[", i, "] must have ", want, unit, ", got ",
                     m[i].numel());
    }
    o[i] = out[i];
    check_cuda(o[i], device, "kselect_", "out", i);
    if (packed) {
      FP_CHECK_TYPE(o[i].scalar_type() == at::kByte, "kselect_: out[", i, "] must be uint8 in packed mode, got ",
                    o[i].scalar_type());
    } else {
      check_dtype(o[i], "kselect_", "out", i);
    }
    FP_CHECK_VALUE(o[i].numel() == want, "kselect_: out[", i, "] must have ", want, unit, ", got ", o[i].numel());
  }
  int64_t total = 0;
  bool any_mask = false;
  for (int64_t i = 0; i < n; ++i) {
    total += s[i].numel();
    any_mask = any_mask || m[i].defined();
  }
  FP_CHECK_VALUE(k <= total, "kselect_: k=", k, " must be between 0 and the number of selectable units (at most ",
                 total, ")");

  const c10::cuda::CUDAGuard guard(device);
  // Outputs that cannot be written in place go to contiguous temporaries,
  // copied back at the end.
  std::vector<at::Tensor> write(n);
  std::vector<bool> direct(n);
  for (int64_t i = 0; i < n; ++i) {
    direct[i] = o[i].is_contiguous();
    write[i] = direct[i] ? o[i] : at::empty({o[i].numel()}, o[i].options());
  }
  // Inputs that a direct write would clobber before the kernels read them get a copy.
  std::unordered_map<const void*, std::vector<int64_t>> out_by_storage;
  for (int64_t i = 0; i < n; ++i) {
    if (direct[i] && o[i].numel() > 0) out_by_storage[o[i].storage().unsafeGetStorageImpl()].push_back(i);
  }
  auto protect = [&](at::Tensor& t, int64_t idx, bool is_mask) {
    if (!t.defined() || t.numel() == 0) return;
    auto it = out_by_storage.find(t.storage().unsafeGetStorageImpl());
    if (it == out_by_storage.end()) return;
    for (int64_t i : it->second) {
      if (clobbers(o[i], t, is_mask && i == idx)) {
        t = t.clone(at::MemoryFormat::Contiguous);
        return;
      }
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    protect(s[i], i, false);
    protect(m[i], i, true);
    s[i] = s[i].contiguous();
    if (m[i].defined()) m[i] = m[i].contiguous();
  }

  std::vector<fastprune::cuda::KSelectTensor> desc(n);
  for (int64_t i = 0; i < n; ++i) {
    fastprune::cuda::KSelectTensor& d = desc[i];
    d.score = s[i].data_ptr();
    d.mask = m[i].defined() ? m[i].data_ptr() : nullptr;
    d.out = write[i].data_ptr();
    d.numel = s[i].numel();
    d.score_dtype = dtype_code(s[i].scalar_type());
    d.mask_dtype = m[i].defined() ? dtype_code(m[i].scalar_type()) : fastprune::cuda::kBool;
    d.out_dtype = dtype_code(write[i].scalar_type());
    d.reserved = 0;
  }
  // Without masks to exclude, every unit is selectable and k was checked above;
  // otherwise the launcher counts the selectable units on the device.
  const int64_t known = (!exclude_masked || !any_mask) ? total : -1;
  size_t bytes = 0;
  check_launch(fastprune::cuda::kselect_workspace_bytes(desc.data(), static_cast<int>(n), &bytes), "kselect_");
  at::Tensor ws = workspace(bytes, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const fastprune::cuda::KSelectStatus st = fastprune::cuda::kselect_cuda(
      desc.data(), static_cast<int>(n), k, largest, exclude_masked, packed, known, ws.data_ptr(), bytes, stream);
  check_launch(st.error, "kselect_");
  FP_CHECK_VALUE(!st.k_out_of_range, "kselect_: k=", k, " must be between 0 and the number of selectable units (",
                 st.selectable, ")");
  for (int64_t i = 0; i < n; ++i) {
    if (!direct[i]) o[i].copy_(write[i].view(o[i].sizes()));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastprune, CUDA, m) { m.impl("kselect_", &kselect_cuda_op); }

}  // namespace cuda_ops
}  // namespace fastprune
