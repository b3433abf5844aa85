"""Gradual magnitude pruning inside ``transformers.Trainer``: a ``TrainerCallback``.

The counterpart of :mod:`fastprune.lightning`'s ``ModelPruning`` for Hugging
Face training loops. The weights are pruned in place by
:func:`fastprune.sparsify_` (1-bit masks, no ``_orig`` copy, no forward hook),
so the model stays an ordinary transformers model: ``save_pretrained`` writes
plain weights with their zeros, and ``from_pretrained`` reads them back.

Install with ``pip install 'fastprune[transformers]'`` (transformers'
``Trainer`` needs ``accelerate``). ``import fastprune`` never imports this
module.
"""
from __future__ import annotations

import numbers
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

from torch import nn
from torch.nn.modules.conv import _ConvNd

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "fastprune.transformers_callback needs transformers: pip install 'fastprune[transformers]'"
    ) from exc

from .core.validation import _validate_pruning_amount_init
from .maskset import MaskSet, sparsify_
from .schedule import pruning_schedule

__all__ = ["GradualPruningCallback", "default_parameters"]

Pairs = List[Tuple[nn.Module, str]]


def default_parameters(model: nn.Module) -> Pairs:
    """The ``weight`` of every ``nn.Linear`` / ``nn.Conv*`` of ``model``, except the output embeddings.

    The LM head (``model.get_output_embeddings()``, often tied to the input
    embeddings) is left dense, as gradual-pruning recipes do. Tied weights are
    listed once.

    Args:
        model: the model (a transformers ``PreTrainedModel`` or any ``nn.Module``).

    Returns:
        a list of ``(module, "weight")`` pairs, in module order.

    Example::

        >>> pairs = default_parameters(model)       # every projection of every block, no lm_head
        >>> cb = GradualPruningCallback(0.5, parameters=lambda m: default_parameters(m)[:-1])
    """
    skip = set()
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        head = get_out()
        if isinstance(head, nn.Module):
            skip.add(id(head))
    pairs, seen = [], set()
    for module in model.modules():
        if id(module) in skip or not isinstance(module, (nn.Linear, _ConvNd)):
            continue
        w = module._parameters.get("weight")
        if w is None or id(w) in seen:
            continue
        seen.add(id(w))
        pairs.append((module, "weight"))
    return pairs


class GradualPruningCallback(TrainerCallback):
    """Prune a model gradually during ``Trainer.train()``, following a schedule.

    Pruning rounds run at optimizer steps ``start_step``, ``start_step +
    frequency``, ... up to ``end_step``; after round ``i`` exactly
    ``pruning_schedule(total, amount, rounds, schedule)[i]`` units are pruned
    (``total``: all prunable units with ``scope="global"``, each tensor's with
    ``"local"``), so the final sparsity is ``amount`` exactly. Each round
    prunes the units of smallest magnitude (``method="l1"``) or random units
    (``"random"``) among those still kept. After every optimizer step the
    masks are applied again, so pruned weights stay exactly zero through
    momentum, weight decay and Adam's moments.

    Args:
        amount: final sparsity, a float in [0, 1] or a number of units
            (``schedule="constant"``: what each round prunes of what remains).
        start_step: global step of the first round (0: before the first step).
        end_step: global step of the last round; default: the run's
            ``max_steps``. Must not exceed it.
        frequency: optimizer steps between rounds.
        schedule: ``"exponential"``, ``"linear"`` or ``"constant"`` (see
            :func:`fastprune.pruning_schedule`).
        scope: ``"global"`` ranks all tensors together, ``"local"`` prunes
            each tensor to the same sparsity.
        method: ``"l1"`` (magnitude) or ``"random"``.
        parameters: the ``(module, name)`` pairs to prune, or a callable
            ``model -> pairs`` evaluated when training begins; default
            :func:`default_parameters`.

    Attributes:
        masks: the :class:`fastprune.MaskSet` of the pruned tensors (``None``
            before the first round).
        round_steps: the global steps at which rounds run (set at train begin).

    Raises:
        TypeError / ValueError: bad arguments (at construction), or, when
            training begins, an ``end_step`` beyond ``max_steps`` or no
            parameter to prune.

    Resuming from a checkpoint re-creates the masks from the zeros of the
    loaded weights (the rounds already done are pruned again by magnitude,
    which selects exactly the zeros).

    Example::

        >>> cb = GradualPruningCallback(amount=0.8, start_step=0, frequency=100)
        >>> trainer = Trainer(model, args, train_dataset=ds, callbacks=[cb])
        >>> trainer.train()
        >>> cb.masks.sparsity()
        0.8
        >>> model.save_pretrained("pruned")
    """

    def __init__(
        self,
        amount: Union[int, float],
        *,
        start_step: int = 0,
        end_step: Optional[int] = None,
        frequency: int = 1,
        schedule: str = "exponential",
        scope: str = "global",
        method: str = "l1",
        parameters: Union[None, Sequence[Tuple[nn.Module, str]], Callable[[nn.Module], Iterable]] = None,
    ) -> None:
        _validate_pruning_amount_init(amount)
        for arg, value, low in (("start_step", start_step, 0), ("frequency", frequency, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{arg} must be at least {low}, got {value}")
        if end_step is not None:
            if isinstance(end_step, bool) or not isinstance(end_step, numbers.Integral):
                raise TypeError(f"end_step must be an int or None, got {type(end_step).__name__}")
            if end_step < start_step:
                raise ValueError(f"end_step={end_step} must not be before start_step={start_step}")
        for arg, value, allowed in (("scope", scope, ("global", "local")), ("method", method, ("l1", "random"))):
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")
        pruning_schedule(0, 0, 1, schedule)  # checks the schedule's name
        if parameters is not None and not callable(parameters):
            parameters = list(parameters)
        self.amount = amount
        self.start_step = int(start_step)
        self.end_step = None if end_step is None else int(end_step)
        self.frequency = int(frequency)
        self.schedule = schedule
        self.scope = scope
        self.method = method
        self.parameters = parameters
        self.masks: Optional[MaskSet] = None
        self.round_steps: List[int] = []
        self._targets: Pairs = []
        self._counts: List[List[int]] = []  # per group (one, or one per tensor): cumulative pruned per round
        self._done = 0

    # -- planning -----------------------------------------------------------

    def _plan(self, model: nn.Module, max_steps: int) -> None:
        end = max_steps if self.end_step is None else self.end_step
        if end > max_steps:
            raise ValueError(f"end_step={end} is beyond the run's max_steps={max_steps}: the final sparsity would not be reached")
        if self.start_step > end:
            raise ValueError(f"start_step={self.start_step} is beyond the last step {end}")
        rounds = (end - self.start_step) // self.frequency + 1
        self.round_steps = [self.start_step + i * self.frequency for i in range(rounds)]
        if self.round_steps[-1] != end:
            self.round_steps.append(end)  # the last round always lands on end_step
        pairs = self.parameters(model) if callable(self.parameters) else (self.parameters or default_parameters(model))
        self._targets = [tuple(p) for p in pairs]
        if not self._targets:
            raise ValueError("parameters: nothing to prune (no nn.Linear / nn.Conv weight found)")
        sizes = [getattr(m, n).numel() for m, n in self._targets]
        groups = [sum(sizes)] if self.scope == "global" else sizes
        self._counts = [pruning_schedule(total, self.amount, len(self.round_steps), self.schedule) for total in groups]

    def _prune_to(self, round_index: int, method: str) -> None:
        """Bring every group to its cumulative count of round ``round_index``."""
        if self.scope == "global":
            done = self.masks.num_pruned() if self.masks is not None else 0
            self.masks = sparsify_(self._targets, self._counts[0][round_index] - done, method=method, scope="global")
            return
        kept = self.masks.kept_counts() if self.masks is not None else None
        for i, (pair, counts) in enumerate(zip(self._targets, self._counts)):
            n = getattr(*pair).numel()
            done = n - kept[i] if kept is not None else 0
            sparsify_([pair], counts[round_index] - done, method=method, scope="global")
        # One MaskSet over all tensors: amount 0 changes nothing, the masks are shared.
        self.masks = sparsify_(self._targets, 0, scope="local")

    # -- Trainer events -----------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("GradualPruningCallback needs the model (the Trainer passes it to callbacks)")
        self._plan(model, state.max_steps)
        self.masks = None
        self._done = 0
        if state.global_step > 0:
            # Resuming: the rounds up to the current step were applied to the
            # saved weights; magnitude pruning re-selects exactly their zeros.
            while self._done < len(self.round_steps) and self.round_steps[self._done] <= state.global_step:
                self._done += 1
            if self._done:
                self._prune_to(self._done - 1, "l1")
        else:
            self._run_due_rounds(0)

    def _run_due_rounds(self, step: int) -> None:
        while self._done < len(self.round_steps) and self.round_steps[self._done] <= step:
            self._prune_to(self._done, self.method)
            self._done += 1

    def on_optimizer_step(self, args, state, control, **kwargs):
        # The optimizer has just moved every weight: put the pruned ones back to zero.
        if self.masks is not None:
            self.masks.apply_()

    def on_step_end(self, args, state, control, **kwargs):
        # Also here for transformers versions without on_optimizer_step.
        if self.masks is not None:
            self.masks.apply_()
        self._run_due_rounds(state.global_step)
