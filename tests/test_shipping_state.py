"""make_permanent and load_pruned_state_dict."""
import copy

import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp
from fastprune.shipping import load_pruned_state_dict, make_permanent, permanent_state_dict
from helpers import assert_snapshot_equal, module_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def x_in():
    return torch.randn(2, 2, 6, 6)


def pruned_net():
    """Pruned by both libraries: fastprune, torch, a container, a global call, a structured one."""
    net = Net().eval()
    fp.l1_unstructured(net.conv, "weight", 0.4)
    tp.random_unstructured(net.conv, "weight", 0.3)  # torch method on top: a container
    fp.global_unstructured([(net.fc1, "weight"), (net.fc2, "weight")], fp.L1Unstructured, amount=0.5)
    tp.l1_unstructured(net.fc1, "bias", 0.25)
    return net


def bits(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def test_make_permanent_matches_remove_per_tensor():
    net = pruned_net()
    x = x_in()
    y = net(x)
    ref = copy.deepcopy(net)
    for m, n in [(ref.conv, "weight"), (ref.fc1, "weight"), (ref.fc2, "weight"), (ref.fc1, "bias")]:
        tp.remove(m, n)
    expected = permanent_state_dict(net)
    assert make_permanent(net) is net
    assert not fp.is_pruned(net)
    assert list(net.state_dict()) == list(ref.state_dict()) == list(expected)
    for k, v in ref.state_dict().items():
        assert torch.equal(bits(net.state_dict()[k]), bits(v)), k  # -0.0 included
        assert torch.equal(bits(expected[k]), bits(v)), k
    assert all(isinstance(p, nn.Parameter) for p in net.parameters())
    assert torch.equal(net(x), y)
    assert "__deepcopy__" not in net.conv.__dict__
    copy.deepcopy(net)
    make_permanent(net)  # idempotent


def test_permanent_state_dict_leaves_model_pruned():
    net = pruned_net()
    before = module_snapshot(net)
    sd = permanent_state_dict(net)
    assert_snapshot_equal(before, module_snapshot(net))
    assert "conv.weight" in sd and "conv.weight_orig" not in sd and "conv.weight_mask" not in sd
    assert torch.equal(sd["conv.weight"], net.conv.weight_orig * net.conv.weight_mask)


def test_make_permanent_removes_maskset_hooks():
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    other = nn.Linear(8, 8)
    ms = fp.sparsify_(net, 0.5)
    ms_other = fp.sparsify_(other, 0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ms.attach(opt)
    zeros = [(m.weight == 0).clone() for m in net]
    make_permanent(net)
    # gradients and optimizer steps are no longer masked: pruned weights move
    net(torch.randn(4, 8)).sum().backward()
    assert any(bool((m.weight.grad[z] != 0).any()) for m, z in zip(net, zeros))
    opt.step()
    assert any(bool((m.weight[z] != 0).any()) for m, z in zip(net, zeros))
    # the masks were forgotten: pruning again counts every unit
    ms2 = fp.sparsify_(net, 0.25)
    assert ms2.num_pruned() == round(0.25 * ms2.numel())
    # a MaskSet of another model is untouched
    assert ms_other.sparsity() == 0.5
    h = ms_other.mask_gradients()
    other(torch.randn(2, 8)).sum().backward()
    assert bool((other.weight.grad[other.weight == 0] == 0).all())
    h.remove()


def test_make_permanent_after_to_pruning():
    net = nn.Sequential(nn.Linear(8, 8))
    ms = fp.sparsify_(net, 0.5)
    ms.to_pruning()
    assert fp.is_pruned(net)
    w = net[0].weight.detach().clone()
    make_permanent(net)
    assert not fp.is_pruned(net) and torch.equal(net[0].weight, w)


def test_make_permanent_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        make_permanent({"weight": torch.ones(2)})


@pytest.mark.parametrize("source", ["torch", "fastprune"])
def test_load_pruned_state_dict_round_trip(source):
    net = Net().eval()
    lib = tp if source == "torch" else fp
    lib.l1_unstructured(net.conv, "weight", 0.5)
    lib.l1_unstructured(net.conv, "weight", 0.5)
    lib.random_unstructured(net.fc1, "weight", 0.7)
    lib.ln_structured(net.fc2, "weight", 1, n=2, dim=0)
    x = x_in()
    y = net(x)
    sd = net.state_dict()
    fresh = Net().eval()
    with pytest.raises(RuntimeError):  # what the user gets without fastprune
        copy.deepcopy(fresh).load_state_dict(sd)
    result = load_pruned_state_dict(fresh, sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert fp.is_pruned(fresh) and tp.is_pruned(fresh)
    assert torch.equal(fresh(x), y)
    assert list(fresh.state_dict()) == list(sd)
    for k in sd:
        assert torch.equal(fresh.state_dict()[k], sd[k]), k
    # it can be pruned further and made permanent like the original
    fp.l1_unstructured(fresh.fc1, "weight", 0.5)
    fp.l1_unstructured(net.fc1, "weight", 0.5)
    assert torch.equal(fresh.fc1.weight_mask, net.fc1.weight_mask)
    make_permanent(fresh)
    assert not fp.is_pruned(fresh)


def test_load_pruned_state_dict_plain_and_already_pruned():
    net = pruned_net()
    sd = net.state_dict()
    again = copy.deepcopy(net)
    with torch.no_grad():
        again.conv.weight_orig.zero_()
    load_pruned_state_dict(again, sd)  # already pruned: loads as is
    assert torch.equal(again.conv.weight_orig, net.conv.weight_orig)
    plain = Net()
    src = Net()
    load_pruned_state_dict(plain, src.state_dict())  # nothing pruned: a plain load
    assert not fp.is_pruned(plain)
    assert torch.equal(plain.fc1.weight, src.fc1.weight)


def test_load_pruned_state_dict_lstm():
    lstm = nn.LSTM(3, 4)
    fp.l1_unstructured(lstm, "weight_ih_l0", 0.5)
    x = torch.randn(5, 1, 3)
    fresh = nn.LSTM(3, 4)
    load_pruned_state_dict(fresh, lstm.state_dict())
    assert torch.equal(fresh(x)[0], lstm(x)[0])


def test_load_pruned_state_dict_non_strict():
    net = pruned_net()
    sd = dict(net.state_dict())
    sd["nothere.weight_orig"] = torch.ones(2)
    sd["nothere.weight_mask"] = torch.ones(2)
    del sd["fc2.bias"]
    fresh = Net().eval()
    res = load_pruned_state_dict(fresh, sd, strict=False)
    assert "fc2.bias" in res.missing_keys
    assert set(res.unexpected_keys) == {"nothere.weight_orig", "nothere.weight_mask"}
    assert torch.equal(fresh.conv.weight, net.conv.weight)


@pytest.mark.parametrize(
    "edit, error, match",
    [
        (lambda sd: sd.pop("fc2.bias"), ValueError, "missing keys"),
        (lambda sd: sd.__setitem__("extra", torch.ones(1)), ValueError, "unexpected keys"),
        (lambda sd: sd.__setitem__("conv.weight_mask", torch.ones(3)), fp.PruningShapeError, "conv.weight_mask"),
        (lambda sd: sd.__setitem__("fc2.bias", torch.ones(7)), fp.PruningShapeError, "fc2.bias"),
        (lambda sd: sd.update({"nope.w_orig": torch.ones(1), "nope.w_mask": torch.ones(1)}), ValueError, "nope"),
        (lambda sd: sd.update({"fc2.w_orig": torch.ones(1), "fc2.w_mask": torch.ones(1)}), ValueError, "no parameter"),
        (lambda sd: sd.__setitem__("conv.weight_orig", [1.0]), TypeError, "conv.weight_orig"),
    ],
)
def test_load_pruned_state_dict_bad_input_changes_nothing(edit, error, match):
    sd = dict(pruned_net().state_dict())
    edit(sd)
    fresh = Net()
    before = module_snapshot(fresh)
    with pytest.raises(error, match=match):
        load_pruned_state_dict(fresh, sd)
    assert_snapshot_equal(before, module_snapshot(fresh))
    assert not fp.is_pruned(fresh)


def test_load_pruned_state_dict_rolls_back_when_the_load_fails():
    sd = pruned_net().state_dict()
    fresh = Net()

    def fail(module, incompatible):
        raise RuntimeError("post hook failed")

    fresh.register_load_state_dict_post_hook(fail)
    before = module_snapshot(fresh)
    with pytest.raises(RuntimeError, match="post hook failed"):
        load_pruned_state_dict(fresh, sd)
    after = module_snapshot(fresh)
    # structure restored (the parameter objects are the original ones)
    assert before[1] == after[1] and before[2] == after[2]
    assert not fp.is_pruned(fresh)


def test_load_pruned_state_dict_argument_types():
    with pytest.raises(TypeError, match="model"):
        load_pruned_state_dict("net", {})
    with pytest.raises(TypeError, match="state_dict"):
        load_pruned_state_dict(Net(), [("a", torch.ones(1))])
    with pytest.raises(TypeError, match="strict"):
        load_pruned_state_dict(Net(), Net().state_dict(), strict=1)
