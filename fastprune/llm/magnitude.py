"""Magnitude pruning per output row: the calibration-free baseline."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .patterns import select_mask

__all__ = ["magnitude_mask"]


def magnitude_mask(weight: torch.Tensor, sparsity: float, nm: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Keep-mask pruning the smallest ``|W_ij|`` of each row (or N:M group).

    Args:
        weight: ``[out_features, in_features]``.
        sparsity: fraction pruned in each row (ignored for N:M).
        nm: ``(n, m)`` for N:M, else ``None``.

    Returns:
        a bool ``[out, in]`` mask, True = keep.
    """
    return select_mask(weight, sparsity, nm)
