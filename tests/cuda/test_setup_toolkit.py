"""setup.py's build decisions that need no compiler: which CUDA toolkit it picks, and
that two sources never compile to one object file."""
import importlib.util
import os
import stat

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("fastprune_setup_under_test", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, builds nothing
    return module


def _script(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


@pytest.fixture
def toolkits(tmp_path, monkeypatch):
    """A real-looking toolkit whose nvcc is reached through a wrapper script elsewhere on PATH."""
    real = tmp_path / "cuda-13.0"
    (real / "include").mkdir(parents=True)
    (real / "include" / "cuda_runtime_api.h").write_text("")
    _script(str(real / "bin" / "nvcc"), f"#!/bin/sh\necho '#$ _HERE_={real / 'bin'}'\n")
    wrapper_bin = tmp_path / "wrappers" / "bin"
    _script(str(wrapper_bin / "nvcc"), f"#!/bin/sh\nexec {real / 'bin' / 'nvcc'} \"$@\"\n")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrapper_bin}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return real


def test_toolkit_is_the_one_the_wrapper_runs(setup_py, toolkits):
    home, how = setup_py.find_cuda_toolkit()
    assert home == str(toolkits) and "runs" in how


def test_cuda_home_wins_and_a_bad_one_is_named(setup_py, toolkits, tmp_path, monkeypatch):
    other = tmp_path / "other"
    (other / "include").mkdir(parents=True)
    (other / "include" / "cuda_runtime_api.h").write_text("")
    monkeypatch.setenv("CUDA_PATH", str(other))
    assert setup_py.find_cuda_toolkit() == (str(other), "$CUDA_PATH")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "missing"))
    home, how = setup_py.find_cuda_toolkit()
    assert home is None and "CUDA_HOME" in how and "missing" in how


def test_object_name_collisions_are_refused(setup_py):
    setup_py.check_unique_stems(["csrc/cuda/kselect_cuda.cu", "csrc/cuda/kselect_wrapper.cpp"])
    with pytest.raises(RuntimeError, match="same object file"):
        setup_py.check_unique_stems(["csrc/cuda/kselect_cuda.cu", "csrc/cuda/kselect_cuda.cpp"])
    # the real source tree has none
    setup_py.check_unique_stems(setup_py.rel_sources("csrc/ops.cpp", "csrc/cpu/*.cpp", "csrc/cuda/*.cu",
                                                     "csrc/cuda/*_wrapper.cpp"))


def test_fallback_reason_survives_as_a_token(setup_py):
    reason = "the CUDA build failed (RuntimeError: Error compiling objects for extension); see the log"
    token = setup_py.hex_macro(reason)
    assert token[0] == "x" and token[1:].isalnum()
    assert bytes.fromhex(token[1:]).decode() == reason


@pytest.mark.parametrize(
    "env,capabilities,max_supported,expected",
    [
        (None, [], None, "8.0;9.0"),  # no GPU visible: the documented default
        ("", [], None, "8.0;9.0"),
        (None, [(9, 0)], (12, 0), "9.0+PTX"),  # one H100/H200: its architecture only
        (None, [(8, 0), (8, 0), (8, 6)], (12, 0), "8.0;8.6+PTX"),  # each visible architecture once, sorted
        (None, [(12, 0), (8, 9)], (12, 0), "8.9;12.0+PTX"),  # numeric order (not "12.0" < "8.9")
        (None, [(12, 1)], (10, 0), "10.0+PTX"),  # clamped to what this torch (and its nvcc) supports
        ("native", [(9, 0)], None, "9.0+PTX"),
        ("native", [], None, "8.0;9.0"),
        ("8.0;9.0", [(7, 5)], (12, 0), "8.0;9.0"),  # the user's choice wins over the visible GPU
        ("7.5", [], None, "7.5"),
    ],
)
def test_cuda_architectures_follow_the_visible_gpus_unless_set(setup_py, env, capabilities, max_supported, expected):
    archs, why = setup_py.choose_cuda_archs(env, capabilities, max_supported)
    assert archs == expected
    if env not in (None, "", "native"):
        assert "TORCH_CUDA_ARCH_LIST" in why
    elif capabilities:
        assert "visible" in why
    else:
        assert "default" in why


def test_build_summary_says_what_is_built_and_how_long(setup_py):
    cpu = setup_py.build_summary(False, "torch 2.13.0+cpu was built without CUDA", n_cpp=8)
    assert "C++" in cpu and "CPU" in cpu and "8 C++ source" in cpu and "CUDA" in cpu and "minutes" in cpu
    cuda = setup_py.build_summary(True, "FORCE_CUDA=1", n_cpp=8, n_cuda=12, archs="8.0;9.0",
                                  arch_why="the default", max_jobs="2")
    assert "CUDA" in cuda and "8.0;9.0" in cuda and "2 architectures" in cuda and "12 CUDA source" in cuda
    assert "minutes" in cuda and "MAX_JOBS=2" in cuda
    one = setup_py.build_summary(True, "FORCE_CUDA=1", n_cpp=8, n_cuda=12, archs="9.0+PTX", arch_why="the visible GPU")
    assert "1 architecture" in one and "9.0+PTX" in one


def test_visible_capabilities_without_a_gpu(setup_py):
    class NoCuda:
        class cuda:
            @staticmethod
            def is_available():
                return False

    caps, max_supported, why = setup_py.visible_capabilities(NoCuda)
    assert caps == [] and max_supported is None and "no GPU" in why

    class Broken:
        class cuda:
            @staticmethod
            def is_available():
                raise RuntimeError("driver too old")

    caps, _, why = setup_py.visible_capabilities(Broken)
    assert caps == [] and "driver too old" in why

    class TwoGpus:
        class cuda:
            is_available = staticmethod(lambda: True)
            device_count = staticmethod(lambda: 2)
            get_device_capability = staticmethod(lambda i: [(9, 0), (8, 0)][i])
            get_arch_list = staticmethod(lambda: ["sm_80", "sm_90", "sm_100", "compute_100"])

    caps, max_supported, why = setup_py.visible_capabilities(TwoGpus)
    assert caps == [(9, 0), (8, 0)] and max_supported == (10, 0)
    assert setup_py.choose_cuda_archs(None, caps, max_supported)[0] == "8.0;9.0+PTX"
