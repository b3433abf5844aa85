"""The DTensor handler registered in :mod:`fastprune.core.sharding`.

It turns each pruning call on DTensor parameters into one exact distributed
selection (:mod:`._select`): agreement check, one count ``all_reduce``, the
radix passes, and local mask writes, with the masks sharded like the
parameters.
"""
from __future__ import annotations

import zlib
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from .. import ops
from ..core import methods as core_methods
from ..core.validation import _compute_nparams_toprune, _validate_pruning_amount
from ._select import Comm, Piece, Selection, key_kind
from ._stats import _LAST_STATS, ShardedInputError

Tensor = torch.Tensor

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
            self.errors.append((exc_type.__name__, message))

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

    def agree(self, settings) -> None:
        """Exchange a small signature; every process raises the same error on any mismatch."""
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
        }
        self.comm = Comm(self.group, self.mesh.device_type)
        everyone = self.comm.all_gather_object(signature)
        for r, sig in enumerate(everyone):
            if sig["error"] is not None:
                exc = {"TypeError": TypeError}.get(sig["error"][0], ValueError)
                raise exc(f"{sig['error'][1]} (on process {r} of {len(everyone)})")
        first = everyone[0]
        for what, key in (("operation", "op"), ("number of parameters", "n"), ("amount / method / scope", "settings"),
                          ("parameter shapes, dtypes or placements", "tensors"), ("device mesh", "mesh")):
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

    def select(self, groups: List[int], ks: List[int], selectable: List[int], kind: str, outs) -> None:
        pieces, base = [], 0
        for p, s, e, g in zip(self.params, self.scores, self.existing, groups):
            local_shape, offset = compute_local_shape_and_global_offset(p.shape, self.mesh, p.placements)
            loc_scores = None if kind == "random" else s.to_local()
            if e is not None and not self.packed:
                e = e.to_local()
            pieces.append(Piece(loc_scores, e, self.packed, self.owned(p), local_shape, p.shape, offset, base, g))
            base += p.numel()
        seed = None
        if kind == "random":
            # Drawn from torch's generator on every process (so each one's state
            # advances alike) and taken from the first: replicas agree.
            seed = self.comm.broadcast_int(int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item()))
        with torch.no_grad():
            sel = Selection(pieces, ks, selectable, base, kind, self.comm, seed).run()
            sel.write(outs, self.packed)
        _LAST_STATS.clear()
        _LAST_STATS.update(self.comm.stats())


class DTensorHandler:
    """Routes pruning calls on DTensor parameters through the distributed selection."""

    def claims(self, tensors) -> bool:
        return any(isinstance(t, DTensor) for t in tensors)

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
        skind = "random" if kind == "random" else key_kind([s.dtype for s in call.scores])
        call.select(groups, ks, sel, skind, outs)
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
