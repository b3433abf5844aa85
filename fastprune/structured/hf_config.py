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
config on the meta device must have exactly the pruned model's tensors,
names and shapes. What each model type's config can state (its sizes, the
bias flags that give linear layers a bias, its per-layer fields, whether its
blocks may be renumbered) is a registry entry (:func:`register_config_family`).
``transformers`` is imported only when a model actually has a transformers
config.
"""
from __future__ import annotations

import copy
import re
import sys
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..core.targets import is_reparametrized

__all__ = ["ConfigError", "ConfigFamily", "BiasFlag", "ConfigUpdate", "CONFIG_FAMILIES",
           "register_config_family", "supported_model_types", "has_transformers_config",
           "current_shapes", "plan_config_update", "config_changes", "apply_config_update",
           "rewrite_config", "family_of", "SUPPORTED_MODEL_TYPES"]

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


class BiasFlag(NamedTuple):
    """Config field ``field`` (a bool) gives a bias to every linear layer whose path matches ``pattern``.

    One flag switches the biases of several layers at once (Llama's
    ``mlp_bias``: gate, up and down projections), so turning it on for one
    layer means zero biases for the others.
    """

    field: str
    pattern: str


class ConfigFamily(NamedTuple):
    """What the config of one model type can state, for :func:`register_config_family`.

    Attributes:
        sizes: the size fields and the tensors that carry them.
        explicit: fields to write even when unchanged, because transformers
            would otherwise derive them from fields that did change
            (``head_dim`` from ``hidden_size / num_attention_heads``).
        bias_flags: the bool fields that give linear layers a bias.
        layers_field: the number of decoder blocks.
        per_layer_fields: fields holding one entry per block (``layer_types``),
            shortened when blocks are removed.
        blocks_refused: ``cfg -> reason or None``: why removing whole blocks
            cannot be stated (a block's behaviour that depends on its index).
    """

    sizes: Tuple[_Size, ...]
    explicit: Mapping[str, Callable[[object], object]] = {}
    bias_flags: Tuple[BiasFlag, ...] = ()
    layers_field: str = "num_hidden_layers"
    per_layer_fields: Tuple[str, ...] = ("layer_types",)
    blocks_refused: Optional[Callable[[object], Optional[str]]] = None


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _gpt2_qkv(cfg) -> int:
    return 3 * (cfg.n_embd // cfg.n_head)  # c_attn holds q, k and v of every head


def _gpt2_blocks(cfg) -> Optional[str]:
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        return ("scale_attn_by_inverse_layer_idx=True scales each block's attention by "
                "1 / (its index + 1), so a block that moves to a new index computes something "
                "else once reloaded")
    return None


_LLAMA_SIZES = (
    _Size("hidden_size", r"embed_tokens\.weight$", 1),
    _Size("intermediate_size", r"layers\.\d+\.mlp\.up_proj\.weight$", 0),
    _Size("num_attention_heads", r"layers\.\d+\.self_attn\.q_proj\.weight$", 0, _head_dim),
    _Size("num_key_value_heads", r"layers\.\d+\.self_attn\.k_proj\.weight$", 0, _head_dim),
)
_HEAD_DIM = {"head_dim": _head_dim}
_ATTENTION_BIAS = BiasFlag("attention_bias", r"layers\.\d+\.self_attn\.[qkvo]_proj$")

#: Model type (``config.model_type``) -> what its config can state. In GPT-2,
#: OPT, BERT and ViT the head width is hidden_size / num_attention_heads, so
#: removing heads or residual channels there leaves a model no config
#: describes; the meta-device check in :func:`config_changes` finds that and
#: the error names the tensor.
CONFIG_FAMILIES: Dict[str, ConfigFamily] = {}


def register_config_family(model_type: str, family: ConfigFamily) -> None:
    """Declare what the config of ``model_type`` models can state.

    Args:
        model_type: ``config.model_type`` (``"llama"``, ``"opt"`` ...).
        family: a :class:`ConfigFamily`.

    Raises:
        ValueError: when ``model_type`` is registered already.

    Example::

        register_config_family("my_llama", CONFIG_FAMILIES["llama"])
    """
    if model_type in CONFIG_FAMILIES:
        raise ValueError(f"model type {model_type!r} already has a config family")
    CONFIG_FAMILIES[model_type] = family


register_config_family("llama", ConfigFamily(
    _LLAMA_SIZES, _HEAD_DIM,
    (BiasFlag("mlp_bias", r"layers\.\d+\.mlp\.(gate|up|down)_proj$"), _ATTENTION_BIAS)))
register_config_family("mistral", ConfigFamily(_LLAMA_SIZES, _HEAD_DIM))
# Qwen2: q/k/v always have a bias, o_proj and the MLP never (no flag).
register_config_family("qwen2", ConfigFamily(_LLAMA_SIZES, _HEAD_DIM))
register_config_family("gemma", ConfigFamily(_LLAMA_SIZES, _HEAD_DIM, (_ATTENTION_BIAS,)))
register_config_family("opt", ConfigFamily(
    (_Size("word_embed_proj_dim", r"embed_tokens\.weight$", 1),
     _Size("hidden_size", r"layers\.\d+\.fc1\.weight$", 1),
     _Size("ffn_dim", r"layers\.\d+\.fc1\.weight$", 0),
     _Size("num_attention_heads", r"layers\.\d+\.self_attn\.q_proj\.weight$", 0, _head_dim)),
    bias_flags=(BiasFlag("enable_bias", r"layers\.\d+\.(self_attn\.[qkv]_proj|self_attn\.out_proj"
                                       r"|fc1|fc2)$"),)))
register_config_family("gpt2", ConfigFamily(
    (_Size("n_embd", r"wte\.weight$", 1),
     _Size("n_inner", r"h\.\d+\.mlp\.c_fc\.weight$", 1),
     _Size("n_head", r"h\.\d+\.attn\.c_attn\.weight$", 1, _gpt2_qkv)),
    blocks_refused=_gpt2_blocks))
register_config_family("bert", ConfigFamily(
    (_Size("hidden_size", r"embeddings\.word_embeddings\.weight$", 1),
     _Size("intermediate_size", r"layer\.\d+\.intermediate\.dense\.weight$", 0),
     _Size("num_attention_heads", r"layer\.\d+\.attention\.self\.query\.weight$", 0,
           _head_dim))))
register_config_family("vit", ConfigFamily(
    (_Size("hidden_size", r"embeddings\.cls_token$", 2),
     _Size("intermediate_size", r"layers\.\d+\.mlp\.fc1\.weight$", 0),
     _Size("num_attention_heads", r"layers\.\d+\.attention\.q_proj\.weight$", 0, _head_dim))))


def supported_model_types() -> Tuple[str, ...]:
    """Model types whose config can be rewritten (see :func:`register_config_family`).

    Returns:
        tuple of ``config.model_type`` values, sorted.
    """
    return tuple(sorted(CONFIG_FAMILIES))


#: Model types (``config.model_type``) whose config can be rewritten when this module loaded.
SUPPORTED_MODEL_TYPES = supported_model_types()


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


def _family(cfg) -> ConfigFamily:
    fam = CONFIG_FAMILIES.get(cfg.model_type)
    if fam is None:
        raise ConfigError(
            f"rewriting the config of {cfg.model_type!r} models is not supported (supported: "
            f"{', '.join(supported_model_types())}); {_TORCH_SAVE}")
    return fam


def family_of(model: nn.Module) -> ConfigFamily:
    """The :class:`ConfigFamily` of a transformers model.

    Args:
        model: a model with a transformers config.

    Returns:
        ConfigFamily.

    Raises:
        TypeError: when the model has no transformers config.
        ConfigError: when its model type is not registered.
    """
    if not has_transformers_config(model):
        raise TypeError(f"{type(model).__name__} has no transformers config (model.config)")
    return _family(model.config)


def _read_sizes(cfg, shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, int]:
    new: Dict[str, int] = {}
    for size in _family(cfg).sizes:
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


def _bias_flags(cfg, fam: ConfigFamily, shapes: Dict[str, Tuple[int, ...]], changes, zero):
    """Turn on the bias flags of layers that gained a bias; their siblings get zero biases."""
    for flag in fam.bias_flags:
        if getattr(cfg, flag.field, False):
            continue  # already on: every layer it covers has a bias
        rx = re.compile(flag.pattern)
        paths = sorted({n[: -len(".weight")] for n in shapes
                        if n.endswith(".weight") and rx.search(n[: -len(".weight")])})
        if not any(p + ".bias" in shapes for p in paths):
            continue
        changes[flag.field] = (getattr(cfg, flag.field, None), True)
        for p in paths:
            if p + ".bias" not in shapes:
                zero.append(p)
                shapes[p + ".bias"] = (shapes[p + ".weight"][0],)


def _build_on_meta(model: nn.Module, cfg) -> nn.Module:
    with torch.device("meta"):
        return type(model)(cfg)


class ConfigUpdate(NamedTuple):
    """What :func:`plan_config_update` found: fields to write and zero biases to add.

    Attributes:
        changes: field -> ``(old, new)``.
        zero_biases: module paths that get a zero bias, because a bias flag
            turned on for a sibling layer covers them too (their outputs do
            not change).
    """

    changes: Dict[str, Tuple[object, object]]
    zero_biases: Tuple[str, ...] = ()


def plan_config_update(model: nn.Module, shapes: Optional[Mapping[str, Tuple[int, ...]]] = None,
                       extra: Optional[Mapping[str, object]] = None) -> ConfigUpdate:
    """The config fields (and zero biases) that describe ``shapes``, checked on the meta device.

    Nothing is modified. Sizes are read from the tensors that carry them;
    a layer that gained a bias turns on its config's bias flag (the other
    layers under that flag get zero biases); ``extra`` fields (the block
    count after :func:`~fastprune.structured.remove_blocks`) are written as
    given. A model built from the new config on the meta device must then
    have exactly the tensors of ``shapes``, names and shapes.

    Args:
        model: a transformers model (``model.config`` a ``PretrainedConfig``).
        shapes: tensor name -> shape as :func:`current_shapes` returns it;
            by default the model's current shapes.
        extra: further fields to set, ``{field: new value}``.

    Returns:
        ConfigUpdate.

    Raises:
        TypeError: when the model has no transformers config.
        ConfigError: as :func:`config_changes`.

    Example::

        >>> plan_config_update(model).changes   # after a uniform cut with bias compensation
        {'intermediate_size': (96, 48), 'mlp_bias': (False, True)}
    """
    if not has_transformers_config(model):
        raise TypeError(f"{type(model).__name__} has no transformers config (model.config)")
    cfg = model.config
    fam = _family(cfg)
    shapes = current_shapes(model) if shapes is None else dict(shapes)
    changes: Dict[str, Tuple[object, object]] = {}
    zero: List[str] = []
    for fld, value in _read_sizes(cfg, shapes).items():
        if getattr(cfg, fld) != value:
            changes[fld] = (getattr(cfg, fld), value)
    _bias_flags(cfg, fam, shapes, changes, zero)
    for fld, value in (extra or {}).items():
        old = getattr(cfg, fld, None)
        if old != value:
            changes[fld] = (old, value)
    if not changes:
        return ConfigUpdate({})
    for fld, derive in fam.explicit.items():
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
    ref_shapes = current_shapes(ref)
    wrong: List[str] = []
    for name, shape in ref_shapes.items():
        if name not in shapes:
            wrong.append(f"the config gives a tensor {name} {tuple(shape)} the model does not have")
        elif tuple(shapes[name]) != tuple(shape):
            wrong.append(f"{name} is {tuple(shapes[name])} but the config gives {tuple(shape)}")
    for name in sorted(set(shapes) - set(ref_shapes)):
        if name.endswith(".bias"):
            wrong.append(f"{name}: no field of a {cfg.model_type} config gives "
                         f"{name[: -len('.bias')]} a bias")
        else:
            wrong.append(f"{name} has no place in a model built from the config")
    if wrong:
        raise ConfigError(
            f"the pruned sizes cannot be stated in a {cfg.model_type} config ({_fmt(changes)}): "
            f"{'; '.join(wrong[:3])}; {_TORCH_SAVE}")
    return ConfigUpdate(changes, tuple(zero))


def config_changes(model: nn.Module, shapes: Optional[Mapping[str, Tuple[int, ...]]] = None
                   ) -> Dict[str, Tuple[object, object]]:
    """The config fields that describe ``shapes``, checked against a model built from them.

    Nothing is modified (see :func:`plan_config_update` for the zero biases
    a turned-on bias flag brings).

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
            would not have these tensors (for example heads removed in a model
            whose config derives the head width from ``hidden_size``, or a
            bias no config field can give); the message names the tensor and
            points to ``torch.save``.

    Example::

        >>> config_changes(model)     # after prune_channels(model, x, 0.25, uniform=True)
        {'intermediate_size': (128, 96), 'head_dim': (None, 8)}
    """
    return plan_config_update(model, shapes).changes


def _fmt(changes) -> str:
    return ", ".join(f"{k}: {o} -> {n}" for k, (o, n) in changes.items())


def rewrite_config(model: nn.Module, shapes: Optional[Mapping[str, Tuple[int, ...]]] = None,
                   extra: Optional[Mapping[str, object]] = None, undo: Optional[list] = None
                   ) -> Dict[str, Tuple[object, object]]:
    """Write the pruned sizes into ``model.config`` so ``save_pretrained`` / ``from_pretrained`` work.

    ``prune_channels(..., uniform=True)`` calls this for transformers models;
    call it yourself after other structured pruning (a :class:`Plan` executed
    by hand, :func:`remove_masked_channels`) when every repeated block lost the
    same channels. When a layer gained a bias (bias compensation) the
    config's bias flag is turned on, and the other layers that flag covers get
    zero biases (their outputs are unchanged).

    Args:
        model: a transformers model whose channels or heads were removed.
        shapes: as for :func:`config_changes` (default: the model's shapes).
        extra: further fields to set (see :func:`plan_config_update`).
        undo: a list the callables undoing this call are appended to.

    Returns:
        dict: field -> ``(old, new)`` for every field written.

    Raises:
        TypeError, ConfigError: as :func:`config_changes`; the config and the
            model are then unchanged.

    Example::

        >>> fastprune.prune_channels(model, inputs, 0.25, uniform=True)
        >>> model.save_pretrained(d)           # config already rewritten
        >>> type(model).from_pretrained(d)     # same outputs
    """
    update = plan_config_update(model, shapes, extra)
    apply_config_update(model, update, undo)
    return update.changes


def apply_config_update(model: nn.Module, update: ConfigUpdate, undo: Optional[list] = None) -> None:
    """Set the fields of ``update`` on ``model.config`` and add its zero biases.

    Args:
        model: the model :func:`plan_config_update` was asked about.
        update: its answer.
        undo: a list the callables undoing this are appended to.

    Raises:
        ValueError: when a zero bias goes to a layer that is not a linear
            layer without a bias (nothing is changed then).
    """
    mods = []
    for path in update.zero_biases:
        m = model.get_submodule(path)
        w = getattr(m, "weight", None)
        if not isinstance(m, nn.Linear) or getattr(m, "bias", None) is not None or w is None:
            raise ValueError(f"{path}: a zero bias can only be added to a linear layer without one")
        mods.append(m)
    steps = undo if undo is not None else []
    for m in mods:
        steps.append(lambda m=m, o=m._parameters.get("bias"): m._parameters.__setitem__("bias", o))
        m.bias = nn.Parameter(torch.zeros(m.out_features, dtype=m.weight.dtype,
                                          device=m.weight.device),
                              requires_grad=m.weight.requires_grad)
    for fld, (_, value) in update.changes.items():
        steps.append(lambda f=fld, o=getattr(model.config, fld, None): setattr(model.config, f, o))
        setattr(model.config, fld, value)
