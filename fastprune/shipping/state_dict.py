"""Strict loading of a pruned state dict (``*_orig`` / ``*_mask`` keys) into an unpruned model."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, List, Tuple

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from ..core.errors import PruningShapeError
from ..core.functional import custom_from_mask
from ..core.reparam import ModuleSnapshot
from ..core.targets import check_scores_shape, pruning_hooks

__all__ = ["load_pruned_state_dict", "pruned_pairs"]

TorchBase = torch_prune.BasePruningMethod


def pruned_pairs(state_dict: Mapping) -> List[str]:
    """Qualified names ``p.name`` for which ``state_dict`` holds ``p.name_orig`` and ``p.name_mask``."""
    keys = set(state_dict.keys())
    out = []
    for key in state_dict.keys():
        if isinstance(key, str) and key.endswith("_orig"):
            base = key[: -len("_orig")]
            if base and base + "_mask" in keys:
                out.append(base)
    return out


def _split(qual: str) -> Tuple[str, str]:
    prefix, _, name = qual.rpartition(".")
    return prefix, name


def load_pruned_state_dict(model: nn.Module, state_dict: Mapping, strict: bool = True):
    """Re-create the pruning recorded in ``state_dict`` on ``model``, then load it.

    A state dict saved from a model pruned with ``torch.nn.utils.prune`` or
    fastprune holds ``name_orig`` and ``name_mask`` instead of ``name``, so a
    freshly built model only takes it with ``strict=False`` (and then silently
    ignores the pruning). This function reparametrises every such ``name`` of
    ``model`` with a :func:`fastprune.custom_from_mask` hook first, then calls
    ``model.load_state_dict(state_dict, strict=strict)``: the model then
    computes exactly what the saved one did, and can be pruned further or made
    permanent. Tensors of ``model`` that are already pruned are loaded as they
    are; a state dict without ``_orig`` / ``_mask`` pairs is simply loaded.

    Args:
        model: the model to load into (modified in place).
        state_dict: a mapping from qualified names to tensors, as made by
            ``state_dict()`` of a (possibly pruned) model of the same architecture.
        strict: as in ``nn.Module.load_state_dict``: the keys must match the
            model's once the pruning is re-created; checked before anything
            changes. With ``strict=False``, pairs for which the model has no
            matching parameter are left to ``load_state_dict``, which reports
            them as unexpected.

    Returns:
        the ``NamedTuple`` of ``missing_keys`` and ``unexpected_keys`` returned by
        ``load_state_dict``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``state_dict`` not a
            mapping, ``strict`` not a bool.
        ValueError: with ``strict=True``, missing or unexpected keys; a pair
            whose module or parameter does not exist.
        PruningShapeError: an entry whose shape differs from the model's tensor.

    On any error the model is left exactly as it was.

    Example::

        pruned_net = nn.Sequential(nn.Linear(8, 4))
        fastprune.l1_unstructured(pruned_net[0], "weight", 0.5)
        sd = pruned_net.state_dict()          # has '0.weight_orig', '0.weight_mask'
        fresh = nn.Sequential(nn.Linear(8, 4))
        fastprune.load_pruned_state_dict(fresh, sd)
        x = torch.randn(2, 8)
        assert torch.equal(fresh(x), pruned_net(x))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")

    to_create: List[Tuple[str, nn.Module, str]] = []
    for qual in pruned_pairs(state_dict):
        prefix, name = _split(qual)
        try:
            module = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            if strict:
                raise ValueError(
                    f"state_dict holds {qual}_orig / {qual}_mask but the model has no submodule {prefix!r}"
                ) from None
            continue
        if pruning_hooks(module, name):
            continue  # already pruned: its _orig / _mask load as they are
        param = module._parameters.get(name)
        if param is None:
            if strict:
                raise ValueError(
                    f"state_dict holds {qual}_orig / {qual}_mask but {type(module).__name__} has no parameter {name!r}"
                )
            continue
        for suffix in ("_orig", "_mask"):
            check_scores_shape(state_dict[qual + suffix], param, f"state_dict[{qual + suffix!r}]")
        to_create.append((qual, module, name))

    _check_keys_and_shapes(model, state_dict, to_create, strict)

    snapshots: Dict[int, ModuleSnapshot] = {}
    for _, module, name in to_create:
        if id(module) not in snapshots:
            snapshots[id(module)] = ModuleSnapshot(module, [n for _, m, n in to_create if m is module])
    try:
        for qual, module, name in to_create:
            # The mask given here is overwritten by load_state_dict below with the same values.
            custom_from_mask(module, name, state_dict[qual + "_mask"].detach())
        result = model.load_state_dict(state_dict, strict=strict)
    except BaseException:
        for snap in snapshots.values():
            snap.restore()
        raise
    # ``name`` is otherwise recomputed only by the next forward; refresh it now so
    # that reading ``module.name`` right after loading gives the loaded weights.
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            name = getattr(hook, "_tensor_name", None)
            if isinstance(hook, TorchBase) and name is not None:
                setattr(module, name, hook.apply_mask(module))
    return result


def _check_keys_and_shapes(model, state_dict, to_create, strict) -> None:
    """What ``load_state_dict`` would reject, found before anything changes."""
    expected: Dict[str, torch.Size] = {}
    created = {qual for qual, _, _ in to_create}
    for key, value in model.state_dict(keep_vars=True).items():
        shape = value.shape if isinstance(value, torch.Tensor) else None
        if key in created:
            expected[key + "_orig"] = shape
            expected[key + "_mask"] = shape
        else:
            expected[key] = shape
    if strict:
        # Keys that load_state_dict itself ignores (extra state of modules without it) do not occur here.
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError("state_dict does not match the model (strict=True): " + "; ".join(parts))
    for key, shape in expected.items():
        value = state_dict.get(key) if key in state_dict else None
        if shape is None or not isinstance(value, torch.Tensor):
            continue
        if value.shape != shape:
            raise PruningShapeError(
                f"state_dict[{key!r}] has shape {tuple(value.shape)}, the model expects {tuple(shape)}"
            )
