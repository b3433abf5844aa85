"""What :func:`fastprune.llm.prune` returns: per-layer and per-block figures."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

__all__ = ["LayerReport", "BlockReport", "PruneReport"]


@dataclass
class LayerReport:
    """One pruned linear layer.

    Attributes:
        name: qualified module name.
        block: index of its block; None for the input embeddings and the LM head.
        shape: ``(out_features, in_features)``.
        sparsity: fraction of its weights pruned.
        error: relative reconstruction error ``||W x - W' x||^2 / ||W x||^2``
            summed over the calibration tokens the layer sees in the pruned
            model (``W`` dense, ``W'`` pruned); NaN when not measured.
    """

    name: str
    block: Optional[int]
    shape: tuple
    sparsity: float
    error: float


@dataclass
class BlockReport:
    """One block: its target sparsity and the seconds it took (statistics, selection, recomputation)."""

    index: int
    target: float
    seconds: float


@dataclass
class PruneReport:
    """Result of :func:`fastprune.llm.prune`.

    Attributes:
        method, pattern, sparsity: what was asked.
        layers: a :class:`LayerReport` per pruned layer, in order.
        blocks: a :class:`BlockReport` per block.
        masks: the :class:`fastprune.MaskSet` (``mode="inplace"``), else ``None``.
        seconds: total wall time.

    ``str(report)`` / :meth:`table` give a readable table.
    """

    method: str
    pattern: str
    sparsity: float
    mode: str
    layers: List[LayerReport] = field(default_factory=list)
    blocks: List[BlockReport] = field(default_factory=list)
    masks: Optional[object] = None
    seconds: float = 0.0

    @property
    def overall_sparsity(self) -> float:
        """Fraction of all pruned layers' weights that are pruned."""
        total = sum(l.shape[0] * l.shape[1] for l in self.layers)
        pruned = sum(l.sparsity * l.shape[0] * l.shape[1] for l in self.layers)
        return pruned / total if total else 0.0

    def table(self) -> str:
        """A plain-text table: one line per layer, then one per block, then the totals."""
        width = max([len("layer")] + [len(l.name) for l in self.layers])
        lines = [f"{'layer':<{width}}  {'shape':>12}  {'sparsity':>8}  {'rel. error':>10}"]
        for l in self.layers:
            shape = f"{l.shape[0]}x{l.shape[1]}"
            lines.append(f"{l.name:<{width}}  {shape:>12}  {l.sparsity:>8.4f}  {l.error:>10.4g}")
        lines.append("")
        lines.append(f"{'block':>5}  {'target':>8}  {'seconds':>8}")
        for b in self.blocks:
            lines.append(f"{b.index:>5}  {b.target:>8.4f}  {b.seconds:>8.3f}")
        lines.append("")
        lines.append(
            f"{self.method}, {self.pattern}, {len(self.layers)} layers in {len(self.blocks)} blocks: "
            f"sparsity {self.overall_sparsity:.4f}, {self.seconds:.2f} s"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
