"""The stages of one-shot pruning on the block walker: OWL's dense pass and the pruning pass."""
from __future__ import annotations

import math
import time
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .blocks import is_conv1d, weight_rows
from .magnitude import magnitude_mask
from .owl import outlier_ratio
from .report import BlockReport, LayerReport, PruneReport
from .sparsegpt import Hessian, sparsegpt_prune
from .walker import BlockTurn, ErrorSums, Layer, SolveJob, Stage, Statistic
from .wanda import InputNorms, wanda_mask, wanda_scores

__all__ = ["OwlStage", "PruneStage", "magnitude_layer"]


class OwlStage(Stage):
    """OWL's pass over the dense model: each block's outlier ratio of Wanda scores.

    The blocks are only read; after the walk ``ratios[i]`` and ``params[i]``
    hold block ``i``'s outlier ratio and prunable parameter count.
    """

    desc = "OWL outlier ratios"
    recompute = False

    def __init__(self, owl_m: float) -> None:
        self.owl_m = owl_m
        self.ratios: List[float] = []
        self.params: List[int] = []

    def statistics(self, turn: BlockTurn) -> Dict[nn.Module, Statistic]:
        return {l.module: InputNorms(l.shape[1], turn.device) for l in turn.layers}

    def update(self, turn: BlockTurn, stats: Dict[nn.Module, Statistic]) -> None:
        scores = [wanda_scores(weight_rows(l.module, l.module.weight), stats[l.module].norms()) for l in turn.layers]
        self.ratios.append(outlier_ratio(scores, self.owl_m) if scores else 0.0)
        self.params.append(sum(s.numel() for s in scores))


class PruneStage(Stage):
    """Prunes each block's linear layers with ``method`` and records the report.

    Args:
        method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        nm: ``(n, m)`` or None.
        targets: each block's sparsity.
        per_layer: sparsity overrides by layer name.
        report: the :class:`PruneReport` the layers and blocks are appended to.
        blocksize, percdamp: SparseGPT's.
        measure_errors: measure each layer's reconstruction error while the
            block's outputs are recomputed (needs calibration inputs).
        keep_dense: keep each layer's dense weight until :meth:`block_done`
            (``turn.dense``), e.g. for ``mode="reparam"``.
        on_block: ``on_block(turn, layers, keeps, dense)`` once a block is final
            (``keeps``: keep-masks in the modules' layout).
    """

    def __init__(self, method: str, nm: Optional[Tuple[int, int]], targets: Sequence[float],
                 per_layer: Dict[str, float], report: PruneReport, *, blocksize: int = 128,
                 percdamp: float = 0.01, measure_errors: bool = True, keep_dense: bool = False,
                 on_block: Optional[Callable] = None) -> None:
        self.method = method
        self.nm = nm
        self.targets = list(targets)
        self.per_layer = per_layer
        self.report = report
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.measure_errors = measure_errors
        self.keep_dense = keep_dense
        self.on_block = on_block
        self.desc = f"{method} pruning"
        self._dense: Dict[str, torch.Tensor] = {}
        self._keeps: List[torch.Tensor] = []

    def statistics(self, turn: BlockTurn) -> Dict[nn.Module, Statistic]:
        if self.method == "wanda":
            return {l.module: InputNorms(l.shape[1], turn.device) for l in turn.layers}
        if self.method == "sparsegpt":
            return {l.module: Hessian(l.shape[1], turn.device) for l in turn.layers}
        return {}

    def _solve(self, layer: Layer, sparsity: float, stats: Dict[nn.Module, Statistic]) -> torch.Tensor:
        w = weight_rows(layer.module, layer.module.weight)
        if self.method == "magnitude":
            keep, new_w = magnitude_mask(w.detach(), sparsity, self.nm), None
        elif self.method == "wanda":
            keep, new_w = wanda_mask(w.detach(), stats.pop(layer.module).norms(), sparsity, self.nm), None
        else:
            stat = stats.pop(layer.module)
            # A Hessian shared with layers still to solve (same input) is copied, the last one takes it.
            shared = any(v is stat for v in stats.values())
            # The Hessian goes straight into the call (no reference kept here), which frees it once
            # its Cholesky factor exists: one n x n matrix fewer alive at the solve's peak.
            new_w, keep = sparsegpt_prune(w.detach(), stat.matrix() if shared else stat.take(), sparsity,
                                          self.nm, self.blocksize, self.percdamp, layer.name, overwrite_h=True)
        if new_w is not None:
            w.copy_(new_w.to(w.dtype))
            del new_w
        w.masked_fill_(~keep, 0)
        return keep.t() if is_conv1d(layer.module) else keep

    def update(self, turn: BlockTurn, stats: Dict[nn.Module, Statistic]) -> None:
        measuring = turn.inputs is not None and self.measure_errors
        self._dense = {}
        jobs = []
        for l in turn.layers:
            if measuring or self.keep_dense:
                self._dense[l.name] = l.module.weight.detach().clone()
            s = self.per_layer.get(l.name, self.targets[turn.index])
            jobs.append(SolveJob(l, l.module.weight, partial(self._solve, l, s, stats),
                                 masks_only=self.method != "sparsegpt"))
        self._keeps = turn.solve(jobs)
        for l, keep in zip(turn.layers, self._keeps):
            self.report.layers.append(
                LayerReport(l.name, turn.index, l.shape, 1.0 - float(keep.sum()) / keep.numel(), math.nan))

    def measures(self, turn: BlockTurn) -> Dict[nn.Module, Statistic]:
        if not self.measure_errors:
            return {}
        return {l.module: ErrorSums(l.module, self._dense[l.name]) for l in turn.layers}

    def measured(self, turn: BlockTurn, measures: Dict[nn.Module, Statistic]) -> None:
        if not measures:
            return
        layers = self.report.layers[-len(turn.layers):]
        for rep, l in zip(layers, turn.layers):
            rep.error = measures[l.module].relative()

    def block_done(self, turn: BlockTurn) -> None:
        if self.on_block is not None:
            self.on_block(turn, turn.layers, self._keeps, self._dense)
        self._dense, self._keeps = {}, []
        self.report.blocks.append(BlockReport(turn.index, self.targets[turn.index],
                                              time.perf_counter() - turn.started))


def magnitude_layer(layer: Layer, sparsity: float, nm: Optional[Tuple[int, int]]) -> Tuple[torch.Tensor, LayerReport]:
    """Keep-mask of the embeddings / LM head by magnitude within each row, and its report line."""
    keep = magnitude_mask(layer.module.weight.detach(), sparsity, nm)
    return keep, LayerReport(layer.name, None, layer.shape, 1.0 - float(keep.sum()) / keep.numel(), math.nan)
