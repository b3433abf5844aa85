"""The torch-compatible API: ``torch.nn.utils.prune``'s methods, functions and reparametrisation.

Layer 2 of fastprune. ``errors`` and ``validation`` hold the exception types
and torch's argument helpers, ``targets`` resolves what is pruned (used by
every feature above this layer), ``reparam`` installs and removes the
``name_orig`` / ``name_mask`` / hook layout, ``methods`` the pruning-method
classes, ``functional`` the functions, ``patch`` the ``patch_torch`` switch.
"""
