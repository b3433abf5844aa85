"""Bad input gets a clear error naming the argument, and the model is left exactly as it was."""
import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp

from helpers import LeNet, assert_snapshot_equal, module_snapshot


def _prepruned_lenet():
    model = LeNet()
    fp.l1_unstructured(model.fc1, "weight", amount=0.3)
    tp.l1_unstructured(model.fc2, "weight", amount=0.3)
    tp.l1_unstructured(model.fc2, "weight", amount=0.3)
    return model


LOCAL_CASES = [
    # (call, exception types accepted, words the message must contain)
    (lambda m: fp.l1_unstructured(m.fc3, "weight", amount=1.5), ValueError, "amount"),
    (lambda m: fp.l1_unstructured(m.fc3, "weight", amount=-1), ValueError, "amount"),
    (lambda m: fp.l1_unstructured(m.fc3, "weight", amount="half"), TypeError, "amount"),
    (lambda m: fp.l1_unstructured(m.fc3, "weight", amount=None), TypeError, "amount"),
    (lambda m: fp.l1_unstructured(m.fc3, "weight", amount=float("nan")), ValueError, "amount"),
    (lambda m: fp.l1_unstructured(m.fc3, "weight", amount=10_000), ValueError, "amount"),
    (lambda m: fp.l1_unstructured(m.fc1, "weight", amount=48_000), ValueError, "amount"),  # > survivors
    (lambda m: fp.random_unstructured(m.fc3, "weight", amount=841), ValueError, "amount"),
    (lambda m: fp.l1_unstructured(m.fc3, "weigth", amount=0.1), AttributeError, "weigth"),
    (lambda m: fp.l1_unstructured(m.fc3, 3, amount=0.1), TypeError, "name"),
    (lambda m: fp.l1_unstructured("fc3", "weight", amount=0.1), TypeError, "module"),
    (lambda m: fp.l1_unstructured(m.fc3, "weight", amount=0.1, importance_scores=torch.ones(3)), ValueError,
     "importance_scores"),
    (lambda m: fp.l1_unstructured(m.fc1, "weight", amount=0.1, importance_scores=torch.ones(3)), AssertionError,
     "importance_scores"),
    (lambda m: fp.ln_structured(m.fc3, "weight", amount=0.5, n=2, dim=2), IndexError, "2"),
    (lambda m: fp.ln_structured(m.fc3, "weight", amount=0.5, n=2, dim=-3), IndexError, "-3"),
    (lambda m: fp.ln_structured(m.fc3, "bias", amount=0.5, n=2, dim=0), ValueError, "multidimensional"),
    (lambda m: fp.ln_structured(m.fc3, "weight", amount=85, n=2, dim=1), ValueError, "amount"),
    (lambda m: fp.random_structured(m.conv1, "weight", amount=7, dim=0), ValueError, "amount"),
    (lambda m: fp.custom_from_mask(m.fc3, "weight", torch.ones(3, 3)), ValueError, "mask"),
    (lambda m: fp.custom_from_mask(m.fc2, "weight", torch.ones(3, 3)), ValueError, "mask"),
    (lambda m: fp.custom_from_mask(m.fc3, "weight", [[1]]), TypeError, "mask"),
    (lambda m: fp.remove(m.fc3, "weight"), ValueError, "weight"),
]


def _params(m):
    return [(m.conv1, "weight"), (m.fc1, "weight"), (m.fc2, "weight"), (m.fc3, "weight")]


GLOBAL_CASES = [
    (lambda m: fp.global_unstructured(5, pruning_method=fp.L1Unstructured, amount=0.2), TypeError, "parameters"),
    (lambda m: fp.global_unstructured([m.fc1], pruning_method=fp.L1Unstructured, amount=0.2), TypeError, "parameters[0]"),
    (lambda m: fp.global_unstructured(_params(m) + [(m.fc3, "nope")], pruning_method=fp.L1Unstructured, amount=0.2),
     AttributeError, "nope"),
    (lambda m: fp.global_unstructured(_params(m) + [(m.fc3, "weight")], pruning_method=fp.L1Unstructured, amount=0.2),
     ValueError, "twice"),
    (lambda m: fp.global_unstructured(_params(m), pruning_method=fp.LnStructured, amount=0.2, n=2, dim=0),
     TypeError, "unstructured"),
    (lambda m: fp.global_unstructured(_params(m), pruning_method=fp.L1Unstructured, amount=2.0), ValueError, "amount"),
    (lambda m: fp.global_unstructured(_params(m), pruning_method=fp.L1Unstructured, amount=10**9), ValueError, "amount"),
    (lambda m: fp.global_unstructured(_params(m), pruning_method=fp.L1Unstructured, importance_scores=[1], amount=0.2),
     TypeError, "importance_scores"),
    (lambda m: fp.global_unstructured(_params(m), pruning_method=fp.L1Unstructured,
                                      importance_scores={(m.fc1, "weight"): torch.ones(2)}, amount=0.2),
     ValueError, "importance_scores"),
    # importance_scores entries for tensors not being pruned are ignored, as torch does
    # (tests/test_torch_parity.py), so such a dict is not a bad input.
    (lambda m: fp.global_unstructured(_params(m), pruning_method="l1", amount=0.2), TypeError, "pruning_method"),
    (lambda m: fp.global_unstructured(_params(m), pruning_method=fp.RandomUnstructured, amount=10**9), ValueError,
     "amount"),
]


@pytest.mark.parametrize("call, exc_type, words", LOCAL_CASES + GLOBAL_CASES)
def test_bad_input_raises_and_leaves_model_unchanged(call, exc_type, words):
    model = _prepruned_lenet()
    before = module_snapshot(model)
    with pytest.raises(exc_type) as info:
        call(model)
    assert words in str(info.value)
    assert_snapshot_equal(before, module_snapshot(model))


class Boom(fp.BasePruningMethod):
    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        raise RuntimeError("boom")


class BoomOnApply(fp.L1Unstructured):
    def apply_mask(self, module):
        raise RuntimeError("boom in apply_mask")


@pytest.mark.parametrize(
    "target, method",
    # unpruned, pruned by fastprune, pruned by torch; on a pruned tensor the container's apply_mask runs
    [("fc3", Boom), ("fc1", Boom), ("fc2", Boom), ("fc3", BoomOnApply)],
)
def test_failing_method_rolls_back_exactly(target, method):
    model = _prepruned_lenet()
    module = getattr(model, target)
    before = module_snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        if method is Boom:
            method.apply(module, "weight")
        else:
            method.apply(module, "weight", amount=0.1)
    assert_snapshot_equal(before, module_snapshot(model))
    fp.l1_unstructured(module, "weight", amount=0.1)  # and the module still prunes normally


def test_failing_global_method_rolls_back_every_module():
    model = _prepruned_lenet()
    before = module_snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        fp.global_unstructured(_params(model), pruning_method=Boom)
    assert_snapshot_equal(before, module_snapshot(model))


def test_failure_while_installing_global_masks_rolls_back_every_module(monkeypatch):
    model = _prepruned_lenet()
    before = module_snapshot(model)
    calls = {"n": 0}
    original = fp.BasePruningMethod.apply_mask

    def flaky(self, module):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom while installing")
        return original(self, module)

    # conv1 (new hook), fc1 (fastprune container), fc3 (new hook): fails on the last module
    monkeypatch.setattr(fp.BasePruningMethod, "apply_mask", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        fp.global_unstructured(_params(model), pruning_method=fp.L1Unstructured, amount=0.3)
    assert_snapshot_equal(before, module_snapshot(model))


def test_pruning_a_buffer_is_refused():
    bn = nn.BatchNorm1d(4)
    before = module_snapshot(bn)
    with pytest.raises(TypeError, match="running_mean"):
        fp.l1_unstructured(bn, "running_mean", amount=1)
    assert_snapshot_equal(before, module_snapshot(bn))


def test_failure_after_the_pruned_weights_were_written_rolls_back(monkeypatch):
    """global_unstructured writes the pruned weights together with the masks
    (before installing anything); a failure while installing them still leaves
    every module as it was."""
    from fastprune.core import reparam

    model = _prepruned_lenet()
    before = module_snapshot(model)
    calls = {"n": 0}
    original = reparam.premultiplied

    def flaky(orig, mask, product):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom while installing")
        return original(orig, mask, product)

    monkeypatch.setattr(reparam, "premultiplied", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        fp.global_unstructured(_params(model), pruning_method=fp.L1Unstructured, amount=0.3)
    assert calls["n"] == 3
    assert_snapshot_equal(before, module_snapshot(model))


@pytest.mark.parametrize("empty", [[], (), lambda: iter([])], ids=["list", "tuple", "iterator"])
@pytest.mark.parametrize("method", [fp.L1Unstructured, fp.RandomUnstructured, tp.L1Unstructured])
def test_global_unstructured_with_no_parameters_raises_as_torch_does(empty, method):
    """torch raises ValueError (its torch.cat of nothing) for an empty parameter list; a filter that
    matched nothing must not pass silently."""
    empty = empty() if callable(empty) else empty
    with pytest.raises(ValueError) as torch_error:
        tp.global_unstructured(list(empty) if not isinstance(empty, (list, tuple)) else empty,
                               pruning_method=method, amount=0.5)
    with pytest.raises(ValueError, match="parameters") as ours:
        fp.global_unstructured(empty, pruning_method=method, amount=0.5)
    assert "empty" in str(ours.value)
    assert str(torch_error.value) in str(ours.value)  # torch's words are kept
    with pytest.raises(ValueError, match="parameters"):
        fp.global_unstructured([], pruning_method=method, amount=0)
