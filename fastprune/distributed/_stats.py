"""The light part of the distributed feature: its error type and its call statistics.

Kept apart from the handler so that ``import fastprune`` does not import
``torch.distributed.tensor`` (seconds of import time) for programs that never
shard anything.
"""
from __future__ import annotations

_LAST_STATS: dict = {}


def last_call_stats() -> dict:
    """Communication of the last sharded pruning call made by this process.

    Returns:
        a dict with ``bytes`` (payload this process sent and received), the
        number of ``collectives``, ``radix_passes`` (histogram all-reduces over
        the keys), ``tie_passes`` (histogram all-reduces over the global
        indices of tied units) and ``world_size``; empty before any call.

    Example::

        fastprune.sparsify_(model, 0.5)
        print(fastprune.distributed.last_call_stats()["bytes"])
    """
    return dict(_LAST_STATS)


class ShardedInputError(ValueError):
    """Raised on every process when the processes' pruning calls do not agree."""
