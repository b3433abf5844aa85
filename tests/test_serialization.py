"""Pruned models survive pickle, deepcopy and torch.save, and state_dicts cross libraries."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.utils.prune as tp

import fastprune as fp

from helpers import LeNet, assert_same_pruning, lenet_input, tie_free_


def _pruned(lib, model=None):
    model = model if model is not None else tie_free_(LeNet())
    lib.l1_unstructured(model.conv1, "weight", amount=0.3)
    lib.l1_unstructured(model.conv1, "weight", amount=0.3)
    lib.ln_structured(model.fc1, "weight", amount=0.2, n=2, dim=0)
    lib.global_unstructured([(model.fc2, "weight"), (model.fc3, "weight")], pruning_method=lib.L1Unstructured, amount=0.5)
    return model


def _roundtrips():
    def save_load(m):
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)

    return {
        "deepcopy": copy.deepcopy,
        "pickle": lambda m: pickle.loads(pickle.dumps(m)),
        "torch.save": save_load,
    }


@pytest.mark.parametrize("how", list(_roundtrips()))
def test_pruned_model_roundtrip(how):
    model = _pruned(fp)
    x = lenet_input()
    clone = _roundtrips()[how](model)
    assert_same_pruning(clone, model, x)
    # the clone is independent and still pruning-aware
    assert clone.conv1.weight_orig is not model.conv1.weight_orig
    with torch.no_grad():
        clone.conv1.weight_orig.add_(1.0)
    clone(x)
    assert torch.equal(clone.conv1.weight, clone.conv1.weight_orig * clone.conv1.weight_mask)
    assert not torch.equal(clone.conv1.weight, model.conv1.weight)
    fp.l1_unstructured(clone.conv1, "weight", amount=0.1)
    fp.remove(clone.fc1, "weight")
    assert fp.is_pruned(clone)


def test_deepcopy_after_forward_and_backward():
    model = _pruned(fp)
    model(lenet_input()).sum().backward()
    clone = copy.deepcopy(model)
    assert torch.equal(clone.fc1.weight, model.fc1.weight)


def test_deepcopy_of_torch_pruned_model_fails_in_torch_but_not_after_fastprune_touches_it():
    model = _pruned(tp)
    with pytest.raises(RuntimeError):
        copy.deepcopy(model)  # torch's own limitation, documented in the README
    for name in ("conv1", "fc1", "fc2", "fc3"):
        fp.l1_unstructured(getattr(model, name), "weight", amount=0)
    clone = copy.deepcopy(model)
    assert_same_pruning(clone, model, lenet_input())


def test_removed_model_deepcopies_without_the_helper():
    model = _pruned(fp)
    for name in ("conv1", "fc1", "fc2", "fc3"):
        fp.remove(getattr(model, name), "weight")
    assert all("__deepcopy__" not in m.__dict__ for m in model.modules())
    copy.deepcopy(model)


@pytest.mark.parametrize("src, dst", [(tp, fp), (fp, tp)])
def test_state_dict_crosses_libraries(src, dst):
    torch.manual_seed(0)
    a = _pruned(src)
    b = _pruned(dst, LeNet())  # different weights, same pruning layout
    b.load_state_dict(a.state_dict())
    x = lenet_input()
    assert torch.equal(a(x), b(x))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])


def test_state_dict_of_pruned_model_loads_into_fresh_pruned_model_after_save():
    a = _pruned(fp)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = LeNet()
    for name in ("conv1", "fc1", "fc2", "fc3"):
        fp.identity(getattr(b, name), "weight")
    b.load_state_dict(torch.load(buf))
    x = lenet_input()
    b(x)
    assert torch.equal(a(x), b(x))
