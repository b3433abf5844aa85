"""Pruning at initialisation: SNIP, iterative SNIP, FORCE and SynFlow.

Each function scores the chosen tensors (default: the weight of every Linear
and Conv layer), prunes exactly ``amount`` of the still-unpruned units globally
through ``fastprune.global_unstructured`` with ``importance_scores``, installs
the torch-style reparametrisation (``name_orig`` parameter, ``name_mask``
buffer, forward pre-hook, so ordinary training keeps pruned weights at 0) and
returns ``{(module, name): mask}`` (the installed mask buffers).

``amount`` follows ``torch.nn.utils.prune``: a float in [0, 1] is a fraction, an
int a number of units, both counted among the units not pruned yet. Everything
is validated and all scores computed before the first module is modified, and
the model's mode, weights, gradients and buffers are left as they were.

The iterative methods reach the target in ``steps`` rounds; ``schedule="exp"``
keeps ``(1 - amount) ** (t / steps)`` of the units after round ``t``
(de Jorge et al. 2021, Tanaka et al. 2020), ``"linear"`` prunes an equal number
per round. Intermediate masks never touch the model: the k-selection of every
round runs on ``fastprune.ops.kselect`` over the whole parameter list.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops as _ops
from . import scores as _scores
from ..core.functional import global_unstructured
from ..core.methods import L1Unstructured
from ..core.targets import resolve_masks, resolve_targets, unpruned_count
from ..core.validation import _compute_nparams_toprune, _validate_pruning_amount, _validate_pruning_amount_init
from ..progress import progress_bar, show_progress
from ..schedule import pruning_schedule

__all__ = ["snip", "iterative_snip", "force", "synflow"]

Param = Tuple[nn.Module, str]


def _show_progress(progress: Optional[bool]) -> bool:
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool or None, got {type(progress).__name__}")
    return show_progress(progress)


def _prepare(model, parameters, amount):
    """Validate model/parameters/amount; return targets, keep-masks, unpruned count and k."""
    targets = resolve_targets(parameters, fn="at_init", model=model, nonempty=True)
    _validate_pruning_amount_init(amount)
    masks = resolve_masks(targets, None)
    n_unpruned = unpruned_count(targets, masks)
    _validate_pruning_amount(amount, n_unpruned)
    k = _compute_nparams_toprune(amount, n_unpruned)
    return targets, masks, n_unpruned, k


def _check_iterative(steps, schedule) -> str:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be 'exp' or 'linear', got {type(schedule).__name__}")
    kind = {"exp": "exponential", "exponential": "exponential", "linear": "linear"}.get(schedule.lower())
    if kind is None:
        raise ValueError(f"schedule must be 'exp' or 'linear', got {schedule!r}")
    return kind


def _install(targets, importance: List[Tensor], amount) -> Dict[Param, Tensor]:
    pairs = [t.pair for t in targets]
    global_unstructured(
        pairs,
        pruning_method=L1Unstructured,
        importance_scores={p: s for p, s in zip(pairs, importance)},
        amount=amount,
    )
    return {(m, n): getattr(m, n + "_mask") for m, n in pairs}


def _kselect(scores: List[Tensor], eligible: List[Optional[Tensor]], k: int) -> List[Tensor]:
    """Bool keep-masks: the eligible units minus the k lowest-scoring eligible ones."""
    ones = [torch.ones_like(s, dtype=torch.bool) if m is None else m for s, m in zip(scores, eligible)]
    keep = _ops.kselect(scores, ones, k, largest=False, exclude_masked=True)
    return [kk != 0 for kk in keep]


def _iterate(name: str, score_fn: Callable, targets, masks0, n_unpruned: int, k: int,
             steps: int, schedule: str, revive: bool, progress: Optional[bool]) -> List[Tensor]:
    """Run the rounds and return final bool keep-masks (the model is not modified).

    ``revive=False`` (iterative SNIP, SynFlow): each round prunes among the units
    kept so far. ``revive=True`` (FORCE): each round re-selects among every unit
    that was unpruned when the call started, so earlier rounds can be undone.
    """
    counts = pruning_schedule(n_unpruned, k, steps, schedule)
    keep = [m.clone() if m is not None else torch.ones_like(t.dense, dtype=torch.bool)
            for t, m in zip(targets, masks0)]
    pruned = 0
    bar = progress_bar(counts, enabled=_show_progress(progress), desc=name, unit="round", leave=False)
    try:
        for t, target in enumerate(bar):
            if target == pruned and not revive:
                continue
            sc = score_fn(keep, t == 0)
            if revive:
                keep = _kselect(sc, masks0, target)
            else:
                keep = _kselect(sc, keep, target - pruned)
            pruned = target
            bar.set_postfix(sparsity=f"{target / max(n_unpruned, 1):.4f}")
    finally:
        bar.close()
    return keep


def _keep_as_scores(keep: List[Tensor]) -> List[Tensor]:
    # 1 for kept, 0 for pruned: global_unstructured then prunes exactly the zeros.
    return [kk.to(torch.float32) for kk in keep]


def snip(model: nn.Module, loss_fn: Callable, data: Any, amount, parameters: Optional[Iterable[Param]] = None
         ) -> Dict[Param, Tensor]:
    """Single-shot pruning by connection sensitivity ``|dL/dw * w|`` (Lee et al. 2019).

    ``data`` is an iterable of ``(inputs, targets)`` batches (read once);
    ``loss_fn(model(inputs), targets)`` must return a scalar. The sensitivity is
    accumulated over all batches. See :func:`fastprune.scores.snip_scores`.

    The units with the smallest scores are pruned globally through
    :func:`fastprune.global_unstructured` (one k-selection over all tensors;
    ties: lower global flat index first) and the torch-style reparametrisation
    is installed. All scores are computed and every argument checked before
    the first module changes; the model's mode, weights, gradients and
    buffers are left as they were.

    Args:
        model (nn.Module): the network to prune.
        loss_fn (Callable): ``loss_fn(model(inputs), targets)`` returning a
            scalar loss.
        data (Iterable): ``(inputs, targets)`` batches, read once, or one such
            pair of tensors.
        amount (int or float): units to prune, among the still-unpruned units
            of all ``parameters`` together: a fraction in [0, 1] or a count.
        parameters (Iterable of (module, name), optional): the tensors to
            prune, all inside ``model``. Default: the weight of every
            ``nn.Linear`` and ``nn.Conv*`` of ``model``.

    Returns:
        dict: ``{(module, name): mask}``, the installed ``name_mask`` buffers.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``parameters`` is not an
            iterable of ``(module, name)`` pairs or names a non-parameter;
            ``amount`` is not an int or float; ``loss_fn`` is not callable;
            ``data`` is not an iterable of ``(inputs, targets)`` pairs.
        PruningNameError: a module has no attribute ``name``.
        ValueError: nothing to prune, a module outside ``model``, a tensor
            listed twice, ``amount`` out of range or more than the units left;
            ``data`` is empty; the loss is not a finite scalar, does not depend
            on every scored tensor, or has zero gradient everywhere.

    Example::

        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
        masks = prune.snip(model, F.cross_entropy, [(x, y)], amount=0.9)
        assert sum(int((m == 0).sum()) for m in masks.values()) == 144
    """
    targets, masks, _, _ = _prepare(model, parameters, amount)
    batches = _scores._batches(data)
    sc = _scores._snip_scores(model, loss_fn, batches, targets, masks)
    return _install(targets, sc, amount)


def _iterative_sensitivity(name, score_impl, revive, model, loss_fn, data, amount, parameters, steps,
                           schedule, progress):
    targets, masks, n_unpruned, k = _prepare(model, parameters, amount)
    kind = _check_iterative(steps, schedule)
    batches = _scores._batches(data)
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(model(inputs), targets)")

    def score_fn(keep, first):
        return score_impl(model, loss_fn, batches, targets, keep, require_signal=first)

    keep = _iterate(name, score_fn, targets, masks, n_unpruned, k, steps, kind, revive, progress)
    return _install(targets, _keep_as_scores(keep), k)


def iterative_snip(model: nn.Module, loss_fn: Callable, data: Any, amount,
                   parameters: Optional[Iterable[Param]] = None, steps: int = 10, schedule: str = "exp",
                   progress: Optional[bool] = None) -> Dict[Param, Tensor]:
    """Iterative SNIP (de Jorge et al. 2021): ``steps`` rounds of SNIP on the pruned network.

    Each round recomputes ``|dL/dc|`` with the current mask ``c``; pruned
    connections score 0 and stay pruned. Intermediate masks never touch the
    model; only the final one is installed, as by :func:`snip`.

    Args:
        model (nn.Module): the network to prune.
        loss_fn (Callable): ``loss_fn(model(inputs), targets)`` returning a
            scalar loss.
        data (Iterable): ``(inputs, targets)`` batches, read once, or one such
            pair of tensors.
        amount (int or float): units to prune, among the still-unpruned units
            of all ``parameters`` together: a fraction in [0, 1] or a count.
        parameters (Iterable of (module, name), optional): the tensors to
            prune, all inside ``model``. Default: the weight of every
            ``nn.Linear`` and ``nn.Conv*`` of ``model``.
        steps (int, optional): number of rounds. Default: 10.
        schedule (str, optional): ``"exp"`` (keep ``(1 - amount) ** (t / steps)``
            after round ``t``) or ``"linear"`` (the same number each round).
            Default: ``"exp"``.
        progress (bool, optional): show a progress bar (tqdm, if installed).
            Default: only when stderr is a terminal.

    Returns:
        dict: ``{(module, name): mask}``, the installed ``name_mask`` buffers.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``parameters`` is not an
            iterable of ``(module, name)`` pairs or names a non-parameter;
            ``amount`` is not an int or float; ``loss_fn`` is not callable;
            ``data`` is not an iterable of ``(inputs, targets)`` pairs;
            ``steps`` is not an int, ``schedule`` not a str, ``progress`` not a
            bool or ``None``.
        PruningNameError: a module has no attribute ``name``.
        ValueError: nothing to prune, a module outside ``model``, a tensor
            listed twice, ``amount`` out of range or more than the units left;
            ``data`` is empty; the loss is not a finite scalar, does not depend
            on every scored tensor, or has zero gradient everywhere;
            ``steps < 1``, an unknown ``schedule``.

    Example::

        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        batches = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
        masks = prune.iterative_snip(model, F.cross_entropy, batches, amount=0.9, steps=5)
    """
    return _iterative_sensitivity("iterative SNIP", _scores._snip_scores, False, model, loss_fn, data,
                                  amount, parameters, steps, schedule, progress)


def force(model: nn.Module, loss_fn: Callable, data: Any, amount,
          parameters: Optional[Iterable[Param]] = None, steps: int = 10, schedule: str = "exp",
          progress: Optional[bool] = None) -> Dict[Param, Tensor]:
    """FORCE, foresight connection sensitivity (de Jorge et al. 2021).

    Each round takes the gradient at the pruned network but multiplies it by the
    dense weights, and selects the units to keep among all units that were
    unpruned when the call started, so connections pruned in an earlier round
    can come back. Intermediate masks never touch the model; only the final one
    is installed, as by :func:`snip`.

    Args:
        model (nn.Module): the network to prune.
        loss_fn (Callable): ``loss_fn(model(inputs), targets)`` returning a
            scalar loss.
        data (Iterable): ``(inputs, targets)`` batches, read once, or one such
            pair of tensors.
        amount (int or float): units to prune, among the still-unpruned units
            of all ``parameters`` together: a fraction in [0, 1] or a count.
        parameters (Iterable of (module, name), optional): the tensors to
            prune, all inside ``model``. Default: the weight of every
            ``nn.Linear`` and ``nn.Conv*`` of ``model``.
        steps (int, optional): number of rounds. Default: 10.
        schedule (str, optional): ``"exp"`` (keep ``(1 - amount) ** (t / steps)``
            after round ``t``) or ``"linear"`` (the same number each round).
            Default: ``"exp"``.
        progress (bool, optional): show a progress bar (tqdm, if installed).
            Default: only when stderr is a terminal.

    Returns:
        dict: ``{(module, name): mask}``, the installed ``name_mask`` buffers.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``parameters`` is not an
            iterable of ``(module, name)`` pairs or names a non-parameter;
            ``amount`` is not an int or float; ``loss_fn`` is not callable;
            ``data`` is not an iterable of ``(inputs, targets)`` pairs;
            ``steps`` is not an int, ``schedule`` not a str, ``progress`` not a
            bool or ``None``.
        PruningNameError: a module has no attribute ``name``.
        ValueError: nothing to prune, a module outside ``model``, a tensor
            listed twice, ``amount`` out of range or more than the units left;
            ``data`` is empty; the loss is not a finite scalar, does not depend
            on every scored tensor, or has zero gradient everywhere;
            ``steps < 1``, an unknown ``schedule``.

    Example::

        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        batches = [(torch.randn(32, 8), torch.randint(0, 2, (32,)))]
        masks = prune.force(model, F.cross_entropy, batches, amount=0.95, steps=5)
    """
    return _iterative_sensitivity("FORCE", _scores._force_scores, True, model, loss_fn, data,
                                  amount, parameters, steps, schedule, progress)


def synflow(model: nn.Module, example_input: Tensor, amount, parameters: Optional[Iterable[Param]] = None,
            steps: int = 100, schedule: str = "exp", progress: Optional[bool] = None) -> Dict[Param, Tensor]:
    """Iterative synaptic flow pruning (Tanaka et al. 2020), data-free.

    ``example_input`` only gives the input shape; the scores come from an
    all-ones input through the network with absolute-valued weights (see
    :func:`fastprune.scores.synflow_scores`). The model's weights and their signs are
    never modified; only the masks are installed. Each round prunes among the
    units kept so far; only the final mask is installed, as by :func:`snip`.

    Args:
        model (nn.Module): the network to prune. Its forward must return one tensor.
        example_input (torch.Tensor): a floating-point tensor shaped like one
            input batch (its values are not used).
        amount (int or float): units to prune, among the still-unpruned units
            of all ``parameters`` together: a fraction in [0, 1] or a count.
        parameters (Iterable of (module, name), optional): the tensors to
            prune, all inside ``model``. Default: the weight of every
            ``nn.Linear`` and ``nn.Conv*`` of ``model``.
        steps (int, optional): number of rounds. Default: 100.
        schedule (str, optional): ``"exp"`` (keep ``(1 - amount) ** (t / steps)``
            after round ``t``) or ``"linear"`` (the same number each round).
            Default: ``"exp"``.
        progress (bool, optional): show a progress bar (tqdm, if installed).
            Default: only when stderr is a terminal.

    Returns:
        dict: ``{(module, name): mask}``, the installed ``name_mask`` buffers.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``parameters`` is not an
            iterable of ``(module, name)`` pairs or names a non-parameter;
            ``amount`` is not an int or float; ``example_input`` is not a
            floating-point tensor; the forward does not return a single tensor;
            ``steps`` is not an int, ``schedule`` not a str, ``progress`` not a
            bool or ``None``.
        PruningNameError: a module has no attribute ``name``.
        ValueError: nothing to prune, a module outside ``model``, a tensor
            listed twice, ``amount`` out of range or more than the units left;
            ``example_input`` is empty; ``steps < 1``, an unknown ``schedule``.

    Example::

        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
        masks = prune.synflow(model, torch.randn(1, 3, 8, 8), amount=0.9, steps=10)
    """
    _scores._check_example_input(example_input)
    targets, masks, n_unpruned, k = _prepare(model, parameters, amount)
    kind = _check_iterative(steps, schedule)

    def score_fn(keep, first):
        return _scores._synflow_scores(model, example_input, targets, keep)

    keep = _iterate("SynFlow", score_fn, targets, masks, n_unpruned, k, steps, kind, False, progress)
    return _install(targets, _keep_as_scores(keep), k)
