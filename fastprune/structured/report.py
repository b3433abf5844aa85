"""What a structured pruning call did: parameter and MAC counts before and after."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..core.targets import eval_mode
from .plan import Plan
from .trace import split_example_inputs

__all__ = ["PruneReport", "count_params", "count_macs"]


def count_params(model: nn.Module) -> int:
    """Number of parameter entries of ``model`` (tied parameters counted once).

    Args:
        model: any module.

    Returns:
        int.

    Example::

        >>> count_params(nn.Linear(4, 2))
        10
    """
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs) -> Optional[int]:
    """Multiply-accumulates of one forward pass (matmul, conv, attention).

    Counted by ``torch.utils.flop_counter`` in eval mode, without gradients.

    Args:
        model: the model.
        example_inputs: as for :class:`~fastprune.structured.DependencyGraph`.

    Returns:
        int, or ``None`` for a meta-device model whose forward branches on values.

    Raises:
        TypeError: for unsupported ``example_inputs``.

    Example::

        >>> count_macs(nn.Linear(4, 2), torch.zeros(3, 4))
        24
    """
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
    """What :func:`~fastprune.prune_channels` / :func:`~fastprune.remove_masked_channels` did.

    Attributes:
        params_before, params_after: parameter counts.
        macs_before, macs_after: multiply-accumulates of one forward on the
            example inputs (``None`` where they cannot be counted).
        layers: ``(group name, channels before, channels after)`` per prunable group.
        build_time: seconds to trace and build the dependency graph.
        plan: the executed :class:`~fastprune.structured.Plan`.
        config_changes: ``{field: (old, new)}`` written to a transformers
            model's config (empty when the config was not touched).
        units: ``(group name, kind, units before, units removed)`` per
            prunable group; kind is ``"heads"`` (units are key-value groups
            with their query heads, or heads), ``"mlp"`` (channels inside one
            block) or ``"other"``.
        left_unpruned: family of groups -> why it was left whole (with
            ``uniform=True``: its sizes cannot be stated in the config).
        compensated: layers whose bias received the mean contribution of
            their removed inputs.

    Example::

        >>> report = fastprune.prune_channels(model, x, 0.3)
        >>> print(report)
        params: 11,689 -> 5,874 (-49.7%)
        ...
    """

    params_before: int
    params_after: int
    macs_before: Optional[int]
    macs_after: Optional[int]
    layers: List[Tuple[str, int, int]] = field(default_factory=list)
    build_time: float = 0.0
    plan: Optional[Plan] = None
    config_changes: Dict[str, Tuple[object, object]] = field(default_factory=dict)
    units: List[Tuple[str, str, int, int]] = field(default_factory=list)
    left_unpruned: Dict[str, str] = field(default_factory=dict)
    compensated: List[str] = field(default_factory=list)

    @property
    def param_reduction(self) -> float:
        """Fraction of the parameters removed."""
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
        for name, (old, new) in self.config_changes.items():
            lines.append(f"  config.{name}: {old} -> {new}")
        if self.compensated:
            lines.append(f"  biases compensated: {len(self.compensated)} layer(s)")
        for name, why in self.left_unpruned.items():
            lines.append(f"  left whole: {name}: {why}")
        return "\n".join(lines)
