"""Forward pass of a pruned model: the mask-multiply pre-hooks recompute every weight.

fastprune's hooks get 1-byte bool masks (torch's masks are in the weight's dtype).
The input is a single row per layer, so the time is the hooks', not the matmuls'.
"""
import pytest
import torch
import torch.nn.utils.prune as tp

import fastprune
from conftest import AMOUNT, DTYPE, check_global, group, reference_global_masks, rounds_for, skip_torch_if_too_big

LIBS = {"torch": tp, "fastprune": fastprune}


@pytest.mark.parametrize("lib", ["torch", "fastprune"])
def test_forward(benchmark, cache, model, size, lib):
    group(benchmark, "forward", size)
    P = LIBS[lib]
    if lib == "torch":
        skip_torch_if_too_big("forward", model)
    else:
        reference = reference_global_masks(cache, model)
    P.global_unstructured([(m, "weight") for m in model], pruning_method=P.L1Unstructured, amount=AMOUNT)
    if lib == "fastprune":
        check_global(model, [m.weight_mask != 0 for m in model], reference)
        for m in model:
            m._buffers["weight_mask"] = m._buffers["weight_mask"].bool()
    g = torch.Generator().manual_seed(0)
    xs = {n: torch.randn(1, n, generator=g).to(DTYPE) for n in {m.weight_orig.shape[1] for m in model}}

    def run():
        with torch.no_grad():
            return [m(xs[m.weight_orig.shape[1]]) for m in model]

    if lib == "fastprune":
        run()
        for m in model:  # the hook's weight is orig * mask exactly
            assert torch.equal(m.weight, m.weight_orig * m.weight_mask.to(DTYPE))
    benchmark.pedantic(run, rounds=rounds_for(model, lib), iterations=1, warmup_rounds=1)
