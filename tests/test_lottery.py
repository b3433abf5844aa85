"""Lottery-ticket rewinding, pruning schedules and iterative magnitude pruning."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastprune as fp
from helpers import assert_snapshot_equal, module_snapshot


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 3))


def train(model, steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def weights(model):
    return [(model[0], "weight"), (model[2], "weight")]


def test_rewind_restores_orig_exactly_and_keeps_masks():
    model = mlp()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    ticket = fp.LotteryTicket(model)
    train(model)
    fp.global_unstructured(weights(model), pruning_method=fp.L1Unstructured, amount=0.6)
    params = {n: p for n, p in model.named_parameters()}
    masks = {m: m.weight_mask for m, _ in weights(model)}
    mask_values = {m: m.weight_mask.clone() for m, _ in weights(model)}
    assert not torch.equal(model[0].weight_orig, init["0.weight"])  # training moved it

    ticket.rewind()

    for layer in (0, 2):
        m = model[layer]
        assert torch.equal(m.weight_orig, init[f"{layer}.weight"])
        assert torch.equal(m.bias, init[f"{layer}.bias"])  # every parameter by default
        assert m.weight_mask is masks[m] and torch.equal(m.weight_mask, mask_values[m])
        assert torch.equal(m.weight, init[f"{layer}.weight"] * m.weight_mask)
    # Same Parameter objects: an optimizer built before the rewind keeps training them.
    assert all(p is params[n] for n, p in model.named_parameters())
    x = torch.randn(4, 5)
    expected = F.linear(F.relu(F.linear(x, init["0.weight"] * model[0].weight_mask, init["0.bias"])),
                        init["2.weight"] * model[2].weight_mask, init["2.bias"])
    torch.testing.assert_close(model(x), expected)


def test_rewind_of_selected_unpruned_parameters_and_late_capture():
    model = mlp()
    ticket = fp.LotteryTicket(model, parameters=[(model[2], "weight")])
    train(model, steps=2)
    ticket.capture()  # late rewinding: remember the weights after two steps
    late = model[2].weight.detach().clone()
    bias_before = model[2].bias.detach().clone()
    train(model, steps=3, seed=1)
    bias_trained = model[2].bias.detach().clone()
    ticket.rewind()
    assert torch.equal(model[2].weight, late)
    assert torch.equal(model[2].bias, bias_trained) and not torch.equal(bias_trained, bias_before)


def test_resample_draws_new_values_and_keeps_masks():
    model = mlp()
    init = model[0].weight.detach().clone()
    ticket = fp.LotteryTicket(model, parameters=weights(model))
    fp.l1_unstructured(model[0], "weight", amount=0.5)
    mask = model[0].weight_mask.clone()
    torch.manual_seed(123)
    ticket.rewind(resample=True)
    first = model[0].weight_orig.detach().clone()
    assert not torch.equal(first, init)
    assert first.abs().max() <= 1 / 5 ** 0.5 + 1e-6  # Linear's own reset_parameters bound
    assert torch.equal(model[0].weight_mask, mask)
    assert torch.all(model[0].weight[mask == 0] == 0)
    assert fp.is_pruned(model[0]) and "weight" not in model[0]._parameters
    torch.manual_seed(123)
    ticket.rewind(resample=True)
    assert torch.equal(model[0].weight_orig, first)  # reproducible under a seed

    ticket.rewind(resample=lambda t: torch.nn.init.constant_(t, 0.25))
    assert torch.all(model[0].weight_orig == 0.25)
    assert torch.equal(model[0].weight, 0.25 * mask)
    ticket.rewind()
    assert torch.equal(model[0].weight_orig, init)


def test_resample_without_reset_parameters_needs_an_init_function():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.weight

    model = nn.Sequential(Scale())
    ticket = fp.LotteryTicket(model)
    with pytest.raises(ValueError, match="reset_parameters"):
        ticket.rewind(resample=True)
    ticket.rewind(resample=torch.nn.init.zeros_)
    assert torch.all(model[0].weight == 0)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda m: fp.LotteryTicket("model"), TypeError, "model"),
        (lambda m: fp.LotteryTicket(m, parameters=[(m[0], "nope")]), ValueError, "nope"),
        (lambda m: fp.LotteryTicket(m, parameters=[("x", "weight")]), TypeError, "parameters"),
        (lambda m: fp.LotteryTicket(m, parameters=[]), ValueError, "parameters"),
        (lambda m: fp.LotteryTicket(m).rewind(resample="yes"), TypeError, "resample"),
    ],
)
def test_lottery_ticket_bad_input(make, exc, match):
    model = mlp()
    before = module_snapshot(model)
    with pytest.raises(exc, match=match):
        make(model)
    assert_snapshot_equal(before, module_snapshot(model))


def test_pruning_schedules():
    assert fp.pruning_schedule(1000, 0.9, 4, "linear") == [225, 450, 675, 900]
    exp = fp.pruning_schedule(1000, 0.9, 4, "exponential")
    assert exp == fp.pruning_schedule(1000, 0.9, 4, "exp")
    assert exp[-1] == 900
    assert [1000 - c for c in exp] == [round(1000 * 0.1 ** (t / 4)) for t in range(1, 5)]
    # constant: the same fraction of what is left, as repeated l1_unstructured calls would do
    assert fp.pruning_schedule(1000, 0.2, 3, "constant") == [200, 360, 488]
    assert fp.pruning_schedule(1000, 50, 3, "constant") == [50, 100, 150]
    assert fp.pruning_schedule(10, 7, 3, "linear") == [2, 5, 7]
    assert fp.pruning_schedule(10, 1.0, 2, "exp") == [10, 10]
    assert fp.pruning_schedule(0, 0.5, 2, "exp") == [0, 0]
    with pytest.raises(ValueError, match="schedule"):
        fp.pruning_schedule(10, 0.5, 2, "cubic")
    with pytest.raises(ValueError, match="amount"):
        fp.pruning_schedule(10, 11, 2, "linear")
    with pytest.raises(ValueError, match="amount"):
        fp.pruning_schedule(10, 4, 3, "constant")
    with pytest.raises(ValueError, match="steps"):
        fp.pruning_schedule(10, 0.5, 0)
    with pytest.raises(TypeError, match="amount"):
        fp.pruning_schedule(10, "0.5", 2)


@pytest.mark.parametrize("schedule", ["constant", "linear", "exponential"])
def test_iterative_magnitude_pruning(schedule):
    model = mlp()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls, masks_seen = [], []

    def train_fn(m, r):
        calls.append(r)
        train(m, steps=2, seed=r)
        if fp.is_pruned(m):
            masks_seen.append(torch.cat([m[0].weight_mask.reshape(-1), m[2].weight_mask.reshape(-1)]).clone())

    amount = 0.3 if schedule == "constant" else 0.8
    history = fp.iterative_magnitude_pruning(model, train_fn, amount, rounds=3, schedule=schedule)
    total = 50 + 30
    counts = fp.pruning_schedule(total, amount, 3, schedule)
    assert calls == [0, 1, 2]
    assert history == [c / total for c in counts]
    final = torch.cat([model[0].weight_mask.reshape(-1), model[2].weight_mask.reshape(-1)])
    assert int((final == 0).sum()) == counts[-1]
    for earlier in masks_seen:  # masks only ever shrink
        assert not torch.any((final != 0) & (earlier == 0))
    for layer in (0, 2):  # the ticket: survivors back at their initial values
        assert torch.equal(model[layer].weight_orig, init[f"{layer}.weight"])
        assert torch.equal(model[layer].bias, init[f"{layer}.bias"])


def test_imp_prunes_by_trained_magnitude_and_can_skip_rewind():
    model = mlp()
    trained = {}

    def train_fn(m, r):
        train(m, steps=3, seed=r)
        trained[r] = copy.deepcopy(m)

    fp.iterative_magnitude_pruning(model, train_fn, 20, rounds=1, rewind=False)
    ref = trained[0]
    scores = torch.cat([ref[0].weight.detach().abs().reshape(-1), ref[2].weight.detach().abs().reshape(-1)])
    keep = torch.cat([model[0].weight_mask.reshape(-1), model[2].weight_mask.reshape(-1)]) != 0
    assert int((~keep).sum()) == 20
    assert scores[~keep].max() <= scores[keep].min()
    assert torch.equal(model[0].weight_orig, ref[0].weight)  # no rewind


def test_imp_bad_input_leaves_model_unchanged():
    model = mlp()
    before = module_snapshot(model)
    with pytest.raises(TypeError, match="train_fn"):
        fp.iterative_magnitude_pruning(model, None, 0.5, rounds=2)
    with pytest.raises(ValueError, match="amount"):
        fp.iterative_magnitude_pruning(model, lambda m, r: None, 1.5, rounds=2)
    with pytest.raises(ValueError, match="rounds"):
        fp.iterative_magnitude_pruning(model, lambda m, r: None, 0.5, rounds=0)
    with pytest.raises(TypeError, match="ticket"):
        fp.iterative_magnitude_pruning(model, lambda m, r: None, 0.5, rounds=2, ticket="t")
    assert_snapshot_equal(before, module_snapshot(model))
