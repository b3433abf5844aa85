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


def check_module_and_name(module, name, *, what: str = "module") -> torch.Tensor:
    """Return the tensor ``module.<name>``, or raise an error naming the culprit."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"{what} must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str naming a parameter of {what}, got {type(name).__name__}")
    try:
        tensor = getattr(module, name)
    except AttributeError:
        raise PruningNameError(
            f"name={name!r}: {type(module).__name__} has no parameter or attribute called {name!r}"
        ) from None
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"name={name!r}: {type(module).__name__}.{name} is not a tensor (got {type(tensor).__name__})")
    return tensor


def check_scores_shape(scores, param, label: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.shape != param.shape:
        raise PruningShapeError(
            f"{label} should have the same shape as the parameter it scores: "
            f"got {tuple(scores.shape)} vs {tuple(param.shape)}"
        )


def pruning_hooks(module: nn.Module, name: str) -> List[Tuple[int, TorchBase]]:
    return [
        (k, h)
        for k, h in module._forward_pre_hooks.items()
        if isinstance(h, TorchBase) and getattr(h, "_tensor_name", None) == name
    ]


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
