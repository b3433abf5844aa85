"""The DTensor handler registered in :mod:`fastprune.core.sharding`.

It turns each pruning call on DTensor parameters into one exact distributed
selection (:mod:`fastprune.core.chunked_select`): agreement check, the radix
passes, and local mask writes, with the masks sharded like the parameters.
"""
from __future__ import annotations

import functools
import zlib
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from .. import ops
from ..core import methods as core_methods
from ..core.chunked_select import Piece, Selection, draw_seed, key_kind, rand_keys, rand_kind
from ..core.validation import _compute_nparams_toprune, _validate_pruning_amount
from ._comm import Comm
from ._errors import build_error as _build_error
from ._errors import portable as _portable
from ._stats import _LAST_STATS, ShardedInputError

Tensor = torch.Tensor

# torch.rand draws per step when the random methods regenerate the one-process
# stream (float64: 8 MiB per step).
STREAM_CHUNK = 1 << 20


def _fsdp_managed() -> set:
    """``(id(module), name)`` of every parameter that FSDP2 (``fully_shard``) manages."""
    try:
        from torch.distributed._composable_state import _module_state_mapping
    except ImportError:  # pragma: no cover - torch without composable state
        return set()
    managed = set()
    for ref in list(_module_state_mapping.values()):
        state = ref() if callable(ref) else ref
        group = getattr(state, "_fsdp_param_group", None)
        for fsdp_param in getattr(group, "fsdp_params", None) or []:
            info = fsdp_param._module_info
            managed.add((id(info.module), info.param_name))
            for m, n in zip(info.shared_modules, info.shared_param_names):
                managed.add((id(m), n))
    return managed


def _pruning_kind(method) -> Optional[str]:
    """``"l1"``, ``"random"``, ``"identity"``, ``"custom"`` or ``None`` (not supported sharded)."""
    import torch.nn.utils.prune as torch_prune

    cm = type(method).compute_mask
    if core_methods.uses_fast_l1(method):
        return "l1"
    if cm in (core_methods.RandomUnstructured.compute_mask, torch_prune.RandomUnstructured.compute_mask):
        return "random"
    if cm in (core_methods.Identity.compute_mask, torch_prune.Identity.compute_mask):
        return "identity"
    if cm in (core_methods.CustomFromMask.compute_mask, torch_prune.CustomFromMask.compute_mask):
        return "custom"
    return None


class _Call:
    """One sharded pruning call: validation, agreement check, counts, selection."""

    def __init__(self, op: str, params: Sequence[Tensor], scores: Sequence[Tensor], existing, packed: bool, labels):
        self.op = op
        self.params = list(params)
        self.scores = list(scores)
        self.existing = list(existing)
        self.packed = packed
        self.labels = list(labels)
        self.errors: List[tuple] = []
        self.mesh = next((p.device_mesh for p in self.params if isinstance(p, DTensor)), None)
        if self.mesh is None:
            self.mesh = next(s.device_mesh for s in self.scores if isinstance(s, DTensor))
        self.group = self._group()

    def error(self, exc_type, message: str) -> None:
        if not self.errors:
            self.errors.append((_portable(exc_type), message))

    def _group(self):
        if self.mesh.ndim == 1:
            return self.mesh.get_group()
        if self.mesh.size() != dist.get_world_size():
            self.error(
                ValueError,
                f"parameters live on a {self.mesh.ndim}-d device mesh that does not span the default process group; "
                "only 1-d meshes or meshes over every process are supported",
            )
        return None

    def validate(self) -> None:
        for i, (p, s, e, label) in enumerate(zip(self.params, self.scores, self.existing, self.labels)):
            if not isinstance(p, DTensor):
                self.error(TypeError, f"{label} is a plain tensor while other parameters are DTensors; "
                           "shard every parameter of one call, or none")
                continue
            if p.device_mesh != self.mesh:
                self.error(ValueError, f"{label} is on device mesh {p.device_mesh}, other parameters on {self.mesh}; "
                           "one call prunes parameters of one mesh")
                continue
            for pl in p.placements:
                if type(pl) not in (Shard, Replicate):
                    self.error(ValueError, f"{label} has placement {pl}; only Shard(dim) and Replicate() are supported")
            if p.is_complex():
                self.error(TypeError, f"{label} is complex; magnitude pruning needs real values")
            if s is not p:
                if not isinstance(s, DTensor) or s.device_mesh != p.device_mesh or tuple(s.placements) != tuple(p.placements):
                    self.error(TypeError, f"importance scores of {label} must be a DTensor on the parameter's mesh "
                               f"with its placements {tuple(p.placements)}")
                elif s.shape != p.shape:
                    self.error(ValueError, f"importance scores of {label} have shape {tuple(s.shape)}, "
                               f"the parameter {tuple(p.shape)}")
            if e is not None and not self.packed:
                if not isinstance(e, DTensor) or tuple(e.placements) != tuple(p.placements) or e.shape != p.shape:
                    self.error(TypeError, f"the existing mask of {label} must be a DTensor sharded like the parameter")

    def agree(self, settings, cause: Optional[BaseException] = None) -> None:
        """Exchange a small signature; every process raises the same error on any mismatch.

        ``cause``: the exception this process met before the call reached the
        handler (chained to the error raised here).
        """
        desc = [(tuple(p.shape), str(p.dtype), tuple(str(pl) for pl in getattr(p, "placements", ())))
                for p in self.params]
        mesh_ranks = self.mesh.mesh.flatten().tolist()
        counts = None
        if not self.errors:
            try:
                counts = self._local_counts()
            except Exception as e:  # reported on every process below, like the other local findings
                self.error(type(e), f"{type(e).__name__}: {e}")
        signature = {
            "op": self.op,
            "settings": repr(settings),
            "n": len(self.params),
            "tensors": zlib.crc32(repr(desc).encode()),
            "mesh": zlib.crc32(repr(mesh_ranks).encode()),
            "error": self.errors[0] if self.errors else None,
            # the selectable units travel with the signature: no separate count collective
            "counts": counts,
            # torch-style calls on tensors pruned before select among the units kept
            "existing": [e is not None for e in self.existing],
        }
        self.comm = Comm(self.group, self.mesh.device_type)
        everyone = self.comm.all_gather_object(signature)
        for r, sig in enumerate(everyone):
            if sig["error"] is not None:
                exc_type, message = sig["error"]
                raise _build_error(exc_type, f"{message} (on process {r} of {len(everyone)})") from cause
        first = everyone[0]
        for what, key in (("operation", "op"), ("number of parameters", "n"), ("amount / method / scope", "settings"),
                          ("parameter shapes, dtypes or placements", "tensors"), ("device mesh", "mesh"),
                          ("earlier pruning (existing masks)", "existing")):
            for r, sig in enumerate(everyone):
                if sig[key] != first[key]:
                    raise ShardedInputError(
                        f"the processes disagree on the {what} of this pruning call (process {r} differs from "
                        f"process 0: {sig[key]!r} vs {first[key]!r}); every process must make the same call"
                    )
        self._everyone_counts = [sig["counts"] for sig in everyone]

    def owned(self, p: DTensor) -> bool:
        coord = self.mesh.get_coordinate()
        return all(not isinstance(pl, Replicate) or coord[d] == 0 for d, pl in enumerate(p.placements))

    def selectable_counts(self) -> List[int]:
        """Global number of selectable units of every tensor (gathered by :meth:`agree`)."""
        return [sum(c) for c in zip(*self._everyone_counts)]

    def _local_counts(self) -> List[int]:
        local = []
        for p, e in zip(self.params, self.existing):
            loc = p.to_local()
            if not self.owned(p):
                local.append(0)
            elif e is None:
                local.append(loc.numel())
            elif self.packed:
                local.append(int(ops.unpack_mask(e, loc.numel()).sum()))
            else:
                local.append(int(torch.count_nonzero(e.to_local())))
        return local

    def _take_first_generator_state(self) -> None:
        """Give this process the first process's CPU generator state (a few KB).

        Random methods then draw what the first process would draw, and every
        process's generator ends where the first one's would after the call,
        so replicas whose random states differed agree from here on.
        """
        state = self.comm.broadcast_tensor(torch.default_generator.get_state())
        torch.default_generator.set_state(state)

    def _layout(self, p: DTensor):
        return compute_local_shape_and_global_offset(p.shape, self.mesh, p.placements)

    def select(self, groups: List[int], ks: List[int], selectable: List[int], kind: str, outs,
               stream_dtype: Optional[torch.dtype] = None) -> None:
        """Select ``ks[g]`` units in every group and write the local keep-masks into ``outs``.

        ``kind``: a :func:`key_kind` of the scores, ``"random"`` (the
        counter-based keys of ``sparsify_``) or ``"torch_random"`` (the
        ``torch.rand`` stream of ``RandomUnstructured`` in ``stream_dtype``).
        """
        local_keys = [None] * len(self.params)
        seed = None
        if kind == "random":
            self._take_first_generator_state()
            seed = draw_seed()  # as sparsify_ draws it in one process
        elif kind == "torch_random":
            local_keys = self._torch_random_keys(groups, ks, selectable, stream_dtype)
            kind = rand_kind(stream_dtype)
        pieces, base = [], 0
        for p, s, e, g, keys in zip(self.params, self.scores, self.existing, groups, local_keys):
            local_shape, offset = self._layout(p)
            loc = p.to_local()
            if kind in ("rand32", "rand64"):
                loc_scores = keys
            else:
                loc_scores = None if kind == "random" else s.to_local()
            if e is not None and not self.packed:
                e = e.to_local()
            pieces.append(Piece(loc_scores, e, self.packed, self.owned(p), local_shape, p.shape, offset, base, g,
                                loc.device))
            base += p.numel()
        with torch.no_grad():
            sel = Selection(pieces, ks, selectable, base, kind, self.comm, seed).run()
            sel.write(outs, self.packed)
        _LAST_STATS.clear()
        _LAST_STATS.update(self.comm.stats())

    # -- the torch.rand stream of the one-process call ---------------------

    def _torch_random_keys(self, groups, ks, selectable, dtype) -> List[Tensor]:
        """Local keys of the draws ``RandomUnstructured`` makes in one process on the gathered tensors.

        In one process the method draws ``torch.rand`` once for the units still
        kept, in the global order (tensors in the order given, row-major,
        pruned units skipped), in ``dtype``. Every process regenerates that
        stream from the first process's generator state, chunk by chunk, and
        keeps the draws of its own units: time O(units of the call) on every
        process, memory O(local units + one chunk). ``torch.rand`` on the CPU
        consumes its generator element by element, so consecutive chunks give
        the one long draw bit for bit.
        """
        key_dtype = torch.int64 if dtype == torch.float64 else torch.int32
        drawing = [ks[g] > 0 for g in groups]
        # Position of each tensor's first draw within its group's stream.
        stream_base, seen = [], {}
        for g, n in zip(groups, self.selectable_counts()):
            stream_base.append(seen.get(g, 0))
            seen[g] = seen.get(g, 0) + n
        cells = self._stream_cells(stream_base, drawing)
        values = [torch.empty(int(c[1].sum()) if c is not None else 0, dtype=key_dtype) for c in cells]
        if any(drawing):
            self._take_first_generator_state()
            gen = torch.Generator()
            gen.set_state(torch.default_generator.get_state())
            for g in sorted(set(groups)):
                if ks[g] == 0:
                    continue
                mine = [i for i, gi in enumerate(groups) if gi == g and cells[i] is not None and values[i].numel()]
                total = selectable[g]
                for lo in range(0, total, STREAM_CHUNK):
                    hi = min(total, lo + STREAM_CHUNK)
                    keys = rand_keys(torch.rand(hi - lo, dtype=dtype, generator=gen))
                    for i in mine:
                        _fill_from_stream(keys, lo, hi, cells[i], values[i])
            torch.default_generator.set_state(gen.get_state())  # where the one-process call leaves it
        out = []
        for p, e, v, draws in zip(self.params, self.existing, values, drawing):
            loc = p.to_local()
            if not draws or loc.numel() == 0:  # no unit of it is selected: any keys do
                keys = torch.zeros(loc.numel(), dtype=key_dtype)
            elif e is None:
                keys = v
            else:
                keys = torch.zeros(loc.numel(), dtype=key_dtype)
                keys.masked_scatter_(e.to_local().reshape(-1).cpu() != 0, v)
            out.append(keys.to(loc.device))
        return out

    def _stream_cells(self, stream_base, drawing):
        """Per tensor: ``(P, C, V)``: stream position, count and local draw offset of its local cells.

        A cell is a run of units contiguous both in the full tensor and in the
        local shard: for fixed indices of the dimensions before the last
        sharded dimension ``j``, this process's slice of ``j`` and everything
        after it. The selectable units of a cell take consecutive draws, so a
        cell's first draw is the number of selectable units before it in the
        group: known from its global index when the tensor has no mask, else
        an exclusive prefix sum over every process's per-cell counts (one
        ``all_reduce`` over a grid of cells per such tensor, after one
        ``all_gather`` of each process's slices of ``j``).
        """
        info = []
        for i, (p, e) in enumerate(zip(self.params, self.existing)):
            local_shape, offset = self._layout(p)
            ndim = len(p.shape)
            sharded = [pl.dim % ndim for pl in p.placements if isinstance(pl, Shard)] if ndim else []
            info.append((local_shape, offset, max(sharded) if sharded else -1))
        masked = [i for i, (p, e) in enumerate(zip(self.params, self.existing))
                  if drawing[i] and e is not None and info[i][2] >= 0]
        slices = {}
        if masked:
            mine = [(info[i][1][info[i][2]], info[i][0][info[i][2]], _prod(info[i][0]) > 0) for i in masked]
            everyone = self.comm.all_gather_object(mine)
            for n, i in enumerate(masked):
                starts = sorted({r[n][0] for r in everyone if r[n][2]})
                slices[i] = starts
        cells = []
        for i, (p, e) in enumerate(zip(self.params, self.existing)):
            if not drawing[i]:
                cells.append(None)
                continue
            local_shape, offset, j = info[i]
            loc = p.to_local()
            gshape = tuple(p.shape)
            if j < 0:  # not split anywhere: one cell, the whole tensor
                count = loc.numel() if e is None else int(torch.count_nonzero(e.to_local()))
                P = torch.tensor([stream_base[i]], dtype=torch.int64)
                C = torch.tensor([count], dtype=torch.int64)
            else:
                rest = _prod(gshape[j + 1:])
                length = local_shape[j] * rest
                outer = torch.zeros(1, dtype=torch.int64)  # global index over the dims before j
                for d in range(j):
                    outer = (outer.unsqueeze(1) * gshape[d]
                             + (offset[d] + torch.arange(local_shape[d], dtype=torch.int64))).reshape(-1)
                if loc.numel() == 0:
                    outer = outer[:0]
                if e is None:
                    C = torch.full((outer.numel(),), length, dtype=torch.int64)
                    P = stream_base[i] + outer * (gshape[j] * rest) + offset[j] * rest
                else:
                    elig = e.to_local().reshape(outer.numel(), length) if loc.numel() else e.to_local().reshape(0, 1)
                    C = torch.count_nonzero(elig, dim=1).to(torch.int64).cpu()
                    starts = slices[i]
                    nseg = len(starts)
                    grid = torch.zeros(_prod(gshape[:j]) * nseg, dtype=torch.int64, device=self.comm.device)
                    if loc.numel():
                        where = outer * nseg + starts.index(offset[j])
                        if self.owned(p):
                            grid[where.to(grid.device)] = C.to(grid.device)
                    self.comm.all_reduce(grid)
                    grid = grid.cpu()
                    before = grid.cumsum(0) - grid
                    P = stream_base[i] + (before[where] if loc.numel() else outer)
            keep = C > 0
            P, C = P[keep], C[keep]
            V = C.cumsum(0) - C
            cells.append((P, C, V))
        return cells


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _fill_from_stream(keys: Tensor, lo: int, hi: int, cells, values: Tensor) -> None:
    """Copy the draws ``[lo, hi)`` of a stream (``keys``) that fall in ``cells`` into ``values``.

    ``cells = (P, C, V)``: the cells' first stream positions (increasing),
    their counts and their offsets in ``values`` (a cell's draws are stored
    consecutively, cells one after the other).
    """
    P, C, V = cells
    end = P + C
    first = int(torch.searchsorted(end, torch.tensor([lo]), right=True))
    last = int(torch.searchsorted(P, torch.tensor([hi])))
    if last <= first:
        return
    starts = P[first:last].clamp(min=lo) - lo
    stops = end[first:last].clamp(max=hi) - lo
    at = int(V[first]) + max(int(P[first]), lo) - int(P[first])
    n = int((stops - starts).sum())
    if last - first == 1:
        values[at:at + n] = keys[int(starts[0]):int(stops[0])]
        return
    # several cells in this chunk: mark the draws inside any of them (they are disjoint)
    edges = torch.zeros(hi - lo + 1, dtype=torch.int32)
    ones = torch.ones(last - first, dtype=torch.int32)
    edges.index_add_(0, starts, ones)
    edges.index_add_(0, stops, -ones)
    values[at:at + n] = keys[edges.cumsum(0)[:-1] > 0]


def _stream_dtype(scores) -> torch.dtype:
    """The dtype of the one-process draws: that of the scores (of their concatenation for several)."""
    return functools.reduce(torch.promote_types, [s.dtype for s in scores])


def _check_stream_dtype(call: _Call) -> None:
    dtype = _stream_dtype(call.scores)
    if not dtype.is_floating_point:
        call.error(TypeError, f"RandomUnstructured draws torch.rand in the parameters' dtype, and {dtype} has "
                   "no random floats; use sparsify_(..., method='random') for integer tensors")


class DTensorHandler:
    """Routes pruning calls on DTensor parameters through the distributed selection."""

    def claims(self, tensors) -> bool:
        return any(isinstance(t, DTensor) for t in tensors)

    def report_error(self, tensors, exc: BaseException) -> None:
        """Make every process raise ``exc`` found here before the call reached the handler.

        The other processes, whose arguments were fine, are on their way into
        the agreement check of this call; this process joins it carrying the
        error, so all of them raise it instead of waiting in a collective.
        """
        dts = [t for t in tensors if isinstance(t, DTensor)]
        call = _Call("invalid call", dts, dts, [None] * len(dts), packed=False, labels=[""] * len(dts))
        call.errors = []
        call.error(type(exc), str(exc))
        call.agree(None, cause=exc)

    def local(self, t: Tensor) -> Tensor:
        if not isinstance(t, DTensor):
            return t
        with torch.no_grad():
            return t.to_local()

    def wrap_like(self, param: Tensor, local: Tensor) -> Tensor:
        if not isinstance(param, DTensor):
            return local
        return DTensor.from_local(
            local, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
        )

    # -- torch-style reparametrisation ------------------------------------

    def _check_not_fsdp(self, call: _Call, pairs) -> None:
        managed = _fsdp_managed()
        for (module, name), label in zip(pairs, call.labels):
            if (id(module), name) in managed:
                call.error(
                    TypeError,
                    f"{label} is managed by FSDP2 (fully_shard), which finds its parameters by name: the torch-style "
                    f"reparametrisation (renaming {name!r} to {name + '_orig'!r}) would break it. Use "
                    "fastprune.sparsify_(model, amount) instead: it prunes in place and keeps 1-bit masks",
                )

    def _masks_for(self, call: _Call, kind: str, amount, scope: str, method_obj=None) -> List[Tensor]:
        """Run the selection and return local masks in each parameter's dtype (torch-style)."""
        outs = [torch.empty(p.to_local().shape, dtype=p.dtype, device=p.to_local().device) for p in call.params]
        if kind in ("identity", "custom"):
            for i, (p, e, out) in enumerate(zip(call.params, call.existing, outs)):
                base = torch.ones_like(out) if e is None else e.to_local().to(out.dtype)
                if kind == "custom":
                    m = method_obj.mask
                    m = m.to_local() if isinstance(m, DTensor) else m
                    base = base * m.to(device=out.device, dtype=out.dtype)
                out.copy_(base)
            return outs
        selectable = call.selectable_counts()
        if scope == "global":
            total = sum(selectable)
            k = _compute_nparams_toprune(amount, total)
            _validate_pruning_amount(k, total)
            groups, ks, sel = [0] * len(call.params), [k], [total]
        else:
            ks = [_compute_nparams_toprune(amount, n) for n in selectable]
            for k, n in zip(ks, selectable):
                _validate_pruning_amount(k, n)
            groups, sel = list(range(len(call.params))), selectable
        if kind == "random":
            call.select(groups, ks, sel, "torch_random", outs, stream_dtype=_stream_dtype(call.scores))
        else:
            call.select(groups, ks, sel, key_kind([s.dtype for s in call.scores]), outs)
        return outs

    def global_masks(self, targets, scores, method, masks) -> List[Tensor]:
        params = [getattr(m, n) for m, n in targets]
        labels = [f"parameters[{i}] ({type(m).__name__}.{n})" for i, (m, n) in enumerate(targets)]
        call = _Call("global_unstructured", params, scores, masks, packed=False, labels=labels)
        call.validate()
        kind = _pruning_kind(method)
        if kind not in ("l1", "random"):
            call.error(TypeError, f"global_unstructured on DTensor parameters supports L1Unstructured and "
                       f"RandomUnstructured, got {type(method).__name__}")
        elif kind == "random":
            _check_stream_dtype(call)
        self._check_not_fsdp(call, targets)
        call.agree((type(method).__name__, getattr(method, "amount", None)))
        locals_ = self._masks_for(call, kind, method.amount, "global")
        return [self.wrap_like(p, m) for p, m in zip(params, locals_)]

    def method_mask(self, module, name, method, scores, existing) -> Tensor:
        param = getattr(module, name)
        label = f"{type(module).__name__}.{name}"
        call = _Call(f"prune:{type(method).__name__}", [param], [scores], [existing], packed=False, labels=[label])
        call.validate()
        kind = _pruning_kind(method)
        if kind is None:
            call.error(TypeError, f"{type(method).__name__} is not supported on DTensor parameters; supported: "
                       "L1Unstructured, RandomUnstructured, Identity, CustomFromMask")
        elif kind == "random":
            _check_stream_dtype(call)
        self._check_not_fsdp(call, [(module, name)])
        call.agree((type(method).__name__, getattr(method, "amount", None)))
        (local,) = self._masks_for(call, kind, getattr(method, "amount", 0), "local", method)
        return self.wrap_like(param, local)

    # -- lean 1-bit masks --------------------------------------------------

    def sparsify_masks(self, params, scores, packed, amount, method, scope) -> List[Tensor]:
        labels = [f"parameters[{i}]" for i in range(len(params))]
        call = _Call("sparsify_", params, scores, packed, packed=True, labels=labels)
        call.validate()
        for i, (p, e) in enumerate(zip(params, packed)):
            if isinstance(p, DTensor) and e is not None and e.numel() != ops.packed_numel(p.to_local().numel()):
                call.error(ValueError, f"{labels[i]}: its remembered mask does not match its local shard")
        call.agree((method, scope, amount))
        selectable = call.selectable_counts()
        if scope == "global":
            total = sum(selectable)
            k = _compute_nparams_toprune(amount, total)
            if k > total:
                raise ValueError(f"amount={amount} should be smaller than the number of parameters to prune={total}")
            groups, ks, sel = [0] * len(params), [k], [total]
        else:
            ks = [_compute_nparams_toprune(amount, n) for n in selectable]
            for lab, k, n in zip(labels, ks, selectable):
                if k > n:
                    raise ValueError(f"amount={amount} should be smaller than the number of units of {lab} to prune={n}")
            groups, sel = list(range(len(params))), selectable
        outs = [torch.empty(ops.packed_numel(p.to_local().numel()), dtype=torch.uint8, device=p.to_local().device)
                for p in params]
        kind = "random" if method == "random" else key_kind([s.dtype for s in scores])
        call.select(groups, ks, sel, kind, outs)
        return outs

    def mask_state(self, param: Tensor, packed: Tensor, numel: int) -> Tensor:
        local = param.to_local()
        bits = ops.unpack_mask(packed, numel, torch.uint8).reshape(local.shape)
        return self.wrap_like(param, bits)

    def mask_from_state(self, param: Tensor, value):
        if not isinstance(value, DTensor):
            raise TypeError(
                "a MaskSet of DTensor parameters loads masks saved as DTensors (MaskSet.state_dict() on the "
                f"sharded model, through torch.distributed.checkpoint), got {type(value).__name__}"
            )
        local = value.to_local()
        if tuple(value.shape) != tuple(param.shape) or local.shape != param.to_local().shape:
            raise ValueError(
                f"saved mask of shape {tuple(value.shape)} (local {tuple(local.shape)}) does not match the parameter "
                f"{tuple(param.shape)} (local {tuple(param.to_local().shape)}); load into MaskSet.state_dict() of the "
                "sharded model"
            )
        return ops.pack_mask(local)
