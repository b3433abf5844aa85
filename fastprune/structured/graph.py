"""Dependency graph: which tensor dimensions of a model must lose the same channels.

The model is traced with ``torch.export`` (:mod:`.trace`; non-strict, so
Python control flow, Hugging Face models and meta-device weights work) and
built into classes of coupled dimensions joined by typed edges
(:mod:`.builder`, :mod:`.rules`, :mod:`.edges`). Deleting channels is then a
closure computation over classes: start from the requested indices and follow
the edges until nothing changes. Classes whose size is fixed by something
other than a parameter are *blocked*, with the reason kept for error messages.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from ..core.targets import is_reparametrized
from .builder import build
from .plan import Plan
from .trace import split_example_inputs, trace

__all__ = ["DependencyGraph", "ChannelGroup"]


@dataclass
class ChannelGroup:
    """A set of coupled classes whose channels are removed together.

    Attributes:
        id: position in :meth:`DependencyGraph.groups`.
        name: the layer(s) producing the group's channels, for reports.
        classes: the dimension classes of the group.
        root: the class whose remaining size :func:`~fastprune.prune_channels`
            reports and rounds (the widest producer).
        atoms: the smallest removable units: each maps class ids to the
            channel indices it removes there (a single channel, a whole head,
            a group of a grouped conv ...).
        valid: ``valid[i]`` is False when atom ``i`` touches a blocked
            dimension or would empty one.
        reasons: up to four reasons why atoms are blocked.

    Example::

        >>> g = DependencyGraph(model, x).groups()[0]
        >>> g.n_prunable            # atoms that may go
        16
    """

    id: int
    name: str
    classes: List[int]
    root: int
    atoms: List[Dict[int, Tuple[int, ...]]]
    valid: List[bool]
    reasons: List[str] = field(default_factory=list)

    @property
    def n_prunable(self) -> int:
        """Number of atoms that may be removed."""
        return sum(self.valid)

    def __repr__(self):
        return (f"ChannelGroup({self.name!r}, atoms={len(self.atoms)}, "
                f"prunable={self.n_prunable})")


class DependencyGraph:
    """Coupled channel dimensions of ``model``, traced on ``example_inputs``.

    Args:
        model: the model; it may live on the meta device, and may be pruned
            with masks (``weight_orig`` / ``weight_mask``) by torch or fastprune.
        example_inputs: a Tensor, a tuple of positional inputs, a dict of
            keyword inputs or an ``(args, kwargs)`` pair.

    Attributes:
        model: the traced model.
        args, kwargs: the example inputs the model is traced and checked on.
        trace_time: seconds spent in ``torch.export``.
        build_time: seconds for tracing and building together.
        stale: True once a plan from this graph has been executed.
        n_classes, class_size, class_members, member_class, class_blocked,
            edges, class_edges, roles, attrs, head_notes, split_notes,
            tensor_shapes, canonical, op_counts: the graph itself (see
            :class:`~fastprune.structured.builder.GraphData`).

    Raises:
        TypeError: when ``model`` is not an ``nn.Module`` or the inputs are of
            an unsupported type.
        TraceError: when ``torch.export`` cannot trace the model.

    Example::

        >>> dg = DependencyGraph(model, torch.randn(1, 3, 32, 32))
        >>> plan = dg.plan(model.conv1, [0, 3])
        >>> plan.exec()
    """

    def __init__(self, model: nn.Module, example_inputs):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.args, self.kwargs = split_example_inputs(example_inputs)
        t0 = time.perf_counter()
        ep = trace(model, self.args, self.kwargs)
        self.trace_time = time.perf_counter() - t0
        data = build(model, ep)
        self.canonical = data.canonical
        self.op_counts = data.op_counts
        self.tensor_shapes = data.tensor_shapes
        self.class_size = data.class_size
        self.class_blocked = data.class_blocked
        self.class_members = data.class_members
        self.member_class = data.member_class
        self.edges = data.edges
        self.class_edges = data.class_edges
        self.roles = data.roles
        self.attrs = data.attrs
        self.head_notes = data.head_notes
        self.split_notes = data.split_notes
        self.n_classes = data.n_classes
        self.build_time = time.perf_counter() - t0
        self.stale = False
        self._groups: Optional[List[ChannelGroup]] = None

    # -- queries ---------------------------------------------------------------
    def check_fresh(self) -> None:
        """Raise ``RuntimeError`` when a plan from this graph changed the model's shapes."""
        if self.stale:
            raise RuntimeError(
                "this DependencyGraph is stale: a plan built from it has been executed and "
                "the model changed shape; build a new DependencyGraph")

    def _fqn_of_tensor(self, target, name: str) -> str:
        if isinstance(target, torch.Tensor):
            for fqn, p in self.model.named_parameters(remove_duplicate=False):
                if p is target:
                    return self.canonical.get(fqn, fqn)
            for fqn, p in self.model.named_buffers(remove_duplicate=False):
                if p is target:
                    return self.canonical.get(fqn, fqn)
            raise ValueError("tensor passed to plan() is not a parameter or buffer of the model")
        if not isinstance(target, nn.Module):
            raise TypeError("plan() expects an nn.Module of the model (or one of its "
                            f"parameters), got {type(target).__name__}")
        for path, m in self.model.named_modules(remove_duplicate=False):
            if m is target:
                if not isinstance(getattr(m, name, None), torch.Tensor) and \
                        not is_reparametrized(m, name):
                    raise ValueError(
                        f"{path or '<root>'} ({type(m).__name__}) has no tensor {name!r}; pass "
                        "one of its layers (e.g. a projection) or name= one of its parameters")
                fqn = f"{path}.{name}" if path else name
                fqn = self.canonical.get(fqn, fqn)
                if (fqn, 0) not in self.member_class and (fqn + "_orig", 0) in self.member_class:
                    fqn += "_orig"
                return fqn
        raise ValueError("module passed to plan() is not part of the traced model")

    def resolve(self, target, dim: Optional[int] = None, name: str = "weight"):
        """``(tensor name, dim, class id)`` for ``dim`` of ``target``.

        Args:
            target: a module of the model (its ``name`` tensor) or one of its
                parameters/buffers.
            dim: the dimension; by default the module's output channels: dim 0
                of a conv/linear weight, dim 1 of an embedding or transposed
                conv weight.
            name: the tensor of ``target`` when it is a module.

        Returns:
            ``(str, int, int)``: traced tensor name, dim and class id.

        Raises:
            TypeError: for a target that is neither a module nor a tensor, or a non-int dim.
            ValueError: for a target outside the model or unused in the forward.
            IndexError: for a dim out of range.
        """
        fqn = self._fqn_of_tensor(target, name)
        if dim is None:
            base = fqn[: -len("_orig")] if fqn.endswith("_orig") else fqn
            outs = [r.dim for r in self.roles if r.fqn == base and r.kind == "out"]
            dim = outs[0] if outs else 0
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        key = (fqn, dim)
        if key not in self.member_class:
            if any(f == fqn for f, _ in self.member_class):
                raise IndexError(f"dim {dim} is out of range for {fqn}")
            raise ValueError(f"{fqn} is not used in the traced forward pass")
        return fqn, dim, self.member_class[key]

    def class_of(self, target, dim: Optional[int] = None, name: str = "weight") -> int:
        """Class id of ``dim`` of ``target``.

        Args:
            target, dim, name: as for :meth:`resolve`.

        Returns:
            int.

        Raises:
            TypeError, ValueError, IndexError: as for :meth:`resolve`.
        """
        return self.resolve(target, dim, name)[2]

    def closure(self, seed: Dict[int, Set[int]]) -> Dict[int, Set[int]]:
        """Smallest consistent deletion containing ``seed``.

        Args:
            seed: class id -> channel indices to delete there.

        Returns:
            dict: class id -> every index that must go with them (non-empty sets only).
        """
        dels: Dict[int, Set[int]] = defaultdict(set)
        work = deque()

        def add(c, idxs):
            new = set(idxs) - dels[c]
            if new:
                dels[c] |= new
                work.append((c, new))

        for c, idxs in seed.items():
            add(c, idxs)
        while work:
            c, new = work.popleft()
            for ei in self.class_edges[c]:
                for cc, idxs in self.edges[ei].propagate(c, new):
                    add(cc, idxs)
        return {c: s for c, s in dels.items() if s}

    def blocked_reason(self, dels: Dict[int, Set[int]]) -> Optional[str]:
        """Why a deletion is impossible.

        Args:
            dels: class id -> indices.

        Returns:
            str naming the ops that fix a coupled size, or ``None`` when no class of ``dels`` is blocked.
        """
        for c in dels:
            if self.class_blocked[c]:
                return "; ".join(self.class_blocked[c])
        return None

    def describe_class(self, c: int) -> str:
        """A short human-readable name of a class, for messages.

        Args:
            c: a class id.

        Returns:
            str: its first tensors and dims, or its id and size.
        """
        m = self.class_members[c]
        if m:
            return ", ".join(f"{f}[dim {d}]" for f, d, _ in m[:3]) + (" ..." if len(m) > 3 else "")
        return f"class {c} (size {self.class_size[c]})"

    def plan(self, target, idxs: Sequence[int], *, dim: Optional[int] = None,
             name: str = "weight") -> Plan:
        """Plan removing channels ``idxs`` of ``target`` and everything coupled to them.

        The indices grow to the coupled granularity (whole heads, whole groups).
        Nothing is modified until :meth:`Plan.exec`.

        Args:
            target: a module (its output channels by default, or ``dim`` of its
                ``name`` tensor) or a parameter/buffer of the model.
            idxs: channel indices (ints or a tensor); negative ones count from the end.
            dim: the dimension of the target tensor (see :meth:`resolve`).
            name: the tensor of ``target`` when it is a module.

        Returns:
            Plan.

        Raises:
            ValueError: if a coupled dimension cannot lose channels (naming
                the op that fixes its size), if ``idxs`` is empty, or if the
                plan would remove every channel of some layer.
            IndexError: for an index out of range.
            TypeError: for indices that are not ints.
            RuntimeError: when the graph is stale.

        Example::

            >>> print(dg.plan(model.stem, [1, 6]))
            Plan: remove 2 channel(s) of stem.weight (dim 0) and every coupled dimension
            ...
        """
        self.check_fresh()
        fqn, dim, c = self.resolve(target, dim, name)
        label = f"{fqn} (dim {dim})"
        if isinstance(idxs, torch.Tensor):
            idxs = idxs.flatten().tolist()
        try:
            idx = sorted({int(i) for i in idxs})
        except (TypeError, ValueError):
            raise TypeError("idxs must be a sequence of ints") from None
        size = self.class_size[c]
        for i in idx:
            if not -size <= i < size:
                raise IndexError(f"channel index {i} out of range for size {size}")
        idx = sorted({i % size for i in idx})
        if not idx:
            raise ValueError("idxs must not be empty")
        dels = self.closure({c: set(idx)})
        why = self.blocked_reason(dels)
        if why is not None:
            raise ValueError(
                f"cannot remove channels of {label}: a coupled dimension "
                f"has a size fixed by {why}")
        for cc, s in dels.items():
            if len(s) >= self.class_size[cc]:
                raise ValueError(
                    f"removing these channels would empty {self.describe_class(cc)} "
                    f"(all {self.class_size[cc]} channels)")
        return Plan(self, dels, requested=(label, len(idx)))

    # -- groups and atoms -------------------------------------------------------
    def groups(self) -> List[ChannelGroup]:
        """All coupled channel groups that contain at least one parameter.

        Returns:
            list of :class:`ChannelGroup` (computed once, then cached).

        Raises:
            RuntimeError: when the graph is stale.
        """
        self.check_fresh()
        if self._groups is None:
            self._groups = self._compute_groups()
        return self._groups

    def _compute_groups(self) -> List[ChannelGroup]:
        n = self.n_classes
        parent = list(range(n))

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for e in self.edges:
            inv = e.classes()
            r0 = find(inv[0])
            for c in inv[1:]:
                rc = find(c)
                if rc != r0:
                    parent[rc] = r0
        comps: Dict[int, List[int]] = defaultdict(list)
        for c in range(n):
            comps[find(c)].append(c)
        out_roles = defaultdict(list)
        for r in self.roles:
            if r.kind == "out":
                out_roles[r.cls].append(r.fqn)
        groups = []
        for classes in comps.values():
            if not any(any(p for _, _, p in self.class_members[c]) for c in classes):
                continue
            producers = [c for c in classes if out_roles[c]]
            pool = producers or [c for c in classes if self.class_members[c]]
            root = max(pool, key=lambda c: (self.class_size[c], -c))
            names = []
            for c in classes:
                for f in out_roles[c]:
                    mod = f.rsplit(".", 1)[0]
                    if mod not in names:
                        names.append(mod)
            if not names:
                names = [self.class_members[root][0][0]]
            name = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} coupled)"
            atoms, valid, reasons = self._atoms(classes)
            groups.append(ChannelGroup(len(groups), name, classes, root, atoms, valid, reasons))
        return groups

    def _atoms(self, classes: List[int]):
        if len(classes) == 1 and not self.class_edges[classes[0]]:
            c = classes[0]
            ok = not self.class_blocked[c]
            atoms = [{c: (i,)} for i in range(self.class_size[c])]
            return atoms, [ok] * len(atoms), list(self.class_blocked[c])
        owner: Dict[Tuple[int, int], int] = {}
        atoms: List[Optional[Dict[int, Set[int]]]] = []
        for c in classes:
            for i in range(self.class_size[c]):
                if (c, i) in owner:
                    continue
                cl = self.closure({c: {i}})
                merged = {owner[(cc, j)] for cc, s in cl.items() for j in s if (cc, j) in owner}
                for a in merged:  # overlapping closures are one atom
                    for cc, s in atoms[a].items():
                        cl.setdefault(cc, set()).update(s)
                    atoms[a] = None
                aid = len(atoms)
                atoms.append(cl)
                for cc, s in cl.items():
                    for j in s:
                        owner[(cc, j)] = aid
        final, valid, reasons = [], [], []
        for a in atoms:
            if a is None:
                continue
            why = self.blocked_reason(a)
            full = any(len(s) >= self.class_size[cc] for cc, s in a.items())
            final.append({cc: tuple(sorted(s)) for cc, s in a.items()})
            valid.append(why is None and not full)
            if why is not None and why not in reasons and len(reasons) < 4:
                reasons.append(why)
        return final, valid, reasons

    def __repr__(self):
        gs = self.groups() if not self.stale else []
        return (f"DependencyGraph({type(self.model).__name__}: {self.n_classes} dimension classes, "
                f"{len(gs)} channel groups, {sum(g.n_prunable > 0 for g in gs)} prunable, "
                f"built in {self.build_time:.2f}s)")
