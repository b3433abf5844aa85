"""Global L1 pruning of a whole model: global_unstructured, and sparsify_ in place; and their floors."""
import pytest
import torch.nn.utils.prune as tp

import fastprune
from fastprune import bench
from conftest import (
    AMOUNT,
    Held,
    check_global,
    group,
    packed_masks,
    reference_global_masks,
    rounds_for,
    skip_torch_if_too_big,
    synced,
)

LIBS = {"torch": tp, "fastprune": fastprune}


@pytest.mark.parametrize("lib", ["torch", "fastprune", "floor"])
def test_global_l1(benchmark, cache, model, size, lib):
    group(benchmark, "global_l1", size, lib)
    if lib == "floor":  # two new tensors of the weights' size written from them: torch's layout, nothing selected
        held = Held()

        def setup():
            held.release()
            cache.restore()

        benchmark.pedantic(synced(held.run(lambda: bench.case_floor("global_l1").run(model, None))), setup=setup,
                           rounds=rounds_for(model, "fastprune"), iterations=1)
        held.release()
        return
    P = LIBS[lib]
    pairs = [(m, "weight") for m in model]

    def run():
        P.global_unstructured(pairs, pruning_method=P.L1Unstructured, amount=AMOUNT)

    if lib == "torch":
        skip_torch_if_too_big("global_l1", cache)
    else:
        reference = reference_global_masks(cache, model)
        run()
        check_global(cache, model, [m.weight_mask != 0 for m in model], reference)
    benchmark.pedantic(synced(run), setup=cache.restore, rounds=rounds_for(model, lib), iterations=1)
    if lib == "torch":  # the reference fastprune's test compares with
        cache.reference.setdefault("global", packed_masks([m.weight_mask for m in model]))


@pytest.mark.parametrize("lib", ["torch", "fastprune", "floor"])
def test_sparsify(benchmark, cache, model, size, lib):
    """fastprune.sparsify_ against torch's nearest equivalent: global_unstructured + remove; and its floor."""
    group(benchmark, "sparsify", size, lib)
    pairs = [(m, "weight") for m in model]
    state = {}

    def setup():
        if "maskset" in state:
            state.pop("maskset").remove()
        state.pop("floor", None)
        cache.regenerate()

    if lib == "floor":  # one read and write of the weights in place, fresh 1-bit masks

        def run():
            state["floor"] = bench.case_floor("sparsify").run(model, None)

    elif lib == "torch":
        skip_torch_if_too_big("sparsify", cache)

        def run():
            tp.global_unstructured(pairs, pruning_method=tp.L1Unstructured, amount=AMOUNT)
            for m in model:
                tp.remove(m, "weight")

    else:

        def run():
            state["maskset"] = fastprune.sparsify_(pairs, AMOUNT)

        reference = reference_global_masks(cache, model)
        run()
        ms = state["maskset"]
        check_global(cache, model, [ms.mask(i) for i in range(len(ms))], reference)
    benchmark.pedantic(synced(run), setup=setup, rounds=rounds_for(model, lib), iterations=1)
    setup()
