"""Exact pruning of sharded (DTensor / FSDP2) parameters against the one-process call.

One group of processes per world size (1, 2, 3, 4; 3 gives uneven and empty
shards) runs every case on the gloo backend over loopback; each process
compares its local masks and weights with the matching slice of the result
the same call gives in one process on the full model, and the test functions
below read back what every process found. Checkpoints saved by the 4-process
run are loaded by the 2-process run (resharding).
"""
import copy
import os
import tempfile
import time
import traceback
from datetime import timedelta

import pytest
import torch
from torch import nn

import fastprune

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and fastprune.distributed.AVAILABLE):
    pytest.skip("torch.distributed / DTensor not available", allow_module_level=True)

from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import DTensor, Replicate, Shard  # noqa: E402
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset  # noqa: E402
# Before any group exists, in this process and in the ones it spawns (they import this module): see
# fastprune.distributed.llm.init_from_env.
import torch.distributed.nn  # noqa: E402,F401

WORLD_SIZES = [4, 3, 2, 1]  # 4 first: the 2-process run loads its checkpoint
ShardedInputError = fastprune.distributed.ShardedInputError


# ----------------------------------------------------------------------------
# Helpers run inside the worker processes
# ----------------------------------------------------------------------------


def _piece(full, dt):
    """The block of ``full`` that this process holds for a tensor laid out like ``dt``."""
    shape, offset = compute_local_shape_and_global_offset(full.shape, dt.device_mesh, dt.placements)
    return full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]


def _shard(full, mesh, placement):
    """A DTensor holding ``full`` with ``placement`` (one, or a list for an n-d mesh), built
    from local slices (no collective)."""
    placements = list(placement) if isinstance(placement, (list, tuple)) else [placement]
    shape, offset = compute_local_shape_and_global_offset(full.shape, mesh, placements)
    local = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))].clone()
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=full.shape, stride=full.stride())


def _values(shape, dtype, style, gen):
    if style == "ties":  # few distinct magnitudes, signed zeros, inf and NaN: ties decide most units
        v = torch.randint(-3, 4, shape, generator=gen).to(torch.float64) * 0.5
        flat = v.view(-1)
        n = flat.numel()
        flat[torch.randperm(n, generator=gen)[: max(1, n // 9)]] = -0.0
        flat[torch.randperm(n, generator=gen)[: max(1, n // 17)]] = float("inf")
        flat[torch.randperm(n, generator=gen)[: max(1, n // 23)]] = float("nan")
        return v.to(dtype)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _int_values(shape, dtype, gen):
    return torch.randint(-5, 6, shape, generator=gen).to(dtype)


class TPNet(nn.Module):
    """Four weights with different placements, uneven and (for 3-4 processes) empty shards."""

    SHAPES = {"a": (10, 7), "b": (5, 10), "c": (3, 5), "d": (2, 6)}
    PLACEMENTS = {"a": Shard(0), "b": Shard(1), "c": Replicate(), "d": Shard(0)}

    def __init__(self, dtype=torch.float32, style="ties", seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        for name, shape in self.SHAPES.items():
            lin = nn.Linear(shape[1], shape[0], bias=False)
            if dtype.is_floating_point:
                lin.weight = nn.Parameter(_values(shape, dtype, style, gen))
            else:  # integer weights (torch.nn.utils.prune accepts them): int64 |x| keys
                lin.weight = nn.Parameter(_int_values(shape, dtype, gen), requires_grad=False)
            setattr(self, name, lin)

    def pairs(self):
        return [(getattr(self, n), "weight") for n in self.SHAPES]


def _sharded(model, mesh):
    """Copy of ``model`` with every weight a DTensor with its placement."""
    out = copy.deepcopy(model)
    for name in model.SHAPES:
        lin = getattr(out, name)
        w = lin.weight.detach()
        lin.weight = nn.Parameter(_shard(w, mesh, model.PLACEMENTS[name]), requires_grad=w.is_floating_point())
    return out


def _same(a, b):
    """Bitwise equality, except that all NaNs are equal (inf * 0 gives a NaN whose sign
    bit depends on whether the CPU took a vector or a scalar path)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    if a.is_floating_point():
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        if not torch.equal(nan_a, nan_b):
            return False
        a, b = a[~nan_a], b[~nan_b]
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _check_torch_style(ref, sh, label):
    for name in ref.SHAPES:
        r, s = getattr(ref, name), getattr(sh, name)
        assert isinstance(s.weight_mask, DTensor), f"{label}: {name}.weight_mask is not a DTensor"
        assert tuple(s.weight_mask.placements) == tuple(s.weight_orig.placements)
        assert _same(s.weight_mask.to_local(), _piece(r.weight_mask, s.weight_mask)), f"{label}: {name} mask differs"
        assert _same(s.weight.to_local(), _piece(r.weight.detach(), s.weight)), f"{label}: {name} weight differs"


def case_global_l1(mesh):
    combos = [(torch.float32, "ties", a) for a in (0.37, 13, 0.0, 1.0)] + [
        (torch.float64, "ties", 0.37), (torch.bfloat16, "ties", 0.5), (torch.float16, "randn", 0.37),
        (torch.int32, "ties", 40),
    ]
    for dtype, style, amount in combos:
        ref = TPNet(dtype, style)
        sh = _sharded(ref, mesh)
        fastprune.global_unstructured(ref.pairs(), fastprune.L1Unstructured, amount=amount)
        fastprune.global_unstructured(sh.pairs(), fastprune.L1Unstructured, amount=amount)
        _check_torch_style(ref, sh, f"global {dtype} {style} {amount}")
        # iterated: the amount counts among the units still kept
        fastprune.global_unstructured(ref.pairs(), fastprune.L1Unstructured, amount=0.25)
        fastprune.global_unstructured(sh.pairs(), fastprune.L1Unstructured, amount=0.25)
        _check_torch_style(ref, sh, f"global iterated {dtype} {style} {amount}")
    ref = TPNet(torch.float32, "ties")
    sh = _sharded(ref, mesh)
    fastprune.global_unstructured(sh.pairs(), fastprune.L1Unstructured, amount=0.37)
    stats = fastprune.distributed.last_call_stats()
    assert stats["radix_passes"] == 3 and stats["tie_passes"] >= 1  # float32 keys: 31 bits in 11-bit digits
    assert stats["bytes"] >= (2048 + 2048 + 512) * 8 and stats["world_size"] == dist.get_world_size()


def case_global_l1_scores_and_torch_class(mesh):
    import torch.nn.utils.prune as torch_prune

    ref = TPNet(torch.float32, "randn")
    sh = _sharded(ref, mesh)
    gen = torch.Generator().manual_seed(5)
    scores_full = {n: _values(s, torch.float32, "ties", gen) for n, s in ref.SHAPES.items()}
    ref_scores = {(getattr(ref, n), "weight"): v for n, v in scores_full.items()}
    sh_scores = {(getattr(sh, n), "weight"): _shard(v, mesh, ref.PLACEMENTS[n]) for n, v in scores_full.items()}
    fastprune.global_unstructured(ref.pairs(), torch_prune.L1Unstructured, importance_scores=ref_scores, amount=0.5)
    fastprune.global_unstructured(sh.pairs(), torch_prune.L1Unstructured, importance_scores=sh_scores, amount=0.5)
    _check_torch_style(ref, sh, "scores")


def case_local_l1_and_remove(mesh):
    ref = TPNet(torch.float32, "ties")
    sh = _sharded(ref, mesh)
    for amount in (3, 0.4):
        for r, s in zip(ref.pairs(), sh.pairs()):
            fastprune.l1_unstructured(*r, amount=amount)
            fastprune.l1_unstructured(*s, amount=amount)
        _check_torch_style(ref, sh, f"local {amount}")
    for r, s in zip(ref.pairs(), sh.pairs()):
        fastprune.remove(*r)
        fastprune.remove(*s)
        assert isinstance(s[0].weight, DTensor) and not hasattr(s[0], "weight_mask")
        assert _same(s[0].weight.to_local(), _piece(r[0].weight.detach(), s[0].weight))


def _check_maskset(ref, sh, ms_ref, ms_sh, label):
    for name in ref.SHAPES:
        r, s = getattr(ref, name), getattr(sh, name)
        m = ms_sh.mask((s, "weight"))
        assert isinstance(m, DTensor) and tuple(m.placements) == tuple(s.weight.placements), label
        assert _same(m.to_local(), _piece(ms_ref.mask((r, "weight")), m)), f"{label}: {name} mask differs"
        assert _same(s.weight.to_local(), _piece(r.weight.detach(), s.weight)), f"{label}: {name} weight differs"


def case_sparsify_l1(mesh):
    for dtype, style in [(torch.float32, "ties"), (torch.float64, "randn"), (torch.bfloat16, "ties")]:
        for scope in ("global", "local"):
            ref = TPNet(dtype, style)
            sh = _sharded(ref, mesh)
            for amount in (0.3, 4):  # second call: iterated on the remembered masks
                ms_ref = fastprune.sparsify_(ref.pairs(), amount, scope=scope)
                ms_sh = fastprune.sparsify_(sh.pairs(), amount, scope=scope)
                _check_maskset(ref, sh, ms_ref, ms_sh, f"sparsify {dtype} {style} {scope} {amount}")
    # Replicated model (what every DDP rank holds): identical masks everywhere.
    ref = TPNet(torch.float32, "ties")
    rep = copy.deepcopy(ref)
    for name in ref.SHAPES:
        lin = getattr(rep, name)
        lin.weight = nn.Parameter(_shard(lin.weight.detach(), mesh, Replicate()))
    ms_ref = fastprune.sparsify_(ref, 0.6)
    ms_rep = fastprune.sparsify_(rep, 0.6)
    for name in ref.SHAPES:
        assert _same(ms_rep.mask((getattr(rep, name), "weight")).to_local(), ms_ref.mask((getattr(ref, name), "weight")))


def _gather_local(t):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, t)
    return out


def case_random_replicas(mesh):
    # Different random states on every process: the seed of process 0 decides.
    torch.manual_seed(100 + dist.get_rank())
    ref = TPNet(torch.float32, "randn")
    rep = copy.deepcopy(ref)
    for name in ref.SHAPES:
        lin = getattr(rep, name)
        lin.weight = nn.Parameter(_shard(lin.weight.detach(), mesh, Replicate()))
    ms = fastprune.sparsify_(rep, 0.5, method="random")
    for name in ref.SHAPES:
        local = ms.mask((getattr(rep, name), "weight")).to_local()
        assert all(torch.equal(local, other) for other in _gather_local(local)), "replicas differ"
    fastprune.random_unstructured(rep.a, "weight", amount=0.5)
    local = rep.a.weight_mask.to_local()
    assert all(torch.equal(local, other) for other in _gather_local(local))
    assert int((local == 0).sum()) == 35


def case_random_full(mesh):
    """Random masks of a fixed seed, returned whole: compared across world sizes by the test."""
    ref = TPNet(torch.float32, "randn")
    sh = _sharded(ref, mesh)
    torch.manual_seed(7)
    ms = fastprune.sparsify_(sh.pairs(), 0.45, method="random")
    full = {n: ms.mask((getattr(sh, n), "weight")).full_tensor() for n in ref.SHAPES}
    assert sum(int((m == 0).sum()) for m in full.values()) == round(0.45 * 147)
    torch.manual_seed(8)
    ms2 = fastprune.sparsify_(sh.pairs(), 3, method="random", scope="local")
    full2 = {n: ms2.mask((getattr(sh, n), "weight")).full_tensor() for n in ref.SHAPES}
    torch.manual_seed(9)
    sh2 = _sharded(ref, mesh)
    fastprune.global_unstructured(sh2.pairs(), fastprune.RandomUnstructured, amount=0.3)
    full3 = {n: getattr(sh2, n).weight_mask.full_tensor() for n in ref.SHAPES}
    return {"global": full, "local": full2, "torch_style": full3}


def _one_process_then_sharded(mesh, seed, reference, sharded, draws=True):
    """Run ``reference()`` after ``torch.manual_seed(seed)`` on every process, then ``sharded()`` with
    the seed on process 0 only (the others' generators deliberately elsewhere); afterwards every
    process's generator must be where the one-process call left it."""
    torch.manual_seed(seed)
    reference()
    state_after = torch.random.get_rng_state()
    torch.manual_seed(seed if dist.get_rank() == 0 else seed + 1000 + dist.get_rank())
    sharded()
    if draws:  # a call that prunes nothing draws nothing, in one process as here
        assert torch.equal(torch.random.get_rng_state(), state_after), "generator not where one process leaves it"


def _replicated(model, mesh):
    out = copy.deepcopy(model)
    for name in model.SHAPES:
        lin = getattr(out, name)
        lin.weight = nn.Parameter(_shard(lin.weight.detach(), mesh, Replicate()))
    return out


def case_random_torch_style(mesh):
    """RandomUnstructured on DTensors draws the one-process torch.rand stream: the same units."""
    import torch.nn.utils.prune as torch_prune

    # (dtype, layout, global amounts, local amounts): bf16 draws tie often, so the tie rule counts;
    # the later amounts prune among the units kept; amount 0 draws nothing
    plans = [
        (torch.float32, _sharded, (0.45, 0.3, 7), (0.4, 2, 0.0)),
        (torch.float32, _replicated, (0.45, 0.3), ()),
        (torch.bfloat16, _sharded, (0.5, 0.3), ()),
        (torch.float64, _sharded, (0.35,), (0.4,)),
    ]
    for dtype, make, global_amounts, local_amounts in plans:
        ref = TPNet(dtype, "randn")
        sh = make(ref, mesh)
        for seed, amount in enumerate(global_amounts, 11):
            _one_process_then_sharded(
                mesh, seed,
                lambda: fastprune.global_unstructured(ref.pairs(), fastprune.RandomUnstructured, amount=amount),
                lambda: fastprune.global_unstructured(sh.pairs(), fastprune.RandomUnstructured, amount=amount))
            _check_torch_style(ref, sh, f"global random {dtype} {make.__name__} {amount}")
        ref = TPNet(dtype, "randn", seed=1)
        sh = make(ref, mesh)
        for seed, amount in enumerate(local_amounts, 21):
            for r, s in zip(ref.pairs(), sh.pairs()):
                _one_process_then_sharded(mesh, seed, lambda: fastprune.random_unstructured(*r, amount=amount),
                                          lambda: fastprune.random_unstructured(*s, amount=amount),
                                          draws=amount != 0.0)
            _check_torch_style(ref, sh, f"local random {dtype} {make.__name__} {amount}")
    # torch's class: the same draws (no ties among float32 draws of this size, so topk agrees)
    ref = TPNet(torch.float32, "randn", seed=2)
    sh = _sharded(ref, mesh)
    _one_process_then_sharded(
        mesh, 31, lambda: fastprune.global_unstructured(ref.pairs(), torch_prune.RandomUnstructured, amount=0.5),
        lambda: fastprune.global_unstructured(sh.pairs(), torch_prune.RandomUnstructured, amount=0.5))
    _check_torch_style(ref, sh, "torch's RandomUnstructured")
    # one tensor pruned before (a Shard(1) one), the others not: its kept units' stream positions
    ref = TPNet(torch.float32, "randn", seed=4)
    sh = _sharded(ref, mesh)
    _one_process_then_sharded(mesh, 35, lambda: fastprune.random_unstructured(ref.b, "weight", amount=0.3),
                              lambda: fastprune.random_unstructured(sh.b, "weight", amount=0.3))
    _one_process_then_sharded(
        mesh, 36, lambda: fastprune.global_unstructured(ref.pairs(), fastprune.RandomUnstructured, amount=0.4),
        lambda: fastprune.global_unstructured(sh.pairs(), fastprune.RandomUnstructured, amount=0.4))
    _check_torch_style(ref, sh, "one tensor pruned before")
    # mixed dtypes: one stream in the promoted dtype of the concatenation
    ref = TPNet(torch.float32, "randn", seed=3)
    ref.b.weight = nn.Parameter(ref.b.weight.detach().to(torch.bfloat16))
    sh = _sharded(ref, mesh)
    _one_process_then_sharded(
        mesh, 41, lambda: fastprune.global_unstructured(ref.pairs(), fastprune.RandomUnstructured, amount=0.6),
        lambda: fastprune.global_unstructured(sh.pairs(), fastprune.RandomUnstructured, amount=0.6))
    _check_torch_style(ref, sh, "mixed dtypes")


def case_random_sparsify(mesh):
    """sparsify_(method="random") on DTensors: the one-process units of the same seed."""
    for make in (_sharded, _replicated):
        for scope in ("global", "local"):
            ref = TPNet(torch.float32, "randn")
            sh = make(ref, mesh)
            for seed, amount in ((51, 0.45), (52, 0.3), (53, 5)):  # iterated: among the units kept
                out = {}
                _one_process_then_sharded(
                    mesh, seed,
                    lambda: out.update(ref=fastprune.sparsify_(ref.pairs(), amount, method="random", scope=scope)),
                    lambda: out.update(sh=fastprune.sparsify_(sh.pairs(), amount, method="random", scope=scope)))
                _check_maskset(ref, sh, out["ref"], out["sh"], f"sparsify random {make.__name__} {scope} {amount}")


def case_mesh_2d(mesh):
    """A 2-d mesh over every process (2 x ws/2): Shard on both mesh dims, Replicate on one."""
    ws = dist.get_world_size()
    if ws % 2:
        return "skipped"
    mesh2 = init_device_mesh("cpu", (2, ws // 2), mesh_dim_names=("dp", "tp"))
    placements = {
        "a": [Shard(0), Shard(1)],
        "b": [Replicate(), Shard(0)],
        "c": [Shard(1), Replicate()],
        "d": [Shard(0), Shard(0)],
    }
    for style in ("ties", "randn"):
        ref = TPNet(torch.float32, style, seed=21)
        sh = copy.deepcopy(ref)
        for name, pl in placements.items():
            lin = getattr(sh, name)
            lin.weight = nn.Parameter(_shard(lin.weight.detach(), mesh2, pl))
        fastprune.global_unstructured(ref.pairs(), fastprune.L1Unstructured, amount=0.45)
        fastprune.global_unstructured(sh.pairs(), fastprune.L1Unstructured, amount=0.45)
        _check_torch_style(ref, sh, f"2-d mesh {style}")
        ref2 = TPNet(torch.bfloat16, style, seed=22)
        sh2 = copy.deepcopy(ref2)
        for name, pl in placements.items():
            lin = getattr(sh2, name)
            lin.weight = nn.Parameter(_shard(lin.weight.detach(), mesh2, pl))
        ms_ref = fastprune.sparsify_(ref2.pairs(), 0.3, scope="local")
        ms_sh = fastprune.sparsify_(sh2.pairs(), 0.3, scope="local")
        _check_maskset(ref2, sh2, ms_ref, ms_sh, f"2-d mesh sparsify {style}")
        # random, twice (the second time among the units kept): the one-process torch.rand stream
        for seed, amount in ((61, 0.4), (62, 0.5)):
            _one_process_then_sharded(
                mesh2, seed,
                lambda: fastprune.global_unstructured(ref.pairs(), fastprune.RandomUnstructured, amount=amount),
                lambda: fastprune.global_unstructured(sh.pairs(), fastprune.RandomUnstructured, amount=amount))
            _check_torch_style(ref, sh, f"2-d mesh random {style} {amount}")


def _expect_error(exc_type, fn, *, contains=""):
    try:
        fn()
    except exc_type as e:
        assert contains in str(e), f"message {e} lacks {contains!r}"
        return str(e)
    raise AssertionError(f"no {exc_type.__name__} raised")


def _unchanged(model, before):
    for name in model.SHAPES:
        lin = getattr(model, name)
        assert "weight" in lin._parameters and not hasattr(lin, "weight_mask"), "model was modified"
        assert _same(lin.weight.to_local(), before[name]), "weights were modified"


def case_bad_input(mesh):
    rank, ws = dist.get_rank(), dist.get_world_size()
    ref = TPNet(torch.float32, "randn")
    sh = _sharded(ref, mesh)
    before = {n: getattr(sh, n).weight.to_local().clone() for n in ref.SHAPES}
    # ranks disagree on the amount
    amount = 0.5 if rank == ws - 1 and ws > 1 else 0.25
    if ws > 1:
        _expect_error(ShardedInputError, lambda: fastprune.sparsify_(sh.pairs(), amount), contains="amount")
        _expect_error(ShardedInputError, lambda: fastprune.global_unstructured(
            sh.pairs(), fastprune.L1Unstructured, amount=amount), contains="disagree")
        # ranks disagree on the parameter list
        pairs = sh.pairs()[:3] if rank == 0 else sh.pairs()
        _expect_error(ShardedInputError, lambda: fastprune.sparsify_(pairs, 0.3), contains="number of parameters")
        # ranks disagree on the shapes (same count)
        pairs = sh.pairs()
        if rank == 1:
            pairs = [pairs[1], pairs[0]] + pairs[2:]
        _expect_error(ShardedInputError, lambda: fastprune.sparsify_(pairs, 0.3), contains="shapes")
    # DTensors mixed with plain tensors, on every process
    plain = nn.Linear(3, 3)
    _expect_error(TypeError, lambda: fastprune.sparsify_(sh.pairs() + [(plain, "weight")], 0.3), contains="plain tensor")
    # only on some processes: the others learn it through the agreement check
    pairs = sh.pairs() if rank != ws - 1 else sh.pairs()[:3] + [(plain, "weight")]
    if ws > 1:
        _expect_error(TypeError, lambda: fastprune.sparsify_(pairs, 0.3), contains="plain tensor")
    # too many units: every process computes the same k from the same global counts
    _expect_error(ValueError, lambda: fastprune.sparsify_(sh.pairs(), 10_000), contains="amount")
    _expect_error(ValueError, lambda: fastprune.l1_unstructured(sh.a, "weight", amount=71), contains="amount")
    # methods without a sharded implementation
    _expect_error(TypeError, lambda: fastprune.ln_structured(sh.a, "weight", amount=1, n=2, dim=0), contains="DTensor")
    _unchanged(sh, before)
    # the process group still works after all these errors
    t = torch.ones(1)
    dist.all_reduce(t)
    assert int(t) == ws


def case_bad_input_one_process(mesh):
    """Arguments wrong on one process only (others fine): every process raises the same error, fast.

    The DTensors live on a process group with a 15 s timeout: a process left waiting in a
    collective fails the case within seconds instead of hanging the run.
    """
    from torch.distributed.device_mesh import DeviceMesh

    from fastprune.core.errors import PruningNameError, PruningShapeError

    rank, ws = dist.get_rank(), dist.get_world_size()
    if ws == 1:
        return "skipped"
    group = dist.new_group(list(range(ws)), timeout=timedelta(seconds=15))
    quick = DeviceMesh.from_group(group, "cpu")
    ref = TPNet(torch.float32, "randn")
    sh = _sharded(ref, quick)
    before = {n: getattr(sh, n).weight.to_local().clone() for n in ref.SHAPES}
    gen = torch.Generator().manual_seed(3)
    good_scores = _shard(torch.randn(10, 7, generator=gen), quick, Shard(0))
    bad_scores = _shard(torch.randn(7, 10, generator=gen), quick, Shard(0))

    def everywhere(exc_type, fn, *, culprit, contains):
        started = time.perf_counter()
        msg = _expect_error(exc_type, fn, contains=contains)
        assert f"on process {culprit} of {ws}" in msg, msg
        assert time.perf_counter() - started < 10, "a process waited for the others"
        messages = _gather_local(msg)
        assert all(m == messages[0] for m in messages), f"processes raised different errors: {messages}"

    # an amount out of range on process 1 only (torch-style, global, lean)
    amount = 1.5 if rank == 1 else 0.3
    everywhere(ValueError, lambda: fastprune.l1_unstructured(sh.a, "weight", amount=amount),
               culprit=1, contains="amount=1.5")
    everywhere(ValueError, lambda: fastprune.random_unstructured(sh.b, "weight", amount=amount),
               culprit=1, contains="amount=1.5")
    everywhere(ValueError, lambda: fastprune.global_unstructured(
        sh.pairs(), fastprune.L1Unstructured, amount=amount), culprit=1, contains="amount=1.5")
    everywhere(ValueError, lambda: fastprune.sparsify_(sh.pairs(), amount), culprit=1, contains="amount=1.5")
    # an amount of the wrong type, on the last process
    everywhere(TypeError, lambda: fastprune.sparsify_(sh.pairs(), "half" if rank == ws - 1 else 0.3),
               culprit=ws - 1, contains="amount")
    # a parameter name that process 0 misspells (and a generator of pairs, read once)
    name = "wieght" if rank == 0 else "weight"
    everywhere(PruningNameError, lambda: fastprune.global_unstructured(
        ((m, name if m is sh.b else "weight") for m, _ in sh.pairs()), fastprune.L1Unstructured, amount=0.3),
        culprit=0, contains="wieght")
    everywhere(PruningNameError, lambda: fastprune.l1_unstructured(sh.a, name, amount=0.3),
               culprit=0, contains="wieght")
    everywhere(PruningNameError, lambda: fastprune.sparsify_([(sh.a, name), (sh.b, "weight")], 0.3),
               culprit=0, contains="wieght")
    # importance scores of the wrong shape on the last process
    scores = bad_scores if rank == ws - 1 else good_scores
    everywhere(PruningShapeError, lambda: fastprune.l1_unstructured(sh.a, "weight", amount=0.3,
                                                                    importance_scores=scores),
               culprit=ws - 1, contains="shape")
    everywhere(PruningShapeError, lambda: fastprune.global_unstructured(
        sh.pairs(), fastprune.L1Unstructured, importance_scores={(sh.a, "weight"): scores}, amount=0.3),
        culprit=ws - 1, contains="shape")
    everywhere(PruningShapeError, lambda: fastprune.sparsify_(
        sh.pairs(), 0.3, importance_scores={(sh.a, "weight"): scores}), culprit=ws - 1, contains="shape")
    # an unknown method on process 1
    everywhere(ValueError, lambda: fastprune.sparsify_(sh.pairs(), 0.3, method="rnd" if rank == 1 else "l1"),
               culprit=1, contains="rnd")
    _unchanged(sh, before)
    # both groups still work, and a good call afterwards is exact
    t = torch.ones(1)
    dist.all_reduce(t, group=group)
    dist.all_reduce(t)
    assert int(t) == ws * ws
    ms_ref = fastprune.sparsify_(ref.pairs(), 0.3)
    ms_sh = fastprune.sparsify_(sh.pairs(), 0.3)
    _check_maskset(ref, sh, ms_ref, ms_sh, "after errors")


def _fsdp_models(mesh, seed=0):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    ref = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))
    model = copy.deepcopy(ref)
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return ref, model


def case_fsdp2_train(mesh):
    ref, model = _fsdp_models(mesh)
    linears = [0, 2, 4]
    assert all(isinstance(model[i].weight, DTensor) for i in linears)
    before = [model[i].weight.to_local().clone() for i in linears]
    # torch-style reparametrisation would rename FSDP2's parameters: refused, nothing changed
    msg = _expect_error(TypeError, lambda: fastprune.global_unstructured(
        [(model[i], "weight") for i in linears], fastprune.L1Unstructured, amount=0.5), contains="sparsify_")
    assert "FSDP2" in msg
    _expect_error(TypeError, lambda: fastprune.l1_unstructured(model[0], "weight", amount=0.5), contains="sparsify_")
    for i, b in zip(linears, before):
        assert "weight" in model[i]._parameters and _same(model[i].weight.to_local(), b)
    ms_ref = fastprune.sparsify_(ref, 0.6)
    ms = fastprune.sparsify_(model, 0.6)
    for i in linears:
        m = ms.mask((model[i], "weight"))
        assert isinstance(m, DTensor)
        assert _same(m.to_local(), _piece(ms_ref.mask((ref[i], "weight")), m))
        assert _same(model[i].weight.to_local(), _piece(ref[i].weight.detach(), model[i].weight))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    ms.attach(opt)
    gen = torch.Generator().manual_seed(dist.get_rank())
    start = [model[i].weight.to_local().clone() for i in linears]
    for _ in range(3):
        loss = model(torch.randn(8, 6, generator=gen)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        for i in linears:
            keep = ms.mask((model[i], "weight")).to_local()
            w = model[i].weight.to_local()
            assert bool((w[~keep] == 0).all()), "a pruned unit became non-zero"
    moved = sum(int((model[i].weight.to_local() != s).sum()) for i, s in zip(linears, start))
    total_moved = torch.tensor([moved])
    dist.all_reduce(total_moved)
    assert int(total_moved) > 0, "training did not change any kept weight"
    # apply_() without the hook: weights pushed off zero come back to zero
    ms.detach()
    with torch.no_grad():
        for i in linears:
            model[i].weight.to_local().add_(1.0)
    ms.apply_()
    for i in linears:
        keep = ms.mask((model[i], "weight")).to_local()
        assert bool((model[i].weight.to_local()[~keep] == 0).all())


def case_ddp(mesh):
    """DDP replicas (plain tensors): identical masks on every process, kept through training."""
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(11)
    ref = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    torch.manual_seed(100 + dist.get_rank())  # DDP must make the replicas equal anyway
    ddp = DistributedDataParallel(copy.deepcopy(ref))
    ms_ref = fastprune.sparsify_(ref, 0.5)
    ms = fastprune.sparsify_(ddp.module, 0.5)
    for r, m in zip((ref[0], ref[2]), (ddp.module[0], ddp.module[2])):
        local = ms.mask((m, "weight"))
        assert torch.equal(local, ms_ref.mask((r, "weight")))
        assert all(torch.equal(local, other) for other in _gather_local(local))
    opt = torch.optim.AdamW(ddp.parameters(), lr=0.05, weight_decay=0.1)
    ms.attach(opt)
    gen = torch.Generator().manual_seed(dist.get_rank())
    for _ in range(3):
        ddp(torch.randn(8, 6, generator=gen)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    for m in (ddp.module[0], ddp.module[2]):
        w = m.weight.detach()
        assert bool((w[~ms.mask((m, "weight"))] == 0).all())
        assert all(torch.equal(w, other) for other in _gather_local(w.clone())), "replicas drifted apart"


def case_checkpoint(mesh, ckpt_dir):
    """4 processes save (FSDP2 and TP MaskSets); 2 processes load and compare with one process."""
    import torch.distributed.checkpoint as dcp

    ws = dist.get_world_size()
    ref, model = _fsdp_models(mesh, seed=3)
    tref = TPNet(torch.float32, "ties", seed=4)
    tsh = _sharded(tref, mesh)
    if ws == 4:
        ms = fastprune.sparsify_(model, 0.55)
        ms_t = fastprune.sparsify_(tsh.pairs(), 0.4, scope="local")
        dcp.save({"fsdp": ms.state_dict(), "tp": ms_t.state_dict()}, checkpoint_id=ckpt_dir)
        return
    if ws != 2 or not os.path.isdir(ckpt_dir):
        return
    ms_ref = fastprune.sparsify_(ref, 0.55)
    ms_tref = fastprune.sparsify_(tref.pairs(), 0.4, scope="local")
    ms = fastprune.sparsify_(model, 0.0)  # masks of ones, then loaded
    ms_t = fastprune.sparsify_(tsh.pairs(), 0.0, scope="local")
    state = {"fsdp": ms.state_dict(), "tp": ms_t.state_dict()}
    dcp.load(state, checkpoint_id=ckpt_dir)
    ms.load_state_dict(state["fsdp"])
    ms_t.load_state_dict(state["tp"])
    for i in (0, 2, 4):
        m = ms.mask((model[i], "weight"))
        assert _same(m.to_local(), _piece(ms_ref.mask((ref[i], "weight")), m)), "reloaded FSDP2 mask differs"
        assert _same(model[i].weight.to_local(), _piece(ref[i].weight.detach(), model[i].weight))
    _check_maskset(tref, tsh, ms_tref, ms_t, "reloaded TP")
    return "loaded"


CASES = [
    case_global_l1,
    case_global_l1_scores_and_torch_class,
    case_local_l1_and_remove,
    case_sparsify_l1,
    case_random_replicas,
    case_random_full,
    case_random_torch_style,
    case_random_sparsify,
    case_mesh_2d,
    case_bad_input,
    case_bad_input_one_process,
    case_fsdp2_train,
    case_ddp,
    case_checkpoint,
]


def _worker(rank, ws, store, out_dir, ckpt_dir):
    torch.set_num_threads(1)
    # A file rendezvous, not a TCP port: nothing to collide with other jobs on the machine.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ws, timeout=timedelta(seconds=int(os.environ.get("FASTPRUNE_TEST_TIMEOUT", "90"))))
    mesh = init_device_mesh("cpu", (ws,))
    # The regenerated torch.rand stream of the random methods in small, odd chunks, so that
    # these small tensors span several of them (tests/test_lean.py covers chunks of the selection).
    import fastprune.distributed._handler as handler

    handler.STREAM_CHUNK = 37
    results = {}
    try:
        for case in CASES:
            started = time.perf_counter()
            torch.manual_seed(1234)
            try:
                args = (mesh, ckpt_dir) if case is case_checkpoint else (mesh,)
                results[case.__name__] = ("ok", case(*args))
            except Exception:
                results[case.__name__] = ("fail", traceback.format_exc())
                if os.environ.get("FASTPRUNE_TEST_VERBOSE"):
                    print(f"[rank {rank}] {results[case.__name__][1]}", flush=True)
            dist.barrier()
            if os.environ.get("FASTPRUNE_TEST_VERBOSE") and rank == 0:
                print(f"[{ws} processes] {case.__name__}: {time.perf_counter() - started:.2f} s", flush=True)
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs():
    """Every world size run once (largest first), its per-process results by case name."""
    import torch.multiprocessing as mp

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        for ws in WORLD_SIZES:
            d = os.path.join(tmp, f"ws{ws}")
            os.makedirs(d)
            mp.spawn(_worker, args=(ws, os.path.join(d, "store"), d, ckpt), nprocs=ws, join=True)
            out[ws] = [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=False) for r in range(ws)]
        yield out


@pytest.mark.parametrize("ws", WORLD_SIZES)
@pytest.mark.parametrize("case", [c.__name__ for c in CASES])
def test_sharded_matches_one_process(runs, ws, case):
    for rank, results in enumerate(runs[ws]):
        status, detail = results[case]
        assert status == "ok", f"world size {ws}, process {rank}:\n{detail}"


def test_checkpoint_resharded_4_to_2(runs):
    assert all(r["case_checkpoint"] == ("ok", "loaded") for r in runs[2])


def test_random_same_units_on_any_world_size(runs):
    """Random masks depend on the seed and the units only: equal for 1, 2, 3 and 4 processes."""
    base = runs[1][0]["case_random_full"][1]
    for ws in WORLD_SIZES:
        for rank in range(ws):
            got = runs[ws][rank]["case_random_full"][1]
            for kind in base:
                for name in base[kind]:
                    assert torch.equal(got[kind][name], base[kind][name]), (ws, rank, kind, name)


def test_import_does_not_load_dtensor():
    """The handler is lazy: ``import fastprune`` leaves torch.distributed.tensor unimported."""
    import subprocess
    import sys

    code = "import sys, fastprune; print('torch.distributed.tensor' in sys.modules, fastprune.distributed.AVAILABLE)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.split() == ["False", "True"]
