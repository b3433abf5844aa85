"""fastprune: torch.nn.utils.prune on C++/CUDA kernels.

``import fastprune as prune`` is a drop-in replacement for
``import torch.nn.utils.prune as prune``: same names, signatures and
reparametrisation, same masks, less time and memory.

The package is layered; each layer imports only the ones before it:

1. ``fastprune.ops``: the kernels as dispatcher ops (``torch.ops.fastprune.*``),
   their fake kernels and autograd, and ``ops.reference``, the pure-torch
   specification and fallback.
2. ``fastprune.core``: the torch-compatible API (methods, functions,
   reparametrisation) and ``core.targets``, which resolves and validates what
   is pruned for every feature.
3. Features: ``maskset`` (in-place pruning with 1-bit masks), ``at_init``
   (SNIP, FORCE, SynFlow), ``lottery``, ``lightning``, ``structured``.
4. Tooling: ``fastprune.bench``.
"""
from ._version import __version__
from .ops import build_info
from . import ops
from .core.api import *  # noqa: F401,F403 (torch's names)
from .core import api as _api
from .core.errors import PruningNameError, PruningShapeError
from .maskset import MaskSet, sparsify_
from .at_init import force, iterative_snip, scores, snip, synflow
from .at_init import force_scores, magnitude_scores, snip_scores, synflow_scores
from .schedule import pruning_schedule
from .lottery import LotteryTicket, iterative_magnitude_pruning
from .core.patch import is_torch_patched, patch_torch
from .shipping import load_pruned_state_dict, load_sparse, load_sparse_pretrained, make_permanent, save_sparse
from .structured import ConfigError, DependencyGraph, Plan, prune_channels, remove_masked_channels, rewrite_config
from . import distributed
from . import llm

# What fastprune adds on top of torch's API.
EXTRA_NAMES = [
    "__version__",
    "build_info",
    "ops",
    "PruningShapeError",
    "PruningNameError",
    "sparsify_",
    "MaskSet",
    "scores",
    "snip",
    "iterative_snip",
    "force",
    "synflow",
    "snip_scores",
    "force_scores",
    "synflow_scores",
    "magnitude_scores",
    "pruning_schedule",
    "LotteryTicket",
    "iterative_magnitude_pruning",
    "patch_torch",
    "is_torch_patched",
    "DependencyGraph",
    "Plan",
    "prune_channels",
    "remove_masked_channels",
    "rewrite_config",
    "ConfigError",
    "make_permanent",
    "load_pruned_state_dict",
    "save_sparse",
    "load_sparse",
    "load_sparse_pretrained",
    "distributed",
    "llm",
]

__all__ = list(_api.__all__) + EXTRA_NAMES
