"""Differential tests: fastprune and torch.nn.utils.prune on the same models give the same result."""
import copy
import math

import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp

from helpers import LeNet, assert_same_pruning, lenet_input, tie_free_

AMOUNTS = [0, 1, 7, 0.0, 0.1, 0.25, 0.5, 0.9, 1.0]


def linear(dtype=torch.float32):
    return tie_free_(nn.Linear(13, 11).to(dtype))


def conv(dtype=torch.float32):
    return tie_free_(nn.Conv2d(3, 8, 3).to(dtype))


MODULES = {"linear": (linear, lambda: torch.randn(4, 13)), "conv": (conv, lambda: torch.randn(2, 3, 6, 6))}


def _input(kind, dtype):
    return MODULES[kind][1]().to(dtype)


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("amount", AMOUNTS)
@pytest.mark.parametrize("name", ["weight", "bias"])
def test_l1_unstructured_matches_torch(kind, dtype, amount, name, device):
    a = MODULES[kind][0](dtype).to(device)
    b = copy.deepcopy(a)
    fp.l1_unstructured(a, name, amount=amount)
    tp.l1_unstructured(b, name, amount=amount)
    assert a.weight.device.type == device.type
    assert_same_pruning(a, b, _input(kind, dtype).to(device))


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("amount", AMOUNTS)
def test_random_unstructured_matches_torch_with_same_seed(kind, amount):
    a = MODULES[kind][0]()
    b = copy.deepcopy(a)
    torch.manual_seed(7)
    fp.random_unstructured(a, "weight", amount=amount)
    after_fp = torch.rand(3)
    torch.manual_seed(7)
    tp.random_unstructured(b, "weight", amount=amount)
    after_torch = torch.rand(3)
    assert torch.equal(after_fp, after_torch), "fastprune must draw exactly the random numbers torch draws"
    assert_same_pruning(a, b, _input(kind, torch.float32))


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("n", [1, 2, 3, 0.5, math.inf, -math.inf, "fro"])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("amount", [0, 1, 0.3, 0.5, 1.0])
def test_ln_structured_matches_torch(kind, n, dim, amount, device):
    a = MODULES[kind][0]().to(device)
    b = copy.deepcopy(a)
    try:
        tp.ln_structured(b, "weight", amount=amount, n=n, dim=dim)
    except Exception as exc:  # e.g. 'fro' over 3 dims: both libraries must refuse
        with pytest.raises(type(exc)):
            fp.ln_structured(a, "weight", amount=amount, n=n, dim=dim)
        return
    fp.ln_structured(a, "weight", amount=amount, n=n, dim=dim)
    assert_same_pruning(a, b, _input(kind, torch.float32).to(device))


@pytest.mark.parametrize("kind", list(MODULES))
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("amount", [0, 1, 0.3, 1.0])
def test_random_structured_matches_torch_with_same_seed(kind, dim, amount):
    a = MODULES[kind][0]()
    b = copy.deepcopy(a)
    torch.manual_seed(3)
    fp.random_structured(a, "weight", amount=amount, dim=dim)
    torch.manual_seed(3)
    tp.random_structured(b, "weight", amount=amount, dim=dim)
    assert_same_pruning(a, b, _input(kind, torch.float32))


def test_identity_and_custom_from_mask_match_torch():
    a = linear()
    b = copy.deepcopy(a)
    fp.identity(a, "bias")
    tp.identity(b, "bias")
    mask = (torch.rand(11, 13) > 0.4).to(torch.int64)  # any dtype, converted as torch does
    fp.custom_from_mask(a, "weight", mask)
    tp.custom_from_mask(b, "weight", mask)
    assert_same_pruning(a, b, torch.randn(2, 13))


ITERATED_STEPS = [
    lambda lib, m: lib.l1_unstructured(m, "weight", amount=0.3),
    lambda lib, m: lib.random_unstructured(m, "weight", amount=5),
    lambda lib, m: lib.ln_structured(m, "weight", amount=0.25, n=2, dim=0),
    lambda lib, m: lib.random_structured(m, "weight", amount=1, dim=1),
    lambda lib, m: lib.l1_unstructured(m, "weight", amount=4),
    lambda lib, m: lib.identity(m, "weight"),
    lambda lib, m: lib.custom_from_mask(m, "weight", torch.arange(11 * 13).reshape(11, 13) % 3 != 0),
    lambda lib, m: lib.l1_unstructured(m, "weight", amount=0.5, importance_scores=torch.randn(11, 13)),
]


@pytest.mark.parametrize("seed", range(6))
def test_iterated_pruning_matches_torch(seed):
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ITERATED_STEPS), generator=gen).tolist()[:5]
    a = linear()
    b = copy.deepcopy(a)
    for i, step in enumerate(order):
        torch.manual_seed(100 * seed + i)
        ITERATED_STEPS[step](fp, a)
        torch.manual_seed(100 * seed + i)
        ITERATED_STEPS[step](tp, b)
        assert_same_pruning(a, b, torch.randn(3, 13))
    hook_a = next(iter(a._forward_pre_hooks.values()))
    hook_b = next(iter(b._forward_pre_hooks.values()))
    assert [type(h).__name__ for h in hook_a] == [type(h).__name__ for h in hook_b]


def _lenet_params(model):
    return [(model.conv1, "weight"), (model.conv2, "weight"), (model.fc1, "weight"), (model.fc2, "weight"),
            (model.fc3, "weight"), (model.fc3, "bias")]


@pytest.mark.parametrize("amount", [0, 1, 100, 0.2, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("method", ["fastprune", "torch"])
def test_global_unstructured_matches_torch(amount, method, device):
    a = tie_free_(LeNet()).to(device)
    b = copy.deepcopy(a)
    pm = fp.L1Unstructured if method == "fastprune" else tp.L1Unstructured
    fp.global_unstructured(_lenet_params(a), pruning_method=pm, amount=amount)
    tp.global_unstructured(_lenet_params(b), pruning_method=tp.L1Unstructured, amount=amount)
    assert_same_pruning(a, b, lenet_input().to(device))


def test_global_unstructured_with_importance_scores_and_prepruned_matches_torch():
    a = tie_free_(LeNet())
    b = copy.deepcopy(a)
    for lib, m in ((fp, a), (tp, b)):
        lib.l1_unstructured(m.fc1, "weight", amount=0.3)
        lib.ln_structured(m.conv2, "weight", amount=2, n=1, dim=0)
    scores = {}
    for module, name in _lenet_params(a):
        scores[(module, name)] = torch.randn_like(getattr(module, name))
    scores_b = {(dict(b.named_modules())[n], pn): scores[(m, pn)]
                for (m, pn), n in zip(_lenet_params(a), ["conv1", "conv2", "fc1", "fc2", "fc3", "fc3"])}
    fp.global_unstructured(_lenet_params(a), pruning_method=fp.L1Unstructured, importance_scores=scores, amount=0.4)
    tp.global_unstructured(_lenet_params(b), pruning_method=tp.L1Unstructured, importance_scores=scores_b, amount=0.4)
    assert_same_pruning(a, b, lenet_input())
    # a second round counts among the survivors
    fp.global_unstructured(_lenet_params(a), pruning_method=fp.L1Unstructured, amount=0.5)
    tp.global_unstructured(_lenet_params(b), pruning_method=tp.L1Unstructured, amount=0.5)
    assert_same_pruning(a, b, lenet_input())


@pytest.mark.parametrize("amount", [0, 3, 0.3, 1.0])
def test_global_random_unstructured_matches_torch(amount):
    a = tie_free_(LeNet())
    b = copy.deepcopy(a)
    fp.l1_unstructured(a.fc2, "weight", amount=0.5)
    tp.l1_unstructured(b.fc2, "weight", amount=0.5)
    torch.manual_seed(11)
    fp.global_unstructured(_lenet_params(a), pruning_method=fp.RandomUnstructured, amount=amount)
    torch.manual_seed(11)
    tp.global_unstructured(_lenet_params(b), pruning_method=tp.RandomUnstructured, amount=amount)
    assert_same_pruning(a, b, lenet_input())


def test_global_prunes_exactly_k_with_ties_lower_index_first():
    a, b, c = nn.Linear(4, 3, bias=False), nn.Linear(5, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        for m in (a, b, c):
            m.weight.fill_(0.5)
        b.weight[0, 1] = -0.25  # the only strictly smaller unit
    fp.global_unstructured([(a, "weight"), (b, "weight"), (c, "weight")], pruning_method=fp.L1Unstructured, amount=6)
    flat = torch.cat([a.weight_mask.flatten(), b.weight_mask.flatten(), c.weight_mask.flatten()])
    expected = torch.ones_like(flat)
    expected[:5] = 0  # ties: the first five units in global order ...
    expected[12 + 1] = 0  # ... plus the smallest one
    assert torch.equal(flat, expected)


def test_local_ties_lower_index_first():
    m = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, -2.0, 1.0, 2.0, 1.0], [-1.0, 1.0, 3.0, 1.0, 2.0]]))
    fp.l1_unstructured(m, "weight", amount=4)
    assert m.weight_mask.tolist() == [[0, 1, 0, 1, 0], [0, 1, 1, 1, 1]]


def test_nan_and_inf_are_pruned_last_as_torch_ranks_them():
    a = nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.randn(4, 6))
        a.weight[0, 0] = float("nan")
        a.weight[1, 2] = float("inf")
        a.weight[2, 3] = -1e30
    b = copy.deepcopy(a)
    fp.l1_unstructured(a, "weight", amount=22)
    tp.l1_unstructured(b, "weight", amount=22)
    assert torch.equal(a.weight_mask, b.weight_mask)
    assert a.weight_mask.sum() == 2 and a.weight_mask[0, 0] == 1 and a.weight_mask[1, 2] == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_follows_reference_rule(dtype):
    m = nn.Linear(40, 30).to(dtype)
    w = m.weight.detach().clone()
    fp.l1_unstructured(m, "weight", amount=0.45)
    k = round(0.45 * w.numel())
    order = torch.sort(w.float().abs().flatten(), stable=True).indices
    expected = torch.ones(w.numel(), dtype=dtype)
    expected[order[:k]] = 0
    assert m.weight_mask.dtype == dtype
    assert torch.equal(m.weight_mask.flatten(), expected)


def test_integer_parameter_is_pruned_like_torch():
    a = nn.Module()
    a.w = nn.Parameter(torch.randperm(60).reshape(6, 10) - 30, requires_grad=False)
    b = copy.deepcopy(a)
    fp.l1_unstructured(a, "w", amount=0.5)
    tp.l1_unstructured(b, "w", amount=0.5)
    assert torch.equal(a.w_mask, b.w_mask) and torch.equal(a.w, b.w)


def test_non_contiguous_importance_scores():
    m = linear()
    scores = torch.randn(13, 11).t()  # torch's global_unstructured fails on this (view on non-contiguous)
    assert not scores.is_contiguous()
    ref = copy.deepcopy(m)
    fp.global_unstructured([(m, "weight")], pruning_method=fp.L1Unstructured, importance_scores={(m, "weight"): scores}, amount=0.5)
    tp.global_unstructured([(ref, "weight")], pruning_method=tp.L1Unstructured,
                           importance_scores={(ref, "weight"): scores.contiguous()}, amount=0.5)
    assert torch.equal(m.weight_mask, ref.weight_mask)
    m2, ref2 = linear(), None
    ref2 = copy.deepcopy(m2)
    fp.l1_unstructured(m2, "weight", amount=0.3, importance_scores=scores)
    tp.l1_unstructured(ref2, "weight", amount=0.3, importance_scores=scores.contiguous())
    assert torch.equal(m2.weight_mask, ref2.weight_mask)


def test_lstm_flat_weights_follow_pruning():
    torch.manual_seed(0)
    a = nn.LSTM(5, 7, num_layers=2)
    b = copy.deepcopy(a)
    x = torch.randn(3, 2, 5)
    for lib, m in ((fp, a), (tp, b)):
        lib.l1_unstructured(m, "weight_hh_l0", amount=0.5)
        lib.ln_structured(m, "weight_ih_l1", amount=0.3, n=2, dim=0)
    assert_same_pruning(a, b, x)
    idx = a._flat_weights_names.index("weight_hh_l0")
    assert torch.equal(a._flat_weights[idx], a.weight_hh_l0)
    fp.remove(a, "weight_hh_l0")
    tp.remove(b, "weight_hh_l0")
    assert_same_pruning(a, b, x)


def test_remove_matches_torch():
    a = tie_free_(LeNet())
    b = copy.deepcopy(a)
    for lib, m in ((fp, a), (tp, b)):
        lib.l1_unstructured(m.fc1, "weight", amount=0.3)
        lib.l1_unstructured(m.fc1, "weight", amount=0.3)
        lib.ln_structured(m.conv1, "weight", amount=0.5, n=2, dim=0)
        lib.remove(m.fc1, "weight")
        lib.remove(m.conv1, "weight")
    assert_same_pruning(a, b, lenet_input())
    assert not fp.is_pruned(a) and not tp.is_pruned(b)
    assert isinstance(a.fc1.weight, nn.Parameter)


def test_libraries_interoperate():
    a = tie_free_(LeNet())
    b = copy.deepcopy(a)
    tp.l1_unstructured(a.fc1, "weight", amount=0.2)  # torch first ...
    fp.l1_unstructured(a.fc1, "weight", amount=0.2)  # ... then fastprune on top
    fp.random_unstructured(a.fc2, "weight", amount=0.2)
    tp.l1_unstructured(a.fc2, "weight", amount=0.2)  # torch on top of fastprune
    torch.manual_seed(0)
    tp.l1_unstructured(b.fc1, "weight", amount=0.2)
    tp.l1_unstructured(b.fc1, "weight", amount=0.2)
    assert torch.equal(a.fc1.weight_mask, b.fc1.weight_mask)
    assert tp.is_pruned(a) and fp.is_pruned(a)
    container = next(iter(a.fc2._forward_pre_hooks.values()))
    assert isinstance(container, tp.PruningContainer) and isinstance(container[0], fp.RandomUnstructured)
    tp.remove(a.fc1, "weight")
    fp.remove(a.fc2, "weight")
    assert not fp.is_pruned(a) and not tp.is_pruned(a)
    # fastprune's hooks are torch's classes too
    m = nn.Linear(3, 3)
    fp.l1_unstructured(m, "weight", amount=1)
    hook = next(iter(m._forward_pre_hooks.values()))
    assert isinstance(hook, tp.L1Unstructured) and isinstance(hook, tp.BasePruningMethod)


def test_user_subclass_of_torch_base_method_works_with_fastprune():
    class EveryOther(tp.BasePruningMethod):
        PRUNING_TYPE = "unstructured"

        def __init__(self, amount=None):
            self.amount = amount

        def compute_mask(self, t, default_mask):
            mask = default_mask.clone()
            mask.view(-1)[::2] = 0
            return mask

    a, b = linear(), None
    b = copy.deepcopy(a)
    fp.l1_unstructured(a, "weight", amount=0.2)
    tp.l1_unstructured(b, "weight", amount=0.2)
    EveryOther.apply(a, "weight")
    EveryOther.apply(b, "weight")
    fp.l1_unstructured(a, "weight", amount=3)
    tp.l1_unstructured(b, "weight", amount=3)
    assert_same_pruning(a, b, torch.randn(2, 13))
    c, d = tie_free_(LeNet()), None
    d = copy.deepcopy(c)
    fp.global_unstructured(_lenet_params(c), pruning_method=EveryOther)
    tp.global_unstructured(_lenet_params(d), pruning_method=EveryOther)
    assert_same_pruning(c, d, lenet_input())


def test_patched_compute_mask_takes_effect(monkeypatch):
    calls = []
    original = fp.L1Unstructured.compute_mask

    def spy(self, t, default_mask):
        calls.append(t.shape)
        return original(self, t, default_mask)

    monkeypatch.setattr(fp.L1Unstructured, "compute_mask", spy)
    m = linear()
    fp.l1_unstructured(m, "weight", amount=0.2)
    fp.l1_unstructured(m, "weight", amount=0.2)  # container path calls it on the survivors
    lenet = LeNet()
    fp.global_unstructured(_lenet_params(lenet), pruning_method=fp.L1Unstructured, amount=0.2)
    assert len(calls) == 3
    assert calls[1] == torch.Size([11 * 13 - round(0.2 * 11 * 13)])


def test_orig_is_same_parameter_and_mask_is_persistent_buffer():
    m = linear()
    weight = m.weight
    hook = fp.L1Unstructured.apply(m, "weight", amount=0.3)
    assert m.weight_orig is weight
    assert "weight_mask" in dict(m.named_buffers()) and "weight_mask" not in m._non_persistent_buffers_set
    assert list(m._forward_pre_hooks.values()) == [hook]
    assert hook._tensor_name == "weight"
    fp.l1_unstructured(m, "weight", amount=0.3)
    container = list(m._forward_pre_hooks.values())[0]
    assert isinstance(container, fp.PruningContainer) and container[0] is hook and len(container) == 2
    with torch.no_grad():
        m.weight_orig.mul_(2)
    m(torch.randn(1, 13))
    assert torch.equal(m.weight, m.weight_orig * m.weight_mask)


def test_prune_method_returns_pruned_tensor():
    t = torch.tensor([0.5, -3.0, 2.0, -0.1])
    assert fp.L1Unstructured(amount=2).prune(t).tolist() == [0.0, -3.0, 2.0, -0.0]
    assert torch.equal(fp.L1Unstructured(amount=2).prune(t), tp.L1Unstructured(amount=2).prune(t))


def test_validation_helpers_match_torch():
    for amount in (0, 3, 0.5, 1.0, 1):
        fp._validate_pruning_amount_init(amount)
        assert fp._compute_nparams_toprune(amount, 11) == tp._compute_nparams_toprune(amount, 11)
    for amount in (0.125, 0.375, 0.5, 0.625):  # round half to even, as torch (Python's round)
        assert fp._compute_nparams_toprune(amount, 4) == tp._compute_nparams_toprune(amount, 4)
    with pytest.raises(ValueError):
        fp._validate_pruning_amount(12, 11)
    with pytest.raises(TypeError):
        fp._validate_pruning_amount_init("0.5")
    with pytest.raises(ValueError):
        fp._validate_pruning_amount_init(float("nan"))


def test_bool_mask_buffer_uses_fused_multiply_with_same_result(monkeypatch):
    a = linear()
    fp.l1_unstructured(a, "weight", amount=0.4)
    b = copy.deepcopy(a)
    b._buffers["weight_mask"] = b.weight_mask.bool()  # 1-byte masks: 4x less mask memory
    calls = []
    real = fp.ops.mask_mul
    monkeypatch.setattr(fp.ops, "mask_mul", lambda x, m: calls.append(m.dtype) or real(x, m))
    x = torch.randn(5, 13)
    out_a, out_b = a(x), b(x)
    assert calls == [torch.bool]
    assert torch.equal(out_a, out_b)
    out_a.sum().backward()
    out_b.sum().backward()
    assert torch.equal(a.weight_orig.grad, b.weight_orig.grad)
    assert torch.equal(b.weight_orig.grad * ~b.weight_mask, torch.zeros_like(b.weight_orig.grad))
