"""Importance of channel groups: a registry of scorers.

Each scorer gives one score per atom of a :class:`~fastprune.structured.ChannelGroup`
(lower = removed first):

* ``"l1"``, ``"l2"`` (alias ``"magnitude"``), ``"linf"``: the Lp norm of every
  parameter slice the atom removes, normalised by the number of weights;
* ``"random"``: uniform random scores (baselines);
* ``"activation"`` (Wanda-sp / FLAP): for every layer that reads the atom's
  channels, ``||X_j||_2 * ||W_:,j||_2`` (the channel's calibration input norm
  times the norm of the weights that read it), summed over the atom and
  over every reading layer of the coupled group;
* ``"taylor"`` (LLM-Pruner, first order): ``|w * dL/dw|`` summed over every
  parameter entry the atom removes, with the gradient of a loss accumulated
  over the calibration data.

The data-driven scorers read a :class:`~fastprune.structured.statistics.CalibrationStats`.
New scorers are added with :func:`register_importance`.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from .. import ops
from ..core.targets import existing_mask, is_reparametrized

__all__ = ["IMPORTANCES", "Importance", "register_importance", "group_scores", "class_scores"]


def _effective(module, name: str) -> torch.Tensor:
    """The weight the forward sees: ``name_orig * name_mask`` when reparametrised."""
    t = getattr(module, name)
    base = name[: -len("_orig")]
    if name.endswith("_orig") and is_reparametrized(module, base):
        mask = existing_mask(module, base)
        if mask.shape == t.shape:
            t = t * mask.to(t.dtype)
    return t.detach()


def _tensor(graph, fqn: str) -> torch.Tensor:
    mod, name = fqn.rsplit(".", 1) if "." in fqn else ("", fqn)
    return _effective(graph.model.get_submodule(mod), name)


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
    for fqn, d, is_param in graph.class_members[c]:
        if not is_param:
            continue
        t = _tensor(graph, fqn)
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


def _sum_atoms(group, per_class: Dict[int, torch.Tensor]) -> torch.Tensor:
    """Score of every atom: the sum of its classes' per-channel scores over its indices."""
    out = torch.zeros(len(group.atoms), dtype=torch.float64)
    for i, atom in enumerate(group.atoms):
        acc = 0.0
        for c, idx in atom.items():
            if c in per_class:
                acc += float(per_class[c][list(idx)].sum())
        out[i] = acc
    return out


class Importance:
    """A way to score the atoms of a channel group (see :func:`register_importance`).

    Attributes:
        needs_inputs: reads calibration input sums (``CalibrationStats.inputs``).
        needs_saliency: reads first-order saliencies (``CalibrationStats.saliency``).
        needs_weights: reads weight values (refused on the meta device).
    """

    needs_inputs = False
    needs_saliency = False
    needs_weights = True

    def scores(self, graph, group, stats=None, generator=None) -> torch.Tensor:
        """One float64 score per atom of ``group`` (lower = removed first).

        Args:
            graph: the :class:`~fastprune.structured.DependencyGraph`.
            group: a :class:`~fastprune.structured.ChannelGroup` of it.
            stats: a :class:`~fastprune.structured.statistics.CalibrationStats`
                (for the data-driven scorers).
            generator: a ``torch.Generator`` (for random scores).

        Returns:
            float64 tensor of ``len(group.atoms)`` scores.
        """
        raise NotImplementedError


class _Norm(Importance):
    def __init__(self, p: float):
        self.p = p

    def scores(self, graph, group, stats=None, generator=None):
        p = self.p
        n = len(group.atoms)
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


class _Random(Importance):
    needs_weights = False

    def scores(self, graph, group, stats=None, generator=None):
        return torch.rand(len(group.atoms), generator=generator, dtype=torch.float64)


class _Activation(Importance):
    """Wanda-sp / FLAP: ``sum over readers r, channels j of ||X_r,j||_2 * ||W_r[:, j]||_2``."""

    needs_inputs = True

    def scores(self, graph, group, stats=None, generator=None):
        readers: Dict[int, list] = {}
        for r in graph.roles:
            if r.kind == "in":
                readers.setdefault(r.cls, []).append(r)
        per_class: Dict[int, torch.Tensor] = {}
        for c in group.classes:
            for r in readers.get(c, ()):
                st = stats.inputs.get(r.module) if stats is not None else None
                if st is None or st.sq.numel() != graph.class_size[c]:
                    continue
                fqn = r.fqn if (r.fqn, r.dim) in graph.member_class else r.fqn + "_orig"
                wn = ops.channel_norms(_tensor(graph, fqn), r.dim, 2.0).double().cpu()
                part = st.norms().cpu() * wn
                per_class[c] = part if c not in per_class else per_class[c] + part
        if not per_class:
            raise ValueError(
                f"importance='activation': no layer reading the channels of {group.name} has "
                "calibration input statistics (the readers are not nn.Linear / Conv1D / conv "
                "layers, or the statistics come from another model)")
        return _sum_atoms(group, per_class)


class _Taylor(Importance):
    """LLM-Pruner, first order: ``sum of |w * dL/dw|`` over every parameter entry an atom removes."""

    needs_saliency = True

    def scores(self, graph, group, stats=None, generator=None):
        per_class: Dict[int, torch.Tensor] = {}
        found = False
        for c in group.classes:
            for fqn, d, is_param in graph.class_members[c]:
                if not is_param:
                    continue
                sal = stats.saliency.get(fqn) if stats is not None else None
                if sal is None:
                    continue
                found = True
                part = sal[d].double().cpu()
                per_class[c] = part if c not in per_class else per_class[c] + part
        if not found:
            raise ValueError(f"importance='taylor': the statistics hold no gradients for the "
                             f"parameters of {group.name}")
        return _sum_atoms(group, per_class)


#: Importance name -> its scorer (:class:`Importance`).
IMPORTANCES: Dict[str, Importance] = {}


def register_importance(name: str, scorer: Importance) -> None:
    """Make ``scorer`` available as ``importance=name``.

    Args:
        name: the name :func:`~fastprune.prune_channels` accepts.
        scorer: an :class:`Importance`.

    Raises:
        ValueError: when ``name`` is taken.
        TypeError: when ``scorer`` is not an :class:`Importance`.

    Example::

        class Ones(Importance):
            needs_weights = False
            def scores(self, graph, group, stats=None, generator=None):
                return torch.ones(len(group.atoms), dtype=torch.float64)

        register_importance("ones", Ones())
    """
    if not isinstance(scorer, Importance):
        raise TypeError(f"scorer must be an Importance, got {type(scorer).__name__}")
    if name in IMPORTANCES:
        raise ValueError(f"importance {name!r} is registered already")
    IMPORTANCES[name] = scorer


register_importance("l1", _Norm(1.0))
register_importance("l2", _Norm(2.0))
register_importance("magnitude", IMPORTANCES["l2"])
register_importance("linf", _Norm(math.inf))
register_importance("random", _Random())
register_importance("activation", _Activation())
register_importance("taylor", _Taylor())


def group_scores(graph, group, importance: str, generator=None, stats=None) -> torch.Tensor:
    """One score per atom of ``group`` (lower = pruned first).

    Args:
        graph: the :class:`~fastprune.structured.DependencyGraph` of the group.
        group: a :class:`~fastprune.structured.ChannelGroup`.
        importance: a key of :data:`IMPORTANCES`.
        generator: ``torch.Generator`` for ``"random"``.
        stats: :class:`~fastprune.structured.statistics.CalibrationStats` for
            ``"activation"`` and ``"taylor"``.

    Returns:
        float64 tensor with one score per atom.
    """
    return IMPORTANCES[importance].scores(graph, group, stats, generator)
