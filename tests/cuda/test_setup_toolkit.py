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
