// The torch-facing parts that the CPU (csrc/cpu/*.cpp) and CUDA
// (csrc/cuda/*_wrapper.cpp) backends of each op have in common: argument checks
// (so both devices raise the same errors with the same messages), the views the
// kernels work on, and kselect_'s handling of outputs that alias its inputs.
//
// Only the device check differs between backends. It is passed in as a
// callable check_device(tensor, op, name, index): check_cpu for the CPU, and
// check_cuda against the call's device for CUDA (cuda::OnDevice, csrc/cuda/wrapper_helpers.h).
#pragma once

#include "common.h"

#include <ATen/ExpandUtils.h>
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <optional>
#include <unordered_map>
#include <vector>

namespace fastprune {

struct CheckCpu {
  void operator()(const at::Tensor& t, const char* op, const char* name, int64_t index = -1) const {
    check_cpu(t, op, name, index);
  }
};

// ---------------------------------------------------------------------------
// channel_norms

// Checks t, dim and p; returns dim in [0, t.dim()).
template <typename CheckDevice>
int64_t check_channel_norms_args(const at::Tensor& t, int64_t dim, double p, const CheckDevice& check_device) {
  check_device(t, "channel_norms", "t", -1);
  check_dtype(t, "channel_norms", "t");
  FP_CHECK_VALUE(t.dim() > 0, "channel_norms: t must have at least one dimension");
  const int64_t nd = t.dim();
  FP_CHECK_INDEX(dim >= -nd && dim < nd, "channel_norms: dim=", dim, " is out of range for t with ", nd,
                 " dimensions (expected to be in range of [", -nd, ", ", nd - 1, "])");
  if (dim < 0) dim += nd;
  FP_CHECK_VALUE(!std::isnan(p), "channel_norms: p must not be NaN");
  return dim;
}

// t seen as [outer, C, inner] around `dim`, and the output (fp64 for fp64
// input, fp32 otherwise). `done`: out already holds the result (no channels,
// or nothing in them, whose norm is 0), and the kernel must not run.
struct ChannelNormsView {
  int64_t outer = 1, C = 0, inner = 1;
  at::Tensor out;
  bool done = false;
};

inline ChannelNormsView channel_norms_view(const at::Tensor& t, int64_t dim) {
  ChannelNormsView v;
  const at::ScalarType acc_type = t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  v.C = t.size(dim);
  for (int64_t d = 0; d < dim; ++d) v.outer *= t.size(d);
  for (int64_t d = dim + 1; d < t.dim(); ++d) v.inner *= t.size(d);
  v.out = at::empty({v.C}, t.options().dtype(acc_type));
  if (v.C == 0) {
    v.done = true;
  } else if (v.outer == 0 || v.inner == 0) {
    v.out.zero_();
    v.done = true;
  }
  return v;
}

// ---------------------------------------------------------------------------
// mask_mul, mask_mul_, apply_packed_mask_

// Same shape, contiguous input and dtypes the kernels read: the fused path.
// Everything else (broadcast masks, strided inputs) is handed to ATen, which
// gives the reference's exact results and errors.
inline bool mask_mul_fast_pair(const at::Tensor& input, const at::Tensor& mask) {
  return input.sizes() == mask.sizes() && input.is_contiguous() && is_supported_dtype(input.scalar_type()) &&
         is_supported_dtype(mask.scalar_type());
}

// Checks mask_mul_'s arguments; returns which pairs take the fused path.
template <typename CheckDevice>
std::vector<bool> check_mask_mul__args(at::TensorList inputs, at::TensorList masks, const CheckDevice& check_device) {
  const int64_t n = static_cast<int64_t>(inputs.size());
  FP_CHECK_VALUE(static_cast<int64_t>(masks.size()) == n, "mask_mul_: inputs and masks must have the same length, got ",
                 n, " and ", masks.size());
  std::vector<bool> fast(n);
  for (int64_t i = 0; i < n; ++i) {
    check_device(inputs[i], "mask_mul_", "inputs", i);
    check_device(masks[i], "mask_mul_", "masks", i);
    FP_CHECK_VALUE(at::is_expandable_to(masks[i].sizes(), inputs[i].sizes()), "mask_mul_: masks[", i,
                   "] of shape ", masks[i].sizes(), " cannot be broadcast to inputs[", i, "] of shape ",
                   inputs[i].sizes());
    fast[i] = mask_mul_fast_pair(inputs[i], masks[i]);
  }
  return fast;
}

template <typename CheckDevice>
void check_apply_packed_mask__args(at::TensorList inputs, at::TensorList packed, const CheckDevice& check_device) {
  const int64_t n = static_cast<int64_t>(inputs.size());
  FP_CHECK_VALUE(static_cast<int64_t>(packed.size()) == n,
                 "apply_packed_mask_: inputs and packed must have the same length, got ", n, " and ", packed.size());
  for (int64_t i = 0; i < n; ++i) {
    check_device(inputs[i], "apply_packed_mask_", "inputs", i);
    check_device(packed[i], "apply_packed_mask_", "packed", i);
    const int64_t es = inputs[i].element_size();
    FP_CHECK_TYPE(!inputs[i].is_quantized() && (es == 1 || es == 2 || es == 4 || es == 8 || es == 16),
                  "apply_packed_mask_: inputs[", i, "] has unsupported dtype ", inputs[i].scalar_type());
    FP_CHECK_TYPE(packed[i].scalar_type() == at::kByte, "apply_packed_mask_: packed[", i, "] must be uint8, got ",
                  packed[i].scalar_type());
    const int64_t want = packed_numel(inputs[i].numel());
    FP_CHECK_VALUE(packed[i].numel() == want, "apply_packed_mask_: packed[", i, "] must have ", want,
                   " bytes for inputs[", i, "] of ", inputs[i].numel(), " elements, got ", packed[i].numel());
  }
}

// apply_packed_mask_ zeroes contiguous data (each input itself when it is
// contiguous, otherwise a contiguous copy that copy_back() writes into it)
// by contiguous bits.
struct PackedMaskViews {
  std::vector<at::Tensor> xs, ps;

  void copy_back(at::TensorList inputs) const {
    for (size_t i = 0; i < xs.size(); ++i) {
      if (!xs[i].is_same(inputs[i])) inputs[i].copy_(xs[i]);
    }
  }
};

inline PackedMaskViews packed_mask_views(at::TensorList inputs, at::TensorList packed) {
  const size_t n = inputs.size();
  PackedMaskViews v;
  v.xs.resize(n);
  v.ps.resize(n);
  for (size_t i = 0; i < n; ++i) {
    v.xs[i] = inputs[i].is_contiguous() ? inputs[i] : inputs[i].contiguous();
    v.ps[i] = packed[i].contiguous();
  }
  return v;
}

// ---------------------------------------------------------------------------
// kselect_

// The checked arguments: masks[i] is undefined where no mask was given.
struct KSelectArgs {
  std::vector<at::Tensor> scores, masks, out;
  // Optional: applied[i] = values[i] * out[i] (in values[i]'s dtype); empty when not given.
  std::vector<at::Tensor> values, applied;
  int64_t total = 0;      // units over all scores
  bool any_mask = false;  // some masks[i] given
  // Units to select; -1 when given as `fraction` of selectable units that only
  // the kernel can count (masks to exclude): it resolves k with k_from_fraction.
  int64_t k = 0;
  double fraction = -1.0;  // -1: none given
};

// k for a fraction of `selectable` units: round half to even, as Python's
// round() in torch's amounts (the product is the same double in both).
inline int64_t k_from_fraction(double fraction, int64_t selectable) {
  return static_cast<int64_t>(std::nearbyint(fraction * static_cast<double>(selectable)));
}

// Checks kselect_'s arguments. With no tensors (k must then be 0) the returned
// lists are empty and there is nothing to do.
template <typename CheckDevice>
KSelectArgs check_kselect_args(at::TensorList scores, const c10::List<std::optional<at::Tensor>>& masks,
                               at::TensorList out, int64_t k, bool exclude_masked, bool packed,
                               std::optional<double> fraction, std::optional<at::TensorList> values,
                               std::optional<at::TensorList> applied, const CheckDevice& check_device) {
  const int64_t n = static_cast<int64_t>(scores.size());
  FP_CHECK_VALUE(static_cast<int64_t>(masks.size()) == n && static_cast<int64_t>(out.size()) == n,
                 "kselect_: scores, masks and out must have the same length, got ", n, ", ", masks.size(), " and ",
                 out.size());
  FP_CHECK_VALUE(values.has_value() == applied.has_value(), "kselect_: give both values and applied, or neither");
  if (values.has_value()) {
    FP_CHECK_VALUE(static_cast<int64_t>(values->size()) == n && static_cast<int64_t>(applied->size()) == n,
                   "kselect_: values and applied must have the length of scores (", n, "), got ", values->size(),
                   " and ", applied->size());
  }
  KSelectArgs a;
  if (fraction.has_value()) {
    FP_CHECK_VALUE(k == -1, "kselect_: k=", k, " must be -1 when fraction is given");
    FP_CHECK_VALUE(*fraction >= 0.0 && *fraction <= 1.0, "kselect_: fraction=", *fraction,
                   " must be between 0 and 1");  // NaN fails both
    a.fraction = *fraction;
    if (n == 0) return a;
  } else {
    FP_CHECK_VALUE(k >= 0, "kselect_: k=", k, " must be between 0 and the number of selectable units");
    a.k = k;
    if (n == 0) {
      FP_CHECK_VALUE(k == 0, "kselect_: k=", k, " must be between 0 and the number of selectable units (0)");
      return a;
    }
  }
  std::vector<at::Tensor>& s = a.scores;
  std::vector<at::Tensor>& m = a.masks;
  std::vector<at::Tensor>& o = a.out;
  s.resize(n);
  m.resize(n);
  o.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    s[i] = scores[i];
    check_device(s[i], "kselect_", "scores", i);
    check_dtype(s[i], "kselect_", "scores", i);
    const int64_t numel = s[i].numel();
    const int64_t want = packed ? packed_numel(numel) : numel;
    const char* unit = packed ? " bytes (packed)" : " elements";
    // A given mask and the output: same device, dtype and unit count rules.
    auto check_mask_or_out = [&](const at::Tensor& t, const char* name) {
      check_device(t, "kselect_", name, i);
      if (packed) {
        FP_CHECK_TYPE(t.scalar_type() == at::kByte, "kselect_: ", name, "[", i, "] must be uint8 in packed mode, got ",
                      t.scalar_type());
      } else {
        check_dtype(t, "kselect_", name, i);
      }
      FP_CHECK_VALUE(t.numel() == want, "kselect_: ", name, "[", i, "] must have ", want, unit, ", got ", t.numel());
    };
    const std::optional<at::Tensor> mi = masks[i];
    if (mi.has_value() && mi->defined()) {
      m[i] = *mi;
      check_mask_or_out(m[i], "masks");
    }
    o[i] = out[i];
    check_mask_or_out(o[i], "out");
  }
  if (values.has_value()) {
    a.values.resize(n);
    a.applied.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const at::Tensor& v = (*values)[i];
      const at::Tensor& ap = (*applied)[i];
      check_device(v, "kselect_", "values", i);
      check_device(ap, "kselect_", "applied", i);
      check_dtype(v, "kselect_", "values", i);
      FP_CHECK_VALUE(v.numel() == s[i].numel(), "kselect_: values[", i, "] must have ", s[i].numel(),
                     " elements, got ", v.numel());
      FP_CHECK_TYPE(ap.scalar_type() == v.scalar_type(), "kselect_: applied[", i, "] must have the dtype of values[",
                    i, "] (", v.scalar_type(), "), got ", ap.scalar_type());
      FP_CHECK_VALUE(ap.numel() == v.numel(), "kselect_: applied[", i, "] must have ", v.numel(), " elements, got ",
                     ap.numel());
      a.values[i] = v;
      a.applied[i] = ap;
    }
    // applied is written while the inputs are still read: it may not share memory with any of them.
    for (int64_t i = 0; i < n; ++i) {
      if (a.applied[i].numel() == 0) continue;
      auto overlaps = [&](const at::Tensor& t) {
        return t.defined() && t.numel() > 0 && at::get_overlap_status(a.applied[i], t) != at::MemOverlapStatus::No;
      };
      for (int64_t j = 0; j < n; ++j) {
        FP_CHECK_VALUE(!overlaps(s[j]) && !overlaps(m[j]) && !overlaps(o[j]) && !overlaps(a.values[j]) &&
                           (j == i || !overlaps(a.applied[j])),
                       "kselect_: applied[", i, "] shares memory with another argument");
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    a.total += s[i].numel();
    a.any_mask = a.any_mask || m[i].defined();
  }
  if (a.fraction >= 0.0) {
    // Every unit is selectable unless masks exclude some: then only the kernel's
    // first pass over the data counts them.
    a.k = (a.any_mask && exclude_masked) ? -1 : k_from_fraction(a.fraction, a.total);
  } else {
    FP_CHECK_VALUE(k <= a.total, "kselect_: k=", k,
                   " must be between 0 and the number of selectable units (at most ", a.total, ")");
  }
  return a;
}

// Would writing `out` directly change what a later read of `t` sees? out[i]
// aliasing masks[i] exactly is fine: each unit's mask is read before that unit
// of out is written.
inline bool kselect_clobbers(const at::Tensor& out, const at::Tensor& t, bool same_index) {
  const auto status = at::get_overlap_status(out, t);
  if (status == at::MemOverlapStatus::No) return false;
  return !(same_index && status == at::MemOverlapStatus::Full && out.is_contiguous() && t.is_contiguous() &&
           out.data_ptr() == t.data_ptr() && out.element_size() == t.element_size() && out.numel() == t.numel());
}

// Where the kernels write: out[i] itself when it is contiguous, otherwise a
// contiguous temporary that copy_back() copies into out[i] at the end.
struct KSelectWrites {
  std::vector<at::Tensor> write;
  std::vector<bool> direct;
  // The same for applied (empty when not given), and the contiguous values.
  std::vector<at::Tensor> write_applied, values;
  std::vector<bool> direct_applied;

  void copy_back(const std::vector<at::Tensor>& out, const std::vector<at::Tensor>& applied = {}) const {
    for (size_t i = 0; i < out.size(); ++i) {
      if (!direct[i]) out[i].copy_(write[i].view(out[i].sizes()));
    }
    for (size_t i = 0; i < applied.size(); ++i) {
      if (!direct_applied[i]) applied[i].copy_(write_applied[i].view(applied[i].sizes()));
    }
  }
};

// Picks where each output is written, then makes a.scores and a.masks
// contiguous, first cloning any input that a direct write would clobber before
// the kernels read it. Runs on the tensors' device (the caller's guard).
inline KSelectWrites stage_kselect(KSelectArgs& a) {
  const std::vector<at::Tensor>& o = a.out;
  const int64_t n = static_cast<int64_t>(o.size());
  KSelectWrites w;
  w.write.resize(n);
  w.direct.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    w.direct[i] = o[i].is_contiguous();
    w.write[i] = w.direct[i] ? o[i] : at::empty({o[i].numel()}, o[i].options());
  }
  if (!a.applied.empty()) {
    w.write_applied.resize(n);
    w.direct_applied.resize(n);
    w.values.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const at::Tensor& ap = a.applied[i];
      w.direct_applied[i] = ap.is_contiguous();
      w.write_applied[i] = w.direct_applied[i] ? ap : at::empty({ap.numel()}, ap.options());
      w.values[i] = a.values[i].contiguous();
    }
  }
  std::unordered_map<const void*, std::vector<int64_t>> out_by_storage;
  for (int64_t i = 0; i < n; ++i) {
    if (w.direct[i] && o[i].numel() > 0) out_by_storage[o[i].storage().unsafeGetStorageImpl()].push_back(i);
  }
  auto protect = [&](at::Tensor& t, int64_t idx, bool is_mask) {
    if (!t.defined() || t.numel() == 0) return;
    auto it = out_by_storage.find(t.storage().unsafeGetStorageImpl());
    if (it == out_by_storage.end()) return;
    for (int64_t i : it->second) {
      if (kselect_clobbers(o[i], t, is_mask && i == idx)) {
        t = t.clone(at::MemoryFormat::Contiguous);
        return;
      }
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    protect(a.scores[i], i, false);
    protect(a.masks[i], i, true);
    a.scores[i] = a.scores[i].contiguous();
    if (a.masks[i].defined()) a.masks[i] = a.masks[i].contiguous();
  }
  return w;
}

}  // namespace fastprune
