"""Every name of ``torch.nn.utils.prune``, implemented by fastprune.

``fastprune`` re-exports all of them, and ``patch_torch`` swaps them into
torch's module; both take the list from ``__all__`` here.
"""
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
from .validation import (
    _compute_nparams_toprune,
    _validate_pruning_amount,
    _validate_pruning_amount_init,
    _validate_pruning_dim,
    _validate_structured_pruning,
)
from .functional import _compute_norm

# The names of torch.nn.utils.prune, in torch's order, including the private
# helpers user code and torch's own tests call; ``patch_torch`` replaces these.
__all__ = [
    "BasePruningMethod",
    "PruningContainer",
    "Identity",
    "RandomUnstructured",
    "L1Unstructured",
    "RandomStructured",
    "LnStructured",
    "CustomFromMask",
    "identity",
    "random_unstructured",
    "l1_unstructured",
    "random_structured",
    "ln_structured",
    "global_unstructured",
    "custom_from_mask",
    "remove",
    "is_pruned",
    "_validate_pruning_amount_init",
    "_validate_pruning_amount",
    "_compute_nparams_toprune",
    "_validate_structured_pruning",
    "_validate_pruning_dim",
    "_compute_norm",
]

