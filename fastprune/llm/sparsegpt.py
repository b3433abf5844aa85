"""SparseGPT (Frantar & Alistarh, 2023): prune and reconstruct with the Hessian.

The mask selection runs on fastprune's selection ops; the Hessian, Cholesky
factorisation and weight updates are torch's linear algebra.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .. import ops
from .patterns import rows_to_prune
from .walker import Statistic

__all__ = ["Hessian", "sparsegpt_prune"]


class Hessian(Statistic):
    """Accumulates ``H = 2/n * sum_t x_t x_t^T`` over the ``n`` tokens a layer sees.

    Each micro-batch's ``X^T X`` is a float32 matrix product; the sum over
    micro-batches (and processes) is float64
    (:class:`~fastprune.llm.walker.Statistic`). :meth:`matrix` / :meth:`take`
    give the scaled Hessian in float32.
    """

    shareable = True  # depends on the input rows only

    def __init__(self, in_features: int, device) -> None:
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)

    #: Rows of the float32 product widened and added at a time: ``sum += product`` would widen
    #: the whole product to a float64 temporary (twice its size) first.
    ADD_ROWS = 256

    def add(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        xf = x.to(torch.float32)
        product = xf.t() @ xf
        del xf
        for r in range(0, product.shape[0], self.ADD_ROWS):
            self.sum[r:r + self.ADD_ROWS] += product[r:r + self.ADD_ROWS]
        self.tokens += x.shape[0]

    def buffers(self) -> List[torch.Tensor]:
        return [self.sum, self.tokens]

    def _scale(self) -> float:
        return 2.0 / max(int(self.tokens), 1)

    def matrix(self) -> torch.Tensor:
        return (self.sum * self._scale()).to(torch.float32)

    def take(self) -> torch.Tensor:
        """The Hessian (float32); the accumulator is released."""
        H, self.sum = self.sum.mul_(self._scale()).to(torch.float32), None
        return H


def sparsegpt_prune(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    nm: Optional[Tuple[int, int]],
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "weight",
    overwrite_h: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` ``[out, in]`` with SparseGPT; returns ``(new_weight fp32, keep_mask)``.

    As published: dead inputs (zero Hessian diagonal) get weight 0 and diagonal
    1; the Hessian is dampened by ``percdamp`` times the mean of its diagonal;
    the upper Cholesky factor of its inverse drives the updates. Columns are
    processed in blocks of ``blocksize``: the mask of a block is chosen at its
    start (adaptive mask selection) from ``w^2 / [H^-1]_jj^2``, exactly
    ``round(rows * blocksize * sparsity)`` weights of the block; for N:M, ``n``
    of every ``m`` columns of each row, chosen when the group's first column
    is reached. Each column's error is spread over the block's remaining
    columns, and the block's errors over all later columns in one matrix
    product (lazy batched updates).

    ``overwrite_h=True`` lets the function modify ``H`` instead of copying it
    (and, when the caller keeps no reference to it, free it after its Cholesky
    factorisation).

    Raises:
        RuntimeError: the dampened Hessian is not positive definite (raise ``percdamp``).
    """
    W = weight.detach().to(torch.float32).clone()
    rows, cols = W.shape
    if not overwrite_h:
        H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(cols, device=H.device)
    H[idx, idx] += damp
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise RuntimeError(f"sparsegpt: the dampened Hessian of {name} is not positive definite; raise percdamp")
    del H  # the caller's own matrix is freed here when it kept no reference (``overwrite_h=True``)
    Hinv = torch.cholesky_inverse(L)
    del L  # one n x n matrix fewer alive during the column loop
    Hinv, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0:
        raise RuntimeError(f"sparsegpt: the inverse Hessian of {name} is not positive definite; raise percdamp")
    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    # The column loop works on the block transposed (one contiguous row per column) and as few
    # tensor operations per column as the arithmetic allows: each column's error is
    # ``(w * pruned) / d`` (``w / d`` where pruned, 0 where kept: the values of ``(w - q) / d``),
    # written straight into the block's error rows, and the block's remaining columns lose its
    # outer product with the inverse Hessian's row. A kept weight is never changed by its own
    # column's update (its error is 0), so the block's final values are the loop's result with
    # the pruned ones set to 0.
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].t().contiguous()  # [count, rows]
        Err1 = torch.zeros_like(W1)
        scratch = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if nm is None:
            score = W1.t() * W1.t() / (d * d).reshape(1, -1)
            k = rows_to_prune(score.numel(), sparsity)
            (mask1,) = ops.kselect([score], None, k, largest=False, exclude_masked=False, packed=False,
                                   dtypes=[torch.bool])
            del score
            mask1 = mask1.t().contiguous()  # [count, rows]
            pruned = (~mask1).to(W1.dtype)
        else:
            mask1 = torch.ones_like(W1, dtype=torch.bool)
            pruned = torch.zeros_like(W1)
        n, m = nm if nm is not None else (0, 0)
        for i in range(count):
            if nm is not None and i % m == 0:
                group = W1[i:i + m].t()
                score = group * group / (d[i:i + m] * d[i:i + m]).reshape(1, -1)
                mask1[i:i + m] = ops.nm_select(score, n, m).t()
                torch.logical_not(mask1[i:i + m], out=pruned[i:i + m])
            err = Err1[i]
            torch.mul(W1[i], pruned[i], out=err)
            err.div_(d[i])
            outer = torch.mul(Hinv1[i, i:].unsqueeze(1), err, out=scratch[: count - i])  # exact products
            W1[i:].sub_(outer)
        W[:, i1:i2] = W1.masked_fill_(~mask1, 0).t()
        keep[:, i1:i2] = mask1.t()
        W[:, i2:] -= Err1.t() @ Hinv[i1:i2, i2:]
    return W, keep
