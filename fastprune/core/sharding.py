"""Where sharded tensors (``torch.distributed`` DTensors) enter the pruning API.

The torch-compatible functions and ``sparsify_`` run on whole tensors held by
one process. Parameters sharded over several processes need collectives to
find a global threshold; that lives in :mod:`fastprune.distributed`, a feature
layer that core must not import. Instead the feature registers a handler here
when it is imported, and core asks this registry, at the few places where a
sharded tensor changes what happens, whether a handler claims the tensors.

With no handler registered (``torch.distributed`` unavailable, or the feature
never imported) every function here is the identity and costs one list walk.

A handler is any object with these methods:

* ``claims(tensors) -> bool``: true when any of ``tensors`` is sharded (only
  tensor subclasses are offered: a plain ``Tensor`` or ``Parameter`` is never sharded).
* ``local(t)``: the part of ``t`` this process holds (``t`` if not sharded).
* ``wrap_like(param, local)``: a tensor sharded like ``param`` from this
  process's part ``local``.
* ``global_masks(targets, scores, method, masks)``: masks (sharded like each
  parameter) of :func:`fastprune.global_unstructured`.
* ``method_mask(module, name, method, scores, existing)``: the mask of one
  pruning method applied to ``module.<name>`` (torch-style reparametrisation).
* ``sparsify_masks(params, scores, packed, amount, method, scope)``: the new
  packed 1-bit local masks of :func:`fastprune.sparsify_`.
* ``mask_state(param, packed, numel)`` / ``mask_from_state(param, value)``:
  a mask in checkpointable form and back.
* ``report_error(tensors, exc)``: make every process raise ``exc``, an error
  this process found in its arguments before the call reached the handler
  (the other processes, whose arguments were fine, wait for this one in the
  handler's first collective). Raises; never returns.
"""
from __future__ import annotations

import collections.abc
import contextlib
from typing import List, Optional, Sequence

import torch
from torch import nn

_HANDLERS: List[object] = []


def register_sharded_handler(handler) -> None:
    """Register ``handler`` for sharded tensors; registering it twice is a no-op.

    Args:
        handler: an object with the methods listed in this module's docstring;
            the first registered handler whose ``claims`` accepts a call's
            tensors serves that call.

    Raises:
        TypeError: if ``handler`` has no ``claims`` method.

    Example::

        register_sharded_handler(MyHandler())  # what fastprune.distributed does on import
    """
    if not callable(getattr(handler, "claims", None)):
        raise TypeError(f"handler must have a claims(tensors) method, got {type(handler).__name__}")
    if handler not in _HANDLERS:
        _HANDLERS.append(handler)


def unregister_sharded_handler(handler) -> None:
    """Remove ``handler`` if it is registered."""
    if handler in _HANDLERS:
        _HANDLERS.remove(handler)


# A sharded tensor is always a tensor subclass (DTensor, ShardedTensor); these
# exact types never are, and are not offered to the handlers (a claims() call
# per pruned tensor costs about 1 us).
PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def sharded_handler(tensors: Sequence[Optional[torch.Tensor]]):
    """The handler claiming ``tensors`` (``None`` entries and plain ``Tensor``/``Parameter`` skipped), or ``None``."""
    if not _HANDLERS:
        return None
    tensors = [t for t in tensors if t is not None and type(t) not in PLAIN_TENSOR_TYPES]
    if not tensors:
        return None
    for handler in _HANDLERS:
        if handler.claims(tensors):
            return handler
    return None


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` held by this process: ``t`` itself unless it is sharded."""
    handler = sharded_handler([t])
    return t if handler is None else handler.local(t)


def wrap_like(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """``local`` as a tensor sharded like ``param`` (``local`` itself for a plain ``param``)."""
    handler = sharded_handler([param])
    return local if handler is None else handler.wrap_like(param, local)


def mask_state(param: torch.Tensor, packed: torch.Tensor, numel: int) -> torch.Tensor:
    """A packed mask as saved in a state dict: a copy, or a sharded 0/1 tensor for a sharded ``param``."""
    handler = sharded_handler([param])
    return packed.detach().clone() if handler is None else handler.mask_state(param, packed, numel)


def mask_from_state(param: torch.Tensor, value):
    """Inverse of :func:`mask_state`: the packed local mask (``value`` unchanged for a plain ``param``)."""
    handler = sharded_handler([param])
    return value if handler is None else handler.mask_from_state(param, value)


def replayable(obj):
    """``obj``, or the list of its items when it is a one-shot iterator (a generator).

    The entry points read their ``parameters`` argument twice when a check
    fails (see :func:`same_error_everywhere`); a generator would be empty the
    second time.
    """
    if isinstance(obj, collections.abc.Iterator):
        return list(obj)
    return obj


def _tensors_in(objs, out: List[torch.Tensor], depth: int = 0) -> None:
    """Collect the tensors that arguments name: tensors, modules' parameters, pairs, dicts, lists."""
    if depth > 3:
        return
    for obj in objs:
        if isinstance(obj, torch.Tensor):
            out.append(obj)
        elif isinstance(obj, nn.Module):
            out.extend(obj.parameters())
        elif isinstance(obj, dict):
            _tensors_in(list(obj.keys()) + list(obj.values()), out, depth + 1)
        elif isinstance(obj, (list, tuple)):
            if len(obj) == 2 and isinstance(obj[0], nn.Module) and isinstance(obj[1], str):
                t = getattr(obj[0], obj[1], None) if hasattr(obj[0], obj[1]) else None
                # a wrong name still tells which process group the call is on
                _tensors_in([t] if isinstance(t, torch.Tensor) else [obj[0]], out, depth + 1)
            else:
                _tensors_in(obj, out, depth + 1)


@contextlib.contextmanager
def same_error_everywhere(*args):
    """Run an entry point's argument checks so that sharded calls fail on every process alike.

    An argument error found on one process only (a rank-dependent ``amount``,
    a wrong name on one process) would otherwise leave the other processes
    waiting in the handler's collectives. When ``args`` name sharded tensors,
    the error is handed to the handler, which makes every process raise it.

    Args:
        args: the entry point's arguments that name tensors (pairs, a module,
            a dict of scores, tensors).

    Example::

        with same_error_everywhere(parameters, importance_scores):
            targets = resolve_targets(parameters, fn="global_unstructured")
    """
    try:
        yield
    except Exception as exc:
        if _HANDLERS:
            tensors: List[torch.Tensor] = []
            try:
                _tensors_in(args, tensors)
            except Exception:  # the arguments were bad enough that nothing can be read from them
                tensors = []
            handler = sharded_handler(tensors)
            report = getattr(handler, "report_error", None)
            if report is not None:
                report(tensors, exc)
        raise
