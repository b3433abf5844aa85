"""Finding the decoder blocks of a model and the linear layers inside them."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["find_blocks", "block_linears", "is_conv1d", "weight_rows"]

# Where transformers keeps the decoder blocks: Llama, Mistral, Qwen2, Gemma and
# most decoders (model.layers), GPT-2 / GPT-J / Falcon (transformer.h), OPT
# (model.decoder.layers), GPT-NeoX (gpt_neox.layers).
_KNOWN_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.language_model.layers",
    "transformer.blocks",
    "layers",
)


def _get_path(model: nn.Module, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is stored [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(
        getattr(module, "weight", None), torch.Tensor)


def _is_linear(module: nn.Module) -> bool:
    return (isinstance(module, nn.Linear) and isinstance(module.weight, torch.Tensor)) or is_conv1d(module)


def weight_rows(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as [out_features, in_features] (a transposed view for Conv1D)."""
    return weight.t() if is_conv1d(module) else weight


def find_blocks(model: nn.Module, blocks=None) -> List[nn.Module]:
    """The sequence of decoder blocks that are pruned one after the other.

    Args:
        model: the model (a transformers causal LM or any ``nn.Module``).
        blocks: ``None`` to look in the usual places (``model.layers``,
            ``model.decoder.layers``, ``transformer.h``, ``gpt_neox.layers``,
            ``layers``), a dotted attribute path such as ``"model.layers"``,
            or the blocks themselves (an ``nn.ModuleList`` or a list of modules
            of ``model``).

    Returns:
        the blocks, in the order the model runs them.

    Raises:
        ValueError: ``blocks`` cannot be found, is empty, or holds modules
            that are not part of ``model``.
        TypeError: ``blocks`` is of an unsupported type.

    Example::

        >>> blocks = find_blocks(llama)           # llama.model.layers
        >>> blocks = find_blocks(gpt2, "transformer.h")
    """
    if blocks is None:
        for path in _KNOWN_PATHS:
            found = _get_path(model, path)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return list(found)
        raise ValueError(
            f"blocks: could not find the decoder blocks of {type(model).__name__} "
            f"(looked for {', '.join(_KNOWN_PATHS)}); pass blocks= (a path such as 'model.layers' or the modules)"
        )
    if isinstance(blocks, str):
        found = _get_path(model, blocks)
        if found is None:
            raise ValueError(f"blocks: {type(model).__name__} has no attribute path {blocks!r}")
        if isinstance(found, nn.Module) and not isinstance(found, (nn.ModuleList, nn.Sequential)):
            raise ValueError(f"blocks: {blocks!r} is a {type(found).__name__}, not a list of blocks")
        blocks = found
    if isinstance(blocks, nn.Module) and not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise TypeError(f"blocks must be a path, an nn.ModuleList or a list of modules, got {type(blocks).__name__}")
    try:
        found = list(blocks)
    except TypeError:
        raise TypeError(
            f"blocks must be a path, an nn.ModuleList or a list of modules, got {type(blocks).__name__}"
        ) from None
    if not found:
        raise ValueError("blocks is empty")
    own = {id(m) for m in model.modules()}
    for i, b in enumerate(found):
        if not isinstance(b, nn.Module):
            raise TypeError(f"blocks[{i}] must be an nn.Module, got {type(b).__name__}")
        if id(b) not in own:
            raise ValueError(f"blocks[{i}] ({type(b).__name__}) is not a submodule of the model")
    return found


def block_linears(block: nn.Module, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every linear layer (``nn.Linear``, GPT-2's
    ``Conv1D``) inside ``block``, in registration order."""
    out = []
    for name, m in block.named_modules():
        if _is_linear(m):
            out.append((f"{prefix}.{name}" if prefix else name, m))
    return out
