"""Building the dependency graph from an exported program.

Every dimension of every traced tensor is a *space*. Walking the exported
graph node by node, the rules of :mod:`.rules` merge spaces that share their
channel indexing (a union-find in :class:`SpaceBuilder`), add typed edges
between spaces whose indexings differ by a structured map, and block spaces
whose size is fixed by something other than a parameter. :func:`build`
finally merges spaces into *classes* and returns a :class:`GraphData`, from
which :class:`~fastprune.structured.DependencyGraph` answers queries.
"""
from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from .edges import BlockEdge, CatEdge, CatPiece, ChunkEdge, Edge
from .nodes import tensors_in
from .notes import AttrNote, HeadNote, Role, SplitNote
from .rules import apply_rule
from .trace import TraceError, module_path

__all__ = ["SpaceBuilder", "GraphData", "build"]


class SpaceBuilder:
    """Union-find over tensor dimensions, with the declarations the coupling rules make.

    A rule receives the builder and a node; it reads the spaces of the node's
    tensors with :meth:`spaces` / :meth:`shape` and declares couplings with
    :meth:`union`, :meth:`block_map`, :meth:`cat_map`, :meth:`chunk_map`,
    :meth:`cover`, and records with :meth:`role`, :meth:`attr`,
    :meth:`heads`, :meth:`split_note`. Any space of the node the rule leaves
    uncovered is blocked afterwards, naming the op.
    """

    def __init__(self) -> None:
        self.parent: List[int] = []
        self.size: List[int] = []
        self.blocked: Dict[int, str] = {}
        self.edges: List[Edge] = []
        self.outputs: Dict[Any, List[Optional[List[int]]]] = {}
        self.oshapes: Dict[Any, List[Optional[Tuple[int, ...]]]] = {}
        self.covered: Set[int] = set()
        self.roles: List[Role] = []
        self.attrs: List[AttrNote] = []
        self.head_notes: List[HeadNote] = []
        self.split_notes: List[SplitNote] = []
        self.fqn_of: Dict[str, str] = {}

    # -- spaces ------------------------------------------------------------
    def new_space(self, size: int) -> int:
        """A new space (one tensor dimension) of ``size`` channels.

        Args:
            size: number of channels.

        Returns:
            int: the space id.
        """
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        """Representative of the set holding space ``s`` (with path compression).

        Args:
            s: a space id.

        Returns:
            int: the representative space id.
        """
        p = self.parent
        root = s
        while p[root] != root:
            root = p[root]
        while p[s] != root:
            p[s], s = root, p[s]
        return root

    def alloc(self, node) -> None:
        """New spaces for every dimension of every tensor ``node`` produces.

        Args:
            node: an fx node with ``meta["val"]``.
        """
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

    def spaces(self, node, k: int = 0) -> Optional[List[int]]:
        """Spaces of output ``k`` of ``node``.

        Args:
            node: an fx node already allocated.
            k: output index (for ops returning several tensors).

        Returns:
            list of int, one per dimension, or ``None`` when that output is not a tensor.
        """
        outs = self.outputs.get(node)
        if outs is None or k >= len(outs):
            return None
        return outs[k]

    def shape(self, node, k: int = 0) -> Optional[Tuple[int, ...]]:
        """Shape of output ``k`` of ``node``.

        Args:
            node: an fx node already allocated.
            k: output index.

        Returns:
            tuple of int, or ``None`` when that output is not a tensor.
        """
        return self.oshapes[node][k]

    def n_outputs(self, node) -> int:
        """Number of outputs of ``node`` (tensors or not).

        Args:
            node: an fx node.

        Returns:
            int.
        """
        return len(self.outputs.get(node, ()))

    def alias_item(self, node, src, k: int) -> None:
        """``node`` is ``src[k]`` (a ``getitem``): it shares the spaces of that output.

        Args:
            node: the getitem node.
            src: the node with several outputs.
            k: the output index.
        """
        s = self.spaces(src, k)
        self.outputs[node] = [s]
        self.oshapes[node] = [self.oshapes[src][k] if s is not None else None]

    # -- coupling declarations used by the rules -----------------------------
    def cover(self, *spaces) -> None:
        """Mark spaces as handled by the rule without coupling them (they are not blocked).

        Args:
            *spaces: space ids; ``None`` entries are skipped.
        """
        self.covered.update(s for s in spaces if s is not None)

    def union(self, a: int, b: int) -> None:
        """Spaces ``a`` and ``b`` share their channel indexing.

        Args:
            a: a space id.
            b: a space id; when its size differs from ``a``'s both are blocked instead.
        """
        self.covered.add(a)
        self.covered.add(b)
        if self.size[a] != self.size[b]:
            self.block(a, "size mismatch in coupling")
            self.block(b, "size mismatch in coupling")
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def block(self, s: int, reason: str) -> None:
        """Space ``s`` cannot lose channels.

        Args:
            s: a space id.
            reason: why, for error messages (the first reason given is kept).
        """
        self.blocked.setdefault(s, reason)

    def virtual(self, size: int) -> int:
        """A dimension no tensor has, e.g. the group index of a grouped conv.

        Args:
            size: number of indices.

        Returns:
            int: the space id (already covered).
        """
        s = self.new_space(size)
        self.covered.add(s)
        return s

    def block_map(self, coarse: int, fine: int, r: int) -> None:
        """Index ``i`` of ``coarse`` owns indices ``i*r .. i*r+r-1`` of ``fine`` (a :class:`BlockEdge`).

        Args:
            coarse: space of heads / groups.
            fine: space of channels.
            r: channels per coarse index (1 couples the two spaces).
        """
        self.cover(coarse, fine)
        if r == 1:
            self.union(coarse, fine)
        else:
            self.edges.append(BlockEdge(coarse, fine, int(r)))

    def cat_map(self, out: int, pieces: Sequence[Tuple[int, int]]) -> None:
        """``out`` concatenates ``pieces`` (a :class:`CatEdge`).

        Args:
            out: space of the concatenated dimension.
            pieces: ``(space, offset)`` pairs, in order.
        """
        self.cover(out, *[p for p, _ in pieces])
        self.edges.append(CatEdge(out, tuple(CatPiece(p, off, self.size[p]) for p, off in pieces)))

    def chunk_map(self, x: int, outs: Sequence[int], c: int) -> None:
        """``x`` is made of equal pieces ``outs`` of ``c`` channels (a :class:`ChunkEdge`).

        Args:
            x: space of the whole dimension.
            outs: spaces of the pieces, in order.
            c: channels per piece.
        """
        self.cover(x, *outs)
        self.edges.append(ChunkEdge(x, tuple(outs), int(c)))

    def role(self, node, w, dim: int, kind: str) -> None:
        """Record that dimension ``dim`` of weight node ``w`` holds the ``kind`` channels of its layer.

        Args:
            node: the op node using the weight.
            w: the weight node (a parameter, or its mask product).
            dim: the weight dimension.
            kind: ``"out"`` (channels written) or ``"in"`` (channels read).
        """
        fqn = self.weight_fqn(w)
        ws = self.spaces(w)
        if fqn is not None and ws is not None:
            self.roles.append(Role(ws[dim], kind, fqn, dim, module_path(node)))

    def weight_fqn(self, w) -> Optional[str]:
        """Qualified name of the parameter node ``w`` reads, through a pruning mask if any.

        Args:
            w: an fx node.

        Returns:
            str (without ``_orig``), or ``None`` when ``w`` is not a parameter.
        """
        if w.op == "placeholder":
            return self.fqn_of.get(w.name)
        # the traced form of a pruning reparametrisation: weight = weight_orig * mask
        if w.op == "call_function" and getattr(w.target, "_opname", "") in ("mul", "mask_mul"):
            for a in w.args:
                if isinstance(a, torch.fx.Node) and a.op == "placeholder":
                    fqn = self.fqn_of.get(a.name, "")
                    if fqn.endswith("_orig"):
                        return fqn[: -len("_orig")]
        return None

    def attr(self, node, name: str, spaces) -> None:
        """Record that attribute ``name`` of the module running ``node`` holds the size of ``spaces``.

        Args:
            node: the op node.
            name: the attribute (``out_features``, ``num_groups`` ...).
            spaces: one space id, or a tuple of them for tuple attributes.
        """
        self.attrs.append(AttrNote(module_path(node), name, spaces))

    def heads(self, node, q: int, k: int) -> None:
        """Record attention in ``node``.

        Args:
            node: the attention op node.
            q: space of the query heads.
            k: space of the key/value heads.
        """
        self.head_notes.append(HeadNote(module_path(node), q, k))

    def split_note(self, node, count: int, flat: int) -> None:
        """Record that ``node`` views flat space ``flat`` as ``count`` heads (or merges them back).

        Args:
            node: the reshape node.
            count: space of the head count.
            flat: space of the flat width.
        """
        self.split_notes.append(SplitNote(module_path(node), count, flat))


@dataclass
class GraphData:
    """The finished graph over dimension classes, as :func:`build` returns it.

    Attributes:
        canonical: parameter/buffer name -> the name of the first alias of its tensor.
        op_counts: traced op name -> number of nodes.
        tensor_shapes: traced parameter/buffer name -> shape.
        class_size: channels per class.
        class_blocked: per class, up to four reasons it cannot lose channels.
        class_members: per class, the ``(tensor name, dim, is_param)`` it covers.
        member_class: ``(tensor name, dim)`` -> class.
        edges: the typed edges between classes.
        class_edges: per class, the indices of the edges touching it.
        roles, attrs, head_notes, split_notes: the rules' records, on classes.
    """

    canonical: Dict[str, str]
    op_counts: Dict[str, int]
    tensor_shapes: Dict[str, Tuple[int, ...]]
    class_size: List[int]
    class_blocked: List[List[str]]
    class_members: List[List[Tuple[str, int, bool]]]
    member_class: Dict[Tuple[str, int], int]
    edges: List[Edge]
    class_edges: List[List[int]]
    roles: List[Role]
    attrs: List[AttrNote]
    head_notes: List[HeadNote]
    split_notes: List[SplitNote]

    @property
    def n_classes(self) -> int:
        """Number of dimension classes."""
        return len(self.class_size)


def build(model: nn.Module, ep) -> GraphData:
    """Couple the dimensions of every tensor of the exported program ``ep`` of ``model``.

    Args:
        model: the exported model (its parameter names resolve tied aliases).
        ep: ``torch.export.ExportedProgram`` of ``model``.

    Returns:
        GraphData.

    Raises:
        TraceError: when the exported graph holds a node kind it cannot analyse.
    """
    sig = ep.graph_signature
    b = SpaceBuilder()
    # Tied tensors (one Parameter under several names) get one canonical name.
    first: Dict[int, str] = {}
    canonical: Dict[str, str] = {}
    for fqn, t in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        canonical[fqn] = first.setdefault(id(t), fqn)
    params = {k: canonical.get(v, v) for k, v in sig.inputs_to_parameters.items()}
    buffers = {k: canonical.get(v, v) for k, v in sig.inputs_to_buffers.items()}
    placed: Dict[str, List[int]] = {}
    b.fqn_of.update(params)
    b.fqn_of.update(buffers)
    user_inputs = set(sig.user_inputs)
    user_outputs = set(sig.user_outputs)
    members: List[tuple] = []  # (space, fqn, dim, is_param)
    op_counts: Dict[str, int] = defaultdict(int)
    tensor_shapes: Dict[str, Tuple[int, ...]] = {}
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
                tensor_shapes[fqn] = b.shape(node)
                for d, s in enumerate(sp):
                    members.append((s, fqn, d, node.name in params))
            else:
                why = ("model input" if node.name in user_inputs
                       else "tensor constant created in forward")
                for s in sp:
                    b.block(s, why)
        elif node.op == "call_function":
            if node.target is not operator.getitem:
                b.alloc(node)
            b.covered = set()
            opname = apply_rule(b, node)
            op_counts[opname] += 1
            where = module_path(node) or "<root>"
            reason = f"{opname} in {where} ({node.name})"
            touched = []
            for t in tensors_in(list(node.args) + list(node.kwargs.values())):
                touched.extend(b.spaces(t) or [])
            for k in range(b.n_outputs(node)):
                touched.extend(b.spaces(node, k) or [])
            for s in touched:
                if s not in b.covered:
                    b.block(s, reason)
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
            for out in outs:
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
    return _finalize(b, members, canonical, dict(op_counts), tensor_shapes)


def _finalize(b: SpaceBuilder, members, canonical, op_counts, tensor_shapes) -> GraphData:
    """Merge spaces into classes and move every record onto classes."""
    roots: Dict[int, int] = {}
    cls_of = []
    for s in range(len(b.parent)):
        r = b.find(s)
        if r not in roots:
            roots[r] = len(roots)
        cls_of.append(roots[r])
    n = len(roots)
    to_cls = cls_of.__getitem__
    class_size = [0] * n
    for s, c in enumerate(cls_of):
        class_size[c] = b.size[s]
    class_blocked: List[List[str]] = [[] for _ in range(n)]
    for s, why in b.blocked.items():
        lst = class_blocked[cls_of[s]]
        if why not in lst and len(lst) < 4:
            lst.append(why)
    class_members: List[List[Tuple[str, int, bool]]] = [[] for _ in range(n)]
    member_class: Dict[Tuple[str, int], int] = {}
    for s, fqn, d, is_param in members:
        c = cls_of[s]
        class_members[c].append((fqn, d, is_param))
        member_class[(fqn, d)] = c
    edges: List[Edge] = []
    class_edges: List[List[int]] = [[] for _ in range(n)]
    for e in b.edges:
        ce = e.remap(to_cls)
        for c in set(ce.classes()):
            class_edges[c].append(len(edges))
        edges.append(ce)
    return GraphData(
        canonical=canonical, op_counts=op_counts, tensor_shapes=tensor_shapes,
        class_size=class_size, class_blocked=class_blocked, class_members=class_members,
        member_class=member_class, edges=edges, class_edges=class_edges,
        roles=[r.remap(to_cls) for r in b.roles],
        attrs=[a.remap(to_cls) for a in b.attrs],
        head_notes=[h.remap(to_cls) for h in b.head_notes],
        split_notes=[s.remap(to_cls) for s in b.split_notes])
