"""The benchmark's cases: what each one calls, in torch and in fastprune."""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import torch.nn.utils.prune as torch_prune
from torch import nn

from ..core import api as fastprune_api
from ..maskset import MaskSet, sparsify_
from .floors import FLOORS, Floor

__all__ = ["CASES", "GLOBAL_CASES", "FORWARD_CASES", "CASE_TITLES", "CASE_FLOORS", "LIBRARIES", "library",
           "prune_call", "pairs", "case_floor"]

#: Every case, in the order the table lists them.
CASES = ("global_l1", "local_l1", "ln_structured", "forward", "forward_bool", "sparsify")
#: Cases whose selection is global (one threshold across all layers).
GLOBAL_CASES = ("global_l1", "sparsify", "forward", "forward_bool")
#: Cases that time the forward pass of a model pruned by global L1.
FORWARD_CASES = ("forward", "forward_bool")
#: Row titles of the table.
CASE_TITLES = {
    "global_l1": "global L1 (global_unstructured)",
    "local_l1": "local L1 (l1_unstructured per layer)",
    "ln_structured": "ln_structured (n=2, dim=0)",
    "forward": "pruned forward (mask-multiply hooks)",
    "forward_bool": "pruned forward, fastprune bool masks",
    "sparsify": "sparsify_ in place (torch: global + remove)",
}
#: The floor each case is judged against (a key of :data:`~fastprune.bench.FLOORS`): torch's layout
#: creates a mask and a pruned weight per layer, sparsify_ prunes in place with 1-bit masks, the
#: pruned forward does the dense forward's work plus the masks'.
CASE_FLOORS = {
    "global_l1": "two_copies",
    "local_l1": "two_copies",
    "ln_structured": "two_copies",
    "forward": "dense_forward",
    "forward_bool": "dense_forward",
    "sparsify": "in_place_bits",
}
#: The two libraries compared.
LIBRARIES = ("torch", "fastprune")


def library(lib: str):
    """The pruning module of ``lib``: ``torch.nn.utils.prune`` or fastprune's torch-compatible API.

    Raises:
        ValueError: ``lib`` is neither ``"torch"`` nor ``"fastprune"``.
    """
    if lib == "torch":
        return torch_prune
    if lib == "fastprune":
        return fastprune_api
    raise ValueError(f"lib must be one of {LIBRARIES}, got {lib!r}")


def case_floor(case: str) -> Floor:
    """The :class:`~fastprune.bench.Floor` that ``case`` is judged against.

    Raises:
        ValueError: unknown ``case``.

    Example::

        >>> case_floor("sparsify").name
        'in_place_bits'
    """
    if case not in CASE_FLOORS:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    return FLOORS[CASE_FLOORS[case]]


def pairs(model: Iterable[nn.Module], name: str = "weight") -> List[Tuple[nn.Module, str]]:
    """``(module, name)`` for every layer: the ``parameters`` argument of global pruning."""
    return [(m, name) for m in model]


def prune_call(lib: str, case: str, model, amount: float) -> Optional[MaskSet]:
    """The operation the benchmark times for ``case`` with library ``lib``.

    The forward cases prune here with global L1; their forward pass is timed
    by the worker.

    Args:
        lib: ``"torch"`` or ``"fastprune"``.
        case: one of :data:`CASES`.
        model: the layers to prune (their ``weight``).
        amount: fraction to prune.

    Returns:
        the :class:`~fastprune.MaskSet` of fastprune's ``sparsify`` case (its
        masks are read from it), else ``None``.

    Raises:
        ValueError: unknown ``case`` or ``lib``.
    """
    P = library(lib)
    if case == "global_l1" or case in FORWARD_CASES:
        P.global_unstructured(pairs(model), pruning_method=P.L1Unstructured, amount=amount)
    elif case == "local_l1":
        for m in model:
            P.l1_unstructured(m, "weight", amount=amount)
    elif case == "ln_structured":
        for m in model:
            P.ln_structured(m, "weight", amount=amount, n=2, dim=0)
    elif case == "sparsify":
        if lib == "fastprune":
            return sparsify_(pairs(model), amount)
        # torch's nearest equivalent of an in-place prune: prune, then make it permanent
        P.global_unstructured(pairs(model), pruning_method=P.L1Unstructured, amount=amount)
        for m in model:
            P.remove(m, "weight")
    else:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    return None
