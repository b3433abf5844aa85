"""Structured pruning that physically removes channels.

:class:`DependencyGraph` traces a model and records which tensor dimensions
must lose the same channels; :meth:`DependencyGraph.plan` turns a request into
a :class:`Plan` of cuts; :func:`prune_channels` ranks and removes channel
groups in one call; :func:`remove_masked_channels` turns structured masks into
real removal.
"""
from .graph import ChannelGroup, DependencyGraph, TraceError
from .plan import Cut, Plan
from .prune_channels import (
    PruneReport,
    count_macs,
    count_params,
    prune_channels,
    remove_masked_channels,
)

__all__ = ["ChannelGroup", "Cut", "DependencyGraph", "Plan", "PruneReport", "TraceError",
           "count_macs", "count_params", "prune_channels", "remove_masked_channels"]
