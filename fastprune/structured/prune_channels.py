"""One-call structured pruning: rank coupled channel groups, remove the weakest."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from .graph import DependencyGraph, split_example_inputs
from ..core.targets import eval_mode
from .importance import IMPORTANCES, group_scores
from .plan import Plan

__all__ = ["PruneReport", "prune_channels", "remove_masked_channels", "count_macs",
           "count_params"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs) -> Optional[int]:
    """Multiply-accumulates of one forward pass (matmul, conv, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    args, kwargs = split_example_inputs(example_inputs)
    counter = FlopCounterMode(display=False)
    try:
        with eval_mode(model), torch.no_grad(), counter:
            model(*args, **kwargs)
    except Exception:
        if any(p.is_meta for p in model.parameters()):
            return None  # some forwards branch on values, which meta tensors lack
        raise
    return counter.get_total_flops() // 2


@dataclass
class PruneReport:
    """What :func:`prune_channels` / :func:`remove_masked_channels` did."""

    params_before: int
    params_after: int
    macs_before: Optional[int]
    macs_after: Optional[int]
    layers: List[Tuple[str, int, int]] = field(default_factory=list)
    build_time: float = 0.0
    plan: Optional[Plan] = None

    @property
    def param_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def __str__(self):
        def fmt(v):
            return "n/a" if v is None else f"{v:,}"

        lines = [
            f"params: {fmt(self.params_before)} -> {fmt(self.params_after)} "
            f"(-{100 * self.param_reduction:.1f}%)",
            f"MACs:   {fmt(self.macs_before)} -> {fmt(self.macs_after)}",
            f"graph built in {self.build_time:.2f}s",
        ]
        changed = [l for l in self.layers if l[1] != l[2]]
        if changed:
            w = max(len(n) for n, _, _ in changed)
            lines.append(f"  {'group':<{w}}  channels")
            for name, before, after in changed:
                lines.append(f"  {name:<{w}}  {before} -> {after}")
        return "\n".join(lines)


def _check_amount(amount):
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be an int or a float, got {type(amount).__name__}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount} must be a non-negative number of channel groups")
    elif not 0.0 <= float(amount) <= 1.0 or math.isnan(amount):
        raise ValueError(f"amount={amount} must be a fraction in [0, 1]")


def _frozen_classes(dg: DependencyGraph, ignored_layers) -> Set[int]:
    if ignored_layers is None:
        return set()
    if isinstance(ignored_layers, (nn.Module, str)):
        ignored_layers = [ignored_layers]
    try:
        items = list(ignored_layers)
    except TypeError:
        raise TypeError("ignored_layers must be an iterable of modules or module names") from None
    by_id = {id(m): path for path, m in dg.model.named_modules(remove_duplicate=False)}
    paths = []
    for it in items:
        if isinstance(it, str):
            try:
                dg.model.get_submodule(it)
            except AttributeError:
                raise ValueError(f"ignored_layers: no submodule named {it!r}") from None
            paths.append(it)
        elif isinstance(it, nn.Module):
            if id(it) not in by_id:
                raise ValueError("ignored_layers: module is not part of the model")
            paths.append(by_id[id(it)])
        else:
            raise TypeError("ignored_layers must contain modules or module names, got "
                            f"{type(it).__name__}")
    frozen = set()
    for path in paths:
        top = dg.model.get_submodule(path)
        for sub_path, sub in top.named_modules():
            full = f"{path}.{sub_path}".strip(".") if sub_path else path
            for pname, _ in sub.named_parameters(recurse=False):
                fqn = f"{full}.{pname}" if full else pname
                fqn = dg.canonical.get(fqn, fqn)
                # An ignored conv/linear keeps its outputs; its inputs still follow
                # the layer that produces them.
                in_dim = None
                if isinstance(sub, (nn.Linear, nn.modules.conv._ConvNd)) and \
                        pname in ("weight", "weight_orig"):
                    transposed = getattr(sub, "transposed", False)
                    in_dim = 0 if transposed else 1
                d = 0
                while (fqn, d) in dg.member_class:
                    if d != in_dim:
                        frozen.add(dg.member_class[(fqn, d)])
                    d += 1
    return frozen


class _Selector:
    """Greedy choice of atoms that never empties a dimension."""

    def __init__(self, dg: DependencyGraph):
        self.dg = dg
        self.left = list(dg.class_size)

    def fits(self, atom) -> bool:
        return all(self.left[c] - len(idx) >= 1 for c, idx in atom.items())

    def take(self, atom):
        for c, idx in atom.items():
            self.left[c] -= len(idx)

    def give_back(self, atom):
        for c, idx in atom.items():
            self.left[c] += len(idx)


def _round(dg, group, chosen: List[int], scores, sel: _Selector, round_to: Optional[int]):
    if not round_to or not chosen:
        return chosen
    chosen = sorted(chosen, key=lambda a: float(scores[a]))
    while chosen and sel.left[group.root] % round_to:
        sel.give_back(group.atoms[chosen.pop()])
    return chosen


def prune_channels(model: nn.Module, example_inputs, amount, *, importance: str = "l2",
                   global_pruning: bool = False, ignored_layers=None,
                   round_to: Optional[int] = None, generator=None) -> PruneReport:
    """Remove the weakest ``amount`` of channel groups from ``model`` in place.

    Channels are ranked by the Lp norm (``importance`` = ``"l1"``, ``"l2"``,
    ``"linf"``, or ``"random"``) of every weight coupled to them, normalised by
    the number of weights, so a residual channel counts the convolutions that
    read and write it. ``amount`` is a fraction of the prunable units (float)
    or a count (int): per coupled group, or over the whole model when
    ``global_pruning``. Units are single channels, or whole attention heads /
    key-value groups / conv groups where the graph requires it. A dimension is
    never emptied; ``round_to`` keeps each group's remaining channel count a
    multiple of it (pruning less if needed). ``ignored_layers`` (modules or
    names) keep their output channels. Returns a :class:`PruneReport`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_amount(amount)
    if not isinstance(importance, str):
        raise TypeError(f"importance must be a string, got {type(importance).__name__}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {sorted(IMPORTANCES)}, got {importance!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)):
        raise TypeError(f"round_to must be None or a positive int, got {type(round_to).__name__}")
    if round_to is not None and round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    split_example_inputs(example_inputs)

    dg = DependencyGraph(model, example_inputs)
    frozen = _frozen_classes(dg, ignored_layers)
    groups = dg.groups()
    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta and importance != "random":
        raise ValueError("importance from weight norms needs real weights; the model is on "
                         "the meta device (use importance='random' to exercise the graph)")
    params_before = count_params(model)
    macs_before = count_macs(model, example_inputs)

    cand: Dict[int, List[int]] = {}
    scores: Dict[int, torch.Tensor] = {}
    for g in groups:
        ok = [i for i, a in enumerate(g.atoms)
              if g.valid[i] and not any(c in frozen for c in a)]
        if ok:
            cand[g.id] = ok
            scores[g.id] = group_scores(dg, g, importance, generator)
    sel = _Selector(dg)
    chosen: Dict[int, List[int]] = {gid: [] for gid in cand}

    def budget(n):
        if isinstance(amount, numbers.Integral):
            return min(int(amount), n)
        return int(round(float(amount) * n))

    def take_in_order(order, k):
        """Take up to k channels (group id, index) in the given order, skipping those that do not fit."""
        for gid, i in order:
            if k <= 0:
                break
            atom = groups[gid].atoms[i]
            if sel.fits(atom):
                sel.take(atom)
                chosen[gid].append(i)
                k -= 1

    if global_pruning:
        pool = sorted(((float(scores[gid][i]), gid, i) for gid, ok in cand.items() for i in ok))
        take_in_order([(gid, i) for _, gid, i in pool], budget(len(pool)))
    else:
        for gid, ok in cand.items():
            order = sorted(ok, key=lambda i: (float(scores[gid][i]), i))
            take_in_order([(gid, i) for i in order], budget(len(ok)))
    for gid in chosen:
        chosen[gid] = _round(dg, groups[gid], chosen[gid], scores[gid], sel, round_to)

    dels: Dict[int, Set[int]] = {}
    for gid, atoms in chosen.items():
        for i in atoms:
            for c, idx in groups[gid].atoms[i].items():
                dels.setdefault(c, set()).update(idx)
    layers = [(g.name, dg.class_size[g.root], sel.left[g.root]) for g in groups if g.id in cand]
    plan = Plan(dg, dels)
    if dels:
        plan.exec()
    return PruneReport(params_before, count_params(model), macs_before,
                       count_macs(model, example_inputs), layers, dg.build_time, plan)


def remove_masked_channels(model: nn.Module, example_inputs) -> PruneReport:
    """Physically remove channels that structured masks already zeroed.

    A coupled channel (or head) goes when every layer producing it has that
    output channel masked to zero (``ln_structured`` / ``random_structured``
    with ``dim=0`` on convs and linears), or when every layer reading it has
    that input masked (``dim=1``). Biases of removed output channels are
    dropped with them. The masks shrink with their weights, so the module stays
    pruned (call ``fastprune.remove`` afterwards to make it permanent).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dg = DependencyGraph(model, example_inputs)
    params_before = count_params(model)
    macs_before = count_macs(model, example_inputs)
    roles: Dict[int, List[tuple]] = {}
    for c, kind, fqn, d in dg.roles:
        roles.setdefault(c, []).append((kind, fqn, d))

    def slice_dead(fqn, d, idx) -> Optional[bool]:
        mod, name = fqn.rsplit(".", 1) if "." in fqn else ("", fqn)
        mask = getattr(model.get_submodule(mod), name + "_mask", None)
        if not isinstance(mask, torch.Tensor) or mask.dim() <= d:
            return None
        sl = mask.index_select(d, torch.tensor(list(idx), device=mask.device))
        return bool((sl == 0).all())

    sel = _Selector(dg)
    dels: Dict[int, Set[int]] = {}
    layers = []
    for g in dg.groups():
        removed = 0
        for i, atom in enumerate(g.atoms):
            if not g.valid[i]:
                continue
            outs, ins = [], []
            for c, idx in atom.items():
                for kind, fqn, d in roles.get(c, ()):
                    (outs if kind == "out" else ins).append(slice_dead(fqn, d, idx))
            dead = (outs and all(v is True for v in outs)) or (ins and all(v is True for v in ins))
            if dead and sel.fits(atom):
                sel.take(atom)
                removed += 1
                for c, idx in atom.items():
                    dels.setdefault(c, set()).update(idx)
        layers.append((g.name, dg.class_size[g.root], sel.left[g.root]))
    plan = Plan(dg, dels)
    if dels:
        plan.exec()
    return PruneReport(params_before, count_params(model), macs_before,
                       count_macs(model, example_inputs), layers, dg.build_time, plan)
