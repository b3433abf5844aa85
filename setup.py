"""Build script for fastprune's compiled extension ``fastprune._C``.

Always build against the torch that is already installed::

    pip install --no-build-isolation .        # or -e . for an editable install

(torch is deliberately not a build requirement: an isolated build would compile
against a different torch than the one the extension is loaded into.)

What gets built
  * a CUDAExtension (csrc/ops.cpp, csrc/autograd.cpp, csrc/cpu/*.cpp, csrc/cuda/*.cu, csrc/cuda/*_wrapper.cpp)
    when torch was built with CUDA and a CUDA toolkit is found, or when FORCE_CUDA=1;
  * a CppExtension (csrc/ops.cpp, csrc/autograd.cpp, csrc/cpu/*.cpp) otherwise, or when FORCE_ONLY_CPU=1;
  * when the CUDA compile fails: a build error with FORCE_CUDA=1, else (with a loud
    warning) the CppExtension, which then reports why in build_info()["cuda_fallback_reason"];
  * nothing, with a warning, when torch cannot be imported or no compiler works:
    the package then installs as pure Python and runs on its torch fallback.
The CUDA toolkit is CUDA_HOME or CUDA_PATH when set, else the toolkit that the nvcc on
PATH runs (followed through symlinks and wrapper scripts), else /usr/local/cuda.
Environment: FORCE_CUDA, FORCE_ONLY_CPU, TORCH_CUDA_ARCH_LIST (unset: the architectures of the
visible GPUs, as torch's extension builder picks them; with no GPU visible "8.0;9.0"),
MAX_JOBS (parallel compile jobs, used by ninja), CUDA_HOME/CUDA_PATH, CC/CXX.
Before compiling it prints what it builds (C++ only or CUDA, for which architectures, from how
many sources) and that it takes minutes, to the terminal as well when pip hides the build output.
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


def warn_loudly(msg):
    bar = "!" * 78
    print(f"\n{bar}\nfastprune setup: WARNING: {msg}\n{bar}\n", file=sys.stderr, flush=True)


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


def check_unique_stems(sources):
    """torch's extension builder names each object after its file's stem: two sources with one
    stem (kselect_cuda.cpp and kselect_cuda.cu) make ninja fail with "multiple rules generate"."""
    seen = {}
    for src in sources:
        stem = os.path.splitext(os.path.basename(src))[0]
        if stem in seen:
            raise RuntimeError(f"fastprune setup: {seen[stem]} and {src} would compile to the same object file")
        seen[stem] = src


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


def is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime_api.h"))


def toolkit_of_nvcc(nvcc):
    """The toolkit directory that this nvcc really runs from, or None.

    nvcc may be a symlink or a wrapper script (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``),
    in which case its own directory's parent is not the toolkit. nvcc's dry run
    prints the directory of the real binary as ``_HERE_``.
    """
    real = os.path.realpath(nvcc)
    home = os.path.dirname(os.path.dirname(real))
    if is_toolkit(home):
        return home
    try:
        res = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ _HERE_=(.+)$", res.stdout, re.MULTILINE)
    if match:
        home = os.path.dirname(os.path.realpath(match.group(1).strip()))
        if is_toolkit(home):
            return home
    return None


def find_cuda_toolkit():
    """(toolkit directory or None, how it was found)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value:
            if is_toolkit(value):
                return value, f"${var}"
            return None, f"${var}={value} has no include/cuda_runtime_api.h"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = toolkit_of_nvcc(nvcc)
        if home:
            return home, f"the toolkit that {nvcc} runs"
    if is_toolkit("/usr/local/cuda"):
        return "/usr/local/cuda", "the default /usr/local/cuda"
    where = f"nvcc on PATH is {nvcc}, whose toolkit was not found" if nvcc else "no nvcc on PATH"
    return None, f"no CUDA toolkit found ({where}; set CUDA_HOME)"


def cuda_decision(torch):
    """(build CUDA?, why). With FORCE_CUDA=1, anything that prevents a CUDA build is an error.

    Runs before torch.utils.cpp_extension is imported: that module fixes its toolkit at
    import time from CUDA_HOME, else from the nvcc on PATH (wrong for a wrapper script).
    """
    force = env_flag("FORCE_CUDA")
    if env_flag("FORCE_ONLY_CPU"):
        if force:
            raise RuntimeError("fastprune setup: FORCE_CUDA=1 and FORCE_ONLY_CPU=1 contradict each other")
        return False, "FORCE_ONLY_CPU=1"
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} was built without CUDA"
        if force:
            raise RuntimeError(f"fastprune setup: FORCE_CUDA=1, but {why}; install a CUDA build of torch")
        return False, why
    home, how = find_cuda_toolkit()
    if home is None:
        if force:
            raise RuntimeError(f"fastprune setup: FORCE_CUDA=1, but {how}")
        return False, how
    os.environ["CUDA_HOME"] = home
    log(f"CUDA toolkit: {home} ({how})")
    why = "FORCE_CUDA=1" if force else f"torch {torch.__version__} has CUDA {torch.version.cuda}"
    return True, why


DEFAULT_CUDA_ARCHS = "8.0;9.0"  # A100 and H100/H200: used when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset


def visible_capabilities(torch):
    """([(major, minor) of each visible GPU], highest (major, minor) this torch was built for, how found).

    Empty when no GPU is visible or CUDA cannot be queried (a build machine without one).
    """
    try:
        if not torch.cuda.is_available():
            return [], None, "no GPU is visible"
        caps = [tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
        sms = [int("".join(re.findall(r"\d+", a.split("_", 1)[1]))) for a in torch.cuda.get_arch_list() if "sm_" in a]
    except Exception as exc:  # a driver that does not match, no driver at all...
        return [], None, f"the GPUs cannot be queried ({type(exc).__name__}: {exc})"
    max_supported = max(((sm // 10, sm % 10) for sm in sms), default=None)
    return caps, max_supported, f"{len(caps)} visible GPU(s)"


def choose_cuda_archs(env_value, capabilities, max_supported=None):
    """(the TORCH_CUDA_ARCH_LIST to build for, why).

    The user's TORCH_CUDA_ARCH_LIST wins. Unset (or "native"), the visible GPUs decide, as in
    torch's extension builder: each one's compute capability, clamped to the highest this torch
    (and so its nvcc) supports, once each, in numeric order, the last with +PTX. No GPU visible:
    DEFAULT_CUDA_ARCHS.
    """
    value = (env_value or "").strip()
    if value and value != "native":
        return value, "set by TORCH_CUDA_ARCH_LIST"
    if capabilities:
        archs = []
        for cap in capabilities:
            cap = tuple(int(c) for c in cap)
            if max_supported is not None:
                cap = min(cap, tuple(max_supported))
            arch = f"{cap[0]}.{cap[1]}"
            if arch not in archs:
                archs.append(arch)
        archs.sort(key=lambda a: tuple(int(x) for x in a.split(".")))
        archs[-1] += "+PTX"
        return ";".join(archs), (
            f"the visible GPU(s), as torch's extension builder does, since TORCH_CUDA_ARCH_LIST is "
            f"{'native' if value else 'unset'}"
        )
    if value == "native":
        return DEFAULT_CUDA_ARCHS, "the default: TORCH_CUDA_ARCH_LIST=native but no GPU is visible"
    return DEFAULT_CUDA_ARCHS, "the default (no GPU visible and TORCH_CUDA_ARCH_LIST unset)"


def build_summary(with_cuda, why, n_cpp, n_cuda=0, archs=None, arch_why=None, max_jobs=None):
    """The line printed before compiling: what is built, from how many sources, and roughly how long."""
    jobs = f"MAX_JOBS={max_jobs}" if max_jobs else "MAX_JOBS unset (ninja picks the job count)"
    if not with_cuda:
        return (
            f"building the C++ CPU extension only, no CUDA kernels ({why}): {n_cpp} C++ source files, {jobs}. "
            "This takes a few minutes (about 3 on 2 cores); pip install -v shows the compiler output."
        )
    count = len([a for a in archs.split(";") if a.strip()]) if archs else 0
    return (
        f"building the CUDA extension ({why}) for {count} architecture{'s' if count != 1 else ''} "
        f"{archs} ({arch_why}): {n_cpp} C++ and {n_cuda} CUDA source files, {jobs}. This takes many "
        "minutes (about 14 on 2 cores for two architectures; each architecture adds about as much CUDA "
        "compile time again); pip install -v shows the compiler output."
    )


def announce_terminal(msg):
    """``msg`` on the terminal, for when pip captures the build output (it shows none of it without -v)."""
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(f"fastprune setup: {msg}\n")
    except OSError:  # no controlling terminal (CI, containers): the log line is all
        pass


def hex_macro(text):
    """A string as an identifier token (x + hex digits) that survives any compiler command line;
    csrc/ops.cpp decodes it."""
    if len(text) > 500:
        text = text[:497] + "..."
    return "x" + text.encode("utf-8", "replace").hex()


def make_extensions():
    """([extension], cmdclass) or ([], {}) when torch is not importable."""
    try:
        import torch
    except Exception as exc:  # torch missing or broken: pure-Python install
        log(f"WARNING: cannot import torch ({exc}); installing without the compiled extension")
        return [], {}
    with_cuda, why = cuda_decision(torch)
    from torch.utils import cpp_extension

    if with_cuda and os.path.realpath(cpp_extension.CUDA_HOME or "") != os.path.realpath(os.environ["CUDA_HOME"]):
        # imported earlier by someone else: point its module global at our toolkit too
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    version = read_version()
    cpu_sources = rel_sources("csrc/ops.cpp", "csrc/autograd.cpp", "csrc/cpu/*.cpp")
    cuda_sources = rel_sources("csrc/cuda/*.cu", "csrc/cuda/*_wrapper.cpp")
    omp_compile, omp_link = openmp_flags()
    # The language standard is left to torch's BuildExtension (it adds what its headers need).
    # -g0: no debug info (Python's default CFLAGS carry -g), which makes the templated kernels compile faster.
    cxx_flags = (["/O2"] if sys.platform == "win32" else ["-O3", "-g0"]) + omp_compile
    base_macros = [("FASTPRUNE_VERSION", version), ("FASTPRUNE_TORCH_VERSION", torch.__version__)]

    def cpu_extension(cuda_fallback_reason):
        sources = cpu_sources
        check_unique_stems(sources)
        return cpp_extension.CppExtension(
            name="fastprune._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=base_macros + [("FASTPRUNE_CUDA_FALLBACK_REASON", hex_macro(cuda_fallback_reason))],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=omp_link,
        )

    def cuda_extension():
        sources = cpu_sources + cuda_sources
        check_unique_stems(sources)
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        if omp_compile:
            nvcc_flags += ["-Xcompiler", omp_compile[0]]
        return cpp_extension.CUDAExtension(
            name="fastprune._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=base_macros + [("FASTPRUNE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=omp_link,
        )

    max_jobs = os.environ.get("MAX_JOBS")
    if with_cuda:
        env_archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
        caps, max_supported, found = ([], None, "") if (env_archs or "").strip() not in ("", "native") else \
            visible_capabilities(torch)
        archs, arch_why = choose_cuda_archs(env_archs, caps, max_supported)
        if found:
            arch_why += f"; {found}"
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # what torch's BuildExtension reads
        summary = build_summary(True, why, len(cpu_sources), len(cuda_sources), archs, arch_why, max_jobs)
        ext = cuda_extension()
    else:
        summary = build_summary(False, why, len(cpu_sources), max_jobs=max_jobs)
        ext = cpu_extension(why)
    # pip runs this file for its metadata hooks too: the plan is logged each time, and
    # announced on the terminal once, when the compile starts.
    log(summary)

    # ninja when available (BuildExtension falls back to setuptools' compiler otherwise); MAX_JOBS sets its jobs.
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)
    force_cuda = env_flag("FORCE_CUDA")

    class FallbackBuildExt(base):
        """CUDA extension, else (not forced) the CPU extension, else no extension at all."""

        failed = False

        def _attempt(self, extension):
            if extension is not ext:
                # setuptools finalised the original extension (its file name, stub flags...):
                # the replacement builds the same module, so it takes those over.
                for key, value in vars(ext).items():
                    if key.startswith("_") and not hasattr(extension, key):
                        setattr(extension, key, value)
                for key, value in list(getattr(self, "ext_map", {}).items()):
                    if value is ext:
                        self.ext_map[key] = extension
            self.extensions = [extension]
            self.distribution.ext_modules = [extension]
            # run() replaces the compiler option with a compiler object; a retry starts from the option
            self.compiler = self._compiler_option
            super().run()

        def run(self):
            self._compiler_option = self.compiler
            if not sys.stderr.isatty():
                announce_terminal(summary)
            try:
                self._attempt(ext)
                return
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # compiler missing/broken, ninja errors, ...
                error = f"{type(exc).__name__}: {exc}"
            if with_cuda:
                if force_cuda:
                    raise RuntimeError(
                        f"fastprune setup: FORCE_CUDA=1 and the CUDA extension failed to build ({error}); "
                        "see the compiler output above (pip install -v shows it)"
                    )
                reason = f"the CUDA build failed ({error}); see the build log (pip install -v)"
                warn_loudly(
                    f"{reason}. Building the C++ CPU extension instead: CUDA tensors will use the pure-torch "
                    "fallback. Set FORCE_CUDA=1 to make this an error."
                )
                try:
                    self._attempt(cpu_extension(reason))
                    return
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    error = f"{type(exc).__name__}: {exc}"
            FallbackBuildExt.failed = True
            self.extensions = []
            warn_loudly(
                f"building the compiled extension fastprune._C failed ({error}). fastprune will be installed "
                "without it and use its pure-torch fallback (slower). Fix the compiler/toolchain and reinstall "
                "with `pip install --no-build-isolation -v .` to see the full build log."
            )

        def get_outputs(self):
            return [] if FallbackBuildExt.failed else super().get_outputs()

        def get_output_mapping(self):
            if FallbackBuildExt.failed:
                return {}
            return super().get_output_mapping()

    return [ext], {"build_ext": FallbackBuildExt}


def long_description():
    path = os.path.join(ROOT, "README.md")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    return "torch.nn.utils.prune on C++/CUDA kernels."


if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import its helpers
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
