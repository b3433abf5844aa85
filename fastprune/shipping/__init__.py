"""Saving and shipping pruned models.

* :func:`make_permanent`: every pruning reparametrisation and mask hook of a
  model removed in one call, the zeros kept.
* :func:`load_pruned_state_dict`: a state dict with ``*_orig`` / ``*_mask``
  keys loaded strictly into a freshly built model, its pruning re-created.
* :func:`save_sparse` / :func:`load_sparse`: safetensors checkpoints in which
  pruned tensors take a 1-bit mask plus their non-zero values, checksummed.
* :func:`load_sparse_pretrained`: such a folder of a transformers model (its
  config saved beside it) opened as the model, every weight loaded.
"""
from .permanent import make_permanent, permanent_state_dict, pruned_tensors
from .state_dict import load_pruned_state_dict
from .sparse_checkpoint import load_sparse, save_sparse
from .pretrained import load_sparse_pretrained

__all__ = [
    "make_permanent",
    "permanent_state_dict",
    "pruned_tensors",
    "load_pruned_state_dict",
    "save_sparse",
    "load_sparse",
    "load_sparse_pretrained",
]
