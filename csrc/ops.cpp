// Op schemas of the fastprune library and the Python extension module.
//
// Kernels register themselves per backend (csrc/cpu/*_cpu.cpp with
// TORCH_LIBRARY_IMPL(fastprune, CPU, m), csrc/cuda/*_cuda.cu with CUDA).
// Autograd formulas and fake (meta) kernels are registered from Python
// (fastprune/ops.py), so that torch.compile can trace the ops.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define FASTPRUNE_STR_(x) #x
#define FASTPRUNE_STR(x) FASTPRUNE_STR_(x)

TORCH_LIBRARY(fastprune, m) {
  m.def(
      "kselect_(Tensor[] scores, Tensor?[] masks, Tensor(a!)[] out, int k, bool largest, "
      "bool exclude_masked, bool packed) -> ()");
  m.def("mask_mul(Tensor input, Tensor mask) -> Tensor");
  m.def("mask_mul_(Tensor(a!)[] inputs, Tensor[] masks) -> ()");
  m.def("apply_packed_mask_(Tensor(a!)[] inputs, Tensor[] packed) -> ()");
  m.def("channel_norms(Tensor t, int dim, float p) -> Tensor");
  m.def("row_kselect(Tensor scores, int k) -> Tensor");
  m.def("nm_select(Tensor scores, int n, int m) -> Tensor");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["extension"] = true;
#ifdef FASTPRUNE_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
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
        "How this extension was built: extension, cuda, openmp, num_threads, torch_version, version.");
}
