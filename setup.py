"""Build script for fastprune's compiled extension ``fastprune._C``.

Always build against the torch that is already installed::

    pip install --no-build-isolation .        # or -e . for an editable install

(torch is deliberately not a build requirement: an isolated build would compile
against a different torch than the one the extension is loaded into.)

What gets built
  * a CUDAExtension (csrc/ops.cpp, csrc/cpu/*.cpp, csrc/cuda/*.cu, csrc/cuda/*.cpp) when
    torch was built with CUDA and nvcc is found, or when FORCE_CUDA=1;
  * a CppExtension (csrc/ops.cpp, csrc/cpu/*.cpp) otherwise, or when FORCE_ONLY_CPU=1;
  * nothing, with a warning, when torch cannot be imported or compiling fails:
    the package then installs as pure Python and runs on its torch fallback.
Environment: FORCE_CUDA, FORCE_ONLY_CPU, TORCH_CUDA_ARCH_LIST (default "8.0;9.0"),
MAX_JOBS (parallel compile jobs, used by ninja), CC/CXX.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"fastprune setup: {msg}", file=sys.stderr, flush=True)


def read_version():
    with open(os.path.join(ROOT, "fastprune", "_version.py"), encoding="utf-8") as f:
        match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", f.read())
    return match.group(1) if match else "0.0.0"


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def rel_sources(*patterns):
    files = []
    for pattern in patterns:
        files.extend(sorted(glob.glob(os.path.join(ROOT, pattern))))
    return [os.path.relpath(f, ROOT) for f in files]


def openmp_flags():
    """-fopenmp when the C++ compiler accepts it (ATen's parallel_for needs _OPENMP)."""
    cxx = os.environ.get("CXX", "c++")
    if sys.platform == "win32":
        return ["/openmp"], []
    src = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.cpp")
        with open(path, "w") as f:
            f.write(src)
        try:
            res = subprocess.run(
                [cxx, "-fopenmp", path, "-o", os.path.join(tmp, "probe")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
            )
            ok = res.returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    if ok:
        return ["-fopenmp"], ["-fopenmp"]
    log(f"{cxx} does not accept -fopenmp; kernels will run single-threaded")
    return [], []


def use_cuda(torch, cuda_home):
    """(build CUDA?, reason)"""
    if env_flag("FORCE_ONLY_CPU"):
        return False, "FORCE_ONLY_CPU=1"
    if torch.version.cuda is None:
        if env_flag("FORCE_CUDA"):
            log("FORCE_CUDA=1 ignored: the installed torch has no CUDA support")
        return False, f"torch {torch.__version__} was built without CUDA"
    if env_flag("FORCE_CUDA"):
        return True, "FORCE_CUDA=1"
    if cuda_home is None or shutil.which("nvcc") is None and not os.path.exists(
        os.path.join(cuda_home, "bin", "nvcc")
    ):
        return False, "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    return True, f"torch {torch.__version__} has CUDA {torch.version.cuda} and nvcc is at {cuda_home}"


def make_extensions():
    """([extension], cmdclass) or ([], {}) when torch is not importable."""
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch missing or broken: pure-Python install
        log(f"WARNING: cannot import torch ({exc}); installing without the compiled extension")
        return [], {}

    version = read_version()
    with_cuda, why = use_cuda(torch, cpp_extension.CUDA_HOME)
    sources = rel_sources("csrc/ops.cpp", "csrc/cpu/*.cpp")
    cuda_sources = rel_sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp") if with_cuda else []
    # csrc/cuda/test_*.cu are standalone (torch-free) kernel tests with their own main().
    cuda_sources = [f for f in cuda_sources if not os.path.basename(f).startswith("test_")]
    omp_compile, omp_link = openmp_flags()
    macros = [
        ("FASTPRUNE_VERSION", version),
        ("FASTPRUNE_TORCH_VERSION", torch.__version__),
    ]
    # The language standard is left to torch's BuildExtension (it adds what its headers need).
    # -g0: no debug info (Python's default CFLAGS carry -g), which makes the templated kernels compile faster.
    cxx_flags = (["/O2"] if sys.platform == "win32" else ["-O3", "-g0"]) + omp_compile
    extra_compile_args = {"cxx": cxx_flags}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        if cuda_sources:
            macros.append(("FASTPRUNE_WITH_CUDA", "1"))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        if omp_compile:
            extra_compile_args["nvcc"] += ["-Xcompiler", omp_compile[0]]
        log(
            f"building CUDA extension ({why}); arch list {os.environ['TORCH_CUDA_ARCH_LIST']}; "
            f"{len(cuda_sources)} CUDA source file(s)"
        )
        ext_cls = cpp_extension.CUDAExtension
    else:
        log(f"building CPU extension ({why})")
        ext_cls = cpp_extension.CppExtension
    ext = ext_cls(
        name="fastprune._C",
        sources=sources + cuda_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=omp_link,
    )

    # ninja when available (BuildExtension falls back to setuptools' compiler otherwise); MAX_JOBS sets its jobs.
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class OptionalBuildExt(base):
        """Build the extension, but never fail the install because of it."""

        failed = False

        def run(self):
            try:
                super().run()
            except BaseException as exc:  # compiler missing/broken, ninja errors, ...
                if isinstance(exc, KeyboardInterrupt):
                    raise
                OptionalBuildExt.failed = True
                self.extensions = []
                log(
                    "WARNING: building the compiled extension fastprune._C failed "
                    f"({type(exc).__name__}: {exc}). fastprune will be installed without it and "
                    "use its pure-torch fallback (slower). Fix the compiler/toolchain and reinstall "
                    "with `pip install --no-build-isolation -v .` to see the full build log."
                )

        def get_outputs(self):
            return [] if OptionalBuildExt.failed else super().get_outputs()

        def get_output_mapping(self):
            if OptionalBuildExt.failed:
                return {}
            return super().get_output_mapping()

    return [ext], {"build_ext": OptionalBuildExt}


def long_description():
    path = os.path.join(ROOT, "README.md")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    return "torch.nn.utils.prune on C++/CUDA kernels."


ext_modules, cmdclass = make_extensions()

setup(
    version=read_version(),
    packages=find_packages(include=["fastprune", "fastprune.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    long_description=long_description(),
    long_description_content_type="text/markdown",
    zip_safe=False,
)
