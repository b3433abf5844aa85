"""Wanda (Sun et al., 2023): prune by |weight| x input-activation norm."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .patterns import select_mask

__all__ = ["InputNorms", "wanda_scores", "wanda_mask"]


class InputNorms:
    """Running sum of squares of each input feature of a linear layer.

    ``add(x)`` takes the layer's input rows ``[tokens, in_features]`` (padding
    already removed); ``norms()`` returns ``||X_j||_2`` over every token seen.
    Accumulated in fp32 (fp64 for fp64 input).
    """

    def __init__(self, in_features: int, device) -> None:
        self.sumsq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        if x.dtype == torch.float64 and self.sumsq.dtype != torch.float64:
            self.sumsq = self.sumsq.double()
        xf = x.to(self.sumsq.dtype)
        self.sumsq += (xf * xf).sum(dim=0)
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        return self.sumsq.sqrt()


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
