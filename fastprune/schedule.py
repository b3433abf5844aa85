"""Pruning schedules: how many units are pruned after each round of gradual pruning.

Shared by iterative SNIP / SynFlow, iterative magnitude pruning (lottery
tickets) and the training callbacks.
"""
from __future__ import annotations

from typing import List

from .core.validation import _compute_nparams_toprune, _validate_pruning_amount, _validate_pruning_amount_init

__all__ = ["pruning_schedule"]


def pruning_schedule(total: int, amount, steps: int, schedule: str = "exponential") -> List[int]:
    """Cumulative number of units pruned after each of ``steps`` rounds.

    ``total`` units are prunable. For ``"linear"`` and ``"exponential"`` (alias
    ``"exp"``), ``amount`` is the final target (float fraction or int count,
    rounded as torch rounds), reached exactly after the last round: linear
    prunes the same number each round, exponential the same fraction of the
    remaining units (keeping ``(1 - amount) ** (t / steps)`` after round ``t``).
    For ``"constant"``, ``amount`` is what each round prunes of the units still
    remaining (a fraction, or a count), as repeated ``l1_unstructured`` calls do;
    the final sparsity is then ``1 - (1 - amount) ** steps``.

    Args:
        total (int): prunable units, ``>= 0``.
        amount (int or float): the final target (``"linear"``,
            ``"exponential"``) or the amount of each round (``"constant"``): a
            fraction in [0, 1] or a count.
        steps (int): number of rounds, ``>= 1``.
        schedule (str, optional): ``"linear"``, ``"exponential"`` (or
            ``"exp"``) or ``"constant"``, case-insensitive.
            Default: ``"exponential"``.

    Returns:
        list of int: ``steps`` non-decreasing cumulative counts; the last one
        is the final number of pruned units.

    Raises:
        ValueError: ``total`` is not a non-negative int; ``steps < 1``; an
            unknown ``schedule``; ``amount`` out of range, larger than
            ``total``, or (``"constant"``, int) ``amount * steps > total``.
        TypeError: ``steps`` is not an int, ``schedule`` is not a str,
            ``amount`` is not an int or float.

    Example::

        assert prune.pruning_schedule(100, 0.9, 3, "linear") == [30, 60, 90]
        assert prune.pruning_schedule(100, 0.9, 3) == [54, 78, 90]
        assert prune.pruning_schedule(100, 0.5, 2, "constant") == [50, 75]
    """

    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be a non-negative int, got {total!r}")
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a str, got {type(schedule).__name__}")
    kind = {"exp": "exponential", "exponential": "exponential", "linear": "linear",
            "constant": "constant"}.get(schedule.lower())
    if kind is None:
        raise ValueError(f"schedule must be 'constant', 'linear' or 'exponential', got {schedule!r}")
    _validate_pruning_amount_init(amount)
    if kind == "constant":
        if isinstance(amount, int) and amount * steps > total:
            raise ValueError(
                f"amount={amount} units per round over {steps} rounds exceeds the {total} prunable units"
            )
        counts, done = [], 0
        for _ in range(steps):
            done += _compute_nparams_toprune(amount, total - done)
            counts.append(done)
        return counts
    _validate_pruning_amount(amount, total)
    k = _compute_nparams_toprune(amount, total)
    counts = []
    for t in range(1, steps + 1):
        if t == steps:
            c = k
        elif kind == "linear":
            c = round(k * t / steps)
        else:
            keep = total * ((total - k) / total) ** (t / steps) if total else 0.0
            c = total - round(keep)
        counts.append(min(max(c, counts[-1] if counts else 0), k))
    return counts
