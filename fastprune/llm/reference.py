"""Plain-torch transcriptions of the published methods: the oracle of fastprune.llm.

Written from the papers, with no fastprune op and no optimisation, as
:mod:`fastprune.ops.reference` is for the kernels: the tests compare
:func:`fastprune.llm.prune` with these, and the benchmark measures them as the
straightforward implementation a research script would be.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

__all__ = [
    "keep_smallest_pruned_per_row",
    "keep_nm",
    "keep_pruned",
    "sparsegpt_weights",
    "wanda_layer",
    "sparsegpt_layer",
    "prune_block_by_block",
]


def keep_smallest_pruned_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask pruning the ``k`` smallest scores of each row (stable sort: lower index first among equals)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    idx = torch.sort(scores, dim=1, stable=True).indices[:, :k]
    return keep.scatter(1, idx, False)


def keep_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask pruning the ``n`` smallest of every group of ``m`` consecutive scores of a row."""
    rows, cols = scores.shape
    return keep_smallest_pruned_per_row(scores.reshape(-1, m), n).reshape(rows, cols)


def keep_pruned(scores: torch.Tensor, sparsity: float, nm: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Keep-mask of a layer's scores: ``nm`` per group, else ``round(sparsity * in)`` smallest per row."""
    if nm:
        return keep_nm(scores, *nm)
    return keep_smallest_pruned_per_row(scores, round(scores.shape[1] * sparsity))


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


def wanda_layer(sparsity: float, nm: Optional[Tuple[int, int]] = None) -> Callable:
    """Wanda on one layer: zero the smallest ``|W_ij| * ||X_j||_2`` of each row (or N:M group).

    Returns ``prune(linear, sumsq)`` for :func:`prune_block_by_block` with
    ``statistic="norms"``.
    """
    def prune(m: nn.Linear, sumsq: torch.Tensor) -> None:
        m.weight[~keep_pruned(m.weight.abs().float() * sumsq.sqrt().reshape(1, -1), sparsity, nm)] = 0
    return prune


def sparsegpt_layer(sparsity: float, nm: Optional[Tuple[int, int]] = None, blocksize: int = 128,
                    percdamp: float = 0.01) -> Callable:
    """SparseGPT on one layer (:func:`sparsegpt_weights`), for ``statistic="hessian"``."""
    def prune(m: nn.Linear, H: torch.Tensor) -> None:
        m.weight.copy_(sparsegpt_weights(m.weight, H, sparsity, nm, blocksize, percdamp))
    return prune


@torch.no_grad()
def prune_block_by_block(model: nn.Module, ids: torch.Tensor, statistic: str, prune_layer: Callable,
                         nblocks: Optional[int] = None) -> None:
    """The papers' sequential procedure on a Llama-shaped model (blocks in ``model.model.layers``).

    The first block's inputs are captured once; for each block, every
    ``nn.Linear``'s inputs on the dense block are reduced by hooks to
    ``statistic`` (``"norms"``: the per-input-column sum of squares, fp32;
    ``"hessian"``: ``2/n * sum_t x_t x_t^T``, fp32), each layer is pruned by
    ``prune_layer(linear, statistic_value)``, and the block's outputs on the
    pruned weights become the next block's inputs. Statistics are accumulated
    batch by batch, as the reference scripts do, so the activations of a block
    are never held twice.

    Args:
        model: the transformers decoder.
        ids: calibration input ids, ``(samples, seqlen)``.
        statistic: ``"norms"`` or ``"hessian"``.
        prune_layer: prunes one layer in place from its statistic.
        nblocks: prune only the first ``nblocks`` blocks. Default: all.
    """
    layers = model.model.layers[:nblocks]
    captured = []

    def catch(module, args, kwargs):
        captured.append((args, kwargs))
        raise RuntimeError("caught")

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        model(ids, use_cache=False)
    except RuntimeError:
        pass
    finally:
        handle.remove()
    (args, kwargs), = captured
    hidden = args[0]
    for block in layers:
        stats = {}
        for m in block.modules():
            if isinstance(m, nn.Linear):
                n = m.in_features
                stats[m] = [torch.zeros(n) if statistic == "norms" else torch.zeros(n, n), 0]

        def add(mod, a, out):
            x = a[0].reshape(-1, a[0].shape[-1]).float()
            acc = stats[mod]
            if statistic == "norms":
                acc[0] += (x * x).sum(dim=0)
            else:
                acc[0] += x.t() @ x
            acc[1] += x.shape[0]

        handles = [m.register_forward_hook(add) for m in stats]
        try:
            block(hidden, *args[1:], **kwargs)
        finally:
            for h in handles:
                h.remove()
        for m, (total, tokens) in stats.items():
            prune_layer(m, total if statistic == "norms" else total * (2 / tokens))
        out = block(hidden, *args[1:], **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
