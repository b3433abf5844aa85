"""Local methods on large single tensors: l1_unstructured and ln_structured."""
import pytest
import torch
import torch.nn.utils.prune as tp

import fastprune
from fastprune import bench
from fastprune.ops import pack_mask
from conftest import AMOUNT, DEVICE, DTYPE, SEED, Held, group, synced

SHAPES = {"4096x4096": (4096, 4096), "16384x4096": (16384, 4096)}
LIBS = {"torch": tp, "fastprune": fastprune}
_REFERENCE = {}


def make_layer(shape):
    return bench.build_model([shape], DTYPE, DEVICE, SEED)[0]


def unprune(lin):
    bench.unprune_([lin])


def prune_call(lib, case, lin):
    P = LIBS[lib]
    if case == "l1_unstructured":
        P.l1_unstructured(lin, "weight", amount=AMOUNT)
    else:
        P.ln_structured(lin, "weight", amount=AMOUNT, n=2, dim=0)


def reference_mask(case, key, lin):
    if (case, key) not in _REFERENCE:
        prune_call("torch", case, lin)
        _REFERENCE[(case, key)] = lin.weight_mask.clone()
        unprune(lin)
    return _REFERENCE[(case, key)]


def assert_local_match(case, mask, reference, weight):
    """Equal to torch's mask up to units (l1) or rows (ln) tied at the threshold."""
    scores = bench.unit_scores(weight, rows=case == "ln_structured")
    result = bench.compare_masks([pack_mask(mask)], [pack_mask(reference)], lambda i: scores)
    assert result.identical or result.ties_only, f"{case}: masks differ from torch's: {result.verdict}"


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("case", ["l1_unstructured", "ln_structured"])
@pytest.mark.parametrize("lib", ["torch", "fastprune", "floor"])
def test_local(benchmark, case, shape, lib):
    group(benchmark, case, shape, lib)
    lin = make_layer(SHAPES[shape])
    if lib == "floor":  # the mask and the pruned weight torch's layout creates, written from the weight
        held = Held()
        floor = bench.case_floor("local_l1" if case == "l1_unstructured" else "ln_structured")
        benchmark.pedantic(synced(held.run(lambda: floor.run([lin], None))), setup=held.release, rounds=5, iterations=1)
        held.release()
        return
    if lib == "fastprune":
        reference = reference_mask(case, shape, lin)
        prune_call("fastprune", case, lin)
        assert_local_match(case, lin.weight_mask, reference, lin.weight_orig.detach())
        unprune(lin)
    benchmark.pedantic(
        synced(lambda: prune_call(lib, case, lin)),
        setup=lambda: unprune(lin),
        rounds=3 if lib == "torch" else 5,  # torch too: a single round catches allocator luck
        iterations=1,
    )
