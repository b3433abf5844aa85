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
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastprune compiled kernels; the ops live under torch.ops.fastprune";
  m.def("build_info", &build_info,
        "How this extension was built: extension, cuda, cuda_fallback_reason, openmp, num_threads, "
        "torch_version, version.");
}
