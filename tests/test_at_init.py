"""Pruning at initialisation: SNIP, iterative SNIP, FORCE, SynFlow and their score functions."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp
from fastprune.at_init import methods as at_init
from helpers import assert_snapshot_equal, module_snapshot


pytestmark = pytest.mark.usefixtures("one_thread")


class SmallConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def mlp(seed=0, sizes=(6, 12, 8, 3)):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_data(seed=1, n=24, d=6, classes=3, batches=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    step = n // batches
    return [(x[i:i + step], y[i:i + step]) for i in range(0, n, step)]


def conv_data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 1, 6, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(2)]


def run(method, model, data, amount, **kw):
    if method == "synflow":
        return fp.synflow(model, data[0][0], amount, steps=kw.pop("steps", 10), progress=False, **kw)
    if method == "snip":
        return fp.snip(model, F.cross_entropy, data, amount, **kw)
    fn = fp.iterative_snip if method == "iterative_snip" else fp.force
    return fn(model, F.cross_entropy, data, amount, steps=kw.pop("steps", 4), progress=False, **kw)


METHODS = ["snip", "iterative_snip", "force", "synflow"]


def weights(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def assert_torch_style(module, name, mask):
    assert isinstance(module._parameters[name + "_orig"], nn.Parameter)
    assert name not in module._parameters
    assert module._buffers[name + "_mask"] is mask
    hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, tp.BasePruningMethod)]
    assert len(hooks) == 1 and hooks[0]._tensor_name == name
    assert torch.equal(getattr(module, name), getattr(module, name + "_orig") * mask)
    assert fp.is_pruned(module) and tp.is_pruned(module)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.9, 57, 1.0])
def test_exact_sparsity_and_torch_style_masks(method, amount):
    model, data = SmallConvNet(), conv_data()
    originals = {m: m.weight for m in weights(model)}
    masks = run(method, model, data, amount)
    assert list(masks) == [(m, "weight") for m in weights(model)]
    total = sum(m.weight_orig.numel() for m in weights(model))
    expected = amount if isinstance(amount, int) else round(amount * total)
    assert sum(int((mk == 0).sum()) for mk in masks.values()) == expected
    for (module, name), mask in masks.items():
        assert_torch_style(module, name, mask)
        assert module.weight_orig is originals[module]  # the same Parameter object, untouched
        assert "bias_orig" not in module._parameters  # biases are not pruned by default
    # The forward uses the pruned weights, and training keeps pruned weights at zero.
    x = data[0][0]
    model(x).sum().backward()
    for (module, _), mask in masks.items():
        assert torch.all(module.weight_orig.grad[mask == 0] == 0)


@pytest.mark.parametrize("method", METHODS)
def test_amount_counts_among_unpruned_and_old_masks_stay(method):
    model, data = mlp(), mlp_data()
    fp.l1_unstructured(model[0], "weight", amount=20)
    old = model[0].weight_mask.clone()
    masks = run(method, model, data, 0.5)
    total = sum(m.weight_orig.numel() for m in weights(model))
    assert sum(int((mk == 0).sum()) for mk in masks.values()) == 20 + round(0.5 * (total - 20))
    assert torch.all(masks[(model[0], "weight")][old == 0] == 0)
    assert isinstance(model[0]._forward_pre_hooks[next(iter(model[0]._forward_pre_hooks))], tp.PruningContainer)


@pytest.mark.parametrize("method", METHODS)
def test_mode_weights_grads_and_buffers_are_left_alone(method):
    model, data = SmallConvNet(), conv_data()
    model.train()
    model.bn.eval()  # a mixed mode must survive
    model(data[0][0]).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_state = {k: v.clone() for k, v in model.bn.state_dict().items()}
    model.bn.train()
    bn_mode = [(n, m.training) for n, m in model.named_modules()]
    run(method, model, data, 0.5)
    assert [(n, m.training) for n, m in model.named_modules()] == bn_mode
    for n, p in model.named_parameters():
        key = n[: -len("_orig")] if n.endswith("_orig") else n
        assert torch.equal(p, values[key]), n
        assert torch.equal(p.grad, grads[key]), n
    for k, v in model.bn.state_dict().items():
        assert torch.equal(v, bn_state[k]), k


def test_snip_scores_equal_plain_autograd():
    model, data = SmallConvNet(), conv_data()
    ref = copy.deepcopy(model)
    for x, y in data:
        F.cross_entropy(ref(x), y).backward()
    expected = [(m.weight.grad * m.weight).abs() for m in weights(ref)]
    scores = fp.scores.snip_scores(model, F.cross_entropy, data)
    assert list(scores) == [(m, "weight") for m in weights(model)]
    for got, want in zip(scores.values(), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    # Unpruned: FORCE's sensitivity is SNIP's.
    for got, want in zip(fp.scores.force_scores(model, F.cross_entropy, data).values(), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    # fastprune.snip keeps exactly the top-scoring connections.
    masks = fp.snip(model, F.cross_entropy, data, 0.8)
    flat = torch.cat([e.reshape(-1) for e in expected])
    keep = torch.cat([m.reshape(-1) for m in masks.values()]) != 0
    n_keep = int(keep.sum())
    assert n_keep == flat.numel() - round(0.8 * flat.numel())
    assert flat[keep].min() >= flat[~keep].max()


def test_snip_scores_on_a_pruned_model_use_the_masked_network():
    model, data = mlp(), mlp_data()
    fp.l1_unstructured(model[2], "weight", amount=0.5)
    mask = model[2].weight_mask
    w = model[2].weight_orig.detach()
    # dL/d(w*c) is the gradient of the effective weight of the pruned network; weight_orig's
    # own gradient is that times c, so take it from a copy made permanent.
    probe = copy.deepcopy(model)
    fp.remove(probe[2], "weight")
    for x, y in data:
        F.cross_entropy(probe(x), y).backward()
    g_eff = probe[2].weight.grad
    snip = fp.scores.snip_scores(model, F.cross_entropy, data)[(model[2], "weight")]
    force = fp.scores.force_scores(model, F.cross_entropy, data)[(model[2], "weight")]
    torch.testing.assert_close(snip, (g_eff * w).abs() * mask)
    torch.testing.assert_close(force, (g_eff * w).abs())
    assert torch.all(snip[mask == 0] == 0)
    assert torch.any(force[mask == 0] > 0)
    # The grads of the model itself were not touched by the score computation.
    assert model[2].weight_orig.grad is None


def _record_rounds(monkeypatch):
    rounds = []
    real = at_init._kselect

    def spy(scores, eligible, k):
        keep = real(scores, eligible, k)
        rounds.append(torch.cat([kk.reshape(-1) for kk in keep]).clone())
        return keep

    monkeypatch.setattr(at_init, "_kselect", spy)
    return rounds


def test_force_revives_connections_iterative_snip_cannot(monkeypatch):
    data = mlp_data(seed=3, n=40, batches=2)
    rounds = _record_rounds(monkeypatch)
    masks = fp.force(mlp(seed=2), F.cross_entropy, data, 0.9, steps=6, progress=False)
    final = torch.cat([m.reshape(-1) for m in masks.values()]) != 0
    assert len(rounds) == 6 and torch.equal(rounds[-1], final)
    revived = [int((~earlier & final).sum()) for earlier in rounds[:-1]]
    assert max(revived) > 0, "FORCE never brought back a pruned connection"

    rounds.clear()
    masks = fp.iterative_snip(mlp(seed=2), F.cross_entropy, data, 0.9, steps=6, progress=False)
    final = torch.cat([m.reshape(-1) for m in masks.values()]) != 0
    assert len(rounds) == 6
    for earlier, later in zip(rounds, rounds[1:]):
        assert not torch.any(later & ~earlier), "iterative SNIP revived a connection"
    assert torch.equal(rounds[-1], final)


def test_iterative_rounds_follow_the_schedule(monkeypatch):
    rounds = _record_rounds(monkeypatch)
    model = mlp()
    n = sum(m.weight.numel() for m in weights(model))
    fp.iterative_snip(model, F.cross_entropy, mlp_data(), 0.9, steps=5, progress=False)
    pruned = [int((~r).sum()) for r in rounds]
    assert pruned == fp.pruning_schedule(n, 0.9, 5, "exp")
    keep = [n - p for p in pruned]
    for t, kept in enumerate(keep, start=1):
        assert abs(kept - n * 0.1 ** (t / 5)) <= 1
    rounds.clear()
    fp.force(mlp(), F.cross_entropy, mlp_data(), 0.9, steps=5, schedule="linear", progress=False)
    assert [int((~r).sum()) for r in rounds] == [round(0.9 * n * t / 5) for t in range(1, 6)]


def test_synflow_scores_match_a_manual_computation_and_signs_survive():
    model = mlp(seed=5)
    signs = [m.weight.detach().sign().clone() for m in weights(model)]
    x = torch.randn(3, 6)
    scores = fp.scores.synflow_scores(model, x)
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.abs_()
    ref(torch.ones(3, 6, dtype=torch.float64)).sum().backward()
    for got, m in zip(scores.values(), weights(ref)):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, (m.weight.grad * m.weight).abs())
    fp.synflow(model, x, 0.7, steps=5, progress=False)
    for m, s in zip(weights(model), signs):
        assert torch.equal(m.weight_orig.sign(), s)
        assert m.weight_orig.dtype == torch.float32


def test_synflow_uses_eval_mode_and_restores_it():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model.train()
    scores = fp.scores.synflow_scores(model, torch.randn(2, 4))
    # In train mode BatchNorm would normalise the constant all-ones batch to 0 and kill every score.
    assert all(bool(s.any()) for s in scores.values())
    assert all(m.training for m in model.modules())


def test_default_parameters_are_linear_and_conv_weights():
    model = SmallConvNet()
    scores = fp.scores.snip_scores(model, F.cross_entropy, conv_data())
    assert list(scores) == [(model.conv, "weight"), (model.fc1, "weight"), (model.fc2, "weight")]
    scores = fp.scores.magnitude_scores(model, parameters=[(model.fc2, "bias")])
    assert torch.equal(scores[(model.fc2, "bias")], model.fc2.bias.detach().abs())


def test_explicit_parameters_and_single_batch_tuple():
    model = mlp()
    x, y = mlp_data(batches=1)[0]
    masks = fp.snip(model, F.cross_entropy, (x, y), 5, parameters=[(model[4], "weight"), (model[4], "bias")])
    assert list(masks) == [(model[4], "weight"), (model[4], "bias")]
    assert sum(int((mk == 0).sum()) for mk in masks.values()) == 5
    assert not fp.is_pruned(model[0])


def test_progress_bar_only_when_asked(capsys):
    fp.force(mlp(), F.cross_entropy, mlp_data(), 0.5, steps=3, progress=True)
    assert "FORCE" in capsys.readouterr().err
    fp.force(mlp(), F.cross_entropy, mlp_data(), 0.5, steps=3, progress=False)
    assert "FORCE" not in capsys.readouterr().err
    fp.force(mlp(), F.cross_entropy, mlp_data(), 0.5, steps=3)  # captured stderr is not a tty
    assert "FORCE" not in capsys.readouterr().err


def _const_loss(out, y):
    return torch.tensor(1.0)


def _detached_loss(out, y):
    return F.cross_entropy(out.detach(), y)


def _zero_grad_loss(out, y):
    return 0.0 * out.sum()


BAD_CALLS = [
    ("amount", lambda fn, m, d: fn(m, F.cross_entropy, d, 1.5), ValueError),
    ("amount", lambda fn, m, d: fn(m, F.cross_entropy, d, -1), ValueError),
    ("amount", lambda fn, m, d: fn(m, F.cross_entropy, d, 10_000), ValueError),
    ("amount", lambda fn, m, d: fn(m, F.cross_entropy, d, "half"), TypeError),
    ("data is empty", lambda fn, m, d: fn(m, F.cross_entropy, [], 0.5), ValueError),
    ("data", lambda fn, m, d: fn(m, F.cross_entropy, [d[0][0]], 0.5), TypeError),
    ("does not depend", lambda fn, m, d: fn(m, _const_loss, d, 0.5), ValueError),
    ("does not depend", lambda fn, m, d: fn(m, _detached_loss, d, 0.5), ValueError),
    ("zero gradient", lambda fn, m, d: fn(m, _zero_grad_loss, d, 0.5), ValueError),
    ("loss_fn", lambda fn, m, d: fn(m, "cross_entropy", d, 0.5), TypeError),
    ("parameters", lambda fn, m, d: fn(m, F.cross_entropy, d, 0.5, parameters=[(nn.Linear(2, 2), "weight")]),
     ValueError),
    ("parameters", lambda fn, m, d: fn(m, F.cross_entropy, d, 0.5, parameters=[(m[0], "nope")]), ValueError),
    ("parameters is empty", lambda fn, m, d: fn(m, F.cross_entropy, d, 0.5, parameters=[]), ValueError),
]


@pytest.mark.parametrize("fn", [fp.snip, fp.iterative_snip, fp.force], ids=lambda f: f.__name__)
@pytest.mark.parametrize("match,call,exc", BAD_CALLS, ids=[f"{i}-{c[0]}" for i, c in enumerate(BAD_CALLS)])
@pytest.mark.parametrize("prepruned", [False, True])
def test_bad_input_is_rejected_and_the_model_is_unchanged(fn, match, call, exc, prepruned):
    model, data = mlp(), mlp_data()
    if prepruned:
        fp.l1_unstructured(model[2], "weight", amount=0.25)
    model(data[0][0])
    before = module_snapshot(model)
    cached = model[2].__dict__.get("weight")
    with pytest.raises(exc, match=match):
        call(fn, model, data)
    assert_snapshot_equal(before, module_snapshot(model))
    if prepruned:
        assert model[2].__dict__["weight"] is cached


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.0}, TypeError, "steps"),
        ({"schedule": "cubic"}, ValueError, "schedule"),
        ({"progress": "yes"}, TypeError, "progress"),
    ],
)
def test_bad_iteration_arguments(kwargs, exc, match):
    model, data = mlp(), mlp_data()
    before = module_snapshot(model)
    with pytest.raises(exc, match=match):
        fp.force(model, F.cross_entropy, data, 0.5, **kwargs)
    assert_snapshot_equal(before, module_snapshot(model))


@pytest.mark.parametrize(
    "example,amount,exc,match",
    [
        (torch.ones(2, 6), 1.2, ValueError, "amount"),
        (torch.ones(0, 6), 0.5, ValueError, "example_input"),
        (torch.ones(2, 6, dtype=torch.int64), 0.5, TypeError, "example_input"),
        ([[1.0] * 6], 0.5, TypeError, "example_input"),
    ],
)
def test_synflow_bad_input(example, amount, exc, match):
    model = mlp()
    before = module_snapshot(model)
    with pytest.raises(exc, match=match):
        fp.synflow(model, example, amount, steps=3)
    assert_snapshot_equal(before, module_snapshot(model))


def test_model_without_prunable_layers_is_rejected():
    model = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match="parameters"):
        fp.snip(model, F.cross_entropy, mlp_data(), 0.5)
    with pytest.raises(TypeError, match="model"):
        fp.snip("model", F.cross_entropy, mlp_data(), 0.5)


def test_digits_example_runs(capsys):
    pytest.importorskip("sklearn")
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "digits_snip.py")
    spec = importlib.util.spec_from_file_location("digits_snip", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        results = example.main(["--seeds", "1", "--epochs", "2", "--sparsities", "0.9",
                                "--methods", "dense", "snip", "force"])
    finally:
        torch.use_deterministic_algorithms(deterministic)
    out = capsys.readouterr().out
    assert "| SNIP |" in out and "| FORCE |" in out
    assert set(results) == {("dense", 0.0), ("snip", 0.9), ("force", 0.9)}
    assert all(0.0 <= a <= 1.0 for accs in results.values() for a in accs)


def test_score_functions_take_explicit_masks():
    model, data = mlp(), mlp_data()
    mask = torch.ones_like(model[0].weight)
    mask[:, 0] = 0
    snip = fp.scores.snip_scores(model, F.cross_entropy, data, masks={(model[0], "weight"): mask})
    force = fp.scores.force_scores(model, F.cross_entropy, data, masks={(model[0], "weight"): mask})
    flow = fp.scores.synflow_scores(model, data[0][0], masks={(model[0], "weight"): mask})
    assert torch.all(snip[(model[0], "weight")][:, 0] == 0)
    assert torch.any(force[(model[0], "weight")][:, 0] > 0)
    assert torch.all(flow[(model[0], "weight")][:, 0] == 0)
    assert not fp.is_pruned(model)
    with pytest.raises(ValueError, match="masks"):
        fp.scores.snip_scores(model, F.cross_entropy, data, masks={(model[0], "bias"): torch.ones(12)})
    with pytest.raises(ValueError, match="masks"):
        fp.scores.snip_scores(model, F.cross_entropy, data, masks={(model[0], "weight"): torch.ones(3)})


def test_old_score_names_are_deprecated_aliases():
    model, data = mlp(), mlp_data()
    for old, new in [("snip", "snip_scores"), ("force", "force_scores")]:
        with pytest.warns(DeprecationWarning, match=new):
            got = getattr(fp.scores, old)(model, F.cross_entropy, data)
        want = getattr(fp.scores, new)(model, F.cross_entropy, data)
        assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.warns(DeprecationWarning, match="synflow_scores"):
        fp.scores.synflow(model, data[0][0])
    with pytest.warns(DeprecationWarning, match="magnitude_scores"):
        fp.scores.magnitude(model)
    assert fp.snip_scores is fp.scores.snip_scores
