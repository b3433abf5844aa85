"""Structured pruning that physically removes channels.

:class:`DependencyGraph` traces a model and records which tensor dimensions
must lose the same channels; :meth:`DependencyGraph.plan` turns a request into
a :class:`Plan` of cuts; :func:`prune_channels` ranks and removes channel
groups in one call; :func:`remove_masked_channels` turns structured masks into
real removal; :func:`rewrite_config` states the new sizes in a transformers
config so the model reloads with ``from_pretrained``.

Modules: ``trace`` (export and its errors), ``nodes`` (fx node helpers),
``rules`` (per-op coupling rules, a registry), ``builder`` (union-find over
tensor dimensions), ``edges`` and ``notes`` (typed graph records), ``attrs``
(size attribute names), ``graph`` (the graph and its queries), ``plan`` (cuts
and their execution), ``importance``, ``report``, ``channels`` (the one-call
functions), ``hf_config`` (transformers configs), ``statistics`` (calibration
statistics for the data-driven importances and bias compensation), ``blocks``
(removing whole blocks).
"""
from .blocks import BlockRemoval, find_block_list, remove_blocks
from .channels import KINDS, group_kind, prune_channels, remove_masked_channels
from .graph import ChannelGroup, DependencyGraph
from .hf_config import ConfigError, register_config_family, rewrite_config
from .importance import IMPORTANCES, Importance, register_importance
from .plan import Cut, Plan
from .report import PruneReport, count_macs, count_params
from .statistics import CalibrationStats, InputStats, collect_statistics, saliency_of
from .trace import TraceError

__all__ = ["BlockRemoval", "CalibrationStats", "ChannelGroup", "ConfigError", "Cut",
           "DependencyGraph", "IMPORTANCES", "Importance", "InputStats", "KINDS", "Plan",
           "PruneReport", "TraceError", "collect_statistics", "count_macs", "count_params",
           "find_block_list", "group_kind", "prune_channels", "register_config_family",
           "register_importance", "remove_blocks", "remove_masked_channels", "rewrite_config",
           "saliency_of"]
