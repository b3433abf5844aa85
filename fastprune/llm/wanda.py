"""Wanda (Sun et al., 2023): prune by |weight| x input-activation norm."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .patterns import select_mask
from .walker import Statistic

__all__ = ["InputNorms", "wanda_scores", "wanda_mask"]


class InputNorms(Statistic):
    """Running sum of squares of each input feature of a linear layer.

    ``add(x)`` takes the layer's input rows ``[tokens, in_features]`` (padding
    already removed); ``norms()`` returns ``||X_j||_2`` over every token seen.
    The squares are summed in float64 (:class:`~fastprune.llm.walker.Statistic`),
    so the norms do not depend on how the tokens are cut into micro-batches;
    ``norms()`` rounds them to float32 (float64 for float64 input).
    """

    shareable = True  # depends on the input rows only

    def __init__(self, in_features: int, device) -> None:
        self.sumsq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)
        # Rows seen in float64: a buffer, not an attribute, so that it is summed across
        # processes like the rest (a process with no calibration of its own learns it too).
        self.wide = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        if x.dtype == torch.float64:
            self.wide += x.shape[0]
        xd = x.to(torch.float64)
        self.sumsq += (xd * xd).sum(dim=0)
        self.tokens += x.shape[0]

    def buffers(self) -> List[torch.Tensor]:
        return [self.sumsq, self.tokens, self.wide]

    def norms(self) -> torch.Tensor:
        return self.sumsq.sqrt().to(torch.float64 if int(self.wide) else torch.float32)


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| * ||X_j||_2`` for ``weight`` ``[out, in]`` and ``norms`` ``[in]``."""
    # abs() always makes a new tensor, so the product can go into it: one
    # weight-sized temporary per layer instead of two.
    return weight.abs().to(norms.dtype).mul_(norms.reshape(1, -1))


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, sparsity: float,
               nm: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Keep-mask pruning the smallest Wanda scores within each output row
    (or each N:M group of a row); bool ``[out, in]``, True = keep."""
    return select_mask(wanda_scores(weight, norms), sparsity, nm)
