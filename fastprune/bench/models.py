"""The benchmark's models: stacks of bias-free ``nn.Linear`` with weights regenerable from a seed.

Every layer's weights come from its own generator seed, so the original values
of any layer can be recomputed at will (to check masks, or to undo an in-place
prune) without ever holding a copy of the model.
"""
from __future__ import annotations

import argparse
import math
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..core.targets import pruning_hooks

__all__ = [
    "DTYPES",
    "parse_count",
    "model_shapes",
    "describe_model",
    "model_numel",
    "fill_layer_",
    "layer_weight",
    "build_model",
    "regenerate_",
    "unprune_",
]

Shape = Tuple[int, int]

#: ``--dtype`` spellings and the dtypes they mean.
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}

_SCALE = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str) -> int:
    """Read a parameter count written with an optional K/M/B/T suffix.

    Args:
        text: ``"100M"``, ``"1.5B"``, ``"500K"``, ``"12345"`` (underscores allowed).

    Returns:
        the count as an int.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a count (so that argparse
            reports it against ``--params``).

    Example::

        >>> parse_count("1.5B")
        1500000000
    """
    t = str(text).strip().upper().replace("_", "")
    try:
        if t and t[-1] in _SCALE:
            return int(round(float(t[:-1]) * _SCALE[t[-1]]))
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--params: cannot read {text!r}; write e.g. 100M, 1B, 7B") from None


def _llama_block(h: int) -> List[Shape]:
    # Llama's MLP width: 8h/3 rounded up to a multiple of 256.
    inter = 256 * math.ceil(8 * h / 3 / 256)
    return [(h, h)] * 4 + [(inter, h), (inter, h), (h, inter)]  # q k v o, gate up, down: (out, in)


def model_shapes(params: int, kind: str = "llama", width: Optional[int] = None) -> List[Shape]:
    """The ``(out_features, in_features)`` of every Linear of a model of about ``params`` parameters.

    Args:
        params: target number of parameters.
        kind: ``"llama"`` (blocks of q, k, v, o, gate, up, down projections; the
            hidden size is the largest of 4096, 2048, ..., 64 that gives at least
            four blocks, unless ``width`` fixes it) or ``"square"`` (``width`` x
            ``width`` layers, 2048 by default).
        width: hidden size (llama) or layer width (square).

    Returns:
        one shape per layer; the total is the nearest whole number of blocks
        (or layers) to ``params``, at least one.

    Raises:
        ValueError: unknown ``kind``.

    Example::

        >>> model_shapes(105_000_000, "square", 2048) == [(2048, 2048)] * 25
        True
    """
    if kind == "square":
        w = width or 2048
        return [(w, w)] * max(1, round(params / (w * w)))
    if kind != "llama":
        raise ValueError(f"--model {kind!r}: choose llama or square")
    widths = [width] if width else [4096, 2048, 1024, 768, 512, 256, 128, 64]
    for h in widths:
        block = _llama_block(h)
        per_block = sum(o * i for o, i in block)
        if width or 4 * per_block <= params or h == widths[-1]:
            return block * max(1, round(params / per_block))
    raise AssertionError("unreachable: the last width always returns")


def model_numel(shapes: Sequence[Shape]) -> int:
    """Number of parameters of a model of these layer shapes."""
    return sum(o * i for o, i in shapes)


def describe_model(shapes: Sequence[Shape], kind: str) -> str:
    """One line naming the model built from ``shapes`` (as :func:`model_shapes` made them for ``kind``)."""
    n = model_numel(shapes)
    if kind == "square":
        return f"{len(shapes)} x Linear({shapes[0][1]}, {shapes[0][0]}), {n / 1e6:.1f}M parameters"
    h = shapes[0][1]
    return (
        f"Llama-shaped, hidden {h}, {len(shapes) // 7} blocks x 7 Linear ({len(shapes)} layers), "
        f"{n / 1e6:.1f}M parameters"
    )


def _layer_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + i


def fill_layer_(weight: torch.Tensor, seed: int, i: int) -> None:
    """Fill ``weight`` in place with layer ``i``'s N(0, 0.02^2) values for model ``seed``.

    Args:
        weight: the tensor to overwrite (any shape, dtype and device).
        seed: the model's seed.
        i: the layer's index in the model.

    Example::

        >>> w = torch.empty(4, 4); fill_layer_(w, 0, 3)
        >>> torch.equal(w, layer_weight((4, 4), torch.float32, "cpu", 0, 3))
        True
    """
    g = torch.Generator(device=weight.device).manual_seed(_layer_seed(seed, i))
    with torch.no_grad():
        weight.normal_(0.0, 0.02, generator=g)


def layer_weight(shape, dtype, device, seed: int, i: int) -> torch.Tensor:
    """A new tensor holding layer ``i``'s original weights (see :func:`fill_layer_`)."""
    w = torch.empty(shape, dtype=dtype, device=device)
    fill_layer_(w, seed, i)
    return w


def build_model(shapes: Sequence[Shape], dtype, device, seed: int) -> nn.ModuleList:
    """Bias-free Linear layers of the given shapes, weights from :func:`fill_layer_`.

    Args:
        shapes: ``(out_features, in_features)`` per layer (see :func:`model_shapes`).
        dtype: weight dtype.
        device: where the weights live.
        seed: the model's seed.

    Returns:
        an ``nn.ModuleList`` of the layers.

    Example::

        >>> model = build_model([(8, 4), (3, 8)], torch.float32, "cpu", seed=5)
        >>> model[1].weight.shape
        torch.Size([3, 8])
    """
    layers = []
    for i, (o, n) in enumerate(shapes):
        # skip_init: the default initialisation would be overwritten anyway and costs seconds at 1B
        lin = torch.nn.utils.skip_init(torch.nn.Linear, n, o, bias=False, dtype=dtype, device=device)
        fill_layer_(lin.weight, seed, i)
        layers.append(lin)
    return nn.ModuleList(layers)


def regenerate_(model: Iterable[nn.Module], seed: int) -> None:
    """Put the original weights back into every layer of ``model`` (after an in-place prune).

    Args:
        model: the layers, in the order they were built.
        seed: the seed the model was built with.
    """
    for i, m in enumerate(model):
        fill_layer_(m.weight, seed, i)


def unprune_(modules: Iterable[nn.Module], name: str = "weight") -> None:
    """Undo a torch-style pruning reparametrisation of ``name``, keeping ``name_orig`` as the parameter.

    Unlike ``prune.remove``, this does not apply the mask: pruning leaves
    ``name_orig`` dense, so the model is back to its original weights and can be
    pruned again without being rebuilt. Modules that are not pruned are left
    as they are.

    Args:
        modules: the modules to restore (e.g. a model's layers).
        name: the pruned parameter's name.

    Example::

        >>> import torch.nn.utils.prune as prune
        >>> lin = torch.nn.Linear(4, 4)
        >>> _ = prune.l1_unstructured(lin, "weight", amount=0.5)
        >>> unprune_([lin])
        >>> hasattr(lin, "weight_orig"), bool((lin.weight != 0).all())
        (False, True)
    """
    orig, mask = name + "_orig", name + "_mask"
    for m in modules:
        for k, _ in pruning_hooks(m, name):
            del m._forward_pre_hooks[k]
        if orig in m._parameters:
            m.__dict__.pop(name, None)
            m.__dict__.pop("__deepcopy__", None)
            m._parameters[name] = m._parameters.pop(orig)
            del m._buffers[mask]
