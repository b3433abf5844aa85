"""fastprune.patch_torch(): torch.nn.utils.prune runs on fastprune while active, then is restored."""
import copy
import importlib

import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp
import fastprune.core.patch
from fastprune.core.patch import PATCHED_NAMES
from helpers import LeNet


def originals():
    return {name: getattr(tp, name) for name in PATCHED_NAMES}


ORIGINALS = originals()


@pytest.fixture(autouse=True)
def _no_leaked_patch():
    assert not fp.is_torch_patched()
    yield
    leaked = fp.is_torch_patched()
    # Put torch back even if a test failed half-way, so other test files are unaffected.
    for name, value in ORIGINALS.items():
        setattr(tp, name, value)
    fastprune.core.patch._active.clear()
    assert not leaked, "a test left torch patched"


def third_party_global_prune(model, amount):
    """Code that knows nothing about fastprune."""
    import torch.nn.utils.prune as prune

    params = [(model.conv1, "weight"), (model.fc1, "weight"), (model.fc3, "weight")]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    prune.l1_unstructured(model.fc2, name="weight", amount=0.3)
    return params


def test_context_manager_patches_and_restores():
    assert all(getattr(tp, n) is v for n, v in ORIGINALS.items())
    with fp.patch_torch() as handle:
        assert fp.is_torch_patched() and handle.active
        for name in PATCHED_NAMES:
            assert getattr(tp, name) is getattr(fp, name), name
        assert torch.nn.utils.prune.global_unstructured is fp.global_unstructured
    assert not handle.active and not fp.is_torch_patched()
    assert all(getattr(tp, n) is v for n, v in ORIGINALS.items())


def test_function_form_and_idempotent_restore():
    handle = fp.patch_torch()
    assert tp.l1_unstructured is fp.l1_unstructured and tp.L1Unstructured is fp.L1Unstructured
    handle.restore()
    handle.restore()
    assert tp.l1_unstructured is ORIGINALS["l1_unstructured"]
    assert tp.BasePruningMethod is ORIGINALS["BasePruningMethod"]


def test_nested_patches_restore_when_the_last_one_ends_in_any_order():
    outer = fp.patch_torch()
    inner = fp.patch_torch()
    outer.restore()
    assert tp.remove is fp.remove  # inner still active
    inner.restore()
    assert tp.remove is ORIGINALS["remove"]
    with fp.patch_torch():
        with fp.patch_torch():
            pass
        assert tp.is_pruned is fp.is_pruned
    assert tp.is_pruned is ORIGINALS["is_pruned"]


def test_restored_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with fp.patch_torch():
            raise RuntimeError("boom")
    assert all(getattr(tp, n) is v for n, v in ORIGINALS.items())


def test_third_party_code_runs_on_fastprune_with_torch_masks():
    torch.manual_seed(0)
    model = LeNet()
    reference = copy.deepcopy(model)
    third_party_global_prune(reference, 0.6)  # plain torch
    with fp.patch_torch():
        third_party_global_prune(model, 0.6)
        assert tp.is_pruned(model)
    for name in ("conv1", "fc1", "fc2", "fc3"):
        mine, theirs = getattr(model, name), getattr(reference, name)
        assert torch.equal(mine.weight_mask, theirs.weight_mask), name
        hooks = list(mine._forward_pre_hooks.values())
        assert len(hooks) == 1 and isinstance(hooks[0], fp.BasePruningMethod), name
        assert not any(isinstance(h, fp.BasePruningMethod) for h in theirs._forward_pre_hooks.values())
    # After the patch the torch API works again on both, and on each other's modules.
    tp.remove(model.fc1, "weight")
    fp.remove(reference.fc1, "weight")
    assert torch.equal(model.fc1.weight, reference.fc1.weight)


def test_user_subclass_and_module_reimport_while_patched():
    with fp.patch_torch():
        prune = importlib.import_module("torch.nn.utils.prune")

        class EveryOther(prune.BasePruningMethod):
            PRUNING_TYPE = "unstructured"

            def compute_mask(self, t, default_mask):
                mask = default_mask.clone()
                mask.view(-1)[::2] = 0
                return mask

        assert issubclass(EveryOther, fp.BasePruningMethod)
        layer = nn.Linear(3, 4)
        EveryOther.apply(layer, "bias")
        assert torch.equal(layer.bias_mask, torch.tensor([0.0, 1.0, 0.0, 1.0]))
        prune.remove(layer, "bias")
    assert not fp.is_pruned(layer)
    assert layer.bias[0] == 0 and layer.bias[2] == 0
    # torch's own classes accept the subclass once restored
    assert issubclass(EveryOther, tp.BasePruningMethod)


def test_private_helpers_are_patched_too():
    with fp.patch_torch():
        assert tp._compute_nparams_toprune is fp._compute_nparams_toprune
        assert tp._validate_pruning_amount_init is fp._validate_pruning_amount_init
        with pytest.raises(ValueError, match="amount"):
            tp._validate_pruning_amount_init(1.5)
    assert tp._compute_nparams_toprune is ORIGINALS["_compute_nparams_toprune"]


def test_structured_pruning_through_the_patched_module():
    torch.manual_seed(0)
    layer, ref = nn.Linear(6, 5), None
    ref = copy.deepcopy(layer)
    tp.ln_structured(ref, "weight", amount=0.4, n=2, dim=0)
    with fp.patch_torch():
        tp.ln_structured(layer, "weight", amount=0.4, n=2, dim=0)
        tp.random_structured(layer, "weight", amount=1, dim=1)
        assert isinstance(next(iter(layer._forward_pre_hooks.values())), fp.PruningContainer)
    assert torch.equal((layer.weight_mask.sum(1) == 0), (ref.weight_mask.sum(1) == 0))
    assert int((layer.weight_mask.sum(0) == 0).sum()) == 1
