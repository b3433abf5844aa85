"""Shared fixtures: the devices and dtypes every op test is parametrised over."""
import pytest
import torch

import fastprune

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def pytest_report_header(config):
    info = fastprune.build_info()
    mode = "extension" if info["extension"] else f"pure-torch fallback ({info['fallback_reason']})"
    return [f"fastprune {info['version']}: {mode}; cuda kernels: {info['cuda']}; torch {torch.__version__}"]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture
def one_thread():
    """Run a test single-threaded: on tiny models the OpenMP spin-waits of a second
    thread cost far more than the arithmetic when the 2-core machine is busy."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# Whether the compiled kernels are in use (not under FASTPRUNE_NO_EXT=1 or without a build);
# tests comparing a kernel with the reference need them.
EXTENSION = bool(fastprune.build_info()["extension"])
needs_ext = pytest.mark.skipif(not EXTENSION, reason="compiled extension fastprune._C is not loaded")
