"""Forward pass of a pruned model: the mask-multiply pre-hooks recompute every weight.

"fastprune" keeps masks in the weight's dtype, as torch does; "fastprune-bool" gives
fastprune's hooks 1-byte bool masks.
The input is a single row per layer, so the time is the hooks', not the matmuls'.
"""
import pytest
import torch
import torch.nn.utils.prune as tp

import fastprune
from fastprune import bench
from conftest import (
    AMOUNT,
    DEVICE,
    DTYPE,
    check_global,
    group,
    packed_masks,
    reference_global_masks,
    rounds_for,
    skip_torch_if_too_big,
    synced,
)

LIBS = {"torch": tp, "fastprune": fastprune, "fastprune-bool": fastprune}


@pytest.mark.parametrize("lib", ["torch", "fastprune", "fastprune-bool", "floor"])
def test_forward(benchmark, cache, model, size, lib):
    group(benchmark, "forward", size, lib)
    if lib == "floor":  # the dense forward: the same layers unpruned, the same inputs
        xs = bench.forward_inputs(model, DTYPE, DEVICE)
        benchmark.pedantic(synced(lambda: bench.case_floor("forward").run(model, xs)), rounds=rounds_for(model, "fastprune"),
                           iterations=1, warmup_rounds=1)
        return
    P = LIBS[lib]
    if lib == "torch":
        skip_torch_if_too_big("forward", cache)
    else:
        reference = reference_global_masks(cache, model)
    P.global_unstructured([(m, "weight") for m in model], pruning_method=P.L1Unstructured, amount=AMOUNT)
    if lib == "torch":  # the reference fastprune's cases compare with
        cache.reference.setdefault("global", packed_masks([m.weight_mask for m in model]))
    else:
        check_global(cache, model, [m.weight_mask != 0 for m in model], reference)
    if lib == "fastprune-bool":
        for m in model:
            m._buffers["weight_mask"] = m._buffers["weight_mask"].bool()
    xs = bench.forward_inputs(model, DTYPE, DEVICE)

    def run():
        return bench.forward_all(model, xs)

    if lib != "torch":
        run()
        for m in model:  # the hook's weight is orig * mask exactly
            assert torch.equal(m.weight, m.weight_orig * m.weight_mask.to(DTYPE))
    rounds = rounds_for(model, "torch" if lib == "torch" else "fastprune")
    benchmark.pedantic(synced(run), rounds=rounds, iterations=1, warmup_rounds=1)
