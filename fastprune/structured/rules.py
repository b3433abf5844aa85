"""How each traced ATen op couples the dimensions of its inputs and outputs.

A rule receives the :class:`~fastprune.structured.builder.SpaceBuilder`, the
fx node and the node's tensor arguments, and declares which tensor dimensions
must keep the same channel indexing (``union``) or are related by a
structured index map (``block``: one index of a coarse dimension owns a run of
indices of a fine one; ``cat``: offsets; ``chunk``: equal pieces). Every input
or output dimension a rule does not mention is blocked afterwards: its size is
fixed by something other than a parameter (a constant in the forward, spatial
arithmetic, an index), so removing channels there would break the model when
its Python code runs again. Ops without a rule therefore block everything they
touch, which makes unknown ops safe and lets error messages name them.

Rules are registered per op name with the :func:`rule` decorator (one small
function per op family); a few rules apply to every op matching a predicate
(:func:`rule_when`, e.g. everything ATen tags pointwise). :func:`apply_rule`
looks the node's op up and falls back to blocking.
"""
from __future__ import annotations

import operator
from typing import Callable, Dict, List, Tuple

import torch

from .nodes import arg, is_tensor_node, norm_dim, shape, tensor_val, tensors_in

__all__ = ["RULES", "PREDICATE_RULES", "rule", "rule_when", "apply_rule", "reshape_groups"]

#: Rule signature: ``fn(builder, node, tensors)``; ``tensors`` are the node's tensor arguments.
Rule = Callable[..., None]

#: Op name (``"aten.linear"``, ``"fastprune.mask_mul"``) -> its coupling rule.
RULES: Dict[str, Rule] = {}

#: ``(predicate(op overload), rule)`` pairs tried in order for ops without an entry in RULES.
PREDICATE_RULES: List[Tuple[Callable[[torch._ops.OpOverload], bool], Rule]] = []


def rule(*names: str, namespace: str = "aten") -> Callable[[Rule], Rule]:
    """Register the decorated function as the coupling rule of ops ``names``.

    Args:
        *names: op names without overload (``"linear"``, ``"conv2d"``).
        namespace: the ops' namespace (``"aten"`` unless a custom op).

    Returns:
        A decorator that registers and returns the function unchanged.

    Raises:
        ValueError: when an op already has a rule (one rule per op).

    Example::

        @rule("my_scale")
        def _my_scale(b, node, tensors):
            _pointwise(b, node, tensors)
    """
    def register(fn: Rule) -> Rule:
        for name in names:
            key = f"{namespace}.{name}"
            if key in RULES:
                raise ValueError(f"{key} already has a coupling rule ({RULES[key].__name__})")
            RULES[key] = fn
        return fn
    return register


def rule_when(predicate: Callable[[torch._ops.OpOverload], bool]) -> Callable[[Rule], Rule]:
    """Register the decorated function for every op ``predicate`` accepts.

    Predicate rules are tried, in registration order, only for ops that have
    no entry in :data:`RULES`.

    Args:
        predicate: called with the ``torch._ops.OpOverload`` of the node.

    Returns:
        A decorator that registers and returns the function unchanged.
    """
    def register(fn: Rule) -> Rule:
        PREDICATE_RULES.append((predicate, fn))
        return fn
    return register


def apply_rule(b, node) -> str:
    """Run the coupling rule for ``node``; returns the op name used in messages.

    Args:
        b: the :class:`~fastprune.structured.builder.SpaceBuilder` of the graph.
        node: a ``call_function`` node of the exported graph.

    Returns:
        str: ``"namespace.op"`` (or the callable's name for non-op targets).
    """
    target = node.target
    if target is operator.getitem:
        b.alias_item(node, node.args[0], node.args[1])
        b.cover(*(b.spaces(node) or []))  # the producer's rule already coupled them
        return "getitem"
    if not isinstance(target, torch._ops.OpOverload):
        return getattr(target, "__name__", str(target))
    full = f"{target.namespace}.{target._opname}"
    fn = RULES.get(full)
    if fn is None:
        fn = next((f for pred, f in PREDICATE_RULES if pred(target)), None)
    if fn is not None:
        fn(b, node, tensors_in(list(node.args) + list(node.kwargs.values())))
    return full


# ---------------------------------------------------------------------------
# Coupling patterns shared by several ops
# ---------------------------------------------------------------------------

def _union_right_aligned(b, src, out):
    """Broadcast semantics: align dims from the right, couple equal sizes."""
    ss, os_ = b.spaces(src), b.spaces(out)
    sshape, oshape = shape(src), shape(out)
    off = len(oshape) - len(sshape)
    for i, s in enumerate(sshape):
        j = i + off
        if j >= 0 and oshape[j] == s:
            b.union(ss[i], os_[j])


def _pointwise(b, node, tensors):
    for t in tensors:
        _union_right_aligned(b, t, node)


def _same_shape(b, node, tensors, donors_only=False):
    """Outputs shaped like the first tensor argument.

    With ``donors_only`` the other tensor arguments only lend dtype/device
    (``type_as``, ``to(other)``) and are not coupled even when shapes agree.
    """
    if tensors:
        first = tensors[0]
        for k in range(b.n_outputs(node)):
            out = b.spaces(node, k)
            if out is not None and len(out) == len(b.spaces(first)):
                for s, o in zip(b.spaces(first), out):
                    b.union(s, o)
        for t in tensors[1:]:
            if not donors_only and shape(t) == shape(first):
                for s, o in zip(b.spaces(t), b.spaces(first)):
                    b.union(s, o)
            else:
                b.cover(*b.spaces(t))  # dtype donors (type_as) and scalar-like masks


def reshape_groups(ishape, oshape):
    """Split a reshape into runs of dims with equal products (size-1 dims skipped).

    Args:
        ishape: input shape.
        oshape: output shape (same number of elements).

    Returns:
        list of ``(input dims, output dims)`` pairs, or ``None`` when the
        shapes do not line up run by run.

    Example::

        >>> reshape_groups((2, 12), (2, 3, 4))
        [([0], [0]), ([1], [1, 2])]
    """
    ii = [d for d, s in enumerate(ishape) if s != 1]
    oo = [d for d, s in enumerate(oshape) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(ii) and j < len(oo):
        gi, go = [ii[i]], [oo[j]]
        pi, po = ishape[ii[i]], oshape[oo[j]]
        i += 1
        j += 1
        while pi != po:
            if pi < po:
                if i >= len(ii):
                    return None
                gi.append(ii[i])
                pi *= ishape[ii[i]]
                i += 1
            else:
                if j >= len(oo):
                    return None
                go.append(oo[j])
                po *= oshape[oo[j]]
                j += 1
        groups.append((gi, go))
    if i != len(ii) or j != len(oo):
        return None
    return groups


def _reshape(b, node, tensors):
    src = tensors[0]
    ishape, oshape = shape(src), shape(node)
    ins, outs = b.spaces(src), b.spaces(node)
    for d, s in enumerate(ishape):
        if s == 1:
            b.cover(ins[d])
    for d, s in enumerate(oshape):
        if s == 1:
            b.cover(outs[d])
    if 0 in ishape:
        return
    groups = reshape_groups(ishape, oshape)
    if groups is None:
        return
    for gi, go in groups:
        if len(gi) == 1 and len(go) == 1:
            b.union(ins[gi[0]], outs[go[0]])
            continue
        # Only the outermost coordinate of a merged/split group may lose
        # channels: heads in [.., H*D] -> [.., H, D], channels in a flatten.
        # Inner ones stay whole (they are the fixed head_dim / spatial sizes).
        a, c = ins[gi[0]], outs[go[0]]
        sa, sc = ishape[gi[0]], oshape[go[0]]
        if sa <= sc and sc % sa == 0:
            b.block_map(a, c, sc // sa)
        elif sc < sa and sa % sc == 0:
            b.block_map(c, a, sa // sc)
        if len(go) > 1 and len(gi) == 1:
            b.split_note(node, count=outs[go[0]], flat=ins[gi[0]])
        elif len(gi) > 1 and len(go) == 1:
            b.split_note(node, count=ins[gi[0]], flat=outs[go[0]])


def _permute(b, node, tensors, perm):
    ins, outs = b.spaces(tensors[0]), b.spaces(node)
    for o, i in enumerate(perm):
        b.union(ins[i], outs[o])


def _linear(b, node, x, w, bias):
    xs, ws, os_ = b.spaces(x), b.spaces(w), b.spaces(node)
    if len(ws) != 2:
        return
    b.union(xs[-1], ws[1])
    b.union(os_[-1], ws[0])
    if bias is not None:
        b.union(b.spaces(bias)[0], ws[0])
    for i, o in zip(xs[:-1], os_[:-1]):
        b.union(i, o)
    b.role(node, w, 0, "out")
    b.role(node, w, 1, "in")
    b.attr(node, "in_features", ws[1])
    b.attr(node, "out_features", ws[0])


def _matmul(b, node, a, c):
    sa, sc, so = b.spaces(a), b.spaces(c), b.spaces(node)
    na, nc = len(sa), len(sc)
    if na == 0 or nc == 0:
        return
    if na == 1 and nc == 1:
        b.union(sa[0], sc[0])
        return
    if na == 1:
        b.union(sa[0], sc[-2])
        b.union(sc[-1], so[-1])
        for i, o in zip(sc[:-2], so[:-1]):
            b.union(i, o)
        return
    if nc == 1:
        b.union(sa[-1], sc[0])
        for i, o in zip(sa[:-1], so):
            b.union(i, o)
        return
    b.union(sa[-1], sc[-2])
    b.union(so[-2], sa[-2])
    b.union(so[-1], sc[-1])
    sh_a, sh_c, sh_o = shape(a), shape(c), shape(node)
    nb = len(sh_o) - 2
    for src, sh, sp in ((a, sh_a, sa), (c, sh_c, sc)):
        k = len(sh) - 2
        for i in range(k):
            j = nb - k + i
            if sh[i] == sh_o[j]:
                b.union(sp[i], so[j])


def _weight_as_right_operand(b, node, w):
    """``x @ W`` with a 2-d parameter W = [in, out] (GPT-2's Conv1D, custom layers)."""
    ws = b.spaces(w)
    if ws is None or len(ws) != 2 or b.weight_fqn(w) is None:
        return
    b.role(node, w, 1, "out")
    b.role(node, w, 0, "in")
    b.attr(node, "nf", ws[1])
    b.attr(node, "nx", ws[0])


def _conv(b, node, x, w, bias, groups, transposed):
    xs, ws, os_ = b.spaces(x), b.spaces(w), b.spaces(node)
    batched = len(xs) == len(ws)
    ci = 1 if batched else 0
    if batched:
        b.union(xs[0], os_[0])
    xshape, wshape, oshape = shape(x), shape(w), shape(node)
    cin, cout = xshape[ci], oshape[ci]
    g = int(groups)
    if not transposed:
        w_out, w_in = 0, 1
    else:
        w_out, w_in = 1, 0
    if bias is not None:
        b.union(b.spaces(bias)[0], os_[ci])
    if g == 1:
        b.union(xs[ci], ws[w_in])
        b.union(os_[ci], ws[w_out])
    else:
        if transposed:
            b.union(xs[ci], ws[0])   # dim 0 of a transposed weight holds all inputs
        else:
            b.union(os_[ci], ws[0])
        gs = b.virtual(g)
        b.block_map(gs, xs[ci], cin // g)
        b.block_map(gs, os_[ci], cout // g)
        # The per-group width (weight dim 1) is the inner coordinate: kept whole.
        b.attr(node, "groups", gs)
    b.role(node, w, w_out, "out")
    b.role(node, w, w_in, "in")
    b.attr(node, "in_channels", xs[ci])
    b.attr(node, "out_channels", os_[ci])


def _batch_norm(b, node, x, stats):
    xs = b.spaces(x)
    c = xs[1] if len(xs) > 1 else xs[0]
    for t in stats:
        if t is not None:
            ts = b.spaces(t)
            if len(ts) == 1 and shape(t)[0] == shape(x)[1 if len(xs) > 1 else 0]:
                b.union(ts[0], c)
    xshape = shape(x)
    for k in range(b.n_outputs(node)):
        out = b.spaces(node, k)
        if out is None:
            continue
        oshape = b.shape(node, k)
        if oshape == xshape:
            for s, o in zip(xs, out):
                b.union(s, o)
        elif len(oshape) == 1 and oshape[0] == xshape[1]:
            b.union(out[0], c)
        else:
            b.cover(*out)
    b.attr(node, "num_features", c)


def _layer_norm(b, node, x, nshape, w, bias):
    xs = b.spaces(x)
    k = len(nshape)
    norm_dims = xs[len(xs) - k:]
    for t in (w, bias):
        if t is not None:
            for s, n in zip(b.spaces(t), norm_dims):
                b.union(s, n)
    xshape = shape(x)
    for j in range(b.n_outputs(node)):
        out = b.spaces(node, j)
        if out is None:
            continue
        if b.shape(node, j) == xshape:
            for s, o in zip(xs, out):
                b.union(s, o)
        else:  # saved mean / rstd
            oshape = b.shape(node, j)
            for d in range(min(len(oshape), len(xs) - k)):
                if oshape[d] == xshape[d]:
                    b.union(out[d], xs[d])
            b.cover(*out)
    b.attr(node, "normalized_shape", tuple(norm_dims))


def _group_norm(b, node, x, num_groups, w, bias):
    xs, os_ = b.spaces(x), b.spaces(node)
    for t in (w, bias):
        if t is not None:
            b.union(b.spaces(t)[0], xs[1])
    for s, o in zip(xs, os_):
        b.union(s, o)
    c, g = shape(x)[1], int(num_groups)
    if g > 1:
        gs = b.virtual(g)
        b.block_map(gs, xs[1], c // g)
        b.attr(node, "num_groups", gs)
    b.attr(node, "num_channels", xs[1])


def _embedding(b, node, w, idx):
    ws, isp, os_ = b.spaces(w), b.spaces(idx), b.spaces(node)
    b.union(ws[1], os_[-1])
    for i, o in zip(isp, os_[:-1]):
        b.union(i, o)
    b.role(node, w, 1, "out")
    b.attr(node, "embedding_dim", ws[1])


def _sdpa(b, node, q, k, v, mask):
    qs, ks, vs, os_ = b.spaces(q), b.spaces(k), b.spaces(v), b.spaces(node)
    if len(qs) < 3 or len(ks) != len(qs) or len(vs) != len(qs):
        return
    b.union(qs[-2], os_[-2])
    b.union(ks[-2], vs[-2])
    b.union(vs[-1], os_[-1])
    # q/k head_dim (-1) stays uncovered: the softmax scale depends on it.
    b.union(qs[-3], os_[-3])
    b.union(ks[-3], vs[-3])
    hq, hk = shape(q)[-3], shape(k)[-3]
    if hq == hk:
        b.union(qs[-3], ks[-3])
    elif hk and hq % hk == 0:
        b.block_map(ks[-3], qs[-3], hq // hk)  # grouped-query attention
    qshape, oshape = shape(q), shape(node)
    for t in (k, v):
        for i, s in enumerate(shape(t)[:-3]):
            if s == qshape[i]:
                b.union(b.spaces(t)[i], qs[i])
    for i in range(len(qs) - 3):
        if qshape[i] == oshape[i]:
            b.union(qs[i], os_[i])
    if mask is not None:
        ms, mshape = b.spaces(mask), shape(mask)
        ref = [*qs[:-1], ks[-2]]
        rshape = [*qshape[:-1], shape(k)[-2]]
        off = len(rshape) - len(mshape)
        for i, s in enumerate(mshape):
            j = i + off
            if j >= 0 and rshape[j] == s:
                b.union(ms[i], ref[j])
    b.heads(node, qs[-3], ks[-3])


def _cat(b, node, tensors, dim):
    out = b.spaces(node)
    oshape = shape(node)
    n = len(oshape)
    dim = norm_dim(dim, n)
    pieces, off = [], 0
    for t in tensors:
        sh = shape(t)
        if len(sh) != n:  # legacy empty 1-d tensors
            b.cover(*b.spaces(t))
            continue
        ts = b.spaces(t)
        for d in range(n):
            if d != dim:
                b.union(ts[d], out[d])
        pieces.append((ts[dim], off))
        off += sh[dim]
    b.cat_map(out[dim], pieces)


def _stack(b, node, tensors, dim):
    out = b.spaces(node)
    n = len(out)
    dim = norm_dim(dim, n)
    rest = [d for d in range(n) if d != dim]
    for t in tensors:
        for s, d in zip(b.spaces(t), rest):
            b.union(s, out[d])


def _split(b, node, x, dim, sizes):
    xs, xshape = b.spaces(x), shape(x)
    dim = norm_dim(dim, len(xshape))
    outs = [b.spaces(node, k) for k in range(b.n_outputs(node))]
    for o in outs:
        for d in range(len(xshape)):
            if d != dim:
                b.union(xs[d], o[d])
    if len(outs) == 1:
        b.union(xs[dim], outs[0][dim])
    elif len(set(sizes)) == 1 and sizes[0] > 0:
        b.chunk_map(xs[dim], [o[dim] for o in outs], sizes[0])
        b.attr(node, "split_size", outs[0][dim])  # e.g. GPT-2's fused q/k/v split


def _slice(b, node, x, dim, start, end, step):
    xs, os_ = b.spaces(x), b.spaces(node)
    n = shape(x)
    dim = norm_dim(dim, len(n))
    for d in range(len(n)):
        if d != dim:
            b.union(xs[d], os_[d])
    start = 0 if start is None else start
    if start < 0:
        start += n[dim]
    end = n[dim] if end is None else end
    if end < 0:
        end += n[dim]
    if start <= 0 and end >= n[dim] and step == 1:
        b.union(xs[dim], os_[dim])


def _select(b, node, x, dim):
    xs, os_ = b.spaces(x), b.spaces(node)
    dim = norm_dim(dim, len(xs))
    for o, d in zip(os_, [d for d in range(len(xs)) if d != dim]):
        b.union(xs[d], o)


def _expand(b, node, x):
    _union_right_aligned(b, x, node)
    for s, n in zip(b.spaces(x), shape(x)):
        if n == 1:
            b.cover(s)


def _repeat(b, node, x, reps):
    xs, os_ = b.spaces(x), b.spaces(node)
    off = len(reps) - len(xs)
    for i, s in enumerate(xs):
        k, n = reps[i + off], shape(x)[i]
        if k == 1:
            b.union(s, os_[i + off])
        elif n > 1:
            # tiling: every copy holds the same channels, like equal chunks
            b.chunk_map(os_[i + off], [s] * k, n)


def _repeat_interleave(b, node, x, repeats, dim):
    if dim is None or not isinstance(repeats, int):
        return
    xs, os_ = b.spaces(x), b.spaces(node)
    dim = norm_dim(dim, len(xs))
    for d in range(len(xs)):
        if d != dim:
            b.union(xs[d], os_[d])
    b.block_map(xs[dim], os_[dim], repeats)  # e.g. key/value heads shared by query groups


def _einsum(b, node, equation, operands):
    eq = equation.replace(" ", "")
    if "..." in eq or "->" not in eq:
        return
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        return
    letters = {}
    for term, op in zip(terms, operands):
        sp = b.spaces(op)
        if sp is None or len(term) != len(sp):
            return
        for ch, s in zip(term, sp):
            letters.setdefault(ch, []).append(s)
    out = b.spaces(node)
    if len(rhs) != len(out):
        return
    for ch, s in zip(rhs, out):
        letters.setdefault(ch, []).append(s)
    for ss in letters.values():
        big = [s for s in ss if b.size[s] != 1]
        b.cover(*[s for s in ss if b.size[s] == 1])  # broadcast
        for s in big[1:]:
            b.union(big[0], s)


def _index(b, node, x, indices):
    xs, out = b.spaces(x), b.spaces(node)
    n = len(xs)
    pos = [i for i, t in enumerate(indices) if t is not None]
    if not pos:
        for s, o in zip(xs, out):
            b.union(s, o)
        return
    if any(not is_tensor_node(indices[i]) or tensor_val(indices[i]).dtype == torch.bool
           for i in pos):
        return
    rest = [d for d in range(n) if d not in pos]
    nb = len(out) - len(rest)
    if pos == list(range(pos[0], pos[-1] + 1)):
        targets = [d if d < pos[0] else d - len(pos) + nb for d in rest]
    else:  # advanced indices apart: the broadcast dims come first
        targets = [nb + k for k in range(len(rest))]
    for d, o in zip(rest, targets):
        b.union(xs[d], out[o])


def _gather(b, node, x, dim, idx):
    xs, isp, out = b.spaces(x), b.spaces(idx), b.spaces(node)
    dim = norm_dim(dim, len(xs))
    for s, o in zip(isp, out):
        b.union(s, o)
    for d in range(len(xs)):
        if d != dim and shape(x)[d] == shape(node)[d]:
            b.union(xs[d], out[d])


def _keep_other_dims(b, node, x, dims):
    """Ops that move entries along ``dims`` (flip, roll, index_select): other dims pass."""
    xs = b.spaces(x)
    n = len(xs)
    moved = {norm_dim(d, n) for d in dims}
    for k in range(b.n_outputs(node)):
        out = b.spaces(node, k)
        if out is None:
            continue
        if len(out) == n:
            for d in range(n):
                if d not in moved:
                    b.union(xs[d], out[d])
        elif len(out) == n - len(moved):  # unbind
            for d, o in zip([d for d in range(n) if d not in moved], out):
                b.union(xs[d], o)


def _pixel_shuffle(b, node, x, r, inverse):
    xs, os_ = b.spaces(x), b.spaces(node)
    c = len(xs) - 3
    for d in range(c):
        b.union(xs[d], os_[d])
    if inverse:
        b.block_map(xs[c], os_[c], r * r)
    else:
        b.block_map(os_[c], xs[c], r * r)


def _reduce(b, node, x, dims, keepdim, positional):
    xs = b.spaces(x)
    n = len(xs)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        red = set(range(n))
    elif isinstance(dims, int):
        red = {norm_dim(dims, n)}
    else:
        red = {norm_dim(d, n) for d in dims}
    keep = [d for d in range(n) if d not in red]
    for k in range(b.n_outputs(node)):
        out = b.spaces(node, k)
        if out is None:
            continue
        if len(out) == n:
            for d in keep:
                b.union(xs[d], out[d])
            for d in red:
                b.cover(out[d])
        elif len(out) == len(keep):
            for d, o in zip(keep, out):
                b.union(xs[d], o)
    if not positional:
        for d in red:
            b.cover(xs[d])


def _spatial(b, node, x, nspatial):
    xs = b.spaces(x)
    lead = len(xs) - nspatial
    for k in range(b.n_outputs(node)):
        out = b.spaces(node, k)
        if out is not None and len(out) == len(xs):
            for d in range(lead):
                b.union(xs[d], out[d])


def _pad(b, node, x, pad):
    xs, os_ = b.spaces(x), b.spaces(node)
    k = len(pad) // 2
    n = len(xs)
    for d in range(n):
        j = n - 1 - d  # pad lists the last dim first
        if j >= k or (pad[2 * j] == 0 and pad[2 * j + 1] == 0):
            b.union(xs[d], os_[d])




# ---------------------------------------------------------------------------
# The registry: one small function per op family
# ---------------------------------------------------------------------------

# Same-shape ops that are not tagged pointwise in ATen.
_SAME_SHAPE = (
    "dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout",
    "feature_alpha_dropout", "native_dropout", "alias", "detach",
    "detach_", "lift_fresh_copy", "contiguous", "clone", "softmax", "_softmax",
    "log_softmax", "_log_softmax", "cumsum", "cumprod", "logcumsumexp", "hardswish",
    "hardswish_", "hardsigmoid", "hardsigmoid_", "mish", "mish_", "silu_", "relu_",
    "gelu_", "fill_", "zero_", "glu_backward", "_native_batch_norm_legit_functional",
    "elu", "elu_", "selu", "selu_", "celu", "celu_", "softplus", "hardtanh_",
    "leaky_relu_", "threshold", "log_sigmoid", "masked_fill_", "copy_",
    "__and__", "__or__", "__xor__", "bitwise_and", "bitwise_or", "logical_and",
    "logical_or", "logical_not", "triu", "tril",
)

# Same-shape ops whose other tensor arguments only lend dtype/device.
_DTYPE_DONORS = ("to", "_to_copy", "type_as", "zeros_like", "ones_like", "empty_like",
                 "full_like", "rand_like", "randn_like")

_REDUCTIONS = ("mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean",
               "logsumexp", "prod", "all", "any", "count_nonzero", "nansum", "nanmean")
# Reductions whose result depends on index positions along the reduced dim.
_INDEX_REDUCTIONS = ("argmax", "argmin", "max", "min", "mode", "median", "nanmedian",
                     "kthvalue", "topk", "sort", "argsort", "cummax", "cummin")

_CREATION = ("arange", "zeros", "ones", "full", "empty", "scalar_tensor", "rand",
             "randn", "randint", "linspace", "logspace", "eye", "tensor", "new_ones",
             "new_zeros", "new_full", "new_empty", "new_tensor", "empty_strided",
             "empty_permuted")


@rule("mask_mul", namespace="fastprune")
def _mask_mul(b, node, tensors):
    # weight = weight_orig * mask of a reparametrised module (the mask broadcasts)
    _pointwise(b, node, tensors_in(node.args))


@rule("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "squeeze_",
      "unsqueeze", "unsqueeze_", "view_as", "reshape_as", "view_copy", "squeeze_copy",
      "unsqueeze_copy", "_reshape_alias", "ravel")
def _reshape_op(b, node, tensors):
    _reshape(b, node, tensors)


@rule("permute", "permute_copy")
def _permute_op(b, node, tensors):
    n = len(b.spaces(node.args[0]))
    _permute(b, node, tensors, [norm_dim(d, n) for d in node.args[1]])


@rule("transpose", "transpose_", "swapaxes", "swapdims", "transpose_copy")
def _transpose_op(b, node, tensors):
    args = node.args
    n = len(b.spaces(args[0]))
    perm = list(range(n))
    if n:
        d0, d1 = norm_dim(args[1], n), norm_dim(args[2], n)
        perm[d0], perm[d1] = perm[d1], perm[d0]
    _permute(b, node, tensors, perm)


@rule("t", "t_", "numpy_T")
def _t_op(b, node, tensors):
    n = len(b.spaces(node.args[0]))
    _permute(b, node, tensors, list(range(n))[::-1])


@rule("movedim", "moveaxis")
def _movedim_op(b, node, tensors):
    args = node.args
    n = len(b.spaces(args[0]))
    src = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
    dst = args[2] if isinstance(args[2], (list, tuple)) else [args[2]]
    src = [norm_dim(d, n) for d in src]
    dst = [norm_dim(d, n) for d in dst]
    perm = [None] * n
    for s, d in zip(src, dst):
        perm[d] = s
    rest = iter(d for d in range(n) if d not in src)
    _permute(b, node, tensors, [p if p is not None else next(rest) for p in perm])


@rule("linear")
def _linear_op(b, node, tensors):
    _linear(b, node, node.args[0], node.args[1], arg(node, 2, "bias"))


@rule("matmul", "mm", "bmm")
def _matmul_op(b, node, tensors):
    _matmul(b, node, node.args[0], node.args[1])
    _weight_as_right_operand(b, node, node.args[1])


@rule("addmm", "baddbmm", "addbmm")
def _addmm_op(b, node, tensors):
    args = node.args
    _matmul(b, node, args[1], args[2])
    _union_right_aligned(b, args[0], node)
    _weight_as_right_operand(b, node, args[2])


@rule("conv1d", "conv2d", "conv3d")
def _conv_op(b, node, tensors):
    _conv(b, node, node.args[0], node.args[1], arg(node, 2, "bias"), arg(node, 6, "groups", 1),
          False)


@rule("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_transpose_op(b, node, tensors):
    _conv(b, node, node.args[0], node.args[1], arg(node, 2, "bias"), arg(node, 6, "groups", 1),
          True)


@rule("convolution", "_convolution")
def _convolution_op(b, node, tensors):
    args = node.args
    _conv(b, node, args[0], args[1], args[2], args[8], bool(args[6]))


@rule("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
      "native_batch_norm", "instance_norm", "_batch_norm_with_update", "_batch_norm_no_update")
def _batch_norm_op(b, node, tensors):
    _batch_norm(b, node, node.args[0], [a for a in node.args[1:5] if is_tensor_node(a)])


@rule("layer_norm", "native_layer_norm")
def _layer_norm_op(b, node, tensors):
    _layer_norm(b, node, node.args[0], list(node.args[1]), arg(node, 2, "weight"),
                arg(node, 3, "bias"))


@rule("rms_norm", "_fused_rms_norm")
def _rms_norm_op(b, node, tensors):
    _layer_norm(b, node, node.args[0], list(node.args[1]), arg(node, 2, "weight"), None)


@rule("group_norm")
def _group_norm_op(b, node, tensors):
    _group_norm(b, node, node.args[0], node.args[1], arg(node, 2, "weight"),
                arg(node, 3, "bias"))


@rule("embedding")
def _embedding_op(b, node, tensors):
    _embedding(b, node, node.args[0], node.args[1])


@rule("scaled_dot_product_attention")
def _sdpa_op(b, node, tensors):
    args = node.args
    mask = arg(node, 3, "attn_mask")
    _sdpa(b, node, args[0], args[1], args[2], mask if is_tensor_node(mask) else None)


@rule("cat")
def _cat_op(b, node, tensors):
    _cat(b, node, list(node.args[0]), arg(node, 1, "dim", 0))


@rule("stack")
def _stack_op(b, node, tensors):
    _stack(b, node, list(node.args[0]), arg(node, 1, "dim", 0))


@rule("split", "split_with_sizes", "unsafe_split", "chunk", "tensor_split", "split_copy",
      "split_with_sizes_copy")
def _split_op(b, node, tensors):
    x = node.args[0]
    dim = arg(node, 2, "dim", 0)
    d = norm_dim(dim, len(shape(x)))
    sizes = [b.shape(node, k)[d] for k in range(b.n_outputs(node))]
    _split(b, node, x, dim, sizes)


@rule("slice", "slice_copy")
def _slice_op(b, node, tensors):
    _slice(b, node, node.args[0], arg(node, 1, "dim", 0), arg(node, 2, "start"),
           arg(node, 3, "end"), arg(node, 4, "step", 1))


@rule("narrow")
def _narrow_op(b, node, tensors):
    args = node.args
    start, length = args[2], args[3]
    _slice(b, node, args[0], args[1], start, start + length, 1)


@rule("select", "select_copy")
def _select_op(b, node, tensors):
    _select(b, node, node.args[0], node.args[1])


@rule("expand", "expand_as", "broadcast_to", "expand_copy")
def _expand_op(b, node, tensors):
    _expand(b, node, node.args[0])


@rule("repeat")
def _repeat_op(b, node, tensors):
    _repeat(b, node, node.args[0], list(node.args[1]))


@rule("repeat_interleave")
def _repeat_interleave_op(b, node, tensors):
    if is_tensor_node(node.args[0]):  # the repeats-only overload has no rule
        _repeat_interleave(b, node, node.args[0], arg(node, 1, "repeats"), arg(node, 2, "dim"))


@rule("einsum")
def _einsum_op(b, node, tensors):
    _einsum(b, node, node.args[0], list(node.args[1]))


@rule("index", "_unsafe_index")
def _index_op(b, node, tensors):
    _index(b, node, node.args[0], list(node.args[1]))


@rule("gather")
def _gather_op(b, node, tensors):
    _gather(b, node, node.args[0], node.args[1], node.args[2])


@rule("index_select", "unbind")
def _index_select_op(b, node, tensors):
    _keep_other_dims(b, node, node.args[0], [arg(node, 1, "dim", 0)])


@rule("flip")
def _flip_op(b, node, tensors):
    _keep_other_dims(b, node, node.args[0], list(node.args[1]))


@rule("roll")
def _roll_op(b, node, tensors):
    dims = list(arg(node, 2, "dims", []) or [])
    if not dims:
        dims = list(range(len(b.spaces(node.args[0]))))
    _keep_other_dims(b, node, node.args[0], dims)


@rule("pixel_shuffle", "pixel_unshuffle")
def _pixel_shuffle_op(b, node, tensors):
    _pixel_shuffle(b, node, node.args[0], node.args[1], node.target._opname == "pixel_unshuffle")


def _reduction_dims(node, dims, positional: bool):
    if isinstance(dims, torch.fx.Node) or (not positional and not isinstance(
            dims, (int, list, tuple, type(None)))):
        return None
    return dims


@rule(*_REDUCTIONS)
def _reduce_op(b, node, tensors):
    dims = _reduction_dims(node, arg(node, 1, "dim"), False)
    _reduce(b, node, node.args[0], dims, arg(node, 2, "keepdim", False), False)


@rule("norm", "linalg_vector_norm")
def _norm_op(b, node, tensors):
    dims = _reduction_dims(node, arg(node, 2, "dim"), False)
    _reduce(b, node, node.args[0], dims, arg(node, 2, "keepdim", False), False)


@rule(*_INDEX_REDUCTIONS)
def _index_reduce_op(b, node, tensors):
    dims = _reduction_dims(node, arg(node, 1, "dim"), True)
    _reduce(b, node, node.args[0], dims, arg(node, 2, "keepdim", False), True)


@rule("pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
      "replication_pad1d", "replication_pad2d", "replication_pad3d")
def _pad_op(b, node, tensors):
    _pad(b, node, node.args[0], list(node.args[1]))


@rule(*_CREATION)
def _creation_op(b, node, tensors):
    for t in tensors:  # new_* take only dtype/device from self
        b.cover(*b.spaces(t))


@rule("prelu")
def _prelu_op(b, node, tensors):
    x, w = node.args[0], node.args[1]
    xs, ws = b.spaces(x), b.spaces(w)
    if shape(w)[0] > 1:
        b.union(ws[0], xs[1] if len(xs) > 1 else xs[0])
    _same_shape(b, node, [x])


@rule(*_SAME_SHAPE)
def _same_shape_op(b, node, tensors):
    _same_shape(b, node, tensors)


@rule(*_DTYPE_DONORS)
def _dtype_donor_op(b, node, tensors):
    _same_shape(b, node, tensors, donors_only=True)


def _spatial_count(name: str) -> int:
    for k in (3, 2, 1):
        if f"{k}d" in name:
            return k
    return 2


def _is_aten(op) -> bool:
    return op.namespace == "aten"


@rule_when(lambda op: _is_aten(op) and op._opname.startswith(("_assert", "sym_constrain_range")))
def _ignored_op(b, node, tensors):
    # tensors only lend dtype/device, or the op only asserts
    for t in tensors:
        b.cover(*b.spaces(t))


@rule_when(lambda op: _is_aten(op) and ("pool" in op._opname or "upsample" in op._opname))
def _spatial_op(b, node, tensors):
    _spatial(b, node, node.args[0], _spatial_count(node.target._opname))


@rule_when(lambda op: _is_aten(op) and torch.Tag.pointwise in op.tags)
def _pointwise_op(b, node, tensors):
    _pointwise(b, node, tensors)
