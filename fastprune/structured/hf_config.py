"""Rewriting a transformers model's config after channels and heads were removed.

``save_pretrained`` writes the config next to the weights and
``from_pretrained`` builds the architecture from it, so a model whose
channels were removed reloads only when its config states the new sizes.
A config has one value per size for all layers, so this works when every
repeated block lost the same number of channels and heads
(``prune_channels(..., uniform=True)``); anything else is refused with an
error that says so.

The new values are read from the tensor shapes (per model type, the tensors
that carry each size), and then checked: a model built from the rewritten
config on the meta device must have exactly the pruned model's tensor
shapes. ``transformers`` is imported only when a model actually has a
transformers config.
"""
from __future__ import annotations

import copy
import re
import sys
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..core.targets import is_reparametrized

__all__ = ["ConfigError", "has_transformers_config", "current_shapes", "config_changes",
           "rewrite_config", "SUPPORTED_MODEL_TYPES"]

_TORCH_SAVE = ("save the whole module with torch.save(model, path) and load it with "
               "torch.load(path, weights_only=False) instead of save_pretrained")


class ConfigError(ValueError):
    """The pruned model's sizes cannot be written into its transformers config."""


class _Size(NamedTuple):
    """Config field ``field`` equals dim ``dim`` of every tensor matching ``pattern``, / ``per``."""

    field: str
    pattern: str
    dim: int
    per: Optional[Callable[[object], int]] = None  # divisor read from the original config


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _gpt2_qkv(cfg) -> int:
    return 3 * (cfg.n_embd // cfg.n_head)  # c_attn holds q, k and v of every head


_LLAMA_LIKE = (
    _Size("hidden_size", r"embed_tokens\.weight$", 1),
    _Size("intermediate_size", r"layers\.\d+\.mlp\.up_proj\.weight$", 0),
    _Size("num_attention_heads", r"layers\.\d+\.self_attn\.q_proj\.weight$", 0, _head_dim),
    _Size("num_key_value_heads", r"layers\.\d+\.self_attn\.k_proj\.weight$", 0, _head_dim),
)

# The sizes each supported model type's config can state. In GPT-2, BERT and ViT
# the head width is hidden_size / num_attention_heads, so removing heads or
# residual channels there leaves a model no config describes; the meta-device
# check below finds that and the error names the tensor.
_SIZES: Dict[str, Tuple[_Size, ...]] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gpt2": (
        _Size("n_embd", r"wte\.weight$", 1),
        _Size("n_inner", r"h\.\d+\.mlp\.c_fc\.weight$", 1),
        _Size("n_head", r"h\.\d+\.attn\.c_attn\.weight$", 1, _gpt2_qkv),
    ),
    "bert": (
        _Size("hidden_size", r"embeddings\.word_embeddings\.weight$", 1),
        _Size("intermediate_size", r"layer\.\d+\.intermediate\.dense\.weight$", 0),
        _Size("num_attention_heads", r"layer\.\d+\.attention\.self\.query\.weight$", 0,
              _head_dim),
    ),
    "vit": (
        _Size("hidden_size", r"embeddings\.cls_token$", 2),
        _Size("intermediate_size", r"layers\.\d+\.mlp\.fc1\.weight$", 0),
        _Size("num_attention_heads", r"layers\.\d+\.attention\.q_proj\.weight$", 0, _head_dim),
    ),
}

#: Model types (``config.model_type``) whose config can be rewritten.
SUPPORTED_MODEL_TYPES = tuple(sorted(_SIZES))

# Fields to write explicitly even when unchanged, because transformers would
# otherwise derive them from fields that did change.
_KEEP_EXPLICIT = {"llama": {"head_dim": _head_dim}, "qwen2": {"head_dim": _head_dim},
                  "mistral": {"head_dim": _head_dim}}


def has_transformers_config(model: nn.Module) -> bool:
    """True when ``model.config`` is a ``transformers.PretrainedConfig``.

    Does not import transformers: a model with such a config implies it is loaded.

    Args:
        model: any module.

    Returns:
        bool.
    """
    tf = sys.modules.get("transformers")
    cfg = getattr(model, "config", None)
    return tf is not None and isinstance(cfg, tf.PretrainedConfig)


def current_shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """Shape of every parameter and buffer, under the name an unpruned model gives it.

    A tensor pruned with masks (``weight_orig`` / ``weight_mask``) is listed as
    ``weight``; tied tensors are listed under every name.

    Args:
        model: any module.

    Returns:
        dict: name -> shape.
    """
    out = {}
    for path, m in model.named_modules(remove_duplicate=False):
        prefix = f"{path}." if path else ""
        for name, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is None:
                continue
            for suffix in ("_orig", "_mask"):
                base = name[: -len(suffix)]
                if name.endswith(suffix) and is_reparametrized(m, base):
                    name = None if suffix == "_mask" else base
                    break
            if name is not None:
                out[prefix + name] = tuple(t.shape)
    return out


def _read_sizes(cfg, shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, int]:
    new: Dict[str, int] = {}
    for size in _SIZES[cfg.model_type]:
        rx = re.compile(size.pattern)
        per = size.per(cfg) if size.per is not None else 1
        found: Dict[str, int] = {}
        for name, shape in shapes.items():
            if rx.search(name):
                n = shape[size.dim]
                if n % per:
                    raise ConfigError(
                        f"{name} has {n} channels along dim {size.dim}, not a multiple of {per}: "
                        f"{size.field} cannot state it; {_TORCH_SAVE}")
                found[name] = n // per
        if not found:
            continue
        if len(set(found.values())) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in sorted(found.items())[:4])
            raise ConfigError(
                f"the model was pruned non-uniformly: {size.field} differs between layers "
                f"({listing}); a transformers config holds one value for every layer. Prune "
                f"with fastprune.prune_channels(..., uniform=True), or {_TORCH_SAVE}")
        new[size.field] = next(iter(found.values()))
    return new


def _build_on_meta(model: nn.Module, cfg) -> nn.Module:
    with torch.device("meta"):
        return type(model)(cfg)


def config_changes(model: nn.Module, shapes: Optional[Mapping[str, Tuple[int, ...]]] = None
                   ) -> Dict[str, Tuple[object, object]]:
    """The config fields that describe ``shapes``, checked against a model built from them.

    Nothing is modified.

    Args:
        model: a transformers model (``model.config`` a ``PretrainedConfig``).
        shapes: tensor name -> shape as :func:`current_shapes` returns it; by
            default the model's current shapes. ``prune_channels`` passes the
            shapes a plan will produce, so the check happens before any cut.

    Returns:
        dict: field -> ``(old, new)`` for every field to write (empty when
        nothing changed).

    Raises:
        TypeError: when the model has no transformers config.
        ConfigError: when the model type is not supported, the layers were
            pruned non-uniformly, or a model built from the rewritten config
            would not have these shapes (for example heads removed in a model
            whose config derives the head width from ``hidden_size``); the
            message names the tensor and points to ``torch.save``.

    Example::

        >>> config_changes(model)     # after prune_channels(model, x, 0.25, uniform=True)
        {'intermediate_size': (128, 96), 'head_dim': (None, 8)}
    """
    if not has_transformers_config(model):
        raise TypeError(f"{type(model).__name__} has no transformers config (model.config)")
    cfg = model.config
    if cfg.model_type not in _SIZES:
        raise ConfigError(
            f"rewriting the config of {cfg.model_type!r} models is not supported (supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}); {_TORCH_SAVE}")
    shapes = current_shapes(model) if shapes is None else dict(shapes)
    changes: Dict[str, Tuple[object, object]] = {}
    for fld, value in _read_sizes(cfg, shapes).items():
        if getattr(cfg, fld) != value:
            changes[fld] = (getattr(cfg, fld), value)
    if not changes:
        return {}
    for fld, derive in _KEEP_EXPLICIT.get(cfg.model_type, {}).items():
        old = getattr(cfg, fld, None)
        if fld not in changes and old != derive(cfg):
            changes[fld] = (old, derive(cfg))
    new_cfg = copy.deepcopy(cfg)
    for fld, (_, value) in changes.items():
        setattr(new_cfg, fld, value)
    try:
        ref = _build_on_meta(model, new_cfg)
    except Exception as exc:  # noqa: BLE001 - the config itself is inconsistent
        raise ConfigError(
            f"{type(model).__name__} cannot be built with the rewritten config "
            f"({_fmt(changes)}): {type(exc).__name__}: {exc}; {_TORCH_SAVE}") from exc
    wrong: List[str] = []
    for name, shape in current_shapes(ref).items():
        if name in shapes and tuple(shapes[name]) != tuple(shape):
            wrong.append(f"{name} is {tuple(shapes[name])} but the config gives {tuple(shape)}")
    if wrong:
        raise ConfigError(
            f"the pruned sizes cannot be stated in a {cfg.model_type} config ({_fmt(changes)}): "
            f"{'; '.join(wrong[:3])}; {_TORCH_SAVE}")
    return changes


def _fmt(changes) -> str:
    return ", ".join(f"{k}: {o} -> {n}" for k, (o, n) in changes.items())


def rewrite_config(model: nn.Module, shapes: Optional[Mapping[str, Tuple[int, ...]]] = None
                   ) -> Dict[str, Tuple[object, object]]:
    """Write the pruned sizes into ``model.config`` so ``save_pretrained`` / ``from_pretrained`` work.

    ``prune_channels(..., uniform=True)`` calls this for transformers models;
    call it yourself after other structured pruning (a :class:`Plan` executed
    by hand, :func:`remove_masked_channels`) when every repeated block lost the
    same channels.

    Args:
        model: a transformers model whose channels or heads were removed.
        shapes: as for :func:`config_changes` (default: the model's shapes).

    Returns:
        dict: field -> ``(old, new)`` for every field written.

    Raises:
        TypeError, ConfigError: as :func:`config_changes`; the config is then unchanged.

    Example::

        >>> fastprune.prune_channels(model, inputs, 0.25, uniform=True)
        >>> model.save_pretrained(d)           # config already rewritten
        >>> type(model).from_pretrained(d)     # same outputs
    """
    changes = config_changes(model, shapes)
    for fld, (_, value) in changes.items():
        setattr(model.config, fld, value)
    return changes
