"""pytest-benchmark suite: torch.nn.utils.prune and fastprune, case by case.

Run separately from the tests::

    pytest benchmarks --benchmark-only                 # 1M, 10M, 100M parameters
    pytest benchmarks --benchmark-only --big           # adds 400M (or FASTPRUNE_BENCH_BIG=1)
    pytest benchmarks --benchmark-only --sizes 1M,10M  # any sizes
    FASTPRUNE_BENCH_DEVICE=cuda pytest benchmarks --benchmark-only   # on the GPU (the per-call
                                                       # cases of many small layers stay on the CPU)

Every case benchmarks torch and fastprune in the same run, grouped so that
pytest-benchmark prints them side by side, and, where one applies, the case's
floor (``lib="floor"``: ``fastprune.bench.FLOORS``, the least memory work that
produces what the case must produce, timed with the same rounds and the same
setup between them; ``benchmarks/pb_table.py`` prints fastprune / floor).
Correctness is asserted before
timing (fastprune's masks against torch's); nothing else is asserted. The
models are the Llama-shaped stacks of ``python -m fastprune.bench``, with
weights regenerated from a seed whenever a timed call changed them.
"""
import os

import pytest
import torch

from fastprune import bench
from fastprune.ops import build_info, pack_mask

DEFAULT_SIZES = ["1M", "10M", "100M"]
BIG_SIZES = ["400M"]
SEED = 0
AMOUNT = 0.5
DTYPE = torch.float32
DEVICE = torch.device(os.environ.get("FASTPRUNE_BENCH_DEVICE", "cpu"))


def pytest_addoption(parser):
    parser.addoption("--big", action="store_true", help="also benchmark 400M parameters (torch needs ~20 GB there)")
    parser.addoption("--sizes", default=None, help="comma-separated model sizes, e.g. 1M,10M,100M")


def selected_sizes(config):
    if config.getoption("--sizes"):
        return [s.strip() for s in config.getoption("--sizes").split(",") if s.strip()]
    big = config.getoption("--big") or os.environ.get("FASTPRUNE_BENCH_BIG", "") not in ("", "0")
    return DEFAULT_SIZES + (BIG_SIZES if big else [])


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", selected_sizes(metafunc.config))


def pytest_report_header(config):
    info = build_info()
    mode = "compiled extension" if info["extension"] else f"pure-torch fallback ({info['fallback_reason']})"
    return [f"fastprune kernels: {mode}; {bench.machine_description(DEVICE)}; torch {torch.__version__}"]


class ModelCache:
    """One model at a time (the biggest ones take GBs), rebuilt when the size changes."""

    def __init__(self):
        self.size = None
        self.model = None
        self.shapes = None
        self.reference = {}

    def get(self, size):
        if size != self.size:
            self.model = None
            self.reference = {}
            self.shapes = bench.model_shapes(bench.parse_count(size))
            self.model = bench.build_model(self.shapes, DTYPE, DEVICE, SEED)
            self.size = size
        return self.model

    def restore(self):
        """Drop any reparametrisation (weight_orig is left dense by pruning)."""
        bench.unprune_(self.model)

    def regenerate(self):
        """Put back weights that an in-place prune zeroed."""
        bench.unprune_(self.model)
        bench.regenerate_(self.model, SEED)


@pytest.fixture(scope="session")
def cache():
    return ModelCache()


@pytest.fixture
def model(cache, size):
    m = cache.get(size)
    cache.restore()
    yield m
    cache.restore()


def torch_fits(case, cache):
    """Whether torch's call for ``case`` fits next to the cached model; the reason when not."""
    return bench.torch_fits(case, cache.shapes, DTYPE, AMOUNT, DEVICE, model_loaded=True)


def skip_torch_if_too_big(case, cache):
    fits, why = torch_fits(case, cache)
    if not fits:
        pytest.skip(f"torch {why}")


def packed_masks(masks):
    return [pack_mask(m) for m in masks]


def reference_global_masks(cache, model):
    """torch's global L1 masks for the cached model (packed), once per size; None if torch cannot run."""
    if "global" not in cache.reference:
        if not torch_fits("global_l1", cache)[0]:
            return None
        import torch.nn.utils.prune as tp

        tp.global_unstructured(bench.pairs(model), pruning_method=tp.L1Unstructured, amount=AMOUNT)
        cache.reference["global"] = packed_masks([m.weight_mask for m in model])
        cache.restore()
    return cache.reference["global"]


def check_global(cache, model, masks_bool, reference):
    """fastprune's global masks: equal to torch's up to tied units, or exact where torch cannot run.

    ``reference`` comes from :func:`reference_global_masks`, taken before the model was pruned.
    """
    if reference is None:
        check = bench.check_exact("global_l1", model, masks_bool, AMOUNT, SEED, DTYPE, DEVICE)
        assert check["exact"], check
        return
    packed = packed_masks(masks_bool)
    if bench.compare_masks(packed, reference).identical:
        return
    # the threshold (and the regenerated weights) only when there are differences to explain
    threshold = bench.check_exact("global_l1", model, masks_bool, AMOUNT, SEED, DTYPE, DEVICE)["threshold"]
    scores = bench.layer_scores(cache.shapes, DTYPE, DEVICE, SEED)
    result = bench.compare_masks(packed, reference, scores, threshold)
    assert result.ties_only, f"masks differ from torch's beyond tied units: {result.verdict}"


def synced(fn):
    """``fn`` followed by a device synchronisation, so that a timing covers the device's work."""
    if DEVICE.type != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(DEVICE)
        return out

    return run


def group(benchmark, case, label, lib=None):
    benchmark.group = f"{case} {label}"
    benchmark.extra_info["case"] = case
    if lib is not None:
        benchmark.extra_info["lib"] = lib


class Held:
    """What a floor's round allocated, released by the next round's setup (as the cases release their masks)."""

    def __init__(self):
        self.value = None

    def run(self, fn):
        def timed():
            self.value = fn()

        return timed

    def release(self):
        self.value = None


def rounds_for(model, lib):
    """torch takes seconds per 10M parameters: one round is enough there; a floor gets fastprune's rounds."""
    numel = sum(m.weight.numel() for m in model)
    if lib == "torch":
        return 1 if numel >= 30_000_000 else 3
    return 3 if numel >= 30_000_000 else 10
