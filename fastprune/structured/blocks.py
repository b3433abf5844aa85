"""Removing whole blocks (decoder layers) from a model.

The blocks are the entries of an ``nn.ModuleList``; the ones that stay are
renumbered (``0..n-1``), and so are the layer-index attributes of their
modules (transformers' ``self_attn.layer_idx``, which addresses the KV cache).
For a transformers model the config is rewritten (``num_hidden_layers`` and
per-layer fields such as ``layer_types``) so that caching, ``save_pretrained``
and ``from_pretrained`` work; a model built from the new config on the meta
device must have exactly the remaining tensors, checked before anything
changes (:func:`~fastprune.structured.hf_config.plan_config_update`).
"""
from __future__ import annotations

import numbers
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..core.targets import eval_mode
from . import hf_config
from .report import count_params
from .trace import split_example_inputs

__all__ = ["remove_blocks", "find_block_list", "BlockRemoval", "LAYER_INDEX_ATTRS"]

#: Module attributes holding a block's own index; renumbered when blocks before it go.
LAYER_INDEX_ATTRS = ("layer_idx", "layer_index", "layer_id")


@dataclass
class BlockRemoval:
    """What :func:`remove_blocks` did.

    Attributes:
        path: the ``nn.ModuleList`` holding the blocks.
        removed: the indices removed (in the numbering before the call).
        blocks_before, blocks_after: block counts.
        params_before, params_after: parameter counts of the model.
        renumbered: ``(module name after, attribute, old, new)`` per layer index changed.
        config_changes: ``{field: (old, new)}`` written to a transformers config.
    """

    path: str
    removed: Tuple[int, ...]
    blocks_before: int
    blocks_after: int
    params_before: int
    params_after: int
    renumbered: List[Tuple[str, str, int, int]] = field(default_factory=list)
    config_changes: Dict[str, Tuple[object, object]] = field(default_factory=dict)

    def __str__(self):
        lines = [f"blocks of {self.path}: {self.blocks_before} -> {self.blocks_after} "
                 f"(removed {list(self.removed)})",
                 f"params: {self.params_before:,} -> {self.params_after:,}"]
        for name, (old, new) in self.config_changes.items():
            lines.append(f"  config.{name}: {old} -> {new}")
        return "\n".join(lines)


def find_block_list(model: nn.Module, blocks=None) -> Tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of blocks and its name.

    Args:
        model: the model.
        blocks: ``None`` (a transformers model: the one ``nn.ModuleList``
            with ``num_hidden_layers`` entries), a dotted path, or the
            ``nn.ModuleList`` itself.

    Returns:
        ``(path, module list)``.

    Raises:
        TypeError: for a ``blocks`` of another type.
        ValueError: when the list cannot be found (naming ``blocks``).
    """
    if isinstance(blocks, nn.ModuleList):
        for path, m in model.named_modules():
            if m is blocks:
                return path, m
        raise ValueError("blocks: the nn.ModuleList is not part of the model")
    if isinstance(blocks, str):
        try:
            m = model.get_submodule(blocks)
        except AttributeError:
            raise ValueError(f"blocks: {type(model).__name__} has no submodule {blocks!r}") from None
        if not isinstance(m, nn.ModuleList):
            raise ValueError(f"blocks: {blocks!r} is a {type(m).__name__}, not an nn.ModuleList")
        return blocks, m
    if blocks is not None:
        raise TypeError(f"blocks must be None, a path or an nn.ModuleList, got "
                        f"{type(blocks).__name__}")
    if not hf_config.has_transformers_config(model):
        raise ValueError(f"blocks: {type(model).__name__} has no transformers config to tell "
                         "where its blocks are; pass blocks= (a path or the nn.ModuleList)")
    fam = hf_config.CONFIG_FAMILIES.get(model.config.model_type)
    n = getattr(model.config, fam.layers_field if fam else "num_hidden_layers", None)
    found = [(p, m) for p, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and n is not None and len(m) == n]
    if len(found) != 1:
        raise ValueError(
            f"blocks: {type(model).__name__} has {len(found)} nn.ModuleList(s) with "
            f"num_hidden_layers={n} entries; pass blocks= (a path such as 'model.layers')")
    return found[0]


def _check_indices(indices, n: int) -> Tuple[int, ...]:
    if isinstance(indices, (numbers.Integral, torch.Tensor)) and not isinstance(indices, bool):
        indices = [int(indices)] if not isinstance(indices, torch.Tensor) else indices.flatten().tolist()
    try:
        items = list(indices)
    except TypeError:
        raise TypeError(f"indices must be block indices (ints), got {type(indices).__name__}") from None
    out = set()
    for i in items:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"indices must be ints, got {type(i).__name__}")
        if not -n <= int(i) < n:
            raise ValueError(f"indices: block {int(i)} is out of range for {n} blocks")
        out.add(int(i) % n)
    if not out:
        raise ValueError("indices is empty: name at least one block to remove")
    if len(out) >= n:
        raise ValueError(f"indices: removing all {n} blocks leaves no model")
    return tuple(sorted(out))


def _renamed_shapes(model, path: str, mapping: Dict[int, int]):
    rx = re.compile(rf"^{re.escape(path)}\.(\d+)\.")
    out = {}
    for name, shape in hf_config.current_shapes(model).items():
        m = rx.match(name)
        if m is None:
            out[name] = shape
            continue
        old = int(m.group(1))
        if old in mapping:
            out[f"{path}.{mapping[old]}.{name[m.end():]}"] = shape
    return out


def remove_blocks(model: nn.Module, indices, *, blocks=None, example_inputs=None,
                  dry_run: bool = False, undo: Optional[list] = None) -> BlockRemoval:
    """Remove whole blocks from ``model`` in place.

    The remaining blocks keep their order and are renumbered; every module
    attribute in :data:`LAYER_INDEX_ATTRS` that held a block's old index
    gets its new one. A transformers model's config gets the new
    ``num_hidden_layers`` (and shortened per-layer fields such as
    ``layer_types``), checked on the meta device before anything changes.
    On any failure the model is left as it was.

    Args:
        model: the model.
        indices: the block indices to remove (an int or an iterable of ints).
        blocks: where the blocks are (see :func:`find_block_list`).
        example_inputs: optional inputs the model is run on afterwards (the
            call is rolled back if that fails).
        dry_run: check everything (indices, the config) and return the
            report of what would be done, changing nothing.
        undo: a list; on success the callables that undo this call are
            appended to it (call them in reverse order).

    Returns:
        BlockRemoval.

    Raises:
        TypeError, ValueError: bad ``indices`` or ``blocks`` (naming them).
        ConfigError: when the model's config cannot state the removal (an
            unsupported model type, or blocks whose behaviour depends on their
            index such as GPT-2 with ``scale_attn_by_inverse_layer_idx``).
        RuntimeError: when the model fails to run on ``example_inputs``
            afterwards (rolled back).

    Example::

        >>> fastprune.structured.remove_blocks(llama, [2])
        >>> llama.config.num_hidden_layers
        3
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path, ml = find_block_list(model, blocks)
    n = len(ml)
    removed = _check_indices(indices, n)
    if example_inputs is not None:
        split_example_inputs(example_inputs)
    kept = [i for i in range(n) if i not in removed]
    mapping = {old: new for new, old in enumerate(kept)}
    update = hf_config.ConfigUpdate({})
    if hf_config.has_transformers_config(model):
        fam = hf_config.family_of(model)
        cfg = model.config
        why = fam.blocks_refused(cfg) if fam.blocks_refused is not None else None
        if why:
            raise hf_config.ConfigError(f"removing blocks of this {cfg.model_type} model cannot "
                                        f"be stated in its config: {why}")
        extra: Dict[str, object] = {fam.layers_field: len(kept)}
        for fld in fam.per_layer_fields:
            value = getattr(cfg, fld, None)
            if isinstance(value, (list, tuple)) and len(value) == n:
                extra[fld] = type(value)(value[i] for i in kept)
        update = hf_config.plan_config_update(model, _renamed_shapes(model, path, mapping), extra)
    params_before = count_params(model)
    if dry_run:
        gone = sum(p.numel() for i in removed for p in ml[i].parameters())
        return BlockRemoval(path, removed, n, len(kept), params_before, params_before - gone, [],
                            dict(update.changes))
    outer_undo, undo = undo, []
    renumbered: List[Tuple[str, str, int, int]] = []
    old_modules = ml._modules
    try:
        ml._modules = OrderedDict((str(mapping[i]), old_modules[str(i)]) for i in kept)
        undo.append(lambda: setattr(ml, "_modules", old_modules))
        for i in kept:
            block = old_modules[str(i)]
            for sub_path, sub in block.named_modules():
                for attr in LAYER_INDEX_ATTRS:
                    value = getattr(sub, attr, None)
                    if isinstance(value, int) and not isinstance(value, bool) and value == i \
                            and mapping[i] != i:
                        undo.append(lambda s=sub, a=attr, v=value: setattr(s, a, v))
                        setattr(sub, attr, mapping[i])
                        full = f"{path}.{mapping[i]}" + (f".{sub_path}" if sub_path else "")
                        renumbered.append((full, attr, i, mapping[i]))
        for fld, (old, new) in update.changes.items():
            undo.append(lambda f=fld, o=old: setattr(model.config, f, o))
            setattr(model.config, fld, new)
        if example_inputs is not None:
            args, kwargs = split_example_inputs(example_inputs)
            with eval_mode(model), torch.no_grad():
                model(*args, **kwargs)
    except BaseException as exc:
        for fn in reversed(undo):
            fn()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise RuntimeError(f"removing blocks was rolled back, the model is unchanged: "
                           f"{type(exc).__name__}: {exc}") from exc
    if outer_undo is not None:
        outer_undo.extend(undo)
    return BlockRemoval(path, removed, n, len(kept), params_before, count_params(model),
                        renumbered, dict(update.changes))
