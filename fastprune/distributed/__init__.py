"""Exact pruning of sharded models on ``torch.distributed``.

Importing this package (``import fastprune`` does) registers a handler in
:mod:`fastprune.core.sharding`: from then on :func:`fastprune.global_unstructured`,
:func:`fastprune.l1_unstructured`, :func:`fastprune.random_unstructured`,
:func:`fastprune.sparsify_` and :class:`fastprune.MaskSet` accept DTensor
parameters (tensor parallel ``Shard`` / ``Replicate`` placements, FSDP2's
sharded parameters, uneven shards) and give on every process the masks the
same call computes in one process on the gathered model. See
``docs/distributed.md``.

Where ``torch.distributed`` (or DTensor) is not available, importing this
package does nothing and :data:`AVAILABLE` is ``False``.
"""
from __future__ import annotations

AVAILABLE = False

try:
    import torch.distributed as _dist

    if _dist.is_available():
        from torch.distributed.tensor import DTensor as _DTensor  # noqa: F401

        AVAILABLE = True
except ImportError:  # pragma: no cover - builds of torch without distributed
    AVAILABLE = False

if AVAILABLE:
    from ..core.sharding import register_sharded_handler
    from ._handler import DTensorHandler, ShardedInputError, last_call_stats

    HANDLER = DTensorHandler()
    register_sharded_handler(HANDLER)
    __all__ = ["AVAILABLE", "DTensorHandler", "ShardedInputError", "last_call_stats"]
else:  # pragma: no cover
    __all__ = ["AVAILABLE"]
