"""A cut plan: every (module, tensor, dim, indices) to remove, and how to apply it.

A plan reads the graph it comes from (classes, their members, the rules'
records) but never imports the graph module: the graph builds plans, plans
only consume graphs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from ..core.targets import eval_mode, is_reparametrized
from .attrs import FLAT_ATTRS, HEAD_ATTRS, KV_ATTRS, Q_HEAD_ATTRS

__all__ = ["Plan", "Cut"]


@dataclass
class Cut:
    """Remove ``indices`` along ``dim`` of ``module.<tensor>`` (a parameter or buffer).

    Attributes:
        module_name: qualified name of the module holding the tensor.
        module: that module.
        tensor: the tensor's name in the module (``weight_orig`` for a
            reparametrised weight).
        dim: the dimension that loses entries.
        indices: the removed indices, sorted.
        is_param: False for buffers (running statistics, masks).
        role: ``"in"`` when the layer owning the weight reads these channels
            (a conv/linear input dim), ``"out"`` when it produces them, else ``None``.
    """

    module_name: str
    module: nn.Module
    tensor: str
    dim: int
    indices: Tuple[int, ...]
    is_param: bool
    role: Optional[str] = None  # "out": the layer writes these channels; "in": it reads them

    @property
    def fqn(self) -> str:
        """Qualified name of the tensor."""
        return f"{self.module_name}.{self.tensor}" if self.module_name else self.tensor


def _split_fqn(fqn: str) -> Tuple[str, str]:
    if "." in fqn:
        mod, name = fqn.rsplit(".", 1)
        return mod, name
    return "", fqn


def _fmt_idx(idx) -> str:
    idx = list(idx)
    if len(idx) <= 8:
        return str(idx)
    return "[" + ", ".join(map(str, idx[:6])) + f", ... +{len(idx) - 6}]"


class Plan:
    """Channels to remove, grouped per tensor; :meth:`exec` applies it.

    Built by :meth:`DependencyGraph.plan` or :func:`fastprune.prune_channels`;
    printing it gives a table of every cut.

    Args:
        graph: the :class:`~fastprune.structured.DependencyGraph` the deletion refers to.
        dels: class id -> channel indices to delete (already closed under the
            graph's couplings).
        requested: ``(label, count)`` of the request, for the printed summary.
        input_means: bias compensation (FLAP): module name -> the mean of
            its input channels on calibration data (full length, before the
            cut). A linear layer named here that loses input channels gets
            ``sum over removed j of W[:, j] * mean_j`` added to its bias (a
            bias is created when it has none), so its output keeps the mean
            contribution of what was removed.

    Attributes:
        cuts: one :class:`Cut` per (tensor, dim).
        attribute_changes: ``(module_name, attribute, old, new)`` for the size
            attributes that follow (``out_channels``, ``num_heads`` ...).
        deletions: class id -> removed indices.
        executed: True once :meth:`exec` succeeded.

    Raises:
        ValueError: when one module is used with channel counts that would
            need two different values of one attribute.

    Example::

        >>> plan = dg.plan(model.conv1, [0, 5])
        >>> plan.n_params_removed
        96
        >>> plan.exec()
    """

    def __init__(self, graph, dels: Dict[int, Set[int]], requested=None, input_means=None):
        self.graph = graph
        self.deletions = {c: tuple(sorted(s)) for c, s in dels.items() if s}
        self.requested = requested
        self.executed = False
        model = graph.model
        per_tensor: Dict[str, Dict[int, Tuple[int, ...]]] = {}
        is_param: Dict[str, bool] = {}
        for c, idx in self.deletions.items():
            for fqn, d, p in graph.class_members[c]:
                per_tensor.setdefault(fqn, {})[d] = idx
                is_param[fqn] = p
        roles = {(r.fqn, r.dim): r.kind for r in graph.roles}
        self.cuts: List[Cut] = []
        for fqn in sorted(per_tensor):
            mod_name, tname = _split_fqn(fqn)
            module = model.get_submodule(mod_name)
            base = fqn[: -len("_orig")] if fqn.endswith("_orig") else fqn
            for d in sorted(per_tensor[fqn]):
                self.cuts.append(Cut(mod_name, module, tname, d, per_tensor[fqn][d], is_param[fqn],
                                     roles.get((base, d))))
        self._per_tensor = per_tensor
        self.attribute_changes = self._attribute_changes()
        self.compensated = self._compensated(input_means or {})

    # -- bias compensation -------------------------------------------------------
    def _compensated(self, means) -> Dict[str, List[tuple]]:
        """module name -> [(weight fqn, in dim, removed indices, mean)] of the inputs it loses."""
        out: Dict[str, List[tuple]] = {}
        for r in self.graph.roles:
            if r.kind != "in" or r.cls not in self.deletions or r.module not in means:
                continue
            m = self.graph.model.get_submodule(r.module)
            if not (isinstance(m, nn.Linear) or _is_conv1d(m)):
                raise ValueError(f"bias compensation: {r.module} is a {type(m).__name__}; only "
                                 "linear layers (nn.Linear, Conv1D) are compensated")
            mean = means[r.module]
            if mean.numel() != self.graph.class_size[r.cls]:
                raise ValueError(f"bias compensation: the mean input of {r.module} has "
                                 f"{mean.numel()} channels, the layer reads "
                                 f"{self.graph.class_size[r.cls]}")
            fqn = r.fqn if r.fqn in self._tensor_names() else r.fqn + "_orig"
            out.setdefault(r.module, []).append((fqn, r.dim, self.deletions[r.cls], mean))
        return out

    def _tensor_names(self):
        return self.graph.tensor_shapes

    def _bias_values(self, new_tensors) -> Dict[str, Tuple[nn.Module, Optional[str], torch.Tensor]]:
        """module name -> (module, bias fqn or None when it has none, the new bias)."""
        out = {}
        canon = self.graph.canonical
        for path, parts in self.compensated.items():
            m = self.graph.model.get_submodule(path)
            conv1d = _is_conv1d(m)
            delta = None
            for fqn, d, removed, mean in parts:
                w = self._tensor(fqn).detach()
                idx = torch.tensor(removed, device=w.device)
                mu = mean.to(w.device, torch.float64)[idx]
                cols = w.index_select(d, idx).double()
                part = mu @ cols if conv1d else cols @ mu
                delta = part if delta is None else delta + part
            out_dim = 1 if conv1d else 0
            wfqn = parts[0][0]
            keep_out = self._per_tensor.get(wfqn, {}).get(out_dim)
            if keep_out is not None:
                delta = delta.index_select(0, _keep(delta.shape[0], keep_out, delta.device))
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor):
                bfqn = canon.get(f"{path}.bias", f"{path}.bias")
                base = new_tensors.get(bfqn, bias.detach())
                out[path] = (m, bfqn, (base.double() + delta).to(bias.dtype))
            else:
                out[path] = (m, None, delta.to(self._tensor(wfqn).dtype))
        return out

    # -- derived size attributes ----------------------------------------------
    def _removed(self, c) -> int:
        return len(self.deletions.get(c, ()))

    def _attribute_changes(self) -> List[Tuple[str, str, object, object]]:
        g, model = self.graph, self.graph.model
        changes: Dict[Tuple[str, str], Tuple[object, object]] = {}

        def propose(path, attr, old, new):
            if old == new:
                return
            key = (path, attr)
            if key in changes and changes[key][1] != new:
                raise ValueError(
                    f"inconsistent sizes for {path or '<root>'}.{attr}: the module is used "
                    f"with different channel counts ({changes[key][1]} vs {new})")
            changes[key] = (old, new)

        def module_at(path):
            try:
                return model.get_submodule(path)
            except AttributeError:
                return None

        for path, attr, cls in g.attrs:
            m = module_at(path)
            if m is None or not hasattr(m, attr):
                continue
            old = getattr(m, attr)
            if isinstance(cls, tuple):
                if isinstance(old, (tuple, list)) and len(old) == len(cls):
                    sizes = tuple(int(g.class_size[c]) for c in cls)
                    if tuple(old) == sizes:
                        propose(path, attr, tuple(old),
                                tuple(s - self._removed(c) for s, c in zip(sizes, cls)))
                continue
            # only an attribute that still matches the traced size is ours to change
            if isinstance(old, int) and not isinstance(old, bool) and old == g.class_size[cls]:
                propose(path, attr, old, old - self._removed(cls))
        q_classes, kv_classes = set(), set()
        for path, qc, kc in g.head_notes:
            q_classes.add(qc)
            if kc != qc:
                kv_classes.add(kc)
            m = module_at(path)
            if m is None:
                continue
            for names, c in ((Q_HEAD_ATTRS, qc), (KV_ATTRS, kc)):
                for a in names:
                    old = getattr(m, a, None)
                    if isinstance(old, int) and old == g.class_size[c] and self._removed(c):
                        propose(path, a, old, old - self._removed(c))
        for path, cc, fc in g.split_notes:
            m = module_at(path)
            if m is None or not self._removed(cc):
                continue
            if cc in kv_classes:
                names = KV_ATTRS
            elif cc in q_classes:
                names = Q_HEAD_ATTRS
            else:
                names = HEAD_ATTRS + KV_ATTRS
            for a in names:
                old = getattr(m, a, None)
                if isinstance(old, int) and old == g.class_size[cc]:
                    propose(path, a, old, old - self._removed(cc))
            for a in FLAT_ATTRS:
                old = getattr(m, a, None)
                if isinstance(old, int) and old == g.class_size[fc]:
                    propose(path, a, old, old - self._removed(fc))
        return [(p, a, o, n) for (p, a), (o, n) in changes.items()]

    # -- summaries ---------------------------------------------------------------
    def _tensor(self, fqn: str) -> torch.Tensor:
        mod, name = _split_fqn(fqn)
        return getattr(self.graph.model.get_submodule(mod), name)

    def shapes_after(self) -> Dict[str, Tuple[int, ...]]:
        """Shape of every traced parameter and buffer once the plan is executed.

        Returns:
            dict: traced tensor name (canonical for tied tensors, ``*_orig``
            for reparametrised weights) -> shape after the cuts.
        """
        out = {}
        for fqn, shape in self.graph.tensor_shapes.items():
            shape = list(shape)
            for d, idx in self._per_tensor.get(fqn, {}).items():
                shape[d] -= len(idx)
            out[fqn] = tuple(shape)
        return out

    @property
    def n_params_removed(self) -> int:
        """Number of parameter entries the plan removes."""
        total = 0
        for fqn, dims in self._per_tensor.items():
            if not any(c.is_param for c in self.cuts if c.fqn == fqn):
                continue
            shape = list(self.graph.tensor_shapes[fqn])
            before = 1
            for s in shape:
                before *= s
            for d, idx in dims.items():
                shape[d] -= len(idx)
            after = 1
            for s in shape:
                after *= s
            total += before - after
        return total

    def __len__(self):
        return len(self.cuts)

    def __str__(self):
        lines = []
        if self.requested is not None:
            what, n = self.requested
            lines.append(f"Plan: remove {n} channel(s) of {what} and every coupled dimension")
        else:
            lines.append("Plan: remove channels")
        w = max([len(c.fqn) for c in self.cuts] + [6])
        lines.append(f"  {'tensor':<{w}}  dim  removed  indices")
        for c in self.cuts:
            kind = "" if c.is_param else " (buffer)"
            lines.append(f"  {c.fqn:<{w}}  {c.dim:>3}  {len(c.indices):>7}  "
                         f"{_fmt_idx(c.indices)}{kind}")
        for path, attr, old, new in self.attribute_changes:
            lines.append(f"  set {path or '<root>'}.{attr}: {old} -> {new}")
        for path, parts in self.compensated.items():
            n = sum(len(p[2]) for p in parts)
            lines.append(f"  bias of {path}: + mean contribution of its {n} removed input(s)")
        lines.append(f"  {self.n_params_removed} parameters removed")
        return "\n".join(lines)

    __repr__ = __str__

    # -- execution ---------------------------------------------------------------
    def exec(self, validate: bool = True, undo: Optional[list] = None) -> "Plan":
        """Apply the plan to the model in place.

        Cut parameters are replaced by new ``nn.Parameter`` objects (rebuild
        optimizers afterwards; tied parameters stay tied), buffers are
        replaced, size attributes updated, compensated biases written and
        pruning reparametrisations (``weight_orig`` / ``weight_mask``) refreshed.

        Args:
            validate: run the model once on the graph's example inputs after
                the change (skipped for meta-device models).
            undo: a list; on success the callables that undo this execution
                are appended to it (call them in reverse order), so a caller
                that executes several plans can roll all of them back.

        Returns:
            Plan: ``self``, executed; its graph is stale from now on.

        Raises:
            RuntimeError: when the plan was executed already, the graph is
                stale, a tensor changed shape since tracing, or anything fails
                while applying or validating; in the last case every change is
                undone first and the model is exactly as before.
        """
        g = self.graph
        if self.executed:
            raise RuntimeError("this plan has already been executed")
        g.check_fresh()
        model = g.model
        # Everything is computed before the first mutation.
        new_tensors: Dict[str, torch.Tensor] = {}
        for fqn, dims in self._per_tensor.items():
            t = self._tensor(fqn)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(g.tensor_shapes[fqn]):
                raise RuntimeError(
                    f"{fqn} changed shape since the DependencyGraph was built "
                    f"({tuple(g.tensor_shapes[fqn])} -> {tuple(getattr(t, 'shape', ()))})")
            out = t.detach()
            for d, idx in dims.items():
                keep = _keep(t.shape[d], idx, t.device)
                out = out.index_select(d, keep)
            new_tensors[fqn] = out.contiguous()
        biases = self._bias_values(new_tensors)
        for m, bfqn, value in biases.values():
            if bfqn is not None:
                new_tensors[bfqn] = value.contiguous()
        outer_undo, undo = undo, []
        try:
            owners = _param_owners(model)
            for fqn, new in new_tensors.items():
                mod_name, name = _split_fqn(fqn)
                module = model.get_submodule(mod_name)
                if name in module._parameters and module._parameters[name] is not None:
                    # A fresh Parameter: autograd nodes cached on the old one keep
                    # its old shape, so resizing it in place would break backward.
                    p = module._parameters[name]
                    q = nn.Parameter(new, requires_grad=p.requires_grad)
                    q.__dict__.update(p.__dict__)
                    if p.grad is not None:
                        gnew = p.grad
                        for d, idx in self._per_tensor.get(fqn, {}).items():
                            gnew = gnew.index_select(d, _keep(p.grad.shape[d], idx, p.grad.device))
                        q.grad = gnew.contiguous()
                    for m, n in owners.get(id(p), [(module, name)]):
                        undo.append(lambda m=m, n=n, o=p: m._parameters.__setitem__(n, o))
                        m._parameters[n] = q
                else:
                    old = module._buffers[name]
                    for m, n in owners.get(id(old), [(module, name)]):
                        undo.append(lambda m=m, n=n, o=old: m._buffers.__setitem__(n, o))
                        m._buffers[n] = new
            for path, attr, old, new in self.attribute_changes:
                m = model.get_submodule(path)
                undo.append(lambda m=m, a=attr, o=getattr(m, attr): setattr(m, a, o))
                setattr(m, attr, new)
            for m, bfqn, value in biases.values():
                if bfqn is None:  # a new bias (nn.Linear keeps an empty slot for it)
                    w = m._parameters["weight"]
                    undo.append(lambda m=m, o=m._parameters.get("bias"):
                                m._parameters.__setitem__("bias", o))
                    m._parameters["bias"] = nn.Parameter(value.contiguous(),
                                                         requires_grad=w.requires_grad)
            _refresh_masked(model, {(_split_fqn(f)[0]) for f in new_tensors}, undo)
            if validate and not _on_meta(model):
                _check_forward(model, g.args, g.kwargs)
        except BaseException as exc:
            for fn in reversed(undo):
                fn()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise RuntimeError(
                f"structured pruning was rolled back, the model is unchanged: "
                f"{type(exc).__name__}: {exc}") from exc
        if outer_undo is not None:
            outer_undo.extend(undo)
        self.executed = True
        g.stale = True
        return self


def _is_conv1d(m: nn.Module) -> bool:  # transformers' Conv1D (GPT-2): weight [in, out]
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def _keep(n: int, removed, device) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    if removed:
        mask[list(removed)] = False
    return mask.nonzero().flatten().to(device)


def _param_owners(model: nn.Module):
    """id(tensor) -> every (module, name) holding it, so tied weights stay tied."""
    owners: Dict[int, list] = {}
    for m in model.modules():
        for n, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is not None:
                owners.setdefault(id(t), []).append((m, n))
    return owners


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def _refresh_masked(model: nn.Module, paths, undo):
    """Recompute ``name = name_orig * name_mask`` on reparametrised modules."""
    for path in paths:
        m = model.get_submodule(path)
        for hook in list(m._forward_pre_hooks.values()):
            name = getattr(hook, "_tensor_name", None)
            if name is None or not is_reparametrized(m, name):
                continue
            undo.append(lambda m=m, n=name, o=getattr(m, name, None): setattr(m, n, o))
            if hasattr(hook, "apply_mask"):
                setattr(m, name, hook.apply_mask(m))
            else:
                setattr(m, name, getattr(m, name + "_orig") * getattr(m, name + "_mask"))


def _check_forward(model: nn.Module, args, kwargs):
    with eval_mode(model), torch.no_grad():
        model(*args, **kwargs)
