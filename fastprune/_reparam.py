"""The ``name_orig`` / ``name_mask`` / forward-pre-hook reparametrisation.

Everything that changes a module lives here, and it changes nothing until the
new mask has been computed: a failing ``compute_mask`` (or bad argument) leaves
the module exactly as it was, parameter order and hooks included. The layout it
produces is torch's, so state_dicts cross between the two libraries.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Iterable, List, Optional, Tuple

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from . import ops
from ._validation import check_module_and_name, check_scores_shape

TorchBase = torch_prune.BasePruningMethod
TorchContainer = torch_prune.PruningContainer


class ModuleSnapshot:
    """Enough of a module's state to put it back exactly after a failed change."""

    def __init__(self, module: nn.Module, names: Iterable[str]) -> None:
        self.module = module
        self.parameters = OrderedDict(module._parameters)
        self.buffers = OrderedDict(module._buffers)
        self.non_persistent = set(module._non_persistent_buffers_set)
        self.hooks = OrderedDict(module._forward_pre_hooks)
        self.attributes = {n: module.__dict__[n] for n in names if n in module.__dict__}
        self.names = list(names)
        self.deepcopy = module.__dict__.get("__deepcopy__")
        self.containers = [
            (h, h._pruning_methods) for h in module._forward_pre_hooks.values() if isinstance(h, TorchContainer)
        ]
        flat = getattr(module, "_flat_weights", None)
        self.flat_weights = list(flat) if isinstance(flat, list) else None

    def restore(self) -> None:
        m = self.module
        for target, saved in ((m._parameters, self.parameters), (m._buffers, self.buffers), (m._forward_pre_hooks, self.hooks)):
            target.clear()
            target.update(saved)
        m._non_persistent_buffers_set.clear()
        m._non_persistent_buffers_set.update(self.non_persistent)
        for n in self.names:
            m.__dict__.pop(n, None)
        m.__dict__.update(self.attributes)
        if self.deepcopy is None:
            m.__dict__.pop("__deepcopy__", None)
        else:
            m.__dict__["__deepcopy__"] = self.deepcopy
        for container, methods in self.containers:
            container._pruning_methods = methods
        if self.flat_weights is not None:
            m._flat_weights = self.flat_weights


def pruning_hooks(module: nn.Module, name: str) -> List[Tuple[int, TorchBase]]:
    return [
        (k, h)
        for k, h in module._forward_pre_hooks.items()
        if isinstance(h, TorchBase) and getattr(h, "_tensor_name", None) == name
    ]


def _container_for_compute(old, method):
    """A container holding ``old``'s methods then ``method``, for computing the new mask.

    The module's own hook is not touched here (it is extended only once the mask
    exists). torch's container class is swapped for fastprune's: same result,
    but its L1 step runs on the kernel instead of gathering the survivors.
    """
    from .methods import PruningContainer

    if isinstance(old, TorchContainer):
        if type(old) in (TorchContainer, PruningContainer):
            temp = PruningContainer()
        else:
            temp = copy.copy(old)
        temp._tensor_name = old._tensor_name
        temp._pruning_methods = tuple(old._pruning_methods) + (method,)
        return temp
    temp = PruningContainer(old)
    temp.add_pruning_method(method)
    return temp


def apply_method(cls, module, name, args, kwargs, importance_scores):
    """``cls.apply``: compute the new mask, then reparametrise ``module.<name>``."""
    from .methods import accepts_ones_view, ones_view

    orig = check_module_and_name(module, name)
    existing = pruning_hooks(module, name)
    if len(existing) > 1:
        raise AssertionError(
            f"Avoid adding multiple pruning hooks to the same tensor {name} of module {module}. "
            "Use a PruningContainer."
        )
    if not existing and name not in module._parameters:
        raise TypeError(f"name={name!r}: {type(module).__name__}.{name} is not a parameter and cannot be pruned")
    if importance_scores is not None:
        check_scores_shape(importance_scores, orig, "importance_scores")
    else:
        importance_scores = orig

    method = cls(*args, **kwargs)
    method._tensor_name = name
    if not existing:
        default_mask = ones_view(orig) if accepts_ones_view(cls) else torch.ones_like(orig)
        mask = method.compute_mask(importance_scores, default_mask=default_mask)
    else:
        default_mask = getattr(module, name + "_mask").detach()
        container = _container_for_compute(existing[0][1], method)
        mask = container.compute_mask(importance_scores, default_mask=default_mask)
        if mask is default_mask:  # some methods hand the default back; the buffer must not alias itself
            mask = mask.clone()
    return install(module, name, method, mask)


def install(module, name, method, mask):
    """Register ``mask`` and ``method`` for ``module.<name>``; returns the hook. Rolls back on failure."""
    snapshot = ModuleSnapshot(module, [name])
    try:
        return _install_unchecked(module, name, method, mask)
    except BaseException:
        snapshot.restore()
        raise


def _install_unchecked(module, name, method, mask):
    from .methods import PruningContainer

    previous = pruning_hooks(module, name)
    for k, _ in previous:
        del module._forward_pre_hooks[k]
    if previous:
        old = previous[0][1]
        if isinstance(old, TorchContainer):
            old.add_pruning_method(method)
            hook = old
        else:
            hook = PruningContainer(old)
            hook.add_pruning_method(method)
    else:
        hook = method
        orig = module._parameters[name]
        module.register_parameter(name + "_orig", orig)
        del module._parameters[name]
    module.register_buffer(name + "_mask", mask)
    setattr(module, name, hook.apply_mask(module))
    module.register_forward_pre_hook(hook)
    module.__dict__["__deepcopy__"] = DeepcopyPruned(module)
    return hook


def install_many(entries) -> None:
    """``install`` for many (module, name, hook, mask) at once: all of them or none."""
    snapshots = {}
    for module, name, _, _ in entries:
        key = id(module)
        if key not in snapshots:
            names = [n for m, n, _, _ in entries if m is module]
            snapshots[key] = ModuleSnapshot(module, names)
    try:
        for module, name, hook, mask in entries:
            _install_unchecked(module, name, hook, mask)
    except BaseException:
        for snap in snapshots.values():
            snap.restore()
        raise


def remove_reparametrization(method, module) -> None:
    """Make ``method``'s pruning of ``module`` permanent (torch's ``remove``)."""
    name = method._tensor_name
    orig = module._parameters[name + "_orig"]
    mask = module._buffers[name + "_mask"]
    if _uses_fast_apply(method):
        # orig * mask in place: no second copy of the weight.
        with torch.no_grad():
            ops.mask_mul_([orig.data], [mask])
    else:
        weight = method.apply_mask(module)
        orig.data = weight.data
    if name in module.__dict__:
        delattr(module, name)
    del module._parameters[name + "_orig"]
    del module._buffers[name + "_mask"]
    setattr(module, name, orig)


def _uses_fast_apply(method) -> bool:
    from .methods import BasePruningMethod

    return type(method).apply_mask is BasePruningMethod.apply_mask or type(method).apply_mask is TorchBase.apply_mask


class DeepcopyPruned:
    """``copy.deepcopy`` support for a pruned module.

    The pruned attribute (``module.weight = weight_orig * weight_mask``) is a
    non-leaf tensor, which torch refuses to deep-copy; that is why deep-copying a
    model pruned by ``torch.nn.utils.prune`` fails. ``copy.deepcopy`` looks
    ``__deepcopy__`` up on the instance, so a pruned module carries one of these:
    it copies everything but the derived attributes and recomputes them on the
    copy from the copied ``_orig`` and ``_mask``.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, memo):
        module = self.module
        derived = {
            h._tensor_name
            for h in module._forward_pre_hooks.values()
            if isinstance(h, TorchBase) and getattr(h, "_tensor_name", None) is not None
        }
        state = {k: v for k, v in module.__dict__.items() if k not in derived and k != "__deepcopy__"}
        new = module.__class__.__new__(module.__class__)
        memo[id(module)] = new
        new.__dict__.update(copy.deepcopy(state, memo))
        for hook in new._forward_pre_hooks.values():
            if isinstance(hook, TorchBase) and getattr(hook, "_tensor_name", None) in derived:
                setattr(new, hook._tensor_name, hook.apply_mask(new))
        if derived:
            new.__dict__["__deepcopy__"] = DeepcopyPruned(new)
        return new


def global_targets(parameters) -> list:
    """Validate ``parameters`` of global pruning: a list of distinct (module, name) pairs."""
    try:
        items = list(parameters)
    except TypeError:
        raise TypeError("global_unstructured(): parameters is not an Iterable") from None
    seen = set()
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"parameters[{i}] must be a (module, name) pair, got {item!r}")
        module, name = item
        tensor = check_module_and_name(module, name, what=f"parameters[{i}][0]")
        if not pruning_hooks(module, name) and name not in module._parameters:
            raise TypeError(f"parameters[{i}]: {type(module).__name__}.{name} is not a parameter and cannot be pruned")
        key = (id(module), name)
        if key in seen:
            raise ValueError(f"parameters[{i}]: ({type(module).__name__}, {name!r}) appears twice")
        seen.add(key)
        del tensor
    return [tuple(item) for item in items]


def global_scores(targets, importance_scores) -> list:
    """The score tensor of every target, checked against its parameter's shape."""
    if importance_scores is None:
        importance_scores = {}
    if not isinstance(importance_scores, dict):
        raise TypeError("global_unstructured(): importance_scores must be of type dict")
    known = {(id(m), n) for m, n in targets}
    for key in importance_scores:
        if not (isinstance(key, tuple) and len(key) == 2 and (id(key[0]), key[1]) in known):
            raise ValueError(f"importance_scores has a key {key!r} that is not one of the parameters")
    scores = []
    for module, name in targets:
        param = getattr(module, name)
        s = importance_scores.get((module, name))
        if s is None:
            s = param
        else:
            check_scores_shape(s, param, f"importance_scores[({type(module).__name__}, {name!r})]")
        scores.append(s)
    return scores


def existing_mask(module, name) -> Optional[torch.Tensor]:
    mask = getattr(module, name + "_mask", None)
    return mask.detach() if isinstance(mask, torch.Tensor) else None
