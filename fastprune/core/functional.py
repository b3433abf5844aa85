"""The functions of ``torch.nn.utils.prune``, same names, signatures and results."""
from __future__ import annotations

import torch
import torch.nn.utils.prune as torch_prune

from .. import ops
from .reparam import install_many
from .sharding import sharded_handler
from .targets import existing_mask, global_scores, global_targets
from .validation import (
    _compute_nparams_toprune,
    _validate_pruning_amount,
    _validate_pruning_amount_init,
    _validate_pruning_dim,
    _validate_structured_pruning,
)
from .methods import (
    CustomFromMask,
    Identity,
    L1Unstructured,
    LnStructured,
    PruningContainer,
    RandomStructured,
    RandomUnstructured,
    torch_compute_norm,
    uses_fast_l1,
)

TorchBase = torch_prune.BasePruningMethod
TorchContainer = torch_prune.PruningContainer


def identity(module, name):
    """Reparametrise ``module.<name>`` with a mask of ones; returns ``module``."""
    Identity.apply(module, name)
    return module


def random_unstructured(module, name, amount):
    """Prune ``amount`` randomly chosen (still unpruned) units of ``module.<name>``."""
    RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module, name, amount, importance_scores=None):
    """Prune the ``amount`` (still unpruned) units of ``module.<name>`` with the lowest |score|."""
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_structured(module, name, amount, dim):
    """Prune ``amount`` randomly chosen channels of ``module.<name>`` along ``dim``."""
    RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module, name, amount, n, dim, importance_scores=None):
    """Prune the ``amount`` channels along ``dim`` with the lowest L``n`` norm."""
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module, name, mask):
    """Prune ``module.<name>`` with the given ``mask``."""
    CustomFromMask.apply(module, name, mask)
    return module


def _pruning_method_instance(pruning_method, kwargs):
    if not callable(pruning_method):
        raise TypeError(f"pruning_method must be a pruning method class, got {pruning_method!r}")
    method = pruning_method(**kwargs)
    if not isinstance(method, TorchBase):
        raise TypeError(f"pruning_method must build a BasePruningMethod, got {type(method).__name__}")
    method._tensor_name = "temp"
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError(
            'Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. '
            f"Found method {pruning_method} of type {method.PRUNING_TYPE}"
        )
    return method


def global_unstructured(parameters, pruning_method, importance_scores=None, **kwargs) -> None:
    """Prune all ``parameters`` together, as one tensor, with an unstructured ``pruning_method``.

    The L1 method (fastprune's or torch's class) runs as one k-selection over
    all tensors in place, without concatenating them; the masks equal torch's
    (ties: lower index in the order given pruned first). Any other unstructured
    method runs on the concatenated scores exactly as torch does. Either way,
    nothing is modified unless every mask could be computed.
    """
    targets = global_targets(parameters)
    scores = global_scores(targets, importance_scores)
    method = _pruning_method_instance(pruning_method, kwargs)
    if not targets:
        if _compute_nparams_toprune(method.amount, 0) if hasattr(method, "amount") else 0:
            raise ValueError(f"amount={method.amount} should be smaller than the number of parameters to prune=0")
        return

    params = [getattr(m, n) for m, n in targets]
    masks = [existing_mask(m, n) for m, n in targets]
    handler = sharded_handler(params + scores)
    if handler is not None:  # sharded parameters: the selection spans every process
        new_masks = handler.global_masks(targets, scores, method, masks)
    elif uses_fast_l1(method):
        selectable = sum(p.numel() if mk is None else int(torch.count_nonzero(mk)) for p, mk in zip(params, masks))
        k = _compute_nparams_toprune(method.amount, selectable)
        _validate_pruning_amount(k, selectable)
        new_masks = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in params]
        ops.kselect_([s.detach() for s in scores], masks, new_masks, k, largest=False, exclude_masked=True)
    else:
        new_masks = _global_masks_by_concatenation(method, params, scores, masks)

    entries = []
    for (module, name), mask in zip(targets, new_masks):
        hook = CustomFromMask(mask)
        hook._tensor_name = name
        entries.append((module, name, hook, mask))
    install_many(entries, PruningContainer)


def _global_masks_by_concatenation(method, params, scores, masks):
    """torch's algorithm for methods without a fast path: one flat tensor of scores."""
    flat_scores = torch.cat([s.detach().reshape(-1) for s in scores])
    flat_default = torch.cat(
        [
            (mk if mk is not None else torch.ones_like(p)).reshape(-1).to(flat_scores.dtype)
            for p, mk in zip(params, masks)
        ]
    )
    container = PruningContainer()
    container._tensor_name = "temp"
    container.add_pruning_method(method)
    final = container.compute_mask(flat_scores, flat_default)
    out, offset = [], 0
    for p in params:
        n = p.numel()
        out.append(final[offset:offset + n].reshape(p.shape).to(p.dtype).clone())
        offset += n
    return out


def remove(module, name):
    """Make the pruning of ``module.<name>`` permanent and drop the reparametrisation."""
    for k, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, TorchBase) and hook._tensor_name == name:
            hook.remove(module)
            del module._forward_pre_hooks[k]
            if not any(isinstance(h, TorchBase) for h in module._forward_pre_hooks.values()):
                module.__dict__.pop("__deepcopy__", None)
            return module
    raise ValueError(f"Parameter '{name}' of module {module} has to be pruned before pruning can be removed")


def is_pruned(module) -> bool:
    """True if ``module`` or any submodule carries a pruning hook (fastprune's or torch's)."""
    for _, submodule in module.named_modules():
        for hook in submodule._forward_pre_hooks.values():
            if isinstance(hook, TorchBase):
                return True
    return False


def _compute_norm(t, n, dim):
    """Per-channel L``n`` norm of ``t`` along ``dim`` (torch's helper of the same name)."""
    return torch_compute_norm(t, n, dim)
