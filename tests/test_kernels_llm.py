"""The group-selection ops (row_kselect, nm_select) against fastprune.ops.reference.

Masks must be identical bit for bit on every device, dtype and shape, with heavy
ties, NaN, +-inf, -0.0 and integer extremes. The reference itself is checked
against an independent definition (rank by (key, index)). opcheck covers the
schemas, fake kernels and dynamic shapes for whichever implementation is
registered (the C++ kernels, or the reference with FASTPRUNE_NO_EXT=1).
"""
import pytest
import torch

import fastprune
from fastprune import ops
from fastprune.ops import reference as ref

from conftest import DEVICES
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INTS = [torch.int32, torch.int8, torch.int64, torch.int16, torch.uint8]
DTYPES = FLOATS + INTS + [torch.bool]


def scores_tensor(shape, dtype, seed, ties=True):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    if dtype.is_floating_point:
        if ties:
            levels = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 3.0, 1e-3, float("inf"), float("-inf"),
                                   float("nan"), 2.0])
            idx = torch.randint(0, len(levels), shape, generator=gen)
            t = torch.where(torch.rand(shape, generator=gen) < 0.5, levels[idx], torch.randn(shape, generator=gen))
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
        return t.to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -5), min(info.max, 5)
    t = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64).to(dtype)
    flat = t.reshape(-1)
    if flat.numel() >= 2:
        flat[0] = info.min
        flat[-1] = info.max
    return t


def by_definition(scores, per_group, group):
    """Unit i of a group is pruned iff fewer than per_group units precede it in the
    order (|score|, index), NaN above everything (all NaNs equal)."""
    flat = scores.reshape(-1, group)
    if flat.dtype == torch.bool:
        key = flat.to(torch.float64)
    elif flat.is_floating_point():
        key = flat.to(torch.float64).abs()
    else:
        key = flat.to(torch.int64).abs().to(torch.float64)
        key[flat.to(torch.int64) == torch.iinfo(torch.int64).min] = float(torch.iinfo(torch.int64).max)
    nan = torch.isnan(key)
    key = torch.where(nan, torch.full_like(key, float("inf")), key)
    idx = torch.arange(group, dtype=torch.float64)
    less = (key.unsqueeze(2) < key.unsqueeze(1)) & ~nan.unsqueeze(2) | (nan.unsqueeze(1) & ~nan.unsqueeze(2))
    # less[g, j, i]: unit j comes before unit i on the key alone
    equal = (key.unsqueeze(2) == key.unsqueeze(1)) & (nan.unsqueeze(2) == nan.unsqueeze(1))
    before = less | (equal & (idx.reshape(1, -1, 1) < idx.reshape(1, 1, -1)))
    rank = before.sum(dim=1)
    return (rank >= per_group).reshape(scores.shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((7, 13), 5), ((3, 64), 0), ((4, 40), 40), ((2, 3, 33), 17), ((16,), 9),
                                     ((5, 1000), 500), ((0, 8), 3), ((6, 37), 36)])
def test_row_kselect_matches_reference(device, dtype, shape, k):
    s = scores_tensor(shape, dtype, seed=hash((str(dtype), shape)) % 1000).to(device)
    got = ops.row_kselect(s, k)
    expected = ref.row_kselect(s, k)
    assert got.dtype == torch.bool and got.shape == s.shape and got.device == s.device
    assert torch.equal(got, expected)
    if s.numel():
        assert bool(((~got).reshape(-1, shape[-1]).sum(dim=1) == k).all())
        if shape[-1] <= 64:
            assert torch.equal(expected.cpu(), by_definition(s.cpu(), k, shape[-1]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n,m", [((7, 16), 2, 4), ((5, 24), 4, 8), ((3, 12), 1, 4), ((2, 2, 32), 3, 16),
                                       ((9, 96), 20, 48), ((4, 8), 0, 8), ((0, 8), 2, 4), ((6, 64), 31, 32),
                                       ((3, 128), 60, 64)])
def test_nm_select_matches_reference(device, dtype, shape, n, m):
    s = scores_tensor(shape, dtype, seed=hash((str(dtype), shape, m)) % 1000).to(device)
    got = ops.nm_select(s, n, m)
    expected = ref.nm_select(s, n, m)
    assert got.dtype == torch.bool and got.shape == s.shape
    assert torch.equal(got, expected)
    if s.numel():
        assert bool(((~got).reshape(-1, m).sum(dim=1) == n).all())
        assert torch.equal(expected.cpu(), by_definition(s.cpu(), n, m))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_tie_free_matches_sort(device, dtype):
    s = scores_tensor((33, 96), dtype, seed=7, ties=False).to(device)
    k = 40
    keep = torch.ones_like(s, dtype=torch.bool)
    keep.scatter_(1, torch.sort(s.abs().float(), dim=1, stable=True).indices[:, :k], False)
    assert torch.equal(ops.row_kselect(s, k), keep)
    keep = torch.ones(s.numel() // 4, 4, dtype=torch.bool, device=device)
    # stable sort, not topk: fp16/bf16 draws do repeat within a group
    keep.scatter_(1, torch.sort(s.abs().float().reshape(-1, 4), dim=1, stable=True).indices[:, :2], False)
    assert torch.equal(ops.nm_select(s, 2, 4), keep.reshape(s.shape))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf_order(device):
    s = torch.tensor([[float("nan"), float("inf"), 1.0, -0.0, 0.0, float("-inf"), 2.0, float("nan")]], device=device)
    # order: -0.0 (3), 0.0 (4), 1 (2), 2 (6), inf (1), -inf (5), nan (0), nan (7)
    assert ops.row_kselect(s, 5).tolist() == [[True, False, False, False, False, True, False, True]]
    assert ops.row_kselect(s, 7).tolist() == [[False, False, False, False, False, False, False, True]]
    assert torch.equal(ops.nm_select(s, 2, 4), ref.nm_select(s.cpu(), 2, 4).to(device))
    assert ops.nm_select(s, 2, 4).tolist() == [[True, True, False, False, False, True, False, True]]


@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous(device):
    base = scores_tensor((24, 16), torch.float32, seed=3).to(device)
    s = base.t()  # 16 x 24, strided
    assert torch.equal(ops.row_kselect(s, 7), ref.row_kselect(s.contiguous(), 7))
    assert torch.equal(ops.nm_select(s, 3, 8), ref.nm_select(s.contiguous(), 3, 8))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_many_rows(device):
    # Enough rows for several threads / blocks; results must not depend on scheduling.
    s = scores_tensor((4096, 48), torch.float16, seed=11).to(device)
    a = ops.row_kselect(s, 20)
    b = ops.row_kselect(s, 20)
    assert torch.equal(a, b) and torch.equal(a, ref.row_kselect(s, 20))
    assert torch.equal(ops.nm_select(s, 2, 4), ref.nm_select(s, 2, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    s = torch.randn(3, 8, device=device)
    with pytest.raises(ValueError, match="k=9"):
        ops.row_kselect(s, 9)
    with pytest.raises(ValueError, match="k=-1"):
        ops.row_kselect(s, -1)
    with pytest.raises(ValueError, match="at least one dimension"):
        ops.row_kselect(torch.tensor(1.0, device=device), 0)
    with pytest.raises(ValueError, match="does not divide"):
        ops.nm_select(s, 1, 3)
    with pytest.raises(ValueError, match="n=4"):
        ops.nm_select(s, 4, 4)
    with pytest.raises(ValueError, match="n=-1"):
        ops.nm_select(s, -1, 4)
    with pytest.raises(ValueError, match="m=0"):
        ops.nm_select(s, 0, 0)
    with pytest.raises(TypeError):
        ops.row_kselect(torch.randn(2, 2, dtype=torch.complex64, device=device), 1)


@pytest.mark.parametrize(
    "op, args",
    [
        ("row_kselect", lambda: (torch.randn(5, 12), 4)),
        ("row_kselect", lambda: (torch.randn(2, 3, 7).to(torch.bfloat16), 0)),
        ("nm_select", lambda: (torch.randn(6, 16), 2, 4)),
        ("nm_select", lambda: (torch.randint(-3, 4, (3, 8), dtype=torch.int32), 4, 8)),
    ],
)
def test_opcheck(op, args):
    torch.library.opcheck(getattr(torch.ops.fastprune, op).default, args(),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_registered_schemas():
    for name in ("row_kselect", "nm_select"):
        registered = str(getattr(torch.ops.fastprune, name).default._schema)
        assert registered == "fastprune::" + ops.SCHEMAS[name]


def test_compiles():
    def f(x):
        return ops.row_kselect(x, 3) & ops.nm_select(x, 2, 4)

    x = torch.randn(6, 8)
    assert torch.equal(torch.compile(f, backend="aot_eager", fullgraph=True)(x), f(x))
