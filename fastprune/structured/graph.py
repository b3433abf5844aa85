"""Dependency graph: which tensor dimensions of a model must lose the same channels.

The model is traced with ``torch.export`` (non-strict, so Python control flow,
Hugging Face models and meta-device weights work). Every dimension of every
traced tensor is a *space*; the rules in :mod:`.rules` merge spaces that share
their channel indexing (a union-find) and add structured maps between the
merged *classes* (``block``: one head owns ``r`` channels; ``cat``: offsets;
``chunk``: equal pieces). Deleting channels is then a closure computation over
classes: start from the requested indices and follow the maps until nothing
changes. Classes whose size is fixed by something other than a parameter are
*blocked*, with the reason kept for error messages.
"""
from __future__ import annotations

import linecache
import os
import re
import time
import warnings
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from . import rules
from ..core.targets import eval_mode

__all__ = ["DependencyGraph", "ChannelGroup", "TraceError"]


class TraceError(RuntimeError):
    """The model could not be traced into a graph fastprune can analyse."""


def split_example_inputs(example_inputs) -> Tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        if (len(example_inputs) == 2 and isinstance(example_inputs[0], (list, tuple))
                and isinstance(example_inputs[1], dict)):
            return tuple(example_inputs[0]), dict(example_inputs[1])
        return tuple(example_inputs), {}
    raise TypeError(
        "example_inputs must be a Tensor, a tuple of positional inputs, a dict of keyword "
        f"inputs or an (args, kwargs) pair; got {type(example_inputs).__name__}")


def trace(model: nn.Module, args: tuple, kwargs: dict):
    with eval_mode(model), warnings.catch_warnings():
        # pruning pre-hooks assign ``weight`` during tracing; export restores it
        warnings.filterwarnings("ignore", message=".*was assigned during export.*")
        try:
            return torch.export.export(model, args, kwargs, strict=False)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            text = str(exc).strip()
            first = text.splitlines()[0] if text else ""
            at = _user_frame(text)
            raise TraceError(
                f"fastprune.DependencyGraph could not trace {type(model).__name__} with "
                f"torch.export: {type(exc).__name__}: {first[:500]}{at}") from exc


def _user_frame(text: str) -> str:
    """`` (at file:line in fn: code)`` for the last non-torch frame export quotes."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [m for m in re.finditer(r'File "([^"]+)", line (\d+), in (\S+)', text)
              if not m.group(1).startswith(torch_dir)]
    if not frames:
        return ""
    path, line, fn = frames[-1].groups()
    code = linecache.getline(path, int(line)).strip()
    return f" (at {path}:{line} in {fn}: {code})" if code else f" (at {path}:{line} in {fn})"


def module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


@dataclass
class ChannelGroup:
    """A set of coupled classes whose channels are removed together.

    ``atoms`` are the smallest removable units: each maps class ids to the
    channel indices it removes there (a single channel, a whole head, a
    group of a grouped conv ...). ``valid[i]`` is False when atom ``i``
    touches a blocked dimension.
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
        return sum(self.valid)

    def __repr__(self):
        return (f"ChannelGroup({self.name!r}, atoms={len(self.atoms)}, "
                f"prunable={self.n_prunable})")


class _Builder:
    def __init__(self):
        self.parent: List[int] = []
        self.size: List[int] = []
        self.blocked: Dict[int, str] = {}
        self.edges: List[tuple] = []
        self.outputs: Dict[Any, List[Optional[List[int]]]] = {}
        self.oshapes: Dict[Any, List[Optional[Tuple[int, ...]]]] = {}
        self.covered: Set[int] = set()
        self.roles: List[tuple] = []
        self.attrs: List[tuple] = []
        self.head_notes: List[tuple] = []
        self.split_notes: List[tuple] = []
        self.fqn_of: Dict[str, str] = {}

    # -- spaces ------------------------------------------------------------
    def new_space(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        p = self.parent
        root = s
        while p[root] != root:
            root = p[root]
        while p[s] != root:
            p[s], s = root, p[s]
        return root

    def alloc(self, node):
        val = node.meta.get("val")
        vals = list(val) if isinstance(val, (list, tuple)) else [val]
        outs, shapes = [], []
        for v in vals:
            if isinstance(v, torch.Tensor):
                sh = tuple(int(x) for x in v.shape)
                outs.append([self.new_space(n) for n in sh])
                shapes.append(sh)
            else:
                outs.append(None)
                shapes.append(None)
        self.outputs[node] = outs
        self.oshapes[node] = shapes

    def spaces(self, node, k: int = 0):
        outs = self.outputs.get(node)
        if outs is None or k >= len(outs):
            return None
        return outs[k]

    def shape(self, node, k: int = 0):
        return self.oshapes[node][k]

    def n_outputs(self, node) -> int:
        return len(self.outputs.get(node, ()))

    def alias_item(self, node, src, k):
        s = self.spaces(src, k)
        self.outputs[node] = [s]
        self.oshapes[node] = [self.oshapes[src][k] if s is not None else None]

    # -- coupling declarations used by the rules -----------------------------
    def cover(self, *spaces):
        self.covered.update(s for s in spaces if s is not None)

    def union(self, a: int, b: int):
        self.covered.add(a)
        self.covered.add(b)
        if self.size[a] != self.size[b]:
            self.block(a, "size mismatch in coupling")
            self.block(b, "size mismatch in coupling")
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def block(self, s: int, reason: str):
        self.blocked.setdefault(s, reason)

    def virtual(self, size: int) -> int:
        """A dimension no tensor has, e.g. the group index of a grouped conv."""
        s = self.new_space(size)
        self.covered.add(s)
        return s

    def block_map(self, coarse: int, fine: int, r: int):
        self.cover(coarse, fine)
        if r == 1:
            self.union(coarse, fine)
        else:
            self.edges.append(("block", coarse, fine, int(r)))

    def cat_map(self, out: int, pieces):
        self.cover(out, *[p for p, _ in pieces])
        self.edges.append(("cat", out, [(p, off, self.size[p]) for p, off in pieces]))

    def chunk_map(self, x: int, outs: List[int], c: int):
        self.cover(x, *outs)
        self.edges.append(("chunk", x, list(outs), int(c)))

    def role(self, node, w, dim: int, kind: str):
        fqn = self.weight_fqn(w)
        ws = self.spaces(w)
        if fqn is not None and ws is not None:
            self.roles.append((ws[dim], kind, fqn, dim))

    def weight_fqn(self, w) -> Optional[str]:
        if w.op == "placeholder":
            return self.fqn_of.get(w.name)
        # fastprune / torch.nn.utils.prune reparametrisation: weight = weight_orig * mask
        if w.op == "call_function" and getattr(w.target, "_opname", "") in ("mul", "mask_mul"):
            for a in w.args:
                if isinstance(a, torch.fx.Node) and a.op == "placeholder":
                    fqn = self.fqn_of.get(a.name, "")
                    if fqn.endswith("_orig"):
                        return fqn[: -len("_orig")]
        return None

    def attr(self, node, name: str, spaces):
        self.attrs.append((module_path(node), name, spaces))

    def heads(self, node, q: int, k: int):
        self.head_notes.append((module_path(node), q, k))

    def split_note(self, node, count: int, flat: int):
        self.split_notes.append((module_path(node), count, flat))


# Attribute names that hold head / group counts or the flat width of all heads.
_Q_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads",
                 "num_attention_heads_per_partition")
_HEAD_ATTRS = _Q_HEAD_ATTRS + ("groups", "num_groups")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")
_FLAT_ATTRS = ("all_head_size", "inner_dim", "attention_hidden_size")


class DependencyGraph:
    """Coupled channel dimensions of ``model``, traced on ``example_inputs``.

    ``example_inputs`` is a Tensor, a tuple of positional inputs, a dict of
    keyword inputs or an ``(args, kwargs)`` pair. The model may live on the
    meta device. Build time (seconds) is in :attr:`build_time`.
    """

    def __init__(self, model: nn.Module, example_inputs):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.args, self.kwargs = split_example_inputs(example_inputs)
        t0 = time.perf_counter()
        ep = trace(model, self.args, self.kwargs)
        self.trace_time = time.perf_counter() - t0
        self._build(ep)
        self.build_time = time.perf_counter() - t0
        self.stale = False
        self._groups: Optional[List[ChannelGroup]] = None

    # -- construction ---------------------------------------------------------
    def _build(self, ep):
        sig = ep.graph_signature
        b = _Builder()
        # Tied tensors (one Parameter under several names) get one canonical name.
        first: Dict[int, str] = {}
        self.canonical: Dict[str, str] = {}
        for fqn, t in list(self.model.named_parameters(remove_duplicate=False)) + \
                list(self.model.named_buffers(remove_duplicate=False)):
            self.canonical[fqn] = first.setdefault(id(t), fqn)
        params = {k: self.canonical.get(v, v) for k, v in sig.inputs_to_parameters.items()}
        buffers = {k: self.canonical.get(v, v) for k, v in sig.inputs_to_buffers.items()}
        placed: Dict[str, List[int]] = {}
        b.fqn_of.update(params)
        b.fqn_of.update(buffers)
        user_inputs = set(sig.user_inputs)
        user_outputs = set(sig.user_outputs)
        members: List[tuple] = []  # (space, fqn, dim, is_param)
        self.op_counts: Dict[str, int] = defaultdict(int)
        self.tensor_shapes: Dict[str, Tuple[int, ...]] = {}
        for node in ep.graph.nodes:
            if node.op == "placeholder":
                b.alloc(node)
                sp = b.spaces(node)
                if sp is None:
                    continue
                fqn = params.get(node.name) or buffers.get(node.name)
                if fqn is not None and fqn in placed:
                    for s0, s1 in zip(placed[fqn], sp):
                        b.union(s0, s1)
                elif fqn is not None:
                    placed[fqn] = sp
                    self.tensor_shapes[fqn] = b.shape(node)
                    for d, s in enumerate(sp):
                        members.append((s, fqn, d, node.name in params))
                else:
                    why = ("model input" if node.name in user_inputs
                           else "tensor constant created in forward")
                    for s in sp:
                        b.block(s, why)
            elif node.op == "call_function":
                if node.target is not rules.operator.getitem:
                    b.alloc(node)
                b.covered = set()
                opname = rules.apply_rule(b, node)
                self.op_counts[opname] += 1
                where = module_path(node) or "<root>"
                reason = f"{opname} in {where} ({node.name})"
                touched = []
                for t in rules._tensors_in(list(node.args) + list(node.kwargs.values())):
                    touched.extend(b.spaces(t) or [])
                for k in range(b.n_outputs(node)):
                    touched.extend(b.spaces(node, k) or [])
                for s in touched:
                    if s not in b.covered:
                        b.block(s, reason)
            elif node.op == "output":
                for out in node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]:
                    if isinstance(out, torch.fx.Node) and out.name in user_outputs:
                        for k in range(b.n_outputs(out)):
                            for s in b.spaces(out, k) or []:
                                b.block(s, "model output")
            elif node.op == "get_attr":
                b.alloc(node)  # submodules of higher-order ops; tensors stay unanalysed
                for k in range(b.n_outputs(node)):
                    for s in b.spaces(node, k) or []:
                        b.block(s, f"attribute {node.target} read in forward")
            else:
                raise TraceError(f"unexpected node kind {node.op!r} in the exported graph")
        self._finalize(b, members)

    def _finalize(self, b: _Builder, members):
        roots: Dict[int, int] = {}
        cls_of = []
        for s in range(len(b.parent)):
            r = b.find(s)
            if r not in roots:
                roots[r] = len(roots)
            cls_of.append(roots[r])
        n = len(roots)
        self._cls_of_space = cls_of
        self.class_size = [0] * n
        for s, c in enumerate(cls_of):
            self.class_size[c] = b.size[s]
        self.class_blocked: List[List[str]] = [[] for _ in range(n)]
        for s, why in b.blocked.items():
            lst = self.class_blocked[cls_of[s]]
            if why not in lst and len(lst) < 4:
                lst.append(why)
        self.class_members: List[List[Tuple[str, int, bool]]] = [[] for _ in range(n)]
        self.member_class: Dict[Tuple[str, int], int] = {}
        for s, fqn, d, is_param in members:
            c = cls_of[s]
            self.class_members[c].append((fqn, d, is_param))
            self.member_class[(fqn, d)] = c
        self.edges: List[tuple] = []
        self.class_edges: List[List[int]] = [[] for _ in range(n)]
        for e in b.edges:
            if e[0] == "block":
                ce = ("block", cls_of[e[1]], cls_of[e[2]], e[3])
                involved = (ce[1], ce[2])
            elif e[0] == "cat":
                ce = ("cat", cls_of[e[1]], [(cls_of[p], off, sz) for p, off, sz in e[2]])
                involved = (ce[1], *[p for p, _, _ in ce[2]])
            else:
                ce = ("chunk", cls_of[e[1]], [cls_of[o] for o in e[2]], e[3])
                involved = (ce[1], *ce[2])
            idx = len(self.edges)
            self.edges.append(ce)
            for c in set(involved):
                self.class_edges[c].append(idx)
        self.roles = [(cls_of[s], kind, fqn, d) for s, kind, fqn, d in b.roles]
        self.attrs = []
        for path, name, sp in b.attrs:
            if isinstance(sp, tuple):
                self.attrs.append((path, name, tuple(cls_of[s] for s in sp)))
            else:
                self.attrs.append((path, name, cls_of[sp]))
        self.head_notes = [(p, cls_of[q], cls_of[k]) for p, q, k in b.head_notes]
        self.split_notes = [(p, cls_of[c], cls_of[f]) for p, c, f in b.split_notes]
        self.n_classes = n

    # -- queries ---------------------------------------------------------------
    def _check_fresh(self):
        if self.stale:
            raise RuntimeError(
                "this DependencyGraph is stale: a plan built from it has been executed and "
                "the model changed shape; build a new DependencyGraph")

    def _fqn_of_tensor(self, target, name: str) -> str:
        if isinstance(target, nn.Parameter) or isinstance(target, torch.Tensor):
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
                        not isinstance(getattr(m, name + "_orig", None), torch.Tensor):
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

        ``target`` is a module (its ``name`` tensor) or a parameter/buffer. By
        default the dimension is the module's output channels: dim 0 of a
        conv/linear weight, dim 1 of an embedding or transposed conv weight.
        """
        fqn = self._fqn_of_tensor(target, name)
        if dim is None:
            base = fqn[: -len("_orig")] if fqn.endswith("_orig") else fqn
            outs = [d for c, kind, f, d in self.roles if f == base and kind == "out"]
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
        """Class id of ``dim`` of ``target`` (see :meth:`resolve`)."""
        return self.resolve(target, dim, name)[2]

    def closure(self, seed: Dict[int, Set[int]]) -> Dict[int, Set[int]]:
        """Smallest consistent deletion containing ``seed`` (class -> indices)."""
        dels: Dict[int, Set[int]] = defaultdict(set)
        work = deque()

        def add(c, idxs):
            new = set(idxs) - dels[c]
            if new:
                dels[c] |= new
                work.append((c, new))

        for c, idxs in seed.items():
            add(c, idxs)
        edges = self.edges
        while work:
            c, new = work.popleft()
            for ei in self.class_edges[c]:
                e = edges[ei]
                if e[0] == "block":
                    _, coarse, fine, r = e
                    if c == coarse:
                        add(fine, [i * r + j for i in new for j in range(r)])
                    if c == fine:
                        add(coarse, {i // r for i in new})
                elif e[0] == "cat":
                    _, out, pieces = e
                    if c == out:
                        for p, off, sz in pieces:
                            add(p, [i - off for i in new if off <= i < off + sz])
                    for p, off, sz in pieces:
                        if c == p:
                            add(out, [i + off for i in new])
                else:
                    _, x, outs, size = e
                    js = set()
                    if c == x:
                        js |= {i % size for i in new}
                    if c in outs:
                        js |= new
                    if js:
                        for o in outs:
                            add(o, js)
                        add(x, [m * size + j for m in range(len(outs)) for j in js])
        return {c: s for c, s in dels.items() if s}

    def blocked_reason(self, dels: Dict[int, Set[int]]) -> Optional[str]:
        for c in dels:
            if self.class_blocked[c]:
                return "; ".join(self.class_blocked[c])
        return None

    def describe_class(self, c: int) -> str:
        m = self.class_members[c]
        if m:
            return ", ".join(f"{f}[dim {d}]" for f, d, _ in m[:3]) + (" ..." if len(m) > 3 else "")
        return f"class {c} (size {self.class_size[c]})"

    def plan(self, target, idxs: Sequence[int], *, dim: Optional[int] = None,
             name: str = "weight"):
        """Plan removing channels ``idxs`` of ``target`` and everything coupled to them.

        ``target`` is a module (its output channels by default, or ``dim`` of
        its ``name`` tensor) or a parameter/buffer. The indices grow to the
        coupled granularity (whole heads, whole groups). Raises ``ValueError``
        if a coupled dimension cannot lose channels, naming the op that fixes
        its size, or if the plan would remove every channel of some layer.
        """
        from .plan import Plan

        self._check_fresh()
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
        """All coupled channel groups that contain at least one parameter."""
        self._check_fresh()
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
            if e[0] == "block":
                inv = [e[1], e[2]]
            elif e[0] == "cat":
                inv = [e[1], *[p for p, _, _ in e[2]]]
            else:
                inv = [e[1], *e[2]]
            r0 = find(inv[0])
            for c in inv[1:]:
                rc = find(c)
                if rc != r0:
                    parent[rc] = r0
        comps: Dict[int, List[int]] = defaultdict(list)
        for c in range(n):
            comps[find(c)].append(c)
        out_roles = defaultdict(list)
        for c, kind, fqn, d in self.roles:
            if kind == "out":
                out_roles[c].append(fqn)
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
