"""Small tensors and models made of many small layers: the per-call cost.

A call's fixed cost (argument handling, reparametrisation, the selection's
setup) decides the time of per-layer pruning on models with many small layers;
these cases compare it with torch's. ``benchmarks/small_sweep.py`` prints the
same comparison as one table from 8 elements to 100M.
"""
import pytest
import torch
import torch.nn.utils.prune as tp

import fastprune
from conftest import AMOUNT, DEVICE, group

# The per-call cost on the CPU: not run when the suite is pointed at a GPU.
pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="per-call CPU cases (FASTPRUNE_BENCH_DEVICE is set)")

LIBS = {"torch": tp, "fastprune": fastprune}
MODELS = {"2000xLinear(8,8)": ("l1", 2000, 8), "500xLinear(64,64)": ("ln", 500, 64)}


def make_layers(count, width):
    torch.manual_seed(0)
    return [torch.nn.Linear(width, width) for _ in range(count)]


def prune_all(lib, case, layers):
    P = LIBS[lib]
    for m in layers:
        if case == "l1":
            P.l1_unstructured(m, "weight", amount=AMOUNT)
        else:
            P.ln_structured(m, "weight", amount=AMOUNT, n=2, dim=0)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("lib", ["torch", "fastprune"])
def test_many_small_layers(benchmark, model_name, lib):
    case, count, width = MODELS[model_name]
    # group names as test_bench_local's: "<function> <size>", so pb_table.py sorts them
    group(benchmark, "l1_unstructured" if case == "l1" else "ln_structured", model_name)
    if lib == "fastprune":
        ours, theirs = make_layers(count, width), make_layers(count, width)
        prune_all("fastprune", case, ours)
        prune_all("torch", case, theirs)
        # tie-free random weights: the masks must be identical
        assert all(torch.equal(a.weight_mask, b.weight_mask) for a, b in zip(ours, theirs))
    benchmark.pedantic(lambda layers: prune_all(lib, case, layers),
                       setup=lambda: ((make_layers(count, width),), {}), rounds=5, iterations=1)


@pytest.mark.parametrize("numel", [8, 64, 4096, 65536])
@pytest.mark.parametrize("lib", ["torch", "fastprune"])
def test_one_small_tensor(benchmark, numel, lib):
    group(benchmark, "l1_unstructured", str(numel))
    weight = torch.randn(numel, generator=torch.Generator().manual_seed(0))

    def setup():
        lin = torch.nn.Linear(1, 1, bias=False)
        lin.weight = torch.nn.Parameter(weight.clone())
        return (lin,), {}

    benchmark.pedantic(lambda lin: LIBS[lib].l1_unstructured(lin, "weight", amount=AMOUNT), setup=setup,
                       rounds=200 if numel <= 4096 else 20, iterations=1)
