"""Pure-torch implementation of every fastprune op.

This module is the specification of the compiled kernels: the tests compare each
kernel against the function of the same name here, and the package falls back to
these functions when the extension cannot be loaded or ``FASTPRUNE_NO_EXT=1``.
Clarity beats speed here; nothing in this file is on a hot path when the
extension is present.

Conventions shared by all ops
-----------------------------
* Ranking key of a unit: ``|score|``. ``-0.0`` equals ``0.0``; every NaN ranks
  above ``+inf`` (so NaN units are pruned last), all NaNs are equal.
* Exactly ``k`` units are selected. Among equal keys the unit with the lower
  *global* flat index is selected first; the global order is the tensors in
  the order given, each in row-major (logical, not memory) order.
* A mask "keeps" a unit where it is non-zero.
* Packed masks hold one bit per unit: unit ``i`` is bit ``i % 8`` of byte
  ``i // 8`` (a ``uint8`` tensor of ``ceil(numel / 8)`` bytes); padding bits are 0.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

Tensor = torch.Tensor

__all__ = [
    "kselect_",
    "kselect",
    "mask_mul",
    "mask_mul_",
    "apply_packed_mask_",
    "channel_norms",
    "pack_mask",
    "unpack_mask",
    "packed_numel",
    "row_kselect",
    "nm_select",
]


def packed_numel(numel: int) -> int:
    """Bytes needed for a 1-bit mask of ``numel`` units."""
    return (numel + 7) // 8


def pack_mask(mask: Tensor) -> Tensor:
    """1-bit packed copy of ``mask`` (non-zero = keep), see the module docstring."""
    flat = (mask.reshape(-1) != 0).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_mask(packed: Tensor, numel: int, dtype: torch.dtype = torch.bool) -> Tensor:
    """Flat mask of ``numel`` units (in ``dtype``) from its packed form."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) >> shifts) & 1
    return bits.reshape(-1)[:numel].to(dtype)


def _keys(score: Tensor) -> Tensor:
    """Flat ranking keys of one score tensor, in a dtype that sorts them exactly."""
    flat = score.reshape(-1)
    if flat.dtype == torch.bool:
        return flat.to(torch.int64)
    if flat.is_floating_point():
        # fp16/bf16/fp32 are exactly representable in fp64; NaN sorts last once every NaN is
        # the positive quiet NaN (a NaN keeps its sign bit through abs() on CUDA, and the
        # CUDA sort puts a negative NaN first).
        key = flat.to(torch.float64).abs()
        return key.masked_fill(key.isnan(), float("nan"))
    # Integers: |INT64_MIN| does not fit, ranking it above everything is right.
    flat = flat.to(torch.int64)
    key = flat.abs()
    return torch.where(flat == torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max, key)


def _eligible(mask: Optional[Tensor], numel: int, packed: bool, device) -> Tensor:
    if mask is None:
        return torch.ones(numel, dtype=torch.bool, device=device)
    if packed:
        return unpack_mask(mask, numel)
    return mask.reshape(-1) != 0


def allocate_masks(
    scores: Sequence[Tensor], packed: bool = False, dtypes: Optional[Sequence[torch.dtype]] = None
) -> List[Tensor]:
    """Empty outputs for :func:`kselect_`: one per score, in ``dtypes[i]`` (default:
    the score's dtype) or as packed ``uint8`` bits."""
    outs = []
    for i, s in enumerate(scores):
        if packed:
            outs.append(torch.empty(packed_numel(s.numel()), dtype=torch.uint8, device=s.device))
        else:
            dt = dtypes[i] if dtypes is not None else s.dtype
            outs.append(torch.empty(s.shape, dtype=dt, device=s.device))
    return outs


def kselect(
    scores: Sequence[Tensor],
    masks: Sequence[Optional[Tensor]],
    k: int,
    largest: bool = False,
    exclude_masked: bool = True,
    packed: bool = False,
    dtypes: Optional[Sequence[torch.dtype]] = None,
) -> List[Tensor]:
    """Functional form of :func:`kselect_`: allocates and returns the outputs."""
    outs = allocate_masks(scores, packed, dtypes)
    kselect_(scores, masks, outs, k, largest, exclude_masked, packed)
    return outs


def kselect_(
    scores: Sequence[Tensor],
    masks: Sequence[Optional[Tensor]],
    out: Sequence[Tensor],
    k: int,
    largest: bool,
    exclude_masked: bool,
    packed: bool,
    fraction: Optional[float] = None,
    values: Optional[Sequence[Tensor]] = None,
    applied: Optional[Sequence[Tensor]] = None,
) -> None:
    """Select exactly ``k`` units across ``scores`` and write keep-masks to ``out``.

    ``masks[i]`` (or ``None`` = all ones) is the existing mask of ``scores[i]``.
    With ``exclude_masked`` only units the existing mask keeps may be selected
    (iterated / global pruning counts among the unpruned units); without it,
    every unit may be selected and the existing mask is only combined into the
    result (the semantics of ``torch.nn.utils.prune``'s ``compute_mask``).
    The ``k`` selected units are those with the smallest keys (largest with
    ``largest=True``), ties broken by lower global flat index.

    ``out[i]`` receives ``existing_keep AND NOT selected`` as 0/1 in its own dtype
    (same shape as ``scores[i]``), or packed bits when ``packed`` (then ``masks``
    are packed too). ``out[i]`` may alias ``masks[i]``.

    With ``fraction`` (then ``k`` must be -1), ``k = round(fraction * c)`` for
    ``c`` the number of selectable units (round half to even, Python's ``round``).

    With ``values`` and ``applied`` (both or neither), ``applied[i]`` receives
    ``values[i] * keep`` in ``values[i]``'s dtype (the pruned weight), where
    ``keep`` is ``out[i]`` as 0/1; ``applied`` must not share memory with any
    other argument.
    """
    _check_applied(scores, masks, out, values, applied)
    if fraction is not None:
        if k != -1:
            raise ValueError(f"kselect_: k={k} must be -1 when fraction is given")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"kselect_: fraction={fraction} must be between 0 and 1")
    if len(masks) != len(scores) or len(out) != len(scores):
        raise ValueError("kselect_: scores, masks and out must have the same length")
    device = scores[0].device if len(scores) else torch.device("cpu")
    keys = [_keys(s) for s in scores]
    elig = [_eligible(m, s.numel(), packed, s.device) for s, m in zip(scores, masks)]
    sizes = [s.numel() for s in scores]
    if sizes and sum(sizes):
        key_dtype = torch.int64 if all(kk.dtype == torch.int64 for kk in keys) else torch.float64
        allk = torch.cat([kk.to(device=device, dtype=key_dtype) for kk in keys])
        alle = torch.cat([e.to(device) for e in elig])
    else:
        allk = torch.zeros(0, dtype=torch.float64, device=device)
        alle = torch.zeros(0, dtype=torch.bool, device=device)
    candidates = alle.nonzero().reshape(-1) if exclude_masked else torch.arange(allk.numel(), device=device)
    if fraction is not None:
        k = round(fraction * candidates.numel())
    if k < 0 or k > candidates.numel():
        raise ValueError(
            f"kselect_: k={k} must be between 0 and the number of selectable units ({candidates.numel()})"
        )
    order = torch.sort(allk[candidates], descending=largest, stable=True).indices
    selected = candidates[order[:k]]
    keep = alle.clone()
    keep[selected] = False
    offset = 0
    for o, n in zip(out, sizes):
        piece = keep[offset:offset + n]
        offset += n
        if packed:
            o.copy_(pack_mask(piece))
        else:
            o.copy_(piece.reshape(o.shape).to(o.dtype))
    if applied is not None:
        offset = 0
        for v, a, n in zip(values, applied, sizes):
            piece = keep[offset:offset + n].to(v.device)
            offset += n
            a.copy_((v.reshape(-1) * piece.to(v.dtype)).reshape(a.shape))


def _check_applied(scores, masks, out, values, applied) -> None:
    """kselect_'s rules for ``values`` / ``applied``, raised before anything is written."""
    if (values is None) != (applied is None):
        raise ValueError("kselect_: give both values and applied, or neither")
    if values is None:
        return
    n = len(scores)
    if len(values) != n or len(applied) != n:
        raise ValueError(
            f"kselect_: values and applied must have the length of scores ({n}), got {len(values)} and {len(applied)}"
        )
    for i, (s, v, a) in enumerate(zip(scores, values, applied)):
        if v.numel() != s.numel():
            raise ValueError(f"kselect_: values[{i}] must have {s.numel()} elements, got {v.numel()}")
        if a.dtype != v.dtype:
            raise TypeError(f"kselect_: applied[{i}] must have the dtype of values[{i}] ({v.dtype}), got {a.dtype}")
        if a.numel() != v.numel():
            raise ValueError(f"kselect_: applied[{i}] must have {v.numel()} elements, got {a.numel()}")

    def span(t):
        if t is None or t.numel() == 0:
            return None
        lo = hi = t.data_ptr()
        for size, stride in zip(t.shape, t.stride()):
            reach = (size - 1) * stride * t.element_size()
            lo, hi = (lo + reach, hi) if reach < 0 else (lo, hi + reach)
        return t.device, lo, hi + t.element_size()

    def overlap(x, y):
        return x is not None and y is not None and x[0] == y[0] and x[1] < y[2] and y[1] < x[2]

    others = [span(t) for t in list(scores) + list(masks) + list(out) + list(values)]
    spans = [span(a) for a in applied]
    for i, sa in enumerate(spans):
        if any(overlap(sa, t) for t in others) or any(overlap(sa, t) for j, t in enumerate(spans) if j != i):
            raise ValueError(f"kselect_: applied[{i}] shares memory with another argument")


def mask_mul(input: Tensor, mask: Tensor) -> Tensor:
    """``input * mask`` with the mask cast to ``input``'s dtype (torch's ``apply_mask``)."""
    return input * mask.to(dtype=input.dtype)


def mask_mul_(inputs: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """In-place ``inputs[i] *= masks[i]`` for every pair (one launch in the kernels)."""
    for x, m in zip(inputs, masks):
        x.mul_(m.to(dtype=x.dtype))


def apply_packed_mask_(inputs: Sequence[Tensor], packed: Sequence[Tensor]) -> None:
    """Set ``inputs[i]`` to zero wherever its packed mask bit is 0 (NaN included)."""
    for x, p in zip(inputs, packed):
        keep = unpack_mask(p, x.numel()).reshape(x.shape)
        x.masked_fill_(~keep, 0)


def channel_norms(t: Tensor, dim: int, p: float) -> Tensor:
    """L``p`` norm of every slice ``t.select(dim, c)``; one value per channel.

    Accumulates in fp64 for fp64 input and fp32 otherwise, and returns that
    dtype. ``p`` may be any float including ``inf``, ``-inf`` and ``0``
    (the count of non-zeros), as in :func:`torch.linalg.vector_norm`.
    """
    if t.dim() == 0:
        raise ValueError("channel_norms: t must have at least one dimension")
    if not -t.dim() <= dim < t.dim():
        raise IndexError(f"channel_norms: dim={dim} is out of range for a tensor with {t.dim()} dimensions")
    dim = dim % t.dim()
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    x = t.to(acc)
    dims = [d for d in range(t.dim()) if d != dim]
    if not dims:
        return torch.linalg.vector_norm(x.unsqueeze(1), ord=p, dim=1)
    if x.numel() == 0:
        # vector_norm refuses inf/-inf over empty slices; the norm of nothing is 0.
        return torch.zeros(t.shape[dim], dtype=acc, device=t.device)
    return torch.linalg.vector_norm(x, ord=p, dim=dims)


# ----------------------------------------------------------------------------
# Selection within rows and within groups (one-shot LLM pruning)
# ----------------------------------------------------------------------------


_SELECT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                  torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_select_scores(scores: Tensor, op: str) -> None:
    if scores.dtype not in _SELECT_DTYPES:
        raise TypeError(f"{op}: scores has unsupported dtype {scores.dtype}")
    if scores.dim() == 0:
        raise ValueError(f"{op}: scores must have at least one dimension")


def _row_keys(scores: Tensor) -> Tensor:
    """``scores`` as [rows, cols] ranking keys (the conventions of :func:`_keys`)."""
    cols = scores.shape[-1] if scores.dim() else 1
    return _keys(scores).reshape(-1, cols) if scores.numel() else scores.new_zeros((0, cols), dtype=torch.float64)


def _prune_smallest_per_row(keys: Tensor, k: int) -> Tensor:
    """Keep-mask of [rows, cols] keys with the ``k`` smallest of each row pruned,
    ties by lower column index (a stable sort gives exactly that)."""
    keep = torch.ones(keys.shape, dtype=torch.bool, device=keys.device)
    if k and keys.numel():
        order = torch.sort(keys, dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, order, False)
    return keep


def row_kselect(scores: Tensor, k: int) -> Tensor:
    """Keep-mask pruning exactly ``k`` units in every row of ``scores``.

    A row is a slice along the last dimension (``scores`` is seen as
    ``[numel // size(-1), size(-1)]``). In each row the ``k`` units of smallest
    ``|score|`` are pruned; among equal keys the lower column index is pruned
    first; NaN ranks above ``+inf``. Returns a ``bool`` tensor of ``scores``'
    shape, True = keep.
    """
    _check_select_scores(scores, "row_kselect")
    cols = scores.shape[-1]
    if k < 0 or k > cols:
        raise ValueError(f"row_kselect: k={k} must be between 0 and the row length ({cols})")
    return _prune_smallest_per_row(_row_keys(scores), k).reshape(scores.shape)


def nm_select(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep-mask of an N:M pattern: ``n`` units pruned in every group of ``m``.

    Groups are ``m`` consecutive units along the last dimension, starting at
    column 0 (so ``m`` must divide ``scores.size(-1)``). In each group the ``n``
    units of smallest ``|score|`` are pruned, ties by lower index, NaN above
    ``+inf``. Returns a ``bool`` tensor of ``scores``' shape, True = keep.
    """
    _check_select_scores(scores, "nm_select")
    if m < 1:
        raise ValueError(f"nm_select: m={m} must be positive")
    if n < 0 or n >= m:
        raise ValueError(f"nm_select: n={n} must satisfy 0 <= n < m={m}")
    cols = scores.shape[-1]
    if cols % m:
        raise ValueError(f"nm_select: m={m} does not divide the last dimension ({cols})")
    keys = _keys(scores).reshape(-1, m) if scores.numel() else scores.new_zeros((0, m), dtype=torch.float64)
    return _prune_smallest_per_row(keys, n).reshape(scores.shape)
