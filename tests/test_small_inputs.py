"""Small tensors and per-layer pruning of many small layers: same masks as torch.

Small inputs take their own paths (the kernel's direct selection below a size
limit, masks of ones that are never materialised); these tests pin their
results to torch's, and check that the compiled kernel's two selection paths
agree at the API level too.
"""
import pytest
import torch
import torch.nn.utils.prune as tp

import fastprune

from conftest import needs_ext


def layers(count, shape, seed):
    torch.manual_seed(seed)
    return [torch.nn.Linear(shape[1], shape[0]) for _ in range(count)]


@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (8, 8), (64, 64), (65, 63)])
def test_per_layer_small_matches_torch(shape):
    ours, theirs = layers(6, shape, 0), layers(6, shape, 0)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        amount = [0.0, 0.3, 0.5, 1, 0.99, 2 % (a.weight.numel() + 1)][i]
        fastprune.l1_unstructured(a, "weight", amount=amount)
        tp.l1_unstructured(b, "weight", amount=amount)
        fastprune.l1_unstructured(a, "bias", amount=0.5)
        tp.l1_unstructured(b, "bias", amount=0.5)
        torch.manual_seed(i)
        fastprune.random_unstructured(a, "weight", amount=0.2)
        torch.manual_seed(i)
        tp.random_unstructured(b, "weight", amount=0.2)
        assert torch.equal(a.weight_mask, b.weight_mask) and torch.equal(a.bias_mask, b.bias_mask)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    for a, b in zip(ours, theirs):  # iterated: the second call sees the first mask
        fastprune.l1_unstructured(a, "weight", amount=0.25)
        tp.l1_unstructured(b, "weight", amount=0.25)
        fastprune.ln_structured(a, "weight", amount=0.5, n=2, dim=1)
        tp.ln_structured(b, "weight", amount=0.5, n=2, dim=1)
        assert torch.equal(a.weight_mask, b.weight_mask)


def test_pruning_in_inference_mode_then_normally():
    """A call under inference_mode leaves nothing behind that breaks a later normal call."""
    with torch.inference_mode():
        a = torch.nn.Linear(8, 8)
        fastprune.l1_unstructured(a, "weight", amount=0.5)
        fastprune.ln_structured(torch.nn.Linear(8, 8), "weight", amount=0.5, n=2, dim=0)
    assert int((a.weight_mask == 0).sum()) == 32
    ours, theirs = layers(1, (8, 8), 1), layers(1, (8, 8), 1)
    fastprune.l1_unstructured(ours[0], "weight", amount=0.5)
    tp.l1_unstructured(theirs[0], "weight", amount=0.5)
    assert torch.equal(ours[0].weight_mask, theirs[0].weight_mask)
    ours[0].weight.sum().backward()
    assert torch.equal(ours[0].weight_orig.grad, ours[0].weight_mask)


def test_written_ones_view_is_not_trusted():
    """A ones_view written in place is an ordinary mask again (the kernels then read it)."""
    from fastprune.core import methods

    w = torch.randn(4, 5)
    view = methods.ones_view(w)
    assert methods.is_ones_view(view)
    assert not methods.is_ones_view(torch.ones(()).expand(4, 5))
    view.fill_(0)
    assert not methods.is_ones_view(view)
    mask = methods.L1Unstructured(0.5).compute_mask(w, view)
    assert not bool(mask.any())  # every unit was already pruned by the (written) default mask


@needs_ext
@pytest.mark.parametrize("limit", ["0", str(2**62)])
def test_kernel_paths_match_torch_per_layer(monkeypatch, limit):
    """The radix select (limit 0) and the direct selection (no limit) on the same small layers."""
    monkeypatch.setenv("FASTPRUNE_KSELECT_DIRECT_MAX", limit)
    ours, theirs = layers(3, (48, 40), 2), layers(3, (48, 40), 2)
    for a, b in zip(ours, theirs):
        fastprune.l1_unstructured(a, "weight", amount=0.4)
        tp.l1_unstructured(b, "weight", amount=0.4)
        fastprune.ln_structured(a, "weight", amount=0.3, n=2, dim=0)
        tp.ln_structured(b, "weight", amount=0.3, n=2, dim=0)
        assert torch.equal(a.weight_mask, b.weight_mask)
