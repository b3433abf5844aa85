"""Masks: stored as bits, compared with torch's, and checked against the weights they were chosen from.

Masks travel between processes as *bit files*: every layer's mask packed one
bit per unit (non-zero = kept, little bit order, as
:func:`fastprune.ops.pack_mask` packs them), layers one after the other.

:func:`compare_masks` is the one comparison the benchmarks use. Two correct
selections of the k smallest scores can differ only among units whose score
equals the selection threshold (a tie): torch's ``topk`` breaks ties
arbitrarily, fastprune by lower index. So masks that differ are accepted as
*ties* when every differing unit has exactly the threshold score.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..ops import pack_mask, unpack_mask
from .cases import GLOBAL_CASES
from .models import layer_weight

__all__ = [
    "write_mask_file",
    "read_mask_file",
    "unit_scores",
    "layer_scores",
    "MaskComparison",
    "compare_masks",
    "compare_bits",
    "differences_are_ties",
    "check_exact",
]

_CHUNK = 1 << 24  # bytes per piece when a bit file is read without its layer shapes

MaskLike = Union[Tensor, Callable[[], Tensor]]


def write_mask_file(path: str, masks: Sequence[Tensor], packed: bool = False) -> None:
    """Write ``masks`` to a bit file.

    Args:
        path: the file to (over)write.
        masks: one mask per layer (any dtype; non-zero = kept), or their packed
            forms when ``packed`` is true.
        packed: ``masks`` are already packed (uint8, one bit per unit).
    """
    with open(path, "wb") as f:
        for m in masks:
            f.write((m if packed else pack_mask(m)).cpu().numpy().tobytes())


def read_mask_file(path: str, shapes: Optional[Sequence[Sequence[int]]] = None) -> List[Tensor]:
    """The packed masks of a bit file.

    Args:
        path: the file.
        shapes: the layers' shapes, to split the file into one packed mask per
            layer; ``None`` splits it into equal pieces (enough to count bits).

    Returns:
        uint8 tensors on the CPU.

    Raises:
        ValueError: the file's size does not match ``shapes``.
    """
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    if shapes is None:
        return list(torch.split(data, _CHUNK))
    sizes = [(math.prod(s) + 7) // 8 for s in shapes]
    if sum(sizes) != data.numel():
        raise ValueError(f"{path}: {data.numel()} bytes, the layer shapes need {sum(sizes)}")
    return list(torch.split(data, sizes))


def unit_scores(weight: Tensor, rows: bool = False) -> Tensor:
    """The score every unit of ``weight`` was ranked by, flat and in float64.

    Args:
        weight: the original (unpruned) weight.
        rows: structured selection along dim 0 (``ln_structured(n=2, dim=0)``):
            every unit gets its row's L2 norm; otherwise ``|w|`` (L1 selection).

    Returns:
        a flat float64 tensor with one score per unit of ``weight``.
    """
    if not rows:
        return weight.detach().to(torch.float64).abs().reshape(-1)
    # Row norms in the weight's own dtype, as torch ranks them: two rows whose norms are
    # equal there are tied, even where their float64 norms differ.
    flat = weight.detach().reshape(weight.shape[0], -1)
    norms = torch.linalg.vector_norm(flat, dim=1).to(torch.float64)
    return norms[:, None].expand_as(flat).reshape(-1)


def layer_scores(shapes, dtype, device, seed: int, rows: bool = False) -> Callable[[int], Tensor]:
    """``i -> unit_scores`` of layer ``i`` of a benchmark model, regenerated from its seed.

    Args:
        shapes: the model's layer shapes.
        dtype, device, seed: as the model was built (see :func:`~fastprune.bench.build_model`).
        rows: see :func:`unit_scores`.
    """
    return lambda i: unit_scores(layer_weight(tuple(shapes[i]), dtype, device, seed, i), rows)


@dataclass
class MaskComparison:
    """How two sets of masks differ.

    Attributes:
        differing: number of units whose bits differ; -1 if the masks do not
            have the same layout.
        ties_only: every differing unit's score equals the selection threshold
            (true when nothing differs; false when no scores were given).
    """

    differing: int
    ties_only: bool

    @property
    def identical(self) -> bool:
        """No bit differs."""
        return self.differing == 0

    @property
    def verdict(self) -> str:
        """``"yes"``, ``"ties (n bits)"`` or ``"NO (n bits)"``, as the tables print it."""
        if self.differing == 0:
            return "yes"
        if self.differing < 0:
            return "NO (different layouts)"
        return f"{'ties' if self.ties_only else 'NO'} ({self.differing} bits)"


def compare_masks(
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    scores: Optional[Callable[[int], Tensor]] = None,
    threshold: Optional[float] = None,
) -> MaskComparison:
    """Compare two sets of packed masks, telling ties apart from real differences.

    Args:
        a: packed masks (uint8, one per tensor), e.g. fastprune's.
        b: the packed masks to compare with, e.g. torch's.
        scores: ``i -> flat float64 scores of tensor i`` (see :func:`unit_scores`),
            called only for tensors whose masks differ; without it every
            difference counts as real.
        threshold: the selection threshold of a global selection (the largest
            pruned score over all tensors); ``None`` for a per-tensor selection,
            where each tensor's threshold is its largest pruned score in ``a``.

    Returns:
        a :class:`MaskComparison`.

    Example::

        >>> from fastprune.ops import pack_mask
        >>> w = torch.tensor([0.1, 0.2, 0.2, 0.3])
        >>> mine, theirs = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
        >>> compare_masks([pack_mask(mine)], [pack_mask(theirs)], lambda i: unit_scores(w)).verdict
        'ties (2 bits)'
    """
    if len(a) != len(b) or any(x.numel() != y.numel() for x, y in zip(a, b)):
        return MaskComparison(-1, False)
    differing, ties_only = 0, True
    for i, (x, y) in enumerate(zip(a, b)):
        if torch.equal(x, y):
            continue
        diff = unpack_mask(torch.bitwise_xor(x, y), 8 * x.numel())
        differing += int(diff.sum())
        if not ties_only:
            continue  # still counting bits
        if scores is None:
            ties_only = False
            continue
        s = scores(i).to(diff.device)
        n = s.numel()
        level = threshold
        if level is None:
            pruned = ~unpack_mask(x, n)
            level = float(s[pruned].max()) if bool(pruned.any()) else None
        ties_only = level is not None and not bool(diff[n:].any()) and bool((s[diff[:n]] == level).all())
    return MaskComparison(differing, ties_only)


def compare_bits(path_a: str, path_b: str) -> int:
    """Number of differing bits between two bit files (-1 if their sizes differ).

    Example::

        >>> compare_bits("fastprune.bits", "torch.bits")  # doctest: +SKIP
        0
    """
    if os.path.getsize(path_a) != os.path.getsize(path_b):
        return -1
    return compare_masks(read_mask_file(path_a), read_mask_file(path_b)).differing


def differences_are_ties(path_a, path_b, shapes, dtype, device, seed: int, threshold: Optional[float],
                         rows: bool = False) -> bool:
    """True if two bit files of a benchmark model differ only among tied units.

    Args:
        path_a, path_b: the bit files (``path_a``'s masks set per-tensor thresholds).
        shapes, dtype, device, seed: the model (its weights are regenerated).
        threshold: the global selection threshold; ``None`` for per-tensor selection.
        rows: the masks select rows by L2 norm (see :func:`unit_scores`).
    """
    a, b = read_mask_file(path_a, shapes), read_mask_file(path_b, shapes)
    return compare_masks(a, b, layer_scores(shapes, dtype, device, seed, rows), threshold).ties_only


def check_exact(case: str, model, masks: Sequence[MaskLike], amount: float, seed: int, dtype,
                device) -> Dict[str, object]:
    """Check ``case``'s masks of a benchmark model against its regenerated original weights.

    A selection is exact when exactly ``round(amount * units)`` units are pruned
    and no pruned unit scores above a kept one: over all layers at once for the
    global cases, per layer for ``local_l1``, per layer and on whole rows for
    ``ln_structured``.

    Args:
        case: the benchmark case.
        model: the pruned layers (their ``weight`` or ``weight_orig`` gives the shapes).
        masks: one boolean keep-mask per layer, or a callable returning it (to
            hold one mask at a time).
        amount: the fraction pruned.
        seed, dtype, device: as the model was built.

    Returns:
        a dict with ``exact``; for the global cases also ``k``, ``pruned``,
        ``threshold`` (the largest pruned |w|) and ``min_kept``; for the others
        ``bad_layers`` when not exact.
    """
    shapes = [tuple(getattr(m, "weight_orig", m.weight).shape) for m in model]
    rows = case == "ln_structured"
    scores = layer_scores(shapes, dtype, device, seed, rows)
    total_pruned, total_units = 0, 0
    max_pruned, min_kept = -math.inf, math.inf
    bad: List[int] = []
    for i, (shape, mask) in enumerate(zip(shapes, masks)):
        keep = (mask() if callable(mask) else mask).to(device=device, dtype=torch.bool)
        s = scores(i)
        if rows:  # units are rows: every row wholly kept or wholly pruned
            keep2d = keep.reshape(shape[0], -1)
            if not bool((keep2d.all(dim=1) | (~keep2d).all(dim=1)).all()):
                bad.append(i)
                continue
            keep, s = keep2d[:, 0], s.reshape(shape[0], -1)[:, 0]
        keep = keep.reshape(-1)
        n_pruned = int((~keep).sum())
        top_pruned = float(s[~keep].max()) if n_pruned else -math.inf
        low_kept = float(s[keep].min()) if n_pruned < keep.numel() else math.inf
        if case in GLOBAL_CASES:
            total_pruned += n_pruned
            total_units += keep.numel()
            max_pruned, min_kept = max(max_pruned, top_pruned), min(min_kept, low_kept)
        elif n_pruned != round(amount * keep.numel()) or top_pruned > low_kept:
            bad.append(i)
    if case not in GLOBAL_CASES:
        return {"exact": not bad, **({"bad_layers": bad} if bad else {})}
    k = round(amount * total_units)
    return {"exact": total_pruned == k and max_pruned <= min_kept, "k": k, "pruned": total_pruned,
            "threshold": max_pruned, "min_kept": min_kept}
