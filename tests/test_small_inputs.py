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
    fresh = methods.ones_view(w)  # the shared scalar was written: a new one replaces it
    assert methods.is_ones_view(fresh) and bool((fresh == 1).all()) and fresh._base is not view._base


def test_ones_view_shares_its_scalar_only_outside_modes():
    """Plain CPU calls share one marked scalar; inference mode and fake tensors get their own."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from fastprune.core import methods

    w = torch.randn(3, 2)
    shared = methods.ones_view(w)._base
    assert methods.ones_view(torch.randn(5))._base is shared
    assert methods.ones_view(w.double())._base is not shared  # one per dtype
    with torch.inference_mode():
        inner = methods.ones_view(w)
        assert inner._base is not shared and bool((inner == 1).all())
    assert not methods.ones_view(w)._base.is_inference()
    with FakeTensorMode() as mode:
        fake = methods.ones_view(mode.from_tensor(w))
        assert fake._base is not shared and methods.is_ones_view(fake)
    assert methods.ones_view(w)._base is shared


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


def _outcome(call):
    """(result, None) or (None, (exception type, message)) of ``call()``."""
    try:
        return call(), None
    except Exception as exc:  # noqa: BLE001 (compared, not swallowed)
        return None, (type(exc), str(exc).split("\n")[0])


@needs_ext
def test_direct_op_calls_match_torch_ops():
    """ops.kselect_ / ops.channel_norms enter the dispatcher from C++: same masks, norms, errors and version bumps."""
    from fastprune import ops

    assert ops._DIRECT is not None
    g = torch.Generator().manual_seed(3)
    scores = [torch.randn(5, 7, generator=g), torch.randint(-3, 4, (9,), generator=g).to(torch.float16)]
    masks = [None, torch.rand(9, generator=g) > 0.3]
    for exclude in (False, True):
        for largest in (False, True):
            ours = [torch.empty(5, 7), torch.empty(9, dtype=torch.bool)]
            ref = [o.clone() for o in ours]
            versions = [o._version for o in ours + ref]
            ops.kselect_(scores, masks, ours, 11, largest=largest, exclude_masked=exclude)
            torch.ops.fastprune.kselect_(scores, masks, ref, 11, largest, exclude, False)
            assert all(torch.equal(a, b) for a, b in zip(ours, ref))
            bumps = [o._version - v for o, v in zip(ours + ref, versions)]
            assert bumps[:2] == bumps[2:]  # the same dispatch keys ran
    w = torch.randn(6, 4, 3, generator=g)
    for dim, p in ((0, 2.0), (1, 1.0), (-1, float("inf")), (2, 0.0)):
        assert torch.equal(ops.channel_norms(w, dim, p), torch.ops.fastprune.channel_norms(w, dim, p))
    bad_kselect = [
        ([w], [None], [torch.empty(6, 4, 3)], 73, False),  # k > units
        ([w], [None], [torch.empty(5)], 1, False),  # wrong out size
        ([w.to(torch.complex64)], [None], [torch.empty(6, 4, 3)], 1, False),  # dtype
        ([w], [None, None], [torch.empty(6, 4, 3)], 1, False),  # lengths
        ([w], [torch.ones(3, dtype=torch.uint8)], [torch.empty(1, dtype=torch.uint8)], 1, True),  # packed size
    ]
    for s, m, o, k, packed in bad_kselect:
        direct = _outcome(lambda: ops.kselect_(s, m, o, k, packed=packed))
        via_ops = _outcome(lambda: torch.ops.fastprune.kselect_(s, m, o, k, False, True, packed))
        assert direct[1] is not None and direct[1] == via_ops[1]
    for dim, p in ((3, 2.0), (-4, 2.0), (0, float("nan"))):
        direct = _outcome(lambda: ops.channel_norms(w, dim, p))
        via_ops = _outcome(lambda: torch.ops.fastprune.channel_norms(w, dim, p))
        assert direct[1] is not None and direct[1] == via_ops[1]
    leaf = torch.zeros(6, 4, 3, requires_grad=True)  # in-place into a leaf that requires grad
    direct = _outcome(lambda: ops.kselect_([w], None, [leaf], 1))
    via_ops = _outcome(lambda: torch.ops.fastprune.kselect_([w], [None], [leaf], 1, False, True, False))
    assert direct[1] == via_ops[1]


def test_op_calls_honour_torch_function_modes_and_fake_tensors():
    """A TorchFunctionMode still sees the ops (the direct entry points decline); fake tensors get the fake kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from fastprune import ops

    class Seen(torch.overrides.TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.funcs = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.funcs.append(func)
            return func(*args, **(kwargs or {}))

    w, out = torch.randn(4, 5), torch.empty(4, 5)
    with Seen() as mode:
        ops.kselect_([w], None, [out], 3)
        norms = ops.channel_norms(w, 0)
    for packet in (torch.ops.fastprune.kselect_, torch.ops.fastprune.channel_norms):
        assert packet in mode.funcs or packet.default in mode.funcs
    assert int((out == 0).sum()) == 3 and norms.shape == (4,)
    with FakeTensorMode() as fake_mode:
        fw, fout = fake_mode.from_tensor(w), fake_mode.from_tensor(out)
        ops.kselect_([fw], None, [fout], 3)
        assert ops.channel_norms(fw, 1).shape == (5,)


def _special_scores(shape, dtype, seed):
    """Scores with heavy ties, signed zeros, NaN and infinities (ties decide which unit goes first)."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for d in shape:
        n *= d
    if dtype == torch.bool:
        return (torch.rand(n, generator=g) > 0.5).reshape(shape)
    t = torch.randint(-4, 5, (n,), generator=g).to(torch.float64) / 2
    if dtype.is_floating_point:
        special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -float("nan")],
                               dtype=torch.float64)
        pick = torch.rand(n, generator=g) < 0.15
        t[pick] = special[torch.randint(0, len(special), (int(pick.sum()),), generator=g)]
    return t.to(dtype).reshape(shape)


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.bool],
                         ids=str)
@pytest.mark.parametrize("shape", [(1,), (8, 8), (3, 5, 7), (0,), (70, 80)], ids=str)
def test_fallback_kselect_equals_the_reference(dtype, shape):
    """The fallback's lean per-tensor kselect_ (fastprune.ops._fallback) gives the reference's outputs and errors,
    bit for bit: k and fraction (valid or not), masks kept or excluded, smallest or largest, outputs in several
    dtypes, the pruned values written along, and an output that is the mask itself."""
    from fastprune.ops import _fallback, reference

    n = _numel(shape)
    s = _special_scores(shape, dtype, seed=n)
    g = torch.Generator().manual_seed(7)
    values = torch.randn(shape, generator=g)
    masks = [None, (torch.rand(shape, generator=g) > 0.3).float(), torch.rand(shape, generator=g) > 0.6]
    cases = []
    for mask in masks:
        for exclude in (False, True):
            selectable = n if mask is None or not exclude else int((mask != 0).sum())
            for largest in (False, True):
                for k, fraction in [(0, None), (1, None), (selectable // 3, None), (selectable, None),
                                    (selectable + 1, None), (-1, 0.3), (-1, 1.0), (2, 0.5), (-1, 1.5)]:
                    cases.append((mask, exclude, largest, k, fraction, torch.float32, k == 1))
        cases.append((mask, True, False, n // 2, None, torch.bool, False))
        cases.append((mask, False, True, -1, 0.5, torch.uint8, True))
    for mask, exclude, largest, k, fraction, out_dtype, with_values in cases:
        results = []
        for impl in (_fallback.kselect_, reference.kselect_):
            out = torch.full(shape, 7, dtype=out_dtype)
            applied = torch.full(shape, 5.0)
            extra = ([values], [applied]) if with_values else (None, None)
            outcome = _outcome(lambda: impl([s], [mask], [out], k, largest, exclude, False, fraction, *extra))
            results.append((outcome, out, applied))
        (res_a, out_a, app_a), (res_b, out_b, app_b) = results
        label = (mask is None, exclude, largest, k, fraction, out_dtype)
        assert res_a == res_b, label
        assert torch.equal(out_a, out_b), label
        assert torch.equal(app_a.view(torch.int32), app_b.view(torch.int32)), label
    if n:  # the output may be the mask itself (iterated pruning writes in place)
        twins = [(torch.rand(shape, generator=torch.Generator().manual_seed(2)) > 0.5).float() for _ in range(2)]
        k = min(2, int((twins[0] != 0).sum()))
        _fallback.kselect_([s], [twins[0]], [twins[0]], k, False, True, False)
        reference.kselect_([s], [twins[1]], [twins[1]], k, False, True, False)
        assert torch.equal(twins[0], twins[1])


def test_fallback_kselect_is_called_directly_only_where_the_dispatcher_adds_nothing(monkeypatch):
    """Without the extension ops.kselect_ calls the Python kernel itself for plain tensors; a tensor that requires
    grad (in place into a leaf), a TorchFunctionMode or a dispatch mode still go through torch.ops."""
    from fastprune import ops
    from fastprune.ops import _fallback

    w, out = torch.randn(4, 5), torch.empty(4, 5)
    assert _fallback.direct_ok([w], [None], [out], None, None)
    assert not _fallback.direct_ok([w], [None], [torch.zeros(4, 5, requires_grad=True)], None, None)
    with torch.no_grad():
        assert _fallback.direct_ok([w], [None], [torch.zeros(4, 5, requires_grad=True)], None, None)
    assert not _fallback.direct_ok([w.as_subclass(type("Sub", (torch.Tensor,), {}))], [None], [out], None, None)
    with torch.overrides.TorchFunctionMode():
        assert not _fallback.direct_ok([w], [None], [out], None, None)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passing():
        assert not _fallback.direct_ok([w], [None], [out], None, None)
    if ops._PYTHON_KERNELS:  # fallback mode: the direct path is the one taken
        calls = []
        real = _fallback.kselect_
        monkeypatch.setattr(_fallback, "kselect_", lambda *a: calls.append(1) or real(*a))
        ops.kselect_([w], None, [out], 3)
        assert calls == [1] and int((out == 0).sum()) == 3
