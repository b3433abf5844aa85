"""The ``name_orig`` / ``name_mask`` / forward-pre-hook reparametrisation.

Everything that changes a module lives here, and it changes nothing until the
new mask has been computed: a failing ``compute_mask`` (or bad argument) leaves
the module exactly as it was, parameter order and hooks included. The layout it
produces is torch's, so state_dicts cross between the two libraries.
"""
from __future__ import annotations

import copy
import weakref
from typing import Iterable

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from .targets import pruning_hooks

TorchBase = torch_prune.BasePruningMethod
TorchContainer = torch_prune.PruningContainer


class ModuleSnapshot:
    """Enough of a module's state to put it back exactly after a failed change.

    Taken on every pruning call, so it only copies the few containers a change
    can touch (shallow copies: the values themselves are never mutated, except
    a container's tuple of methods, which is saved too).
    """

    __slots__ = ("module", "parameters", "buffers", "non_persistent", "hooks", "attributes", "names", "deepcopy",
                 "containers", "flat_weights")

    def __init__(self, module: nn.Module, names: Iterable[str]) -> None:
        d = module.__dict__
        hooks = module._forward_pre_hooks
        self.module = module
        self.parameters = module._parameters.copy()
        self.buffers = module._buffers.copy()
        self.non_persistent = module._non_persistent_buffers_set.copy()
        self.hooks = hooks.copy()
        self.names = names = tuple(names)
        self.attributes = {n: d[n] for n in names if n in d}
        self.deepcopy = d.get("__deepcopy__")
        self.containers = (
            [(h, h._pruning_methods) for h in hooks.values() if isinstance(h, TorchContainer)] if hooks else ()
        )
        flat = d.get("_flat_weights")  # RNNs keep it there; getattr would raise and catch on every module
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


class _Premultiplied(torch.autograd.Function):
    """``orig * mask`` whose value was computed already (by the k-selection,
    in the pass that wrote the mask): the product's gradients, no second pass.
    The value arrives in a list so that autograd does not take it for an input
    (and return a view of it)."""

    @staticmethod
    def forward(ctx, orig, mask, box):
        ctx.save_for_backward(orig, mask)
        return box[0]

    @staticmethod
    def backward(ctx, grad):
        orig, mask = ctx.saved_tensors
        return (grad * mask if ctx.needs_input_grad[0] else None,
                grad * orig if ctx.needs_input_grad[1] else None, None)


def premultiplied(orig, mask, product):
    """``product`` (== ``orig * mask``, computed elsewhere) as the pruned tensor:
    differentiable w.r.t. ``orig`` (and ``mask``) when autograd records."""
    if torch.is_grad_enabled() and (orig.requires_grad or mask.requires_grad):
        return _Premultiplied.apply(orig, mask, [product])
    return product


def install(module, name, method, mask, container_cls, previous=None):
    """Register ``mask`` and ``method`` for ``module.<name>``; returns the hook. Rolls back on failure.

    A tensor that is already pruned gets ``method`` appended to its container;
    a single earlier hook is first wrapped into a new ``container_cls``.
    ``previous``: the tensor's pruning hooks as :func:`pruning_hooks` lists
    them, when the caller has them already.
    """
    snapshot = ModuleSnapshot(module, (name,))
    try:
        return _install_unchecked(module, name, method, mask, container_cls, previous)
    except BaseException:
        snapshot.restore()
        raise


def _install_unchecked(module, name, method, mask, container_cls, previous=None, product=None):
    if previous is None:
        previous = pruning_hooks(module, name)
    for k, _ in previous:
        del module._forward_pre_hooks[k]
    if previous:
        old = previous[0][1]
        if isinstance(old, TorchContainer):
            old.add_pruning_method(method)
            hook = old
        else:
            hook = container_cls(old)
            hook.add_pruning_method(method)
    else:
        hook = method
        orig = module._parameters[name]
        module.register_parameter(name + "_orig", orig)
        del module._parameters[name]
    module.register_buffer(name + "_mask", mask)
    if product is None:
        setattr(module, name, hook.apply_mask(module))
    else:  # the caller computed orig * mask already, and checked that apply_mask computes just that
        setattr(module, name, premultiplied(module._parameters[name + "_orig"], mask, product))
    module.register_forward_pre_hook(hook)
    module.__dict__["__deepcopy__"] = DeepcopyPruned(module)
    return hook


def install_many(entries, container_cls, products=None) -> None:
    """``install`` for many (module, name, hook, mask) at once: all of them or none.

    ``products``: ``orig * mask`` of each entry, computed already (then the
    hooks' ``apply_mask`` must be the plain product), or ``None``.
    """
    snapshots = {}
    for module, name, _, _ in entries:
        key = id(module)
        if key not in snapshots:
            names = [n for m, n, _, _ in entries if m is module]
            snapshots[key] = ModuleSnapshot(module, names)
    if products is None:
        products = [None] * len(entries)
    try:
        for (module, name, hook, mask), product in zip(entries, products):
            _install_unchecked(module, name, hook, mask, container_cls, product=product)
    except BaseException:
        for snap in snapshots.values():
            snap.restore()
        raise


class DeepcopyPruned:
    """``copy.deepcopy`` support for a pruned module.

    The pruned attribute (``module.weight = weight_orig * weight_mask``) is a
    non-leaf tensor, which torch refuses to deep-copy; that is why deep-copying a
    model pruned by ``torch.nn.utils.prune`` fails. ``copy.deepcopy`` looks
    ``__deepcopy__`` up on the instance, so a pruned module carries one of these:
    it copies everything but the derived attributes and recomputes them on the
    copy from the copied ``_orig`` and ``_mask``.

    It refers to its module weakly: a strong reference from the module's own
    ``__dict__`` back to the module would be a reference cycle, and a pruned
    model would then stay in memory after ``del`` until the cyclic garbage
    collector happened to run. Pickling re-links it to the unpickled module
    (pickle memoises the module before its ``__dict__``).
    """

    __slots__ = ("_module",)

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)

    def __reduce__(self):
        return (DeepcopyPruned, (self._module(),))

    def __call__(self, memo):
        module = self._module()
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


def forget_deepcopy(module: nn.Module, leaving=None) -> None:
    """Drop the module's :class:`DeepcopyPruned` once ``leaving`` is its last pruning hook.

    Called while ``leaving`` is being removed (torch's ``remove`` and
    fastprune's both call the hook's ``remove`` before deleting the hook), so a
    module with no pruning left carries nothing of fastprune: it pickles and
    loads where fastprune is not installed.
    """
    others = [h for h in module._forward_pre_hooks.values() if isinstance(h, TorchBase) and h is not leaving]
    if not others:
        module.__dict__.pop("__deepcopy__", None)
