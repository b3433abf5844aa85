"""Exact pruning of sharded models on ``torch.distributed``.

Importing this package (``import fastprune`` does) registers a handler in
:mod:`fastprune.core.sharding`: from then on :func:`fastprune.global_unstructured`,
:func:`fastprune.l1_unstructured`, :func:`fastprune.random_unstructured`,
:func:`fastprune.sparsify_` and :class:`fastprune.MaskSet` accept DTensor
parameters (tensor parallel ``Shard`` / ``Replicate`` placements, FSDP2's
sharded parameters, uneven shards) and give on every process the masks the
same call computes in one process on the gathered model. See
``docs/distributed.md``.

The handler is lazy: it imports ``torch.distributed.tensor`` and the
selection code only when a call meets a DTensor, which cannot happen before
the program itself imported ``torch.distributed.tensor``. Where
``torch.distributed`` is not available, nothing is registered and
:data:`AVAILABLE` is ``False``.

:mod:`fastprune.distributed.llm` holds the data-parallel calibration of
:mod:`fastprune.llm` (the block walker's reducer and scheduler over a process
group); :func:`fastprune.llm.prune` imports it only when a process group is
initialised.
"""
from __future__ import annotations

import sys

import torch

from ..core.sharding import register_sharded_handler
from ._stats import ShardedInputError, last_call_stats

AVAILABLE = bool(getattr(torch, "distributed", None) is not None and torch.distributed.is_available())

__all__ = ["AVAILABLE", "ShardedInputError", "last_call_stats"]


class _LazyDTensorHandler:
    """Claims DTensors; builds the real handler (``_handler.DTensorHandler``) on first use."""

    def __init__(self) -> None:
        self._impl = None

    def claims(self, tensors) -> bool:
        module = sys.modules.get("torch.distributed.tensor")
        if module is None:  # no DTensor can exist before its module is imported
            return False
        dtensor = module.DTensor
        return any(isinstance(t, dtensor) for t in tensors)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._impl is None:
            from ._handler import DTensorHandler

            self._impl = DTensorHandler()
        return getattr(self._impl, name)


if AVAILABLE:
    HANDLER = _LazyDTensorHandler()
    register_sharded_handler(HANDLER)
