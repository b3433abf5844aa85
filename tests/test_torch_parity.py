"""Places where a new user compares fastprune with torch.nn.utils.prune on the same input.

Memory released by ``del``, masks with values other than 0/1, MaskSets after
parameters are replaced, the meta device, importance scores for tensors that
are not pruned, pickles without fastprune, and ``amount=True``.
"""
import copy
import gc
import subprocess
import sys
import weakref

import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp


def _linear(seed, shape=(10, 10)):
    torch.manual_seed(seed)
    return nn.Linear(shape[1], shape[0])


class _NoGC:
    """The cyclic collector off: only reference counting may free objects."""

    def __enter__(self):
        gc.collect()
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was:
            gc.enable()


# -- 1. a pruned module is freed by del, as torch's is ------------------------------------------


@pytest.mark.parametrize(
    "prune",
    [
        lambda m: fp.l1_unstructured(m[0], "weight", 0.5),
        lambda m: fp.global_unstructured([(m[0], "weight"), (m[1], "weight")], pruning_method=fp.L1Unstructured, amount=0.5),
        lambda m: (fp.l1_unstructured(m[0], "weight", 0.5), fp.remove(m[0], "weight")),
        lambda m: (fp.l1_unstructured(m[0], "weight", 0.5), tp.remove(m[0], "weight")),
        lambda m: copy.deepcopy(fp.ln_structured(m[1], "weight", 0.5, 2, 0)),
    ],
    ids=["local", "global", "removed", "removed-by-torch", "deepcopied"],
)
def test_pruned_model_is_freed_without_the_cycle_collector(prune):
    with _NoGC():
        model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
        prune(model)
        refs = [weakref.ref(model)] + [weakref.ref(m) for m in model]
        del model
        assert all(r() is None for r in refs)


def test_deepcopy_and_pickle_still_work_without_the_back_reference(tmp_path):
    m = _linear(0)
    fp.l1_unstructured(m, "weight", 0.5)
    c = copy.deepcopy(m)
    assert torch.equal(c.weight, m.weight) and c.weight_orig is not m.weight_orig
    torch.save(m, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    again = copy.deepcopy(loaded)  # the unpickled module's deepcopy support points at itself
    assert torch.equal(again.weight, m.weight)
    loaded.weight_orig.data.fill_(3.0)
    assert not torch.equal(copy.deepcopy(loaded).weight, m.weight)


# -- 2. masks with values other than 0 and 1 ------------------------------------------------------

SOFT = torch.tensor([2.0, 0.5, 0.0, 1.0, 0.999]).repeat(20).reshape(10, 10)


@pytest.mark.parametrize("amount", [0.3, 7, 0.0])
def test_soft_mask_then_l1_matches_torch(amount):
    a, b = _linear(0), _linear(0)
    fp.custom_from_mask(a, "weight", SOFT)
    tp.custom_from_mask(b, "weight", SOFT)
    fp.l1_unstructured(a, "weight", amount)
    tp.l1_unstructured(b, "weight", amount)
    assert torch.equal(a.weight_mask, b.weight_mask)
    assert torch.equal(a.weight, b.weight)
    assert bool((a.weight_mask == 2.0).any())  # the scaling of the kept weights is not lost


@pytest.mark.parametrize("method", ["L1Unstructured", "RandomUnstructured"])
def test_soft_mask_then_global_matches_torch(method):
    a, b = _linear(0), _linear(0)
    a2, b2 = _linear(1, (8, 5)), _linear(1, (8, 5))
    fp.custom_from_mask(a, "weight", SOFT)
    tp.custom_from_mask(b, "weight", SOFT)
    torch.manual_seed(5)
    fp.global_unstructured([(a, "weight"), (a2, "weight")], pruning_method=getattr(fp, method), amount=0.3)
    torch.manual_seed(5)
    tp.global_unstructured([(b, "weight"), (b2, "weight")], pruning_method=getattr(tp, method), amount=0.3)
    assert torch.equal(a.weight_mask, b.weight_mask)
    assert torch.equal(a2.weight_mask, b2.weight_mask)


def test_binary_masks_keep_the_fast_path(monkeypatch):
    a = _linear(0)
    fp.l1_unstructured(a, "weight", 0.2)
    calls = []
    real = fp.ops.kselect_
    monkeypatch.setattr(fp.ops, "kselect_", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    fp.l1_unstructured(a, "weight", 0.2)
    fp.global_unstructured([(a, "weight")], pruning_method=fp.L1Unstructured, amount=0.2)
    assert len(calls) == 2


class _RecordTorchCalls(torch.overrides.TorchFunctionMode):
    """Names of the torch functions and tensor methods called inside the block."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("amount", [0.4, 0.5])
def test_iterated_pruning_reads_no_mask_outside_the_selection(amount):
    """A second pruning with a fractional amount neither counts nor checks the existing masks itself:
    the selection counts the units left in its first pass, and masks fastprune wrote unchanged
    since are known to hold only 0 and 1. The masks are still torch's."""
    mods = {lib: [_linear(0), _linear(1, (8, 5))] for lib in ("fp", "tp")}
    lib = {"fp": fp, "tp": tp}
    for step in range(3):
        for name, (a, b) in mods.items():
            P = lib[name]
            if name == "fp" and step > 0:
                with _RecordTorchCalls() as rec:
                    P.global_unstructured([(a, "weight"), (b, "weight")], pruning_method=P.L1Unstructured,
                                          amount=amount)
                    P.l1_unstructured(b, "weight", amount)
                mask_passes = {"count_nonzero", "__ne__", "ne", "any", "sum", "__eq__", "eq", "nonzero"}
                assert not mask_passes & set(rec.names), rec.names
            else:
                P.global_unstructured([(a, "weight"), (b, "weight")], pruning_method=P.L1Unstructured,
                                      amount=amount)
                P.l1_unstructured(b, "weight", amount)
        for x, y in zip(mods["fp"], mods["tp"]):
            assert torch.equal(x.weight_mask, y.weight_mask), step


def test_mask_written_in_place_is_checked_again():
    # The record that a mask holds only 0/1 dies with any in-place write to it.
    a, b = _linear(0), _linear(0)
    for P, m in ((fp, a), (tp, b)):
        P.l1_unstructured(m, "weight", 0.3)
        with torch.no_grad():
            m.weight_mask[0, :5] *= 0.5  # now soft
        P.global_unstructured([(m, "weight")], pruning_method=P.L1Unstructured, amount=0.3)
    assert torch.equal(a.weight_mask, b.weight_mask)
    assert bool((a.weight_mask == 0.25).any())  # torch squares soft values when installing


# -- 3. a MaskSet follows parameters that were replaced --------------------------------------------


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def test_maskset_follows_parameters_replaced_by_assign():
    model = _mlp()
    ms = fp.sparsify_(model, 0.5)
    dense = _mlp().state_dict()  # the same shapes, no zeros
    model.load_state_dict(dense, assign=True)
    assert all(int((m.weight == 0).sum()) == 0 for m in (model[0], model[2]))
    ms.apply_()
    for i, m in enumerate((model[0], model[2])):
        assert torch.equal(m.weight != 0, ms.mask(i) & (dense[f"{2 * i}.weight"] != 0))
    assert ms.sparsity() == pytest.approx(0.5, abs=1e-3)
    # iterated sparsify_ counts among the units the (followed) mask keeps
    again = fp.sparsify_(model, 0.5)
    assert again.sparsity() == pytest.approx(0.75, abs=1e-2)


def test_maskset_attach_rezeroes_the_live_parameters():
    model = _mlp()
    ms = fp.sparsify_(model, 0.5)
    model.load_state_dict(_mlp().state_dict(), assign=True)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    ms.attach(opt)
    model(torch.randn(3, 12)).sum().backward()
    opt.step()
    for i, m in enumerate((model[0], model[2])):
        assert not bool(m.weight[~ms.mask(i)].any())


def test_maskset_rejects_a_replacement_of_another_size():
    model = _mlp()
    ms = fp.sparsify_(model, 0.5)
    model[0].weight = nn.Parameter(torch.randn(16, 13))
    with pytest.raises(ValueError, match="replaced"):
        ms.apply_()


# -- 4. the meta device ------------------------------------------------------------------------------

META_CASES = {
    "identity": (lambda p, m: p.identity(m, "weight")),
    "l1_unstructured": (lambda p, m: p.l1_unstructured(m, "weight", 0.3)),
    "random_unstructured": (lambda p, m: p.random_unstructured(m, "weight", 0.3)),
    "ln_structured": (lambda p, m: p.ln_structured(m, "weight", 0.5, 2, 0)),
    "random_structured": (lambda p, m: p.random_structured(m, "weight", 0.5, 1)),
    "custom_from_mask": (lambda p, m: p.custom_from_mask(m, "weight", torch.ones(4, 6, device="meta"))),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_meta_module_gets_torchs_layout_and_loads_a_pruned_checkpoint(case):
    call = META_CASES[case]
    ours, theirs = nn.Linear(6, 4, device="meta"), nn.Linear(6, 4, device="meta")
    call(fp, ours)
    call(tp, theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, v in ours.state_dict().items():
        assert v.device.type == "meta" and v.shape == theirs.state_dict()[k].shape
        assert v.dtype == theirs.state_dict()[k].dtype
    # the big-model workflow: layout on meta, memory, then a pruned checkpoint
    source = _linear(3, (4, 6))
    fp.l1_unstructured(source, "weight", 0.5)
    ours.to_empty(device="cpu")
    ours.load_state_dict(source.state_dict())
    x = torch.randn(2, 6)
    assert torch.equal(ours(x), source(x))


def test_meta_global_unstructured_is_refused_naming_the_device():
    m = nn.Linear(6, 4, device="meta")
    with pytest.raises(ValueError, match="meta"):
        fp.global_unstructured([(m, "weight")], pruning_method=fp.L1Unstructured, amount=0.3)
    assert not fp.is_pruned(m)
    with pytest.raises(ValueError, match="meta"):
        fp.sparsify_(m, 0.3)


def test_meta_second_pruning_is_refused_naming_the_device():
    m = nn.Linear(6, 4, device="meta")
    fp.l1_unstructured(m, "weight", 0.3)
    with pytest.raises(ValueError, match="meta"):
        fp.l1_unstructured(m, "weight", 0.3)
    assert isinstance(m._forward_pre_hooks[next(iter(m._forward_pre_hooks))], fp.L1Unstructured)


# -- 5. importance scores for tensors that are not pruned are ignored ---------------------------------


def test_extra_importance_scores_are_ignored_like_torch():
    a, b = _linear(0), _linear(0)
    a2, b2 = _linear(1), _linear(1)
    scores_a = {(a, "weight"): torch.rand(10, 10), (a2, "weight"): torch.rand(10, 10), (a, "bias"): torch.rand(10)}
    scores_b = {(b, "weight"): scores_a[(a, "weight")], (b2, "weight"): scores_a[(a2, "weight")],
                (b, "bias"): scores_a[(a, "bias")]}
    fp.global_unstructured([(a, "weight")], pruning_method=fp.L1Unstructured, amount=0.4, importance_scores=scores_a)
    tp.global_unstructured([(b, "weight")], pruning_method=tp.L1Unstructured, amount=0.4, importance_scores=scores_b)
    assert torch.equal(a.weight_mask, b.weight_mask)
    assert not fp.is_pruned(a2)
    ms = fp.sparsify_([(a2, "weight")], 0.4, importance_scores=scores_a)
    assert torch.equal(ms.mask(0), fp.ops.kselect([scores_a[(a2, "weight")]], None, 40, dtypes=[torch.bool])[0])


# -- 6. a model made permanent by torch needs nothing of fastprune -------------------------------------


@pytest.mark.parametrize("make_permanent", ["torch.remove", "hook.remove"])
def test_unpruned_module_unpickles_without_fastprune(tmp_path, make_permanent):
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    fp.l1_unstructured(model[0], "weight", 0.5)
    fp.ln_structured(model[1], "weight", 0.5, 2, 0)
    for m in model:
        if make_permanent == "torch.remove":
            tp.remove(m, "weight")
        else:  # what Lightning's callback does
            for k, hook in list(m._forward_pre_hooks.items()):
                hook.remove(m)
                del m._forward_pre_hooks[k]
        assert "__deepcopy__" not in m.__dict__
    path = tmp_path / "model.pt"
    torch.save(model, path)
    code = (
        "import sys, torch; sys.modules['fastprune'] = None; "
        f"m = torch.load({str(path)!r}, weights_only=False); print(int((m[0].weight == 0).sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == int((model[0].weight == 0).sum()) == 12


def test_a_module_still_pruned_on_another_tensor_keeps_deepcopy_support():
    m = _linear(0)
    fp.l1_unstructured(m, "weight", 0.5)
    fp.l1_unstructured(m, "bias", 0.5)
    tp.remove(m, "weight")
    assert "__deepcopy__" in m.__dict__
    assert torch.equal(copy.deepcopy(m).bias, m.bias)


# -- 8. amount=True ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: fp.l1_unstructured(m, "weight", True),
        lambda m: fp.random_unstructured(m, "weight", False),
        lambda m: fp.ln_structured(m, "weight", True, 2, 0),
        lambda m: fp.random_structured(m, "weight", True, 0),
        lambda m: fp.global_unstructured([(m, "weight")], pruning_method=fp.L1Unstructured, amount=True),
        lambda m: fp.sparsify_(m, True),
    ],
)
def test_bool_amount_is_a_type_error_naming_amount(call):
    m = _linear(0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TypeError, match="amount"):
        call(m)
    assert not fp.is_pruned(m)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


# ----------------------------------------------------------------------------- pruned weights written with the masks

def _three_layers(seed):
    torch.manual_seed(seed)
    layers = [nn.Linear(60, 40), nn.Linear(40, 30), nn.Linear(30, 5)]
    with torch.no_grad():
        w = layers[1].weight
        w[0, :4] = torch.tensor([-0.0, float("inf"), float("-inf"), float("nan")])
        w[1, :3] = torch.tensor([-1e-30, -2.5, 7.0])
    return layers


def _same_bits(a, b):
    return bool((((a == b) | (a.isnan() & b.isnan())) & (a.signbit() == b.signbit()) | a.isnan()).all())


@pytest.mark.parametrize("prepruned", ["none", "fastprune", "torch"])
@pytest.mark.parametrize("amount", [0.6, 700])
def test_global_pruned_weights_written_with_the_masks_equal_torchs(prepruned, amount):
    """global_unstructured's fast path writes orig * mask in the selection's own
    pass: the pruned weights are torch's bit for bit (-0.0 and NaN products of
    negative, inf and NaN weights included), and so are their gradients, first
    and second order."""
    ours, theirs = _three_layers(0), _three_layers(0)
    if prepruned != "none":
        lib = fp if prepruned == "fastprune" else tp  # whose hook our side carries
        for a, b in zip(ours, theirs):
            lib.random_unstructured(a, "weight", amount=0.2)
            tp.custom_from_mask(b, "weight", a.weight_mask.clone())
    fp.global_unstructured([(m, "weight") for m in ours], pruning_method=fp.L1Unstructured,
                                  amount=amount)
    tp.global_unstructured([(m, "weight") for m in theirs], pruning_method=tp.L1Unstructured, amount=amount)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.weight_mask, b.weight_mask)
        assert _same_bits(a.weight, b.weight)
        assert a.weight.requires_grad and a.weight.grad_fn is not None and not a.weight.is_leaf
        finite = a.weight_orig.detach().isfinite()

        def loss(w):  # second order needs a loss that is not linear in the weight
            return (torch.where(finite, w, torch.zeros(())) ** 3).sum()

        ga = torch.autograd.grad(loss(a.weight), a.weight_orig, create_graph=True)[0]
        gb = torch.autograd.grad(loss(b.weight), b.weight_orig, create_graph=True)[0]
        assert _same_bits(ga, gb)
        gga = torch.autograd.grad(ga.sum(), a.weight_orig)[0]
        ggb = torch.autograd.grad(gb.sum(), b.weight_orig)[0]
        assert _same_bits(gga, ggb)


def test_global_pruned_weights_without_autograd():
    """Under no_grad (or with weights that need no gradient) the pruned weight is
    a plain tensor, as torch's orig * mask is then."""
    layers = _three_layers(1)
    with torch.no_grad():
        fp.global_unstructured([(m, "weight") for m in layers], pruning_method=fp.L1Unstructured,
                                      amount=0.5)
    for m in layers:
        assert m.weight.grad_fn is None and not m.weight.requires_grad
        assert _same_bits(m.weight, m.weight_orig.detach() * m.weight_mask)


def test_global_pruning_keeps_a_users_apply_mask():
    """A tensor pruned by a user's method whose apply_mask computes something else
    than orig * mask: the installation calls it, as torch does."""

    class Doubling(fp.BasePruningMethod):  # noqa: D401
        PRUNING_TYPE = "unstructured"

        def compute_mask(self, t, default_mask):
            return default_mask

        def apply_mask(self, module):
            return 2 * super().apply_mask(module)

    class DoublingContainer(fp.PruningContainer):
        def apply_mask(self, module):
            return 2 * super().apply_mask(module)

    layers = _three_layers(2)
    Doubling.apply(layers[0], "weight")  # a single hook: torch wraps it into a plain container
    fp.identity(layers[1], "weight")
    key, hook = next(iter(layers[1]._forward_pre_hooks.items()))
    layers[1]._forward_pre_hooks[key] = DoublingContainer(hook)
    fp.global_unstructured([(m, "weight") for m in layers], pruning_method=fp.L1Unstructured,
                                  amount=0.5)
    assert _same_bits(layers[1].weight, 2 * layers[1].weight_orig * layers[1].weight_mask)
    for m in (layers[0], layers[2]):
        assert _same_bits(m.weight, m.weight_orig * m.weight_mask)
