// The Python extension module fastprune._C: how it was built (build_info).
//
// The op schemas are defined once, in Python (fastprune/ops/__init__.py,
// SCHEMAS), which registers them whether or not this extension is present.
// The kernels only register implementations for them, per backend:
// csrc/cpu/<op>_cpu.cpp with TORCH_LIBRARY_IMPL(fastprune, CPU, m) and
// csrc/cuda/<op>_wrapper.cpp with TORCH_LIBRARY_IMPL(fastprune, CUDA, m). The
// dispatcher checks each C++ kernel's signature against its schema when both
// are registered, in either order. Fake (meta) kernels are registered from
// Python too, so that torch.compile can trace the ops; autograd formulas are in
// csrc/autograd.cpp (Python registers the same ones when the extension is absent).
//
// It also has direct entry points (kselect_, mask_mul_, channel_norms) that call the same
// ops through the C++ dispatcher. Calling an op as torch.ops.fastprune.<op>
// from Python costs ~3 us before the kernel runs (the Python OpOverload,
// schema-driven conversion of every argument to IValues, boxed dispatch),
// which is more than a small layer's whole selection. The entry points take
// the arguments as Python objects and call the typed dispatcher handle, so
// every dispatch key (autograd, ADInplaceOrView, Python modes, fake and
// functional tensors, backends) still applies; only __torch_function__ (a
// subclass override or a TorchFunctionMode) is not handled here: they return
// "not taken" for it, and the Python wrapper then calls torch.ops itself.
#include "common.h"

#include <torch/extension.h>
#include <torch/version.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#define FASTPRUNE_STR_(x) #x
#define FASTPRUNE_STR(x) FASTPRUNE_STR_(x)

namespace {

#if !defined(FASTPRUNE_WITH_CUDA) && defined(FASTPRUNE_CUDA_FALLBACK_REASON)
// setup.py passes the reason as "x" + hex digits, a token that no compiler
// command line can mangle.
std::string decode_hex_token(const char* token) {
  auto nibble = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
  std::string out;
  for (const char* p = token + 1; p[0] && p[1]; p += 2) out.push_back(static_cast<char>(nibble(p[0]) * 16 + nibble(p[1])));
  return out;
}
#endif

pybind11::dict build_info() {
  pybind11::dict info;
  info["extension"] = true;
#ifdef FASTPRUNE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_fallback_reason"] = pybind11::none();
#else
  info["cuda"] = false;
#ifdef FASTPRUNE_CUDA_FALLBACK_REASON
  info["cuda_fallback_reason"] = decode_hex_token(FASTPRUNE_STR(FASTPRUNE_CUDA_FALLBACK_REASON));
#else
  info["cuda_fallback_reason"] = "built without CUDA kernels";
#endif
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["num_threads"] = at::get_num_threads();
#ifdef FASTPRUNE_TORCH_VERSION
  info["torch_version"] = FASTPRUNE_STR(FASTPRUNE_TORCH_VERSION);
#else
  info["torch_version"] = TORCH_VERSION;
#endif
#ifdef FASTPRUNE_VERSION
  info["version"] = FASTPRUNE_STR(FASTPRUNE_VERSION);
#else
  info["version"] = "unknown";
#endif
  return info;
}

// `obj` as a tensor the direct path may pass on: exactly a Tensor or a
// Parameter (a subclass may override __torch_function__), with no
// TorchFunctionMode active. False for anything else, which the torch.ops path
// then handles (or rejects) as usual.
bool plain_tensor(PyObject* obj, at::Tensor& out) {
  if (!THPVariable_CheckExact(obj) || at::impl::torch_function_mode_enabled()) return false;
  out = THPVariable_Unpack(obj);
  return true;
}

bool tensor_list(const pybind11::list& items, std::vector<at::Tensor>& out) {
  out.resize(items.size());
  for (size_t i = 0; i < out.size(); ++i) {
    if (!plain_tensor(items[i].ptr(), out[i])) return false;
  }
  return true;
}

// torch.ops.fastprune.kselect_ for lists of plain tensors. Returns false, having
// done nothing, when some argument needs the Python path.
bool kselect_direct(const pybind11::list& scores, const pybind11::list& masks, const pybind11::list& out, int64_t k,
                    bool largest, bool exclude_masked, bool packed, std::optional<double> fraction,
                    const std::optional<pybind11::list>& values, const std::optional<pybind11::list>& applied) {
  HANDLE_TH_ERRORS
  std::vector<at::Tensor> s, o, v, ap;
  if (!tensor_list(scores, s) || !tensor_list(out, o)) return false;
  if (values.has_value() && !tensor_list(*values, v)) return false;
  if (applied.has_value() && !tensor_list(*applied, ap)) return false;
  c10::List<std::optional<at::Tensor>> m;
  m.reserve(masks.size());
  for (const auto& item : masks) {
    if (item.is_none()) {
      m.push_back(std::nullopt);
      continue;
    }
    at::Tensor t;
    if (!plain_tensor(item.ptr(), t)) return false;
    m.push_back(std::move(t));
  }
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastprune::kselect_", "")
          .typed<void(at::TensorList, const c10::List<std::optional<at::Tensor>>&, at::TensorList, int64_t, bool,
                      bool, bool, std::optional<double>, std::optional<at::TensorList>,
                      std::optional<at::TensorList>)>();
  {
    pybind11::gil_scoped_release no_gil;
    std::optional<at::TensorList> vl, al;
    if (values.has_value()) vl = at::TensorList(v);
    if (applied.has_value()) al = at::TensorList(ap);
    op.call(s, m, o, k, largest, exclude_masked, packed, fraction, vl, al);
  }
  return true;
  END_HANDLE_TH_ERRORS_PYBIND
}

// torch.ops.fastprune.mask_mul_ for lists of plain tensors; false when not taken.
bool mask_mul__direct(const pybind11::list& inputs, const pybind11::list& masks) {
  HANDLE_TH_ERRORS
  std::vector<at::Tensor> x, m;
  if (!tensor_list(inputs, x) || !tensor_list(masks, m)) return false;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastprune::mask_mul_", "")
                             .typed<void(at::TensorList, at::TensorList)>();
  {
    pybind11::gil_scoped_release no_gil;
    op.call(x, m);
  }
  return true;
  END_HANDLE_TH_ERRORS_PYBIND
}

// torch.ops.fastprune.channel_norms for a plain tensor; None when not taken.
pybind11::object channel_norms_direct(const pybind11::handle& t, int64_t dim, double p) {
  HANDLE_TH_ERRORS
  at::Tensor x;
  if (!plain_tensor(t.ptr(), x)) return pybind11::none();
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastprune::channel_norms", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, double)>();
  at::Tensor result;
  {
    pybind11::gil_scoped_release no_gil;
    result = op.call(x, dim, p);
  }
  return pybind11::reinterpret_steal<pybind11::object>(THPVariable_Wrap(std::move(result)));
  END_HANDLE_TH_ERRORS_PYBIND
}

pybind11::dict kselect_cpu_paths() {
  const auto c = fastprune::kselect_cpu_path_counts();
  pybind11::dict d;
  d["direct"] = c[static_cast<int>(fastprune::KSelectPath::kDirect)];
  d["radix"] = c[static_cast<int>(fastprune::KSelectPath::kRadix)];
  d["sampled"] = c[static_cast<int>(fastprune::KSelectPath::kSampled)];
  d["sampled_missed"] = c[static_cast<int>(fastprune::KSelectPath::kSampledMissed)];
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastprune compiled kernels; the ops live under torch.ops.fastprune";
  m.def("build_info", &build_info,
        "How this extension was built: extension, cuda, cuda_fallback_reason, openmp, num_threads, "
        "torch_version, version.");
  m.def("kselect_direct", &kselect_direct, pybind11::arg("scores"), pybind11::arg("masks"), pybind11::arg("out"),
        pybind11::arg("k"), pybind11::arg("largest"), pybind11::arg("exclude_masked"), pybind11::arg("packed"),
        pybind11::arg("fraction"), pybind11::arg("values") = pybind11::none(),
        pybind11::arg("applied") = pybind11::none(),
        "torch.ops.fastprune.kselect_ through the C++ dispatcher; False (nothing done) when an argument is not "
        "a plain tensor or a TorchFunctionMode is active.");
  m.def("mask_mul__direct", &mask_mul__direct,
        "torch.ops.fastprune.mask_mul_ through the C++ dispatcher; False (nothing done) when an argument is not "
        "a plain tensor or a TorchFunctionMode is active.");
  m.def("kselect_cpu_paths", &kselect_cpu_paths,
        "How many CPU kselect_ calls of this process took each path: direct, radix, sampled (one pass over a "
        "sampled bracket), sampled_missed (the bracket missed; radix after it).");
  m.def("channel_norms_direct", &channel_norms_direct,
        "torch.ops.fastprune.channel_norms through the C++ dispatcher; None when t is not a plain tensor or a "
        "TorchFunctionMode is active.");
}
