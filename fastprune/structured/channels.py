"""One-call structured pruning: rank coupled channel groups, remove the weakest.

Also turns structured masks into real removal (:func:`remove_masked_channels`).
"""
from __future__ import annotations

import math
import numbers
import re
import warnings
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from ..core.targets import existing_mask
from . import hf_config
from .graph import ChannelGroup, DependencyGraph
from .importance import IMPORTANCES, group_scores
from .plan import Plan
from .report import PruneReport, count_macs, count_params
from .trace import split_example_inputs

__all__ = ["prune_channels", "remove_masked_channels"]


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
        self.left = list(dg.class_size)

    def fits(self, atom) -> bool:
        return all(self.left[c] - len(idx) >= 1 for c, idx in atom.items())

    def take(self, atom):
        for c, idx in atom.items():
            self.left[c] -= len(idx)

    def give_back(self, atom):
        for c, idx in atom.items():
            self.left[c] += len(idx)


# A unit is what the selection takes or leaves as a whole: one atom, or with
# ``uniform`` the k-th weakest atom of every block of a repeated family.
_Unit = Tuple[Tuple[int, int], ...]  # ((group id, atom index), ...)

_LAYER_INDEX = re.compile(r"\.\d+(?=\.)")


def _family_key(dg: DependencyGraph, g: ChannelGroup):
    """Groups of repeated blocks (``layers.0.mlp``, ``layers.1.mlp``) share this key."""
    names = {_LAYER_INDEX.sub(".#", fqn[: -len("_orig")] if fqn.endswith("_orig") else fqn)
             for c in g.classes for fqn, _, is_param in dg.class_members[c] if is_param}
    sizes = sorted(dg.class_size[c] for c in g.classes)
    return tuple(sorted(names)), len(g.atoms), tuple(sizes)


def _families(dg, groups, cand, scores, uniform: bool) -> Dict[int, List[Tuple[float, _Unit]]]:
    """family id -> its units with their scores, weakest first."""
    fams: Dict[object, List[int]] = {}
    for gid in cand:
        key = _family_key(dg, groups[gid]) if uniform else gid
        fams.setdefault(key, []).append(gid)
    out = {}
    for fid, gids in enumerate(fams.values()):
        order = {gid: sorted(cand[gid], key=lambda i, g=gid: (float(scores[g][i]), i))
                 for gid in gids}
        n = min(len(o) for o in order.values())
        units = []
        for j in range(n):
            unit = tuple((gid, order[gid][j]) for gid in gids)
            units.append((sum(float(scores[g][i]) for g, i in unit) / len(unit), unit))
        out[fid] = units
    return out


def _unit_fits(sel: _Selector, groups, unit: _Unit) -> bool:
    return all(sel.fits(groups[g].atoms[i]) for g, i in unit)


def _select(dg, groups, fams, amount, global_pruning, round_to):
    """Chosen ``(score, unit)`` per family, and the selector holding the sizes left."""
    sel = _Selector(dg)
    chosen: Dict[int, List[Tuple[float, _Unit]]] = {fid: [] for fid in fams}

    def budget(n):
        if isinstance(amount, numbers.Integral):
            return min(int(amount), n)
        return int(round(float(amount) * n))

    def take_in_order(order, k):
        """Take units in order while k atoms are left, skipping those that do not fit."""
        for fid, (score, unit) in order:
            if k <= 0:
                break
            if len(unit) <= k and _unit_fits(sel, groups, unit):
                for g, i in unit:
                    sel.take(groups[g].atoms[i])
                chosen[fid].append((score, unit))
                k -= len(unit)

    if global_pruning:
        pool = sorted(((score, fid, j) for fid, units in fams.items()
                       for j, (score, _) in enumerate(units)))
        total = sum(len(u) for units in fams.values() for _, u in units)
        take_in_order([(fid, fams[fid][j]) for _, fid, j in pool], budget(total))
    else:
        for fid, units in fams.items():
            take_in_order([(fid, u) for u in units], len(units[0][1]) * budget(len(units)))
    if round_to:
        for fid, taken in chosen.items():
            taken.sort(key=lambda su: su[0])
            while taken and any(sel.left[groups[g].root] % round_to for g, _ in taken[0][1]):
                for g, i in taken.pop()[1]:
                    sel.give_back(groups[g].atoms[i])
    return chosen, sel


def _planned_shapes(dg: DependencyGraph, plan: Plan) -> Dict[str, Tuple[int, ...]]:
    """Tensor shapes after ``plan``, named as :func:`hf_config.current_shapes` names them."""
    after = plan.shapes_after()
    out = {}
    for name, shape in hf_config.current_shapes(dg.model).items():
        traced = dg.canonical.get(name, name)
        if traced not in after:
            traced = dg.canonical.get(name + "_orig", name + "_orig")
        out[name] = after.get(traced, shape)
    return out


def _config_blocks(dg, groups, fams) -> Set[int]:
    """Families whose removal a transformers config cannot state (tried one unit each)."""
    bad = set()
    for fid, units in fams.items():
        if not units:
            continue
        dels: Dict[int, Set[int]] = {}
        for g, i in units[0][1]:
            for c, idx in groups[g].atoms[i].items():
                dels.setdefault(c, set()).update(idx)
        try:
            hf_config.config_changes(dg.model, _planned_shapes(dg, Plan(dg, dels)))
        except hf_config.ConfigError:
            bad.add(fid)
    return bad


def prune_channels(model: nn.Module, example_inputs, amount, *, importance: str = "l2",
                   global_pruning: bool = False, ignored_layers=None,
                   round_to: Optional[int] = None, uniform: bool = False,
                   generator=None) -> PruneReport:
    """Remove the weakest ``amount`` of channel groups from ``model`` in place.

    Channels are ranked by the Lp norm of every weight coupled to them,
    normalised by the number of weights, so a residual channel counts the
    convolutions that read and write it. Units are single channels, or whole
    attention heads / key-value groups / conv groups where the graph requires
    it. A dimension is never emptied. Parameters are replaced by new
    ``nn.Parameter`` objects (rebuild optimizers); if anything fails the model
    is left exactly as it was.

    Args:
        model: the model to shrink.
        example_inputs: a Tensor, a tuple of positional inputs, a dict of
            keyword inputs or an ``(args, kwargs)`` pair; the model is traced
            and checked on them.
        amount: a fraction of the prunable units (float in [0, 1]) or a count
            (int): per coupled group, or over the whole model when
            ``global_pruning``.
        importance: ``"l1"``, ``"l2"``, ``"linf"`` or ``"random"``.
        global_pruning: rank all groups together instead of each on its own.
        ignored_layers: modules or module names that keep their output channels.
        round_to: keep each group's remaining channel count a multiple of it
            (pruning less if needed).
        uniform: remove the same number of channels (or heads) from every
            repeated block (``layers.0.mlp``, ``layers.1.mlp``, ...): the k-th
            weakest unit of every block goes together, ranked by their mean
            score. For a transformers model the config is then rewritten
            (see :func:`~fastprune.structured.hf_config.rewrite_config`) so
            ``save_pretrained`` / ``from_pretrained`` reload it; sizes its
            config cannot state (e.g. heads of GPT-2, BERT and ViT, whose head
            width is derived from ``hidden_size``) are left unpruned.
        generator: ``torch.Generator`` for ``importance="random"``.

    Returns:
        PruneReport: parameter and MAC counts before and after, channels per
        group, the executed plan and any config changes.

    Raises:
        TypeError: for arguments of the wrong type (naming the argument).
        ValueError: for an amount out of range, an unknown importance, bad
            ``ignored_layers``, or weight-norm importance on a meta-device model.
        TraceError: when ``torch.export`` cannot trace the model.
        RuntimeError: when the pruned model fails to run (rolled back).

    Example::

        >>> report = fastprune.prune_channels(model, torch.randn(1, 3, 224, 224), 0.3)
        >>> print(report)
        >>> fastprune.prune_channels(llama, input_ids, 0.25, uniform=True)
        >>> llama.save_pretrained("pruned")   # reloads with from_pretrained
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
    if not isinstance(uniform, bool):
        raise TypeError(f"uniform must be a bool, got {type(uniform).__name__}")
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
    fams = _families(dg, groups, cand, scores, uniform)
    rewrite = uniform and hf_config.has_transformers_config(model)
    if rewrite:
        for fid in _config_blocks(dg, groups, fams):
            fams[fid] = []
    fams = {fid: units for fid, units in fams.items() if units}
    chosen, sel = _select(dg, groups, fams, amount, global_pruning, round_to)

    dels: Dict[int, Set[int]] = {}
    for taken in chosen.values():
        for _, unit in taken:
            for g, i in unit:
                for c, idx in groups[g].atoms[i].items():
                    dels.setdefault(c, set()).update(idx)
    layers = [(g.name, dg.class_size[g.root], sel.left[g.root]) for g in groups if g.id in cand]
    plan = Plan(dg, dels)
    changes = {}
    if rewrite and dels:
        changes = hf_config.config_changes(model, _planned_shapes(dg, plan))  # before any cut
    if dels:
        plan.exec()
    if changes:
        hf_config.rewrite_config(model)
    elif dels and not uniform and hf_config.has_transformers_config(model):
        warnings.warn(
            "prune_channels(uniform=False) left model.config unchanged: save_pretrained / "
            "from_pretrained need a config that states the new sizes, which only uniform pruning "
            "gives (prune with uniform=True, or call fastprune.structured.rewrite_config(model) "
            "if every block happened to lose the same channels); otherwise save the whole module "
            "with torch.save(model, path)",
            UserWarning, stacklevel=2)
    return PruneReport(params_before, count_params(model), macs_before,
                       count_macs(model, example_inputs), layers, dg.build_time, plan, changes)


def remove_masked_channels(model: nn.Module, example_inputs) -> PruneReport:
    """Physically remove channels that structured masks already zeroed.

    A coupled channel (or head) goes when every layer producing it has that
    output channel masked to zero (``ln_structured`` / ``random_structured``
    with ``dim=0`` on convs and linears), or when every layer reading it has
    that input masked (``dim=1``). Biases of removed output channels are
    dropped with them. The masks shrink with their weights, so the module stays
    pruned (call ``fastprune.remove`` afterwards to make it permanent).

    Args:
        model: a model pruned with structured masks (torch's or fastprune's).
        example_inputs: as for :func:`prune_channels`.

    Returns:
        PruneReport.

    Raises:
        TypeError: when ``model`` is not a module or the inputs are of an unsupported type.
        TraceError: when ``torch.export`` cannot trace the model.
        RuntimeError: when the pruned model fails to run (rolled back).

    Example::

        >>> fastprune.ln_structured(model.conv1, "weight", amount=0.5, n=2, dim=0)
        >>> fastprune.remove_masked_channels(model, x).params_after
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dg = DependencyGraph(model, example_inputs)
    params_before = count_params(model)
    macs_before = count_macs(model, example_inputs)
    roles: Dict[int, List[tuple]] = {}
    for r in dg.roles:
        roles.setdefault(r.cls, []).append((r.kind, r.fqn, r.dim))

    def slice_dead(fqn, d, idx) -> Optional[bool]:
        mod, name = fqn.rsplit(".", 1) if "." in fqn else ("", fqn)
        mask = existing_mask(model.get_submodule(mod), name)
        if mask is None or mask.dim() <= d:
            return None
        sl = mask.index_select(d, torch.tensor(list(idx), device=mask.device))
        return bool((sl == 0).all())

    sel = _Selector(dg)
    dels: Dict[int, Set[int]] = {}
    layers = []
    for g in dg.groups():
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
                for c, idx in atom.items():
                    dels.setdefault(c, set()).update(idx)
        layers.append((g.name, dg.class_size[g.root], sel.left[g.root]))
    plan = Plan(dg, dels)
    if dels:
        plan.exec()
    return PruneReport(params_before, count_params(model), macs_before,
                       count_macs(model, example_inputs), layers, dg.build_time, plan)
