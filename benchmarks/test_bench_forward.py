"""Forward pass of a pruned model: the mask-multiply pre-hooks recompute every weight.

"fastprune" keeps masks in the weight's dtype, as torch does; "fastprune-bool" gives
fastprune's hooks 1-byte bool masks.
The input is a single row per layer, so the time is the hooks', not the matmuls'.
"""
import pytest
import torch
import torch.nn.utils.prune as tp

import fastprune
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


@pytest.mark.parametrize("lib", ["torch", "fastprune", "fastprune-bool"])
def test_forward(benchmark, cache, model, size, lib):
    group(benchmark, "forward", size)
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
    g = torch.Generator().manual_seed(0)
    xs = {n: torch.randn(1, n, generator=g).to(DEVICE, DTYPE) for n in {m.weight_orig.shape[1] for m in model}}

    def run():
        with torch.no_grad():
            return [m(xs[m.weight_orig.shape[1]]) for m in model]

    if lib != "torch":
        run()
        for m in model:  # the hook's weight is orig * mask exactly
            assert torch.equal(m.weight, m.weight_orig * m.weight_mask.to(DTYPE))
    rounds = rounds_for(model, "torch" if lib == "torch" else "fastprune")
    benchmark.pedantic(synced(run), rounds=rounds, iterations=1, warmup_rounds=1)
