"""fastprune: torch.nn.utils.prune on C++/CUDA kernels.

``import fastprune as prune`` is a drop-in replacement for
``import torch.nn.utils.prune as prune``: same names, signatures and
reparametrisation, same masks, less time and memory.
"""
from ._version import __version__
from ._ext import build_info
from . import ops
from .methods import (
    BasePruningMethod,
    CustomFromMask,
    Identity,
    L1Unstructured,
    LnStructured,
    PruningContainer,
    RandomStructured,
    RandomUnstructured,
)
from .functional import (
    _compute_nparams_toprune,
    _compute_norm,
    _validate_pruning_amount,
    _validate_pruning_amount_init,
    _validate_pruning_dim,
    _validate_structured_pruning,
    custom_from_mask,
    global_unstructured,
    identity,
    is_pruned,
    l1_unstructured,
    ln_structured,
    random_structured,
    random_unstructured,
    remove,
)

# Feature modules register their public names below, one import line each.
# --- feature imports ---
from .lean import MaskSet, sparsify_
from . import scores
from .at_init import force, iterative_snip, snip, synflow
from .lottery import LotteryTicket, iterative_magnitude_pruning, pruning_schedule
from .patch import is_torch_patched, patch_torch
from .structured import DependencyGraph, Plan, prune_channels, remove_masked_channels
