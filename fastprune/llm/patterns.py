"""Sparsity patterns: unstructured or N:M, and the masks they select."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import ops
from ..core.validation import _compute_nparams_toprune

__all__ = ["parse_pattern", "select_mask"]


def parse_pattern(pattern) -> Optional[Tuple[int, int]]:
    """``None`` for ``"unstructured"``, ``(n, m)`` for ``"N:M"``.

    N:M means ``n`` weights pruned in every group of ``m`` consecutive input
    weights of a row (``"2:4"`` keeps 2 of every 4).

    Raises:
        TypeError: ``pattern`` is not a str.
        ValueError: malformed, or not ``1 <= n < m``.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be 'unstructured' or a string 'N:M', got {type(pattern).__name__}")
    if pattern == "unstructured":
        return None
    parts = pattern.split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"pattern={pattern!r} is neither 'unstructured' nor 'N:M' with integers N and M") from None
    if m < 2 or n < 1 or n >= m:
        raise ValueError(f"pattern={pattern!r}: N:M needs 1 <= N < M (N weights pruned in every group of M)")
    return n, m


def rows_to_prune(cols: int, sparsity: float) -> int:
    """Weights pruned per row of ``cols`` inputs at ``sparsity`` (rounded as torch rounds amounts)."""
    return int(_compute_nparams_toprune(float(sparsity), cols))


def select_mask(scores: torch.Tensor, sparsity: float, nm: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Keep-mask (bool, [rows, cols]) pruning the smallest scores of each row
    (``rows_to_prune(cols, sparsity)`` per row) or of each N:M group."""
    if nm is not None:
        return ops.nm_select(scores, nm[0], nm[1])
    return ops.row_kselect(scores, rows_to_prune(scores.shape[-1], sparsity))
