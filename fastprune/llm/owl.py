"""OWL (Yin et al., 2024): outlier-weighted layer-wise sparsity ratios."""
from __future__ import annotations

from typing import List, Sequence

import torch

__all__ = ["outlier_ratio", "owl_sparsities"]


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Layer-wise outlier distribution (LOD) of one block.

    The fraction of the block's weights whose Wanda score exceeds ``m`` times
    the mean score, the scores of all the block's linear layers taken together.
    """
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.sum(dtype=torch.float64)) for s in scores) / total
    outliers = sum(int((s > m * mean).sum()) for s in scores)
    return outliers / total


def owl_sparsities(ratios: Sequence[float], params: Sequence[int], target: float, lam: float) -> List[float]:
    """Per-block sparsities from the blocks' outlier ratios.

    Blocks with more outliers are pruned less. As in the paper, the ratios are
    scaled linearly to ``[0, 2 * lam]`` and shifted so that the densities
    (1 - sparsity) average ``1 - target``: here the average is weighted by the
    blocks' parameter counts, so that the model's overall sparsity is exactly
    ``target`` (with equal blocks this is the paper's plain mean). Every block
    ends up within ``target +- lam``.

    Args:
        ratios: outlier ratio of each block (:func:`outlier_ratio`).
        params: prunable parameters of each block.
        target: overall sparsity.
        lam: the paper's lambda, the largest deviation from ``target``.

    Raises:
        ValueError: a resulting sparsity falls outside ``[0, 1)``.
    """
    r = torch.tensor(list(ratios), dtype=torch.float64)
    p = torch.tensor([float(x) for x in params], dtype=torch.float64)
    spread = float(r.max() - r.min())
    scaled = (r - r.min()) / spread * (2 * lam) if spread > 0 else torch.zeros_like(r)
    density = scaled - float((scaled * p).sum() / p.sum()) + (1 - target)
    sparsities = (1 - density).tolist()
    for i, s in enumerate(sparsities):
        if not 0.0 <= s < 1.0:
            raise ValueError(
                f"layer_sparsity='owl': block {i} would get sparsity {s:.4f}, outside [0, 1); lower owl_lambda"
            )
    return sparsities
