"""Lean in-place pruning: fastprune.sparsify_ and MaskSet."""
import copy
import io

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import fastprune
from fastprune import MaskSet, sparsify_
from fastprune.ops import pack_mask, unpack_mask


def tie_free_(model, seed=0):
    """Give every Linear/Conv weight distinct |values| across the whole model."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    total = sum(w.numel() for w in weights)
    g = torch.Generator().manual_seed(seed)
    magnitudes = (torch.randperm(total, generator=g) + 1).to(torch.float32) / total
    signs = torch.randint(0, 2, (total,), generator=g).to(torch.float32) * 2 - 1
    values = magnitudes * signs
    offset = 0
    with torch.no_grad():
        for w in weights:
            w.copy_(values[offset:offset + w.numel()].reshape(w.shape))
            offset += w.numel()
    return model


def make_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    return tie_free_(model, seed)


def weights_of(model):
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, state):
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert torch.equal(now[k], state[k]), k


@pytest.fixture
def model():
    return make_model()


def test_global_l1_exact_k_and_order(model):
    originals = [w.detach().clone() for w in weights_of(model)]
    total = sum(w.numel() for w in originals)
    ms = sparsify_(model, 0.4)
    assert isinstance(ms, MaskSet) and len(ms) == 3
    k = round(0.4 * total)
    masks = [ms.mask(i) for i in range(len(ms))]
    assert sum(int((~m).sum()) for m in masks) == k
    assert ms.num_pruned() == k
    assert ms.sparsity() == pytest.approx(k / total)
    pruned = torch.cat([o.abs()[~m] for o, m in zip(originals, masks)])
    kept = torch.cat([o.abs()[m] for o, m in zip(originals, masks)])
    assert pruned.max() <= kept.min()
    for w, o, m in zip(weights_of(model), originals, masks):
        assert torch.equal(w.detach(), torch.where(m, o, torch.zeros_like(o)))
        # in place: no reparametrisation, no hooks
    assert not fastprune.is_pruned(model)
    assert all(not hasattr(mod, "weight_orig") for mod in model.modules())


def test_masks_equal_global_unstructured(model):
    reference = copy.deepcopy(model)
    pairs = [(m, "weight") for m in reference.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    fastprune.global_unstructured(pairs, pruning_method=fastprune.L1Unstructured, amount=0.3)
    ms = sparsify_(model, 0.3)
    for i, (m, _) in enumerate(pairs):
        assert torch.equal(ms.mask(i), m.weight_mask != 0)
        assert torch.equal(ms.masks[i], pack_mask(m.weight_mask))
        assert torch.equal(weights_of(model)[i].detach(), m.weight.detach())


def test_pairs_and_int_amount_and_importance_scores(model):
    lin1, lin2 = model[3], model[5]
    scores = {(lin2, "weight"): torch.arange(lin2.weight.numel(), dtype=torch.float32).reshape(lin2.weight.shape)}
    ms = sparsify_([(lin1, "weight"), (lin2, "weight")], 7, importance_scores=scores, scope="local")
    assert ms.kept_counts() == [lin1.weight.numel() - 7, lin2.weight.numel() - 7]
    # by its scores, lin2 loses its 7 first units (row-major), whatever the weights
    assert torch.equal(ms.mask(1).reshape(-1)[:7], torch.zeros(7, dtype=torch.bool))
    assert bool(ms.mask(1).reshape(-1)[7:].all())
    assert ms.names == ["0:Linear.weight", "1:Linear.weight"]


def test_local_scope_per_tensor(model):
    originals = [w.detach().clone() for w in weights_of(model)]
    ms = sparsify_(model, 0.25, scope="local")
    for i, o in enumerate(originals):
        m = ms.mask(i)
        assert int((~m).sum()) == round(0.25 * o.numel())
        assert o.abs()[~m].max() <= o.abs()[m].min()
        assert ms.sparsity(i) == pytest.approx(round(0.25 * o.numel()) / o.numel())
    ref = copy.deepcopy(make_model())
    fastprune.l1_unstructured(ref[3], "weight", amount=0.25)
    assert torch.equal(ms.mask(1), ref[3].weight_mask != 0)


def test_random_exact_k_and_seeded(model):
    m2 = make_model()
    torch.manual_seed(123)
    a = sparsify_(model, 0.5, method="random")
    torch.manual_seed(123)
    b = sparsify_(m2, 0.5, method="random")
    total = a.numel()
    assert a.num_pruned() == round(0.5 * total)
    for x, y in zip(a.masks, b.masks):
        assert torch.equal(x, y)
    for w, i in zip(weights_of(model), range(3)):
        assert bool((w.detach()[~a.mask(i)] == 0).all())
    local = sparsify_(make_model(), 10, method="random", scope="local")
    assert local.kept_counts() == [w.numel() - 10 for w in weights_of(model)]


def test_random_spans_chunks(monkeypatch):
    import fastprune.core.chunked_select as cs

    monkeypatch.setattr(cs, "CHUNK", 64)
    lin = nn.Linear(30, 21)  # 630 units: several chunks, last one partial
    ms = sparsify_([(lin, "weight")], 0.6, method="random")
    assert ms.num_pruned() == 378
    again = sparsify_([(lin, "weight")], 100, method="random")
    assert again.num_pruned() == 478
    assert ms.masks[0] is again.masks[0]
    assert int(ms.masks[0][-1]) >> (630 % 8) == 0  # padding bits stay 0


def _random_oracle(shapes, keeps, amount, scope, seed):
    """Plain-torch spec of sparsify_(method="random"): the units of smallest hash key among those kept."""
    from fastprune.core.chunked_select import random_keys

    numels = [int(torch.Size(s).numel()) for s in shapes]
    bases = [sum(numels[:i]) for i in range(len(numels))]
    keys = [random_keys(torch.arange(n, dtype=torch.int64) + b, seed) for n, b in zip(numels, bases)]
    elig = [torch.ones(n, dtype=torch.bool) if k is None else k.reshape(-1).clone() for n, k in zip(numels, keeps)]
    groups = [list(range(len(shapes)))] if scope == "global" else [[i] for i in range(len(shapes))]
    for g in groups:
        allk = torch.cat([keys[i] for i in g])
        alle = torch.cat([elig[i] for i in g])
        cand = alle.nonzero().reshape(-1)
        k = round(amount * cand.numel()) if isinstance(amount, float) else amount
        order = torch.sort(allk[cand], stable=True).indices  # ties (none in practice): lower index first
        alle[cand[order[:k]]] = False
        off = 0
        for i in g:
            elig[i] = alle[off:off + numels[i]]
            off += numels[i]
    return [e.reshape(s) for e, s in zip(elig, shapes)]


@pytest.mark.parametrize("scope", ["global", "local"])
def test_random_is_its_spec(monkeypatch, scope):
    """Seed from torch's generator, hash of (seed, global index), k smallest keys among the kept units."""
    import fastprune.core.chunked_select as cs

    monkeypatch.setattr(cs, "CHUNK", 128)  # several chunks and radix passes over them
    net = nn.Sequential(nn.Linear(30, 21), nn.Linear(21, 7), nn.Linear(7, 3))
    pairs = [(m, "weight") for m in net]
    shapes = [m.weight.shape for m in net]
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
    torch.manual_seed(5)
    first = sparsify_(pairs, 0.4, method="random", scope=scope)
    want = _random_oracle(shapes, [None] * 3, 0.4, scope, seed)
    assert all(torch.equal(first.mask(i), want[i]) for i in range(3))
    keeps = [first.mask(i).clone() for i in range(3)]
    torch.manual_seed(6)
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
    torch.manual_seed(6)
    second = sparsify_(pairs, 0.5, method="random", scope=scope)  # among the units still kept
    want = _random_oracle(shapes, keeps, 0.5, scope, seed)
    assert all(torch.equal(second.mask(i), want[i]) for i in range(3))


def test_random_is_uniform():
    """Every unit is pruned with the same probability (binomial bounds over many seeds)."""
    lin = nn.Linear(10, 8)
    counts = torch.zeros(80)
    runs = 400
    for seed in range(runs):
        torch.manual_seed(seed)
        lin2 = copy.deepcopy(lin)
        ms = sparsify_([(lin2, "weight")], 20, method="random")
        assert ms.num_pruned() == 20
        counts += (~ms.mask(0)).reshape(-1).float()
    p = 20 / 80
    sd = (runs * p * (1 - p)) ** 0.5
    assert float((counts - runs * p).abs().max()) < 5 * sd
    # and no drift along the flat index (a biased tie rule would show here)
    half = counts.numel() // 2
    assert abs(float(counts[:half].sum() - counts[half:].sum())) < 5 * sd * half ** 0.5


def test_iterated_counts_among_kept(model):
    originals = [w.detach().clone() for w in weights_of(model)]
    total = sum(o.numel() for o in originals)
    first = sparsify_(model, 0.5)
    kept_after_first = total - round(0.5 * total)
    second = sparsify_(model, 0.5)
    assert second.num_pruned() == total - (kept_after_first - round(0.5 * kept_after_first))
    # the first MaskSet sees the new masks too (shared)
    assert first.num_pruned() == second.num_pruned()
    # same result as pruning 2 steps with fastprune's torch-style API
    ref = make_model()
    pairs = [(m, "weight") for m in ref.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    fastprune.global_unstructured(pairs, pruning_method=fastprune.L1Unstructured, amount=0.5)
    fastprune.global_unstructured(pairs, pruning_method=fastprune.L1Unstructured, amount=0.5)
    for i, (m, _) in enumerate(pairs):
        assert torch.equal(second.mask(i), m.weight_mask != 0)


def test_iterated_random_never_revives(model):
    first = sparsify_(model, 0.5)
    pruned_before = first.num_pruned()
    before = [first.mask(i).clone() for i in range(3)]
    then = sparsify_(model, 20, method="random")
    assert then.num_pruned() == pruned_before + 20
    for i in range(3):
        assert not bool((then.mask(i) & ~before[i]).any())  # nothing pruned comes back


def test_apply_after_optimizer_step(model):
    ms = sparsify_(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(5, 3, 8, 8)
    model(x).sum().backward()
    opt.step()
    assert any(bool((w.detach()[~ms.mask(i)] != 0).any()) for i, w in enumerate(weights_of(model)))
    ms.apply_()
    for i, w in enumerate(weights_of(model)):
        assert bool((w.detach()[~ms.mask(i)] == 0).all())


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_attach_keeps_zeros_through_training(model, optim):
    ms = sparsify_(model, 0.6)
    if optim == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    handle = ms.attach(opt)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3, 8, 8)).pow(2).mean().backward()
        for i, w in enumerate(weights_of(model)):
            assert bool((w.grad[~ms.mask(i)] == 0).all())  # gradients masked
        opt.step()
        for i, w in enumerate(weights_of(model)):
            assert bool((w.detach()[~ms.mask(i)] == 0).all())
    handle.remove()
    opt.zero_grad()
    model(torch.randn(4, 3, 8, 8)).pow(2).mean().backward()
    assert any(bool((w.grad[~ms.mask(i)] != 0).any()) for i, w in enumerate(weights_of(model)))


def test_mask_gradients_alone_with_plain_sgd(model):
    ms = sparsify_(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = ms.mask_gradients()
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3, 8, 8)).sum().backward()
        opt.step()
    for i, w in enumerate(weights_of(model)):
        assert bool((w.detach()[~ms.mask(i)] == 0).all())
    ms.detach()
    assert ms._hook_groups == []
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert any(bool((w.grad[~ms.mask(i)] != 0).any()) for i, w in enumerate(weights_of(model)))
    del handle


def test_state_dict_round_trip(model):
    ms = sparsify_(model, 0.45)
    buf = io.BytesIO()
    torch.save(ms.state_dict(), buf)
    fresh = make_model()
    target = sparsify_(fresh, 0.0)  # all kept, same structure
    assert target.num_pruned() == 0
    buf.seek(0)
    target.load_state_dict(torch.load(buf))
    for i in range(3):
        assert torch.equal(target.masks[i], ms.masks[i])
        assert torch.equal(weights_of(fresh)[i], weights_of(model)[i])
    assert target.num_pruned() == ms.num_pruned()


def test_load_state_dict_rejects_mismatch(model):
    ms = sparsify_(model, 0.5)
    state = ms.state_dict()
    before = snapshot(model)
    masks_before = [m.clone() for m in ms.masks]
    other = sparsify_([(nn.Linear(3, 3), "weight")], 0.0)
    with pytest.raises(ValueError, match="masks"):
        other.load_state_dict(state)
    bad = dict(state, masks=state["masks"][:-1] + [torch.zeros(3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="bytes"):
        ms.load_state_dict(bad)
    with pytest.raises(ValueError, match="labels"):
        ms.load_state_dict(dict(state, names=["a", "b", "c"]))
    with pytest.raises(TypeError, match="state_dict"):
        ms.load_state_dict([1])
    assert_same_state(model, before)
    for a, b in zip(ms.masks, masks_before):
        assert torch.equal(a, b)


def test_to_pruning_then_remove(model):
    ms = sparsify_(model, 0.5)
    sparse = [w.detach().clone() for w in weights_of(model)]
    params = [w for w in weights_of(model)]
    hooks = ms.to_pruning()
    assert len(hooks) == 3
    assert fastprune.is_pruned(model) and torch_prune.is_pruned(model)
    x = torch.randn(2, 3, 8, 8)
    y = model(x)
    for i, mod in enumerate([model[0], model[3], model[5]]):
        assert mod.weight_orig is params[i]
        assert mod.weight_mask.dtype == params[i].dtype
        assert torch.equal(mod.weight_mask != 0, ms.mask(i))
    for mod in [model[0], model[3], model[5]]:
        torch_prune.remove(mod, "weight")
    assert not fastprune.is_pruned(model)
    for w, s in zip(weights_of(model), sparse):
        assert torch.equal(w.detach(), s)
    assert torch.equal(model(x), y)
    fastprune.l1_unstructured(model[3], "weight", 0.1)
    with pytest.raises(ValueError, match="no longer"):
        ms.to_pruning()
    assert not hasattr(model[0], "weight_orig")  # checked before converting anything


def test_remove_forgets_masks(model):
    ms = sparsify_(model, 0.5)
    ms.remove()
    again = sparsify_(model, 0.5)
    # the zeros are now ordinary weights: they are the smallest, pruned again
    assert again.num_pruned() == round(0.5 * again.numel())
    for i in range(3):
        assert torch.equal(again.mask(i), ms.mask(i))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(amount=1.5), ValueError, "amount"),
        (dict(amount=-1), ValueError, "amount"),
        (dict(amount="half"), TypeError, "amount"),
        (dict(amount=10**9), ValueError, "amount"),
        (dict(amount=0.5, method="l2"), ValueError, "method"),
        (dict(amount=0.5, method=1), TypeError, "method"),
        (dict(amount=0.5, scope="layer"), ValueError, "scope"),
        (dict(amount=0.5, method="random", importance_scores={}), ValueError, "importance_scores"),
        (dict(amount=0.5, importance_scores=[1]), TypeError, "importance_scores"),
    ],
)
def test_bad_arguments_leave_model_unchanged(model, kwargs, exc, match):
    first = sparsify_(model, 0.2)
    before = snapshot(model)
    masks_before = [m.clone() for m in first.masks]
    with pytest.raises(exc, match=match):
        sparsify_(model, **kwargs)
    assert_same_state(model, before)
    for a, b in zip(first.masks, masks_before):
        assert torch.equal(a, b)


def test_bad_parameters_leave_model_unchanged(model):
    before = snapshot(model)
    lin = model[3]
    with pytest.raises(TypeError, match=r"parameters\[1\]"):
        sparsify_([(lin, "weight"), "bias"], 0.5)
    with pytest.raises(ValueError, match=r"parameters\[1\]"):
        sparsify_([(lin, "weight"), (lin, "nope")], 0.5)
    with pytest.raises(ValueError, match=r"parameters\[1\]"):
        sparsify_([(lin, "weight"), (lin, "weight")], 0.5)
    with pytest.raises(TypeError, match="parameters"):
        sparsify_(lin.weight, 0.5)
    with pytest.raises(TypeError, match=r"parameters\[0\]"):
        sparsify_([(object(), "weight")], 0.5)
    with pytest.raises(ValueError, match=r"importance_scores"):
        sparsify_([(lin, "weight")], 0.5, importance_scores={(lin, "weight"): torch.zeros(3)})
    # A score for a tensor not being pruned is ignored, as in torch (tests/test_torch_parity.py).
    assert_same_state(model, before)
    fastprune.l1_unstructured(lin, "weight", 0.1)
    with pytest.raises(ValueError, match="reparametrisation"):
        sparsify_([(lin, "weight")], 0.5)


def test_empty_and_zero_amount():
    ms = sparsify_(nn.ReLU(), 0.5)
    assert len(ms) == 0 and ms.sparsity() == 0.0
    ms.apply_()
    ms.load_state_dict(ms.state_dict())
    with pytest.raises(ValueError, match="amount"):
        sparsify_(nn.ReLU(), 3)
    lin = nn.Linear(5, 7)
    w = lin.weight.detach().clone()
    ms = sparsify_(lin, 0)
    assert torch.equal(lin.weight.detach(), w) and ms.num_pruned() == 0
    assert int(ms.masks[0][-1]) == (1 << (35 % 8)) - 1


def test_tied_weights_pruned_once():
    a = nn.Linear(6, 6)
    b = nn.Linear(6, 6)
    b.weight = a.weight
    ms = sparsify_(nn.Sequential(a, b), 10)
    assert len(ms) == 1 and ms.num_pruned() == 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    lin = tie_free_(nn.Sequential(nn.Linear(40, 30))).to(dtype)
    original = lin[0].weight.detach().clone()
    ms = sparsify_(lin, 0.5)
    m = ms.mask(0)
    assert int((~m).sum()) == 600
    assert original.abs()[~m].max() <= original.abs()[m].min()
    assert torch.equal(ms.masks[0], pack_mask(m))
    assert torch.equal(unpack_mask(ms.masks[0], m.numel()).reshape(m.shape), m)


def test_mixed_old_and_new_parameters():
    torch.manual_seed(0)
    a, b = tie_free_(nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10)))
    sparsify_([(a, "weight")], 40)  # a: 60 kept, b: untouched
    orig_b = b.weight.detach().clone()
    orig_a = a.weight.detach().clone()
    ms = sparsify_([(a, "weight"), (b, "weight")], 0.5)  # among 160 kept units: 80
    assert ms.kept_counts()[0] + ms.kept_counts()[1] == 80
    assert ms.num_pruned() == 120
    kept = torch.cat([orig_a.abs()[ms.mask(0)], orig_b.abs()[ms.mask(1)]])
    newly = torch.cat([orig_a.abs()[~ms.mask(0) & (orig_a != 0)], orig_b.abs()[~ms.mask(1)]])
    assert newly.numel() == 80 and newly.max() <= kept.min()


def test_non_contiguous_parameter():
    lin = nn.Linear(6, 4)
    base = tie_free_(nn.Sequential(nn.Linear(4, 6)))[0].weight.detach()
    lin.weight = nn.Parameter(base.t())  # (4, 6) view with transposed strides
    assert not lin.weight.is_contiguous()
    original = lin.weight.detach().clone()
    ms = sparsify_([(lin, "weight")], 10)
    m = ms.mask(0)
    assert int((~m).sum()) == 10
    assert original.abs()[~m].max() <= original.abs()[m].min()
    assert torch.equal(lin.weight.detach(), torch.where(m, original, torch.zeros_like(original)))
    assert torch.equal(ms.masks[0], pack_mask(m))  # bits in logical row-major order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_rand_stream_in_chunks_is_one_draw(dtype):
    """Sharded random methods regenerate torch.rand's CPU stream in chunks: it must be the one draw."""
    n = 200_003
    gen = torch.Generator().manual_seed(9)
    whole = torch.rand(n, dtype=dtype, generator=gen)
    after = gen.get_state()
    gen.manual_seed(9)
    sizes = [1, 15, 16, 17, 4096, 65_537]
    parts, left = [], n
    while left:
        size = min(sizes[len(parts) % len(sizes)], left)
        parts.append(torch.rand(size, dtype=dtype, generator=gen))
        left -= size
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(gen.get_state(), after)
    torch.manual_seed(9)  # rand_like on a tensor draws the same stream in row-major order
    assert torch.equal(torch.rand_like(torch.empty(n, dtype=dtype)), whole)


def test_from_masks_packed_without_copy():
    lin = nn.Linear(5, 3)  # 15 units: the second byte has padding bits
    keep = torch.rand(3, 5) < 0.5
    mine = pack_mask(keep)
    mine[-1] |= 0x80  # a stray padding bit, cleared in place when not copied
    before = mine.clone()
    ms = MaskSet.from_masks([(lin, "weight")], [mine], packed=True, copy=False)
    assert ms.masks[0].data_ptr() == mine.data_ptr() and int(mine[-1]) & 0x80 == 0
    assert torch.equal(unpack_mask(mine, 15).reshape(3, 5), keep)
    other = nn.Linear(5, 3)
    ms2 = MaskSet.from_masks([(other, "weight")], [before], packed=True)
    assert ms2.masks[0].data_ptr() != before.data_ptr() and int(before[-1]) & 0x80  # copied, untouched
    with pytest.raises(TypeError, match="copy"):
        MaskSet.from_masks([(nn.Linear(5, 3), "weight")], [pack_mask(keep)], packed=True, copy=1)
