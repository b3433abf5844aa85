"""The floor of each case: the least memory work that produces what the case must produce.

A case's time means little on its own: the benchmark compares it with its
*floor*, measured in the same run and in the same setting (a fresh process,
the same model, the same number of runs and the same steps between them), so
that the ratio says how far the call is from what no implementation can beat:

- ``two_copies`` (``global_l1``, ``local_l1``, ``ln_structured``): torch's
  layout creates two new tensors of the weights' size, the mask and the pruned
  weight; the floor writes two copies of the weights into new memory
  (:func:`first_touch_copies`), selecting nothing. On CPU the kernel zero-fills
  every new page on its first touch; on CUDA new tensors are fresh device
  allocations. The worker hands freed memory back before every timed run of a
  case or a floor (:func:`~fastprune.bench.fresh_allocations`), so both always
  allocate new memory.
- ``in_place_bits`` (``sparsify``): one read and one write of the weights in
  place, plus 1-bit masks allocated fresh and written once
  (:func:`in_place_pass_with_bits`).
- ``dense_forward`` (``forward``, ``forward_bool``): the forward pass of the
  unpruned model on the same inputs (:func:`forward_all`), the pruned forward's
  work without the masks.

The benchmark command, the pytest-benchmark suite and
``benchmarks/cold_first_call.py`` all call the functions of this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Floor",
    "FLOORS",
    "first_touch_copies",
    "in_place_pass_with_bits",
    "forward_inputs",
    "forward_all",
]


def _weights(model: Sequence[nn.Module]) -> List[Tensor]:
    # the dense weight of a layer, pruned by torch's layout or not
    return [getattr(m, "weight_orig", m.weight).detach() for m in model]


def first_touch_copies(weights: Sequence[Tensor], copies: int = 2) -> List[Tensor]:
    """``copies`` new tensors per weight, each allocated and then written from it (a copy into new memory).

    Args:
        weights: the tensors to copy.
        copies: new tensors per weight (2: the mask and the pruned weight
            that torch's pruning layout creates).

    Returns:
        the new tensors, layer by layer; hold them for as long as the copies
        should stay allocated.

    Raises:
        ValueError: ``copies`` is negative.

    Example::

        >>> w = torch.arange(6.0).reshape(2, 3)
        >>> a, b = first_touch_copies([w])
        >>> torch.equal(a, w) and torch.equal(b, w) and a.data_ptr() != w.data_ptr() != b.data_ptr()
        True
    """
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    with torch.no_grad():
        return [w.detach().clone() for w in weights for _ in range(copies)]


def in_place_pass_with_bits(weights: Sequence[Tensor]) -> List[Tensor]:
    """One read and one write of every weight in place, and a new 1-bit mask per weight, written once.

    The weights keep their values (they are multiplied by 1); every mask
    (``ceil(numel / 8)`` bytes, the packed format of :mod:`fastprune.ops`) is
    allocated here and filled with ones (all units kept).

    Args:
        weights: the tensors (e.g. the layers' ``weight``).

    Returns:
        the new packed masks (uint8, one per weight).

    Example::

        >>> w = torch.arange(10.0)
        >>> bits = in_place_pass_with_bits([w])
        >>> bits[0].tolist(), w[3].item()
        ([255, 255], 3.0)
    """
    bits = []
    with torch.no_grad():
        for w in weights:
            w = w.detach()
            w.mul_(1)
            bits.append(torch.empty((w.numel() + 7) // 8, dtype=torch.uint8, device=w.device).fill_(255))
    return bits


def forward_inputs(model: Sequence[nn.Module], dtype, device) -> Dict[int, Tensor]:
    """One input row per distinct ``in_features`` of the layers, the same in every process.

    Args:
        model: the layers (pruned by torch's layout or not).
        dtype, device: of the inputs.

    Returns:
        ``in_features -> tensor of shape (1, in_features)``, drawn from a
        generator seeded with ``in_features``.

    Example::

        >>> xs = forward_inputs([torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)], torch.float32, "cpu")
        >>> list(xs), xs[4].shape
        ([4], torch.Size([1, 4]))
    """
    xs = {}
    for w in _weights(model):
        n = w.shape[1]
        if n not in xs:
            xs[n] = torch.randn(1, n, generator=torch.Generator().manual_seed(n)).to(dtype=dtype, device=device)
    return xs


def forward_all(model: Sequence[nn.Module], xs: Mapping[int, Tensor]) -> List[Tensor]:
    """Every layer's output on its input row from :func:`forward_inputs` (no autograd).

    A pruned layer recomputes its weight in its forward pre-hook; an unpruned
    one multiplies by its weight directly: the dense forward is the pruned
    forward's floor.

    Args:
        model: the layers.
        xs: the inputs, by ``in_features``.

    Returns:
        one output per layer.

    Example::

        >>> lin = torch.nn.Linear(4, 2)
        >>> out = forward_all([lin], forward_inputs([lin], torch.float32, "cpu"))
        >>> out[0].shape
        torch.Size([1, 2])
    """
    with torch.no_grad():
        return [m(xs[getattr(m, "weight_orig", m.weight).shape[1]]) for m in model]


@dataclass(frozen=True)
class Floor:
    """One floor: what it does, how to run it on a model, and how much memory it needs.

    Attributes:
        name: its key in :data:`FLOORS`.
        what: one line for the table's notes.
        run: ``run(model, xs)`` does the floor's work once on the layers
            ``model`` (``xs``: the forward inputs, or ``None`` for floors
            that need none) and returns what it allocated, to be held until
            the next run, as a case holds its masks.
        forward: it is timed like the forward cases (at least
            :data:`~fastprune.bench.worker.FORWARD_MIN_REPEAT` runs).
        need: ``need(model_bytes, numel)``: bytes it allocates above the model.
    """

    name: str
    what: str
    run: Callable[[Sequence[nn.Module], Optional[Mapping[int, Tensor]]], object]
    forward: bool
    need: Callable[[int, int], int]


#: The floors, by name (see the module docstring); :data:`~fastprune.bench.CASE_FLOORS` maps cases to them.
FLOORS: Dict[str, Floor] = {
    f.name: f
    for f in (
        Floor(
            "two_copies",
            "two first-touch copies of the weights (the mask and the pruned weight torch's layout creates), "
            "nothing selected",
            lambda model, xs: first_touch_copies(_weights(model), 2),
            False,
            lambda model_bytes, numel: 2 * model_bytes,
        ),
        Floor(
            "in_place_bits",
            "one read and write of the weights in place plus fresh 1-bit masks (N/8 bytes), nothing selected",
            lambda model, xs: in_place_pass_with_bits(_weights(model)),
            False,
            lambda model_bytes, numel: (numel + 7) // 8,
        ),
        Floor(
            "dense_forward",
            "the dense forward (the same layers unpruned, the same inputs)",
            lambda model, xs: forward_all(model, xs),
            True,
            lambda model_bytes, numel: 0,
        ),
    )
}
