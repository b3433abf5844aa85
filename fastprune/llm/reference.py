"""Plain-torch transcriptions of the published methods: the oracle of fastprune.llm.

Written from the papers, with no fastprune op and no optimisation, as
:mod:`fastprune.ops.reference` is for the kernels: the tests compare
:func:`fastprune.llm.prune` with these, and the benchmark measures them as the
straightforward implementation a research script would be.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["keep_smallest_pruned_per_row", "keep_nm", "sparsegpt_weights"]


def keep_smallest_pruned_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask pruning the ``k`` smallest scores of each row (stable sort: lower index first among equals)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    idx = torch.sort(scores, dim=1, stable=True).indices[:, :k]
    return keep.scatter(1, idx, False)


def keep_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask pruning the ``n`` smallest of every group of ``m`` consecutive scores of a row."""
    rows, cols = scores.shape
    return keep_smallest_pruned_per_row(scores.reshape(-1, m), n).reshape(rows, cols)


def sparsegpt_weights(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    nm: Optional[Tuple[int, int]] = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT's algorithm 1 with lazy batch updates; exactly ``round(sparsity * rows * block)`` pruned per block.

    Args:
        weight: the layer's ``(out, in)`` weight (not modified).
        H: the Hessian ``2 X X^T / n`` over the calibration tokens, ``(in, in)``;
            modified in place (dead columns, dampening), as the paper's script does.
        sparsity: fraction pruned in every column block (unstructured).
        nm: ``(n, m)``: ``n`` pruned in every ``m`` consecutive columns of a row instead.
        blocksize: columns per lazy-update block.
        percdamp: dampening, as a fraction of the mean Hessian diagonal.

    Returns:
        the reconstructed weight, in ``weight``'s dtype.
    """
    W = weight.detach().float().clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if nm is None:
            tmp = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            order = torch.sort(tmp.flatten(), stable=True).indices[:round(tmp.numel() * sparsity)]
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask1[order] = True
            mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                tmp = W1[:, i:i + nm[1]] ** 2 / torch.diag(Hinv1)[i:i + nm[1]].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, nm[0], dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W.to(weight.dtype)
