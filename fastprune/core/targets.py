"""What is pruned: resolving and validating the targets of every pruning call.

Every feature (the torch-compatible functions, ``sparsify_``, the scores, the
lottery ticket, the callbacks, structured pruning) finds and checks the
parameters it prunes here, so the rules and the errors are the same
everywhere. Nothing in this module modifies a module.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from .errors import PruningNameError, PruningShapeError

TorchBase = torch_prune.BasePruningMethod


def check_module_and_name(module, name, *, what: str = "module", where: str = "") -> torch.Tensor:
    """Return the tensor ``module.<name>``, or raise an error naming the culprit.

    Args:
        module: must be an ``nn.Module``.
        name: must be a str naming a tensor attribute of ``module``.
        what: how messages call ``module`` (``"module"``, ``"parameters[3][0]"``).
        where: prefix of the messages about ``name`` (``"parameters[3]: "``).

    Raises:
        TypeError: ``module`` is not a module, ``name`` not a str or not a tensor.
        PruningNameError: ``module`` has no attribute ``name`` (an ``AttributeError``, as in torch).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"{what} must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"{where}name must be a str naming a parameter of {what}, got {type(name).__name__}")
    try:
        tensor = getattr(module, name)
    except AttributeError:
        raise PruningNameError(
            f"{where}name={name!r}: {type(module).__name__} has no parameter or attribute called {name!r}"
        ) from None
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"{where}name={name!r}: {type(module).__name__}.{name} is not a tensor (got {type(tensor).__name__})"
        )
    return tensor


def check_scores_shape(scores, param, label: str) -> None:
    """``scores`` (importance scores, a mask, a saved tensor) must be a tensor shaped like ``param``.

    Raises:
        TypeError: not a tensor.
        PruningShapeError: another shape (a ``ValueError`` and torch's ``AssertionError``).
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.shape != param.shape:
        raise PruningShapeError(
            f"{label} should have the same shape as the parameter it belongs to: "
            f"got {tuple(scores.shape)} vs {tuple(param.shape)}"
        )


def pruning_hooks(module: nn.Module, name: str) -> List[Tuple[int, TorchBase]]:
    """``[(handle id, hook)]`` of the pruning hooks (either library's) acting on ``module.<name>``."""
    hooks = module._forward_pre_hooks
    if not hooks:
        return []
    return [(k, h) for k, h in hooks.items() if isinstance(h, TorchBase) and getattr(h, "_tensor_name", None) == name]


# ---------------------------------------------------------------------------
# The already-pruned state of a parameter, in either library's layout
# ---------------------------------------------------------------------------


def is_reparametrized(module: nn.Module, name: str) -> bool:
    """True when ``module.<name>`` carries torch's pruning layout (``name_orig`` + ``name_mask``).

    The layout is the same whether ``torch.nn.utils.prune`` or fastprune made it.

    Args:
        module: the module holding the tensor.
        name: the tensor's name (``"weight"``), not ``"weight_orig"``.

    Returns:
        bool.
    """
    return name + "_orig" in module._parameters and name + "_mask" in module._buffers


def dense_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The unmasked tensor: ``name_orig`` of a reparametrised tensor, else the parameter itself."""
    if is_reparametrized(module, name):
        return module._parameters[name + "_orig"]
    return module._parameters[name]


def mark_binary(mask: torch.Tensor) -> torch.Tensor:
    """Record that ``mask`` holds only 0 and 1, as of its current version; returns it.

    For masks just written by the k-selection (which writes only 0/1). Any later
    in-place write (``load_state_dict``, ``mask[...] = v``, also through a
    ``detach()``-ed alias) bumps the version counter, which voids the record,
    so :func:`known_binary` never needs to read the values: iterated pruning
    then pays no pass over the existing masks to look for soft (non-0/1)
    values. (Writes through ``.data`` bypass the version counter, as they
    bypass autograd's checks.)
    """
    if not mask.is_inference():  # inference tensors have no version counter: never recorded
        mask._fastprune_binary = mask._version
    return mask


def known_binary(mask: torch.Tensor) -> bool:
    """True when :func:`mark_binary` recorded ``mask`` (or the tensor it was detached from) unchanged since."""
    recorded = getattr(mask, "_fastprune_binary", None)
    return recorded is not None and not mask.is_inference() and recorded == mask._version


def detached_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask.detach()``, keeping the :func:`mark_binary` record (same version counter)."""
    out = mask.detach()
    if known_binary(mask):
        out._fastprune_binary = mask._fastprune_binary
    return out


def existing_mask(module: nn.Module, name: str) -> Optional[torch.Tensor]:
    """The installed ``name_mask`` (detached), or ``None`` when the tensor is not pruned torch-style."""
    mask = module._buffers.get(name + "_mask") if name + "_mask" in module._buffers else None
    return detached_mask(mask) if isinstance(mask, torch.Tensor) else None


# ---------------------------------------------------------------------------
# Resolving the targets of a call
# ---------------------------------------------------------------------------


class Target:
    """One tensor to prune: ``module.<name>``, with a label for messages and a prefix in its model.

    Attributes:
        module: the module holding the tensor.
        name: the tensor's name in ``module``.
        label: how messages and :class:`~fastprune.MaskSet` name it (the
            qualified name when resolved from a model, else ``"i:Type.name"``).
        prefix: ``"qualified.module.name."`` inside the model the target was
            resolved against (``""`` for the root or when no model is known).
    """

    __slots__ = ("module", "name", "label", "prefix")

    def __init__(self, module: nn.Module, name: str, label: str, prefix: str = "") -> None:
        self.module = module
        self.name = name
        self.label = label
        self.prefix = prefix

    @property
    def pair(self) -> Tuple[nn.Module, str]:
        return (self.module, self.name)

    @property
    def param(self) -> torch.Tensor:
        """The live parameter as the module holds it now (``None`` if it was removed)."""
        return self.module._parameters.get(self.name)

    @property
    def dense(self) -> torch.Tensor:
        """See :func:`dense_tensor`."""
        return dense_tensor(self.module, self.name)

    @property
    def reparametrized(self) -> bool:
        return is_reparametrized(self.module, self.name)


# How a feature treats a tensor that is already pruned torch-style:
ACCEPT = "accept"  # prune it further (torch's functions, the scores)
REFUSE = "refuse"  # in-place features need the plain parameter (sparsify_)

_PAIR_HINT = "an nn.Module or an iterable of (module, name) pairs"


def default_pairs(model: nn.Module) -> List[Tuple[nn.Module, str, str]]:
    """``(module, "weight", qualified_name)`` of every ``nn.Linear`` and ``nn.Conv*`` of ``model``.

    Reparametrised weights count; a module reached twice (shared) is listed once.
    """
    from torch.nn.modules.conv import _ConvNd

    found = []
    for qual, module in model.named_modules():
        if not isinstance(module, (nn.Linear, _ConvNd)):
            continue
        if module._parameters.get("weight") is not None or is_reparametrized(module, "weight"):
            found.append((module, "weight", qual))
    return found


def _pairs(parameters, fn: str):
    """``[(index, item)]`` of an iterable of pairs, each checked to be a 2-sequence."""
    if isinstance(parameters, (str, bytes, torch.Tensor)):
        raise TypeError(f"{fn}: parameters must be {_PAIR_HINT}, got {type(parameters).__name__}")
    try:
        items = list(parameters)
    except TypeError:
        raise TypeError(
            f"{fn}: parameters is not an Iterable; it must be {_PAIR_HINT}, got {type(parameters).__name__}"
        ) from None
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"parameters[{i}] must be a (module, name) pair, got {item!r}")
    return items


def _check_target(module, name, what: str, reparametrized: str, data: bool) -> None:
    """The checks every target passes, whichever feature prunes it."""
    check_module_and_name(module, name, what=f"{what}[0]", where=f"{what}: ")
    if is_reparametrized(module, name) or pruning_hooks(module, name):
        if reparametrized == REFUSE:
            raise ValueError(
                f"{what}: {type(module).__name__}.{name} carries a torch-style pruning reparametrisation; "
                f"make it permanent with fastprune.remove(module, {name!r}) first, or pass {name + '_orig'!r}"
            )
        return
    param = module._parameters.get(name) if name in module._parameters else None
    if param is None:
        raise TypeError(f"{what}: {type(module).__name__}.{name} is not a parameter and cannot be pruned")
    if data:
        check_has_data(param, f"{what} ({type(module).__name__}.{name})")


def check_has_data(tensor: torch.Tensor, label: str) -> None:
    """A tensor whose values a selection can read: initialised, dense, real, not on the meta device.

    Raises:
        ValueError: lazy (uninitialised) or meta tensors, sparse layouts.
        TypeError: complex tensors.
    """
    if isinstance(tensor, nn.parameter.UninitializedParameter):
        raise ValueError(f"{label} is not initialised yet (lazy module)")
    if tensor.layout != torch.strided:
        raise ValueError(f"{label} has layout {tensor.layout}; only dense tensors work")
    if tensor.is_complex():
        raise TypeError(f"{label} is complex; magnitude pruning needs real values")
    if tensor.device.type == "meta":
        raise ValueError(
            f"{label} is on the meta device and holds no data, so no unit can be selected; "
            "materialise it first (module.to_empty(device=...) and load its weights)"
        )


def resolve_targets(
    parameters,
    *,
    fn: str,
    model: Optional[nn.Module] = None,
    accept_module: bool = False,
    reparametrized: str = ACCEPT,
    data: bool = False,
    unique_tensors: bool = False,
    nonempty: bool = False,
) -> List[Target]:
    """Every tensor a call prunes, in order, each checked; nothing is modified.

    Args:
        parameters: an iterable of ``(module, name)`` pairs; ``None`` for the
            default targets of ``model``; an ``nn.Module`` when ``accept_module``
            (then the weights of its ``nn.Linear`` and ``nn.Conv*`` layers).
        fn: the calling function's name, for messages.
        model: when given, every module must belong to it, and targets get their
            qualified prefix in it.
        accept_module: allow ``parameters`` to be a model.
        reparametrized: :data:`ACCEPT` or :data:`REFUSE` tensors already pruned torch-style.
        data: also require tensors whose values can be read (see :func:`check_has_data`).
        unique_tensors: treat two entries holding the same tensor (tied weights)
            as duplicates too, not only the same ``(module, name)``; tied weights
            found in a model are then listed once.
        nonempty: raise when nothing is found.

    Returns:
        a list of :class:`Target`.

    Raises:
        TypeError: ``parameters`` or an entry of the wrong type, a name that is
            not a parameter.
        PruningNameError: a name the module does not have (both ``AttributeError``,
            as torch raises, and ``ValueError``).
        ValueError: a module outside ``model``, duplicates, refused
            reparametrised tensors, tensors without data, an empty result when
            ``nonempty``.
    """
    prefixes = None
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
        prefixes = {}
        for qual, mod in model.named_modules(remove_duplicate=True):
            prefixes.setdefault(id(mod), qual + "." if qual else "")
    from_model = parameters is None or (accept_module and isinstance(parameters, nn.Module))
    targets: List[Target] = []
    seen = {}
    if from_model:
        root = model if parameters is None else parameters
        if root is None:
            raise TypeError(f"{fn}: parameters must be {_PAIR_HINT}, got None")
        for module, name, qual in default_pairs(root):
            label = f"{qual}.{name}" if qual else name
            _check_target(module, name, f"parameters ({label})", reparametrized, data)
            key = id(dense_tensor(module, name)) if unique_tensors else (id(module), name)
            if key in seen:  # shared modules and tied weights are pruned once
                continue
            seen[key] = label
            prefix = prefixes[id(module)] if prefixes is not None else (qual + "." if qual else "")
            targets.append(Target(module, name, label, prefix))
    else:
        for i, (module, name) in enumerate(_pairs(parameters, fn)):
            what = f"parameters[{i}]"
            _check_target(module, name, what, reparametrized, data)
            if prefixes is not None and id(module) not in prefixes:
                raise ValueError(f"{what}: module {type(module).__name__} is not part of model")
            keys = [(id(module), name)]
            if unique_tensors:
                keys.append(id(dense_tensor(module, name)))
            for key in keys:
                if key in seen:
                    raise ValueError(
                        f"{what}: ({type(module).__name__}, {name!r}) appears twice (also {seen[key]}); "
                        "each tensor can be pruned once per call"
                    )
            for key in keys:
                seen[key] = what
            prefix = prefixes[id(module)] if prefixes is not None else ""
            targets.append(Target(module, name, f"{i}:{type(module).__name__}.{name}", prefix))
    if nonempty and not targets:
        if not from_model:
            raise ValueError(f"{fn}: parameters is empty: nothing to prune")
        raise ValueError(
            f"{fn}: parameters: the model has no nn.Linear or nn.Conv layer with a weight; "
            "pass parameters=[(module, name), ...] explicitly"
        )
    return targets


def resolve_scores(targets: List[Target], importance_scores, *, same_device: bool = False) -> List[Optional[torch.Tensor]]:
    """The importance score tensor of each target (``None`` = rank by the tensor itself).

    As in ``torch.nn.utils.prune``, entries for tensors that are not being
    pruned are ignored, so one dict of scores can serve several calls.

    Args:
        targets: from :func:`resolve_targets`.
        importance_scores: ``None`` or a dict ``{(module, name): tensor}``.
        same_device: also require each score on its tensor's device.

    Returns:
        one detached tensor or ``None`` per target.

    Raises:
        TypeError: not a dict, a value that is not a dense real tensor.
        PruningShapeError: a score whose shape differs from its tensor's.
        ValueError: a score on another device (with ``same_device``).
    """
    if importance_scores is None:
        return [None] * len(targets)
    if not isinstance(importance_scores, dict):
        raise TypeError(
            "importance_scores must be of type dict {(module, name): tensor}, "
            f"got {type(importance_scores).__name__}"
        )
    out: List[Optional[torch.Tensor]] = []
    for t in targets:
        value = importance_scores.get(t.pair)  # modules hash by identity
        if value is None:
            out.append(None)
            continue
        label = f"importance_scores[({type(t.module).__name__}, {t.name!r})]"
        tensor = getattr(t.module, t.name)
        check_scores_shape(value, tensor, label)
        if value.is_complex() or value.layout != torch.strided:
            raise TypeError(f"{label} must be a dense real tensor")
        if same_device and value.device != tensor.device:
            raise ValueError(f"{label} is on {value.device}, the parameter on {tensor.device}")
        out.append(value.detach())
    return out


def resolve_masks(targets: List[Target], masks) -> List[Optional[torch.Tensor]]:
    """Per target, a bool keep-mask: the one given in ``masks``, else the installed one, else ``None``.

    Args:
        targets: from :func:`resolve_targets`.
        masks: ``None`` or ``{(module, name): mask}`` (non-zero = kept). Unlike
            importance scores, a mask is the state the caller asserts for a
            tensor, so one for a tensor outside ``targets`` is an error.

    Raises:
        TypeError: ``masks`` is not a dict.
        ValueError: a key that is not one of the targets.
        PruningShapeError: a mask of the wrong shape.
    """
    if masks is not None and not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict {{(module, name): keep_mask}} or None, got {type(masks).__name__}")
    if masks:
        known = {t.pair for t in targets}
        for key in masks:
            if key not in known:
                raise ValueError(f"masks has a key {key!r} that is not one of the parameters")
    out = []
    for t in targets:
        m = masks.get(t.pair) if masks else None
        if m is None:
            m = existing_mask(t.module, t.name) if t.reparametrized else None
        if m is not None:
            dense = t.dense
            check_scores_shape(m, dense, f"masks[({type(t.module).__name__}, {t.name!r})]")
            m = m.detach().to(device=dense.device) != 0
        out.append(m)
    return out


def unpruned_count(targets: List[Target], masks) -> int:
    """Units still kept across ``targets``, given their keep-masks from :func:`resolve_masks`."""
    return sum(t.dense.numel() if m is None else int(m.sum()) for t, m in zip(targets, masks))


class eval_mode:
    """Context manager: every submodule in ``eval()``, KV caches off; all flags restored on exit.

    Used wherever fastprune runs a model only to look at it (SynFlow's
    linearised forward, tracing for the dependency graph, calibration of the
    LLM methods): dropout and batch-norm statistics must not change the
    result, and the model must come back exactly in the mode it was in.

    Args:
        model: the model whose submodules (and transformers configs, which
            carry ``use_cache``) are switched for the duration.
        disable_cache: also set ``config.use_cache = False`` on every config
            object found on a submodule (encoder-decoder models keep copies).

    Example::

        with eval_mode(model):
            out = model(x)
    """

    def __init__(self, model: nn.Module, disable_cache: bool = True) -> None:
        self.model = model
        self.disable_cache = disable_cache

    def __enter__(self) -> "eval_mode":
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.caches = []
        self.model.eval()
        if self.disable_cache:
            seen = set()
            for m in self.model.modules():
                cfg = getattr(m, "config", None)
                if cfg is None or id(cfg) in seen:
                    continue
                seen.add(id(cfg))
                if getattr(cfg, "use_cache", None):
                    self.caches.append((cfg, cfg.use_cache))
                    cfg.use_cache = False
        return self

    def __exit__(self, *exc) -> bool:
        for m, flag in self.flags:
            m.training = flag
        for cfg, value in self.caches:
            cfg.use_cache = value
        return False
