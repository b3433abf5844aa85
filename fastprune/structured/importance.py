"""Importance of channel groups from per-channel norms of every coupled tensor."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from .. import ops
from ..core.targets import existing_mask, is_reparametrized

__all__ = ["IMPORTANCES", "group_scores"]

#: Importance name -> the norm order it uses (``None``: random scores).
IMPORTANCES = {"l1": 1.0, "l2": 2.0, "linf": math.inf, "random": None}


def _effective(module, name: str) -> torch.Tensor:
    """The weight the forward sees: ``name_orig * name_mask`` when reparametrised."""
    t = getattr(module, name)
    base = name[: -len("_orig")]
    if name.endswith("_orig") and is_reparametrized(module, base):
        mask = existing_mask(module, base)
        if mask.shape == t.shape:
            t = t * mask.to(t.dtype)
    return t.detach()


def class_scores(graph, c: int, p: float) -> Optional[tuple]:
    """Per-channel Lp mass of every parameter coupled to class ``c``.

    Args:
        graph: a :class:`~fastprune.structured.DependencyGraph`.
        c: a class id.
        p: the norm order (``math.inf`` for the max norm).

    Returns:
        ``(totals, weights per channel)``: totals is a float64 tensor with the
        sum over coupled parameters of ``|channel|_p^p`` (the max for
        ``p = inf``); ``None`` when no parameter is coupled to ``c``.
    """
    total: Optional[torch.Tensor] = None
    count = 0.0
    model = graph.model
    for fqn, d, is_param in graph.class_members[c]:
        if not is_param:
            continue
        mod, name = fqn.rsplit(".", 1) if "." in fqn else ("", fqn)
        t = _effective(model.get_submodule(mod), name)
        if t.numel() == 0:
            continue
        norms = ops.channel_norms(t, d, p).double().cpu()
        if math.isinf(p):
            part = norms
            total = part if total is None else torch.maximum(total, part)
        else:
            part = norms.pow(p)
            total = part if total is None else total + part
        count += t.numel() / t.shape[d]
    if total is None:
        return None
    return total, count


def group_scores(graph, group, importance: str, generator=None) -> torch.Tensor:
    """One score per atom of ``group`` (lower = pruned first).

    Args:
        graph: the :class:`~fastprune.structured.DependencyGraph` of the group.
        group: a :class:`~fastprune.structured.ChannelGroup`.
        importance: a key of :data:`IMPORTANCES` (``"l1"``, ``"l2"``, ``"linf"``, ``"random"``).
        generator: ``torch.Generator`` for ``"random"``.

    Returns:
        float64 tensor with one score per atom: the Lp norm of every
        parameter slice the atom removes, normalised by the number of weights.
    """
    p = IMPORTANCES[importance]
    n = len(group.atoms)
    if p is None:
        return torch.rand(n, generator=generator, dtype=torch.float64)
    per_class: Dict[int, tuple] = {}
    for c in group.classes:
        sc = class_scores(graph, c, p)
        if sc is not None:
            per_class[c] = sc
    if len(group.classes) == 1 and len(group.atoms) == graph.class_size[group.classes[0]] \
            and all(len(a) == 1 for a in group.atoms):
        c = group.classes[0]
        if c not in per_class:
            return torch.zeros(n, dtype=torch.float64)
        total, count = per_class[c]
        if math.isinf(p):
            return total.clone()
        return (total / max(count, 1.0)).pow(1.0 / p)
    scores: List[float] = []
    for atom in group.atoms:
        acc, cnt = 0.0, 0.0
        for c, idx in atom.items():
            if c not in per_class:
                continue
            total, count = per_class[c]
            vals = total[list(idx)]
            if math.isinf(p):
                acc = max(acc, float(vals.max()))
            else:
                acc += float(vals.sum())
            cnt += count * len(idx)
        if math.isinf(p):
            scores.append(acc)
        else:
            scores.append((acc / cnt) ** (1.0 / p) if cnt else 0.0)
    return torch.tensor(scores, dtype=torch.float64)
