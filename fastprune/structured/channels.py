"""One-call structured pruning: rank coupled channel groups, remove the weakest.

Also turns structured masks into real removal (:func:`remove_masked_channels`).
"""
from __future__ import annotations

import math
import numbers
import re
import warnings
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

import torch
from torch import nn

from ..core.targets import existing_mask
from . import hf_config
from .graph import ChannelGroup, DependencyGraph
from .importance import IMPORTANCES
from .plan import Plan
from .report import PruneReport, count_macs, count_params
from .statistics import CalibrationStats, collect_statistics
from .trace import split_example_inputs

__all__ = ["prune_channels", "remove_masked_channels", "group_kind", "KINDS"]

#: The kinds of channel groups an ``amount`` dict may name (see :func:`group_kind`).
KINDS = ("mlp", "heads")


def _check_amount(amount):
    if isinstance(amount, Mapping):
        if not amount:
            raise ValueError(f"amount: an empty dict removes nothing; name {' and/or '.join(KINDS)}")
        for k, v in amount.items():
            if k not in KINDS:
                raise ValueError(f"amount: unknown kind {k!r}; the kinds are {', '.join(KINDS)}")
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"amount[{k!r}] must be a float in [0, 1), got {type(v).__name__}")
            if not 0.0 <= float(v) < 1.0 or math.isnan(v):
                raise ValueError(f"amount[{k!r}]={v} must be a fraction in [0, 1)")
        return
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


_BLOCK_PREFIX = re.compile(r"^(.*?\.\d+)\.")


def group_kind(dg: DependencyGraph, g: ChannelGroup) -> str:
    """What a channel group is: ``"heads"``, ``"mlp"`` or ``"other"``.

    ``"heads"``: the group holds attention heads (its atoms are key-value
    groups with their query heads, or heads). ``"mlp"``: any other group whose
    parameters all sit in one numbered block (``layers.3.``), or, when the
    traced model has no numbered blocks (a single block traced on its own),
    any other group: the feed-forward width. ``"other"``: the rest (the
    residual stream, embeddings, convolution trunks).

    Args:
        dg: the graph.
        g: one of its groups.

    Returns:
        str.
    """
    heads = {c for n in dg.head_notes for c in (n.q, n.kv)}
    if heads & set(g.classes):
        return "heads"
    prefixes = set()
    for c in g.classes:
        for fqn, _, is_param in dg.class_members[c]:
            if is_param:
                m = _BLOCK_PREFIX.match(fqn)
                prefixes.add(m.group(1) if m else None)
    if len(prefixes) == 1:
        return "mlp"
    numbered = any(_BLOCK_PREFIX.match(f) for f, _ in dg.member_class)
    return "other" if numbered else "mlp"


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


def _budget(amount, n: int) -> int:
    if isinstance(amount, numbers.Integral):
        return min(int(amount), n)
    return int(round(float(amount) * n))


def _select(dg, groups, fams, amount_of, global_pruning, round_to):
    """Chosen ``(score, unit)`` per family, and the selector holding the sizes left.

    ``amount_of(fid)`` is the amount of family ``fid`` (one amount for all
    families with ``global_pruning``).
    """
    sel = _Selector(dg)
    chosen: Dict[int, List[Tuple[float, _Unit]]] = {fid: [] for fid in fams}

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
        take_in_order([(fid, fams[fid][j]) for _, fid, j in pool],
                      _budget(amount_of(None), total))
    else:
        for fid, units in fams.items():
            take_in_order([(fid, u) for u in units],
                          len(units[0][1]) * _budget(amount_of(fid), len(units)))
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


def _shapes_with_biases(dg: DependencyGraph, plan: Plan) -> Dict[str, Tuple[int, ...]]:
    """Planned shapes, with the biases bias compensation creates."""
    shapes = _planned_shapes(dg, plan)
    for path in plan.compensated:
        if path + ".bias" not in shapes:
            w = shapes[path + ".weight"]
            shapes[path + ".bias"] = (w[1] if type(dg.model.get_submodule(path)).__name__ == "Conv1D"
                                      else w[0],)
    return shapes


def _config_blocks(dg, groups, fams, means) -> Dict[int, str]:
    """Families whose removal a transformers config cannot state (tried one unit each), and why."""
    bad = {}
    for fid, units in fams.items():
        if not units:
            continue
        dels: Dict[int, Set[int]] = {}
        for g, i in units[0][1]:
            for c, idx in groups[g].atoms[i].items():
                dels.setdefault(c, set()).update(idx)
        try:
            hf_config.plan_config_update(
                dg.model, _shapes_with_biases(dg, Plan(dg, dels, input_means=means)))
        except hf_config.ConfigError as exc:
            bad[fid] = str(exc)
    return bad


def _family_name(groups, units) -> str:
    names = [groups[g].name for g, _ in units[0][1]]
    return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} like it"


def prune_channels(model: nn.Module, example_inputs, amount, *, importance: str = "l2",
                   global_pruning: bool = False, ignored_layers=None,
                   round_to: Optional[int] = None, uniform: bool = False,
                   generator=None, statistics: Optional[CalibrationStats] = None,
                   loss_fn: Optional[Callable] = None,
                   bias_compensation: bool = False, undo: Optional[list] = None) -> PruneReport:
    """Remove the weakest ``amount`` of channel groups from ``model`` in place.

    Units are single channels, or whole attention heads / key-value groups /
    conv groups where the graph requires it. A dimension is never emptied.
    Parameters are replaced by new ``nn.Parameter`` objects (rebuild
    optimizers); if anything fails the model is left exactly as it was.

    Args:
        model: the model to shrink.
        example_inputs: a Tensor, a tuple of positional inputs, a dict of
            keyword inputs or an ``(args, kwargs)`` pair; the model is traced
            and checked on them, and they are the calibration data of the
            ``"activation"`` and ``"taylor"`` importances and of bias
            compensation (an ``attention_mask`` keyword leaves padding out).
        amount: a fraction of the prunable units (float in [0, 1]) or a count
            (int): per coupled group, or over the whole model when
            ``global_pruning``. Or a dict ``{"mlp": f, "heads": f}`` of
            fractions in [0, 1) per kind of group (see :func:`group_kind`):
            groups of other kinds keep their channels, and a fraction that
            would remove every unit of a group raises.
        importance: ``"l1"``, ``"l2"`` (= ``"magnitude"``), ``"linf"``,
            ``"random"``, ``"activation"`` (Wanda-sp / FLAP: each reading
            layer's calibration input norm ``||X_j||`` times the norm of its
            weights ``||W[:, j]||``, summed over the group's readers) or
            ``"taylor"`` (LLM-Pruner: ``|w * dL/dw|`` summed over every coupled
            weight; the loss is the language-model loss on the example input
            ids for causal LMs, else ``loss_fn``); see
            :mod:`fastprune.structured.importance`.
        global_pruning: rank all groups together instead of each on its own.
        ignored_layers: modules or module names that keep their output channels.
        round_to: keep each group's remaining channel count a multiple of it
            (pruning less if needed).
        uniform: remove the same number of channels (or heads) from every
            repeated block (``layers.0.mlp``, ``layers.1.mlp``, ...): the k-th
            weakest unit of every block goes together, ranked by their mean
            score. For a transformers model the config is then rewritten
            (see :func:`~fastprune.structured.hf_config.rewrite_config`) so
            ``save_pretrained`` / ``from_pretrained`` reload it; with a float
            or int ``amount``, sizes its config cannot state (e.g. heads of
            GPT-2, OPT, BERT and ViT, whose head width is derived from
            ``hidden_size``) are left whole and listed in
            ``report.left_unpruned``; when nothing at all can be stated, or
            a kind named in an ``amount`` dict cannot, ``ConfigError`` is raised.
        generator: ``torch.Generator`` for ``importance="random"``.
        statistics: precomputed :class:`~fastprune.structured.statistics.CalibrationStats`
            (keyed by names relative to ``model``) instead of statistics
            gathered from ``example_inputs``.
        loss_fn: ``loss_fn(model, args, kwargs) -> scalar`` for ``"taylor"``
            on models that are not causal LMs.
        bias_compensation: FLAP's bias compensation: every linear layer that
            loses input channels gets their mean contribution on the
            calibration data added to its bias (created if missing; a
            transformers config gets its bias flag, e.g. Llama's ``mlp_bias``,
            and where no flag can state the bias ``ConfigError`` is raised).
        undo: a list; on success the callables that undo this call are
            appended to it (call them in reverse order), so a caller that
            prunes several models or blocks can roll all of them back.

    Returns:
        PruneReport: parameter and MAC counts before and after, channels per
        group, the executed plan, config changes, the groups left whole.

    Raises:
        TypeError: for arguments of the wrong type (naming the argument).
        ValueError: for an amount out of range, an unknown importance, bad
            ``ignored_layers``, a fraction that would empty a group, or
            weight- or data-based importance on a meta-device model.
        ConfigError: with ``uniform=True`` on a transformers model whose
            config cannot state the cut (see above); nothing is changed.
        TraceError: when ``torch.export`` cannot trace the model.
        RuntimeError: when the pruned model fails to run (rolled back).

    Example::

        >>> report = fastprune.prune_channels(model, torch.randn(1, 3, 224, 224), 0.3)
        >>> print(report)
        >>> fastprune.prune_channels(llama, input_ids, 0.25, uniform=True)
        >>> llama.save_pretrained("pruned")   # reloads with from_pretrained
        >>> fastprune.prune_channels(llama, input_ids, {"mlp": 0.5}, uniform=True,
        ...                          importance="activation", bias_compensation=True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_amount(amount)
    per_kind = dict(amount) if isinstance(amount, Mapping) else None
    if not isinstance(importance, str):
        raise TypeError(f"importance must be a string, got {type(importance).__name__}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {sorted(IMPORTANCES)}, got {importance!r}")
    scorer = IMPORTANCES[importance]
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)):
        raise TypeError(f"round_to must be None or a positive int, got {type(round_to).__name__}")
    if round_to is not None and round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    for flag, what in ((uniform, "uniform"), (global_pruning, "global_pruning"),
                       (bias_compensation, "bias_compensation")):
        if not isinstance(flag, bool):
            raise TypeError(f"{what} must be a bool, got {type(flag).__name__}")
    if per_kind is not None and global_pruning:
        raise ValueError("amount: a dict of fractions per kind cannot be combined with "
                         "global_pruning=True (one ranking over everything)")
    if statistics is not None and not isinstance(statistics, CalibrationStats):
        raise TypeError("statistics must be a fastprune.structured.statistics.CalibrationStats, "
                        f"got {type(statistics).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    split_example_inputs(example_inputs)

    dg = DependencyGraph(model, example_inputs)
    frozen = _frozen_classes(dg, ignored_layers)
    groups = dg.groups()
    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta and scorer.needs_weights:
        raise ValueError(f"importance={importance!r} needs real weights; the model is on "
                         "the meta device (use importance='random' to exercise the graph)")
    if on_meta and bias_compensation:
        raise ValueError("bias_compensation needs real weights and data; the model is on the "
                         "meta device")
    rewrite = uniform and hf_config.has_transformers_config(model)
    if rewrite:
        hf_config.family_of(model)  # an unsupported model type: say so before anything else
    kinds = {g.id: group_kind(dg, g) for g in groups}
    stats = statistics
    wants_inputs = scorer.needs_inputs or bias_compensation
    if stats is None and (wants_inputs or scorer.needs_saliency):
        stats = collect_statistics(model, example_inputs, inputs=wants_inputs,
                                   saliency=scorer.needs_saliency, loss_fn=loss_fn)
    params_before = count_params(model)
    macs_before = count_macs(model, example_inputs)

    cand: Dict[int, List[int]] = {}
    scores: Dict[int, torch.Tensor] = {}
    for g in groups:
        if per_kind is not None and per_kind.get(kinds[g.id], 0.0) == 0.0:
            continue
        ok = [i for i, a in enumerate(g.atoms)
              if g.valid[i] and not any(c in frozen for c in a)]
        if ok:
            cand[g.id] = ok
            scores[g.id] = scorer.scores(dg, g, stats, generator)
    fams = _families(dg, groups, cand, scores, uniform)
    kind_of = {fid: kinds[units[0][1][0][0]] for fid, units in fams.items() if units}
    means = None
    if bias_compensation:
        means = {k: v.mean() for k, v in stats.inputs.items()}
    left: Dict[str, str] = {}
    if rewrite:
        blocked = _config_blocks(dg, groups, fams, means)
        for fid, why in blocked.items():
            if per_kind is not None:
                raise hf_config.ConfigError(
                    f"amount[{kind_of[fid]!r}]: removing {kind_of[fid]} units of "
                    f"{_family_name(groups, fams[fid])} cannot be stated in the config: {why}")
            left[_family_name(groups, fams[fid])] = why
        if blocked and len(blocked) == len([f for f, u in fams.items() if u]) and \
                any(_budget(amount, len(fams[f])) > 0 for f in blocked):
            listing = "; ".join(f"{n}: {w}" for n, w in left.items())
            raise hf_config.ConfigError(
                f"uniform=True: nothing can be removed from this {model.config.model_type} model "
                f"in a way its config can state ({listing})")
        for fid in blocked:
            fams[fid] = []
    fams = {fid: units for fid, units in fams.items() if units}

    def amount_of(fid):
        return amount if per_kind is None else per_kind[kind_of[fid]]

    if per_kind is not None:
        for fid, units in fams.items():
            k = _budget(amount_of(fid), len(units))
            total = min(len(groups[g].atoms) for g, _ in units[0][1])
            if k >= total:
                kind = kind_of[fid]
                raise ValueError(
                    f"amount[{kind!r}]={amount_of(fid)} would remove all {total} "
                    f"{'key-value groups (or heads)' if kind == 'heads' else 'channels'} of "
                    f"{_family_name(groups, units)}")
    chosen, sel = _select(dg, groups, fams, amount_of, global_pruning, round_to)

    dels: Dict[int, Set[int]] = {}
    removed_units: Dict[int, int] = {}
    for taken in chosen.values():
        for _, unit in taken:
            for g, i in unit:
                removed_units[g] = removed_units.get(g, 0) + 1
                for c, idx in groups[g].atoms[i].items():
                    dels.setdefault(c, set()).update(idx)
    layers = [(g.name, dg.class_size[g.root], sel.left[g.root]) for g in groups if g.id in cand]
    units = [(g.name, kinds[g.id], len(g.atoms), removed_units.get(g.id, 0))
             for g in groups if g.id in cand]
    plan = Plan(dg, dels, input_means=means)
    if bias_compensation:
        for r in dg.roles:
            if r.kind == "in" and r.cls in dels and r.module not in means:
                raise ValueError(f"bias_compensation: no calibration statistics for "
                                 f"{r.module or '<root>'}, which reads removed channels")
    update = hf_config.ConfigUpdate({})
    if rewrite and dels:  # before any cut
        update = hf_config.plan_config_update(model, _shapes_with_biases(dg, plan))
    if undo is not None and not isinstance(undo, list):
        raise TypeError(f"undo must be None or a list, got {type(undo).__name__}")
    if dels:
        steps: list = []
        plan.exec(undo=steps)
        try:
            if update.changes or update.zero_biases:
                hf_config.apply_config_update(model, update, undo=steps)
        except BaseException:
            for fn in reversed(steps):
                fn()
            raise
        if undo is not None:
            undo.extend(steps)
    if dels and not uniform and hf_config.has_transformers_config(model):
        warnings.warn(
            "prune_channels(uniform=False) left model.config unchanged: save_pretrained / "
            "from_pretrained need a config that states the new sizes, which only uniform pruning "
            "gives (prune with uniform=True, or call fastprune.structured.rewrite_config(model) "
            "if every block happened to lose the same channels); otherwise save the whole module "
            "with torch.save(model, path)",
            UserWarning, stacklevel=2)
    return PruneReport(params_before, count_params(model), macs_before,
                       count_macs(model, example_inputs), layers, dg.build_time, plan,
                       update.changes, units, left, sorted(plan.compensated))


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
