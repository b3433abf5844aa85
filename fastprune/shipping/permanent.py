"""Making pruning permanent: plain parameters with their zeros, no masks, no hooks."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from ..core.functional import remove
from ..maskset import release_parameters

__all__ = ["make_permanent", "pruned_tensors", "permanent_state_dict"]

TorchBase = torch_prune.BasePruningMethod


def pruned_tensors(model: nn.Module, remove_duplicate: bool = True) -> List[Tuple[str, nn.Module, str]]:
    """``(qualified name, module, tensor name)`` of every tensor carrying a pruning hook.

    Hooks of fastprune and of ``torch.nn.utils.prune`` are both found (fastprune's
    methods subclass torch's). A module reached under several names is listed
    once, unless ``remove_duplicate=False`` (then once per name, as in
    ``state_dict()``).

    Args:
        model: any ``nn.Module``.
        remove_duplicate: list a shared module once (default) or under every name.

    Returns:
        a list of ``(qualified name, module, tensor name)``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Example::

        >>> fastprune.l1_unstructured(net.fc, "weight", 0.5)
        >>> [q for q, _, _ in pruned_tensors(net)]
        ['fc.weight']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = []
    for qualname, module in model.named_modules(remove_duplicate=remove_duplicate):
        for hook in module._forward_pre_hooks.values():
            name = getattr(hook, "_tensor_name", None)
            if isinstance(hook, TorchBase) and name is not None:
                found.append((f"{qualname}.{name}" if qualname else name, module, name))
    return found


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove every pruning reparametrisation and every fastprune mask hook of ``model``.

    One call replaces a ``prune.remove(module, name)`` per pruned tensor:

    * every ``name_orig`` / ``name_mask`` / forward-pre-hook reparametrisation,
      fastprune's or ``torch.nn.utils.prune``'s (containers of repeated pruning
      included), becomes a plain parameter ``name`` holding ``orig * mask``, as
      ``remove`` makes it;
    * every :class:`fastprune.MaskSet` covering a parameter of ``model`` is
      detached (its gradient and optimizer hooks removed) and the masks of the
      model's parameters are forgotten, so a later ``sparsify_`` starts afresh.

    The weights keep their zeros; the forward is unchanged.

    Args:
        model: the model (any ``nn.Module``); it is modified in place.

    Returns:
        ``model``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Example::

        import fastprune as prune
        net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        prune.l1_unstructured(net[0], "weight", amount=0.5)
        prune.make_permanent(net)
        assert not prune.is_pruned(net) and sorted(net[0].state_dict()) == ["bias", "weight"]
    """
    for _, module, name in pruned_tensors(model):
        remove(module, name)
    release_parameters(model.parameters())
    return model


def permanent_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` as it would be after :func:`make_permanent`, without changing ``model``.

    Each pruned tensor's ``name_orig`` entry is replaced, at its place, by
    ``name`` holding ``orig * mask`` (computed by its own hook, exactly as
    ``remove`` would), and ``name_mask`` is dropped. Other entries are the
    model's own tensors (not copies).

    Args:
        model: the (possibly pruned) model; not modified.

    Returns:
        an ``OrderedDict`` from qualified names to tensors, in ``state_dict()`` order.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Example::

        >>> sd = permanent_state_dict(net)     # 'fc.weight' (with zeros), no '_orig' / '_mask'
        >>> Net().load_state_dict(sd)           # loads strictly into an unpruned model
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    state = model.state_dict(keep_vars=False)
    effective = {}
    for qual, module, name in pruned_tensors(model, remove_duplicate=False):
        hook = next(
            h for h in module._forward_pre_hooks.values()
            if isinstance(h, TorchBase) and getattr(h, "_tensor_name", None) == name
        )
        with torch.no_grad():
            effective[qual] = hook.apply_mask(module).detach()
    out = OrderedDict()
    for key, value in state.items():
        if key.endswith("_orig") and key[: -len("_orig")] in effective:
            base = key[: -len("_orig")]
            out[base] = effective[base]
        elif key.endswith("_mask") and key[: -len("_mask")] in effective:
            continue
        else:
            out[key] = value
    return out
