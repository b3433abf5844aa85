"""Checks of a model and its calibration made before :func:`fastprune.llm.prune` changes anything.

* :func:`check_model_has_data`: no tensor of the model on the meta device, nor
  the pruning ``device`` itself (a block moved there would lose its weights).
* :func:`check_calibration_fits`: every token id inside the input embeddings'
  table, and no sequence longer than the positions the model has (an error
  for a table of learned positions, GPT-2 / OPT; a warning for rotary
  models, Llama / Mistral / Qwen2, run past ``max_position_embeddings``).
* :func:`position_limit` (of a model) / :func:`config_position_limit` (of a
  checkpoint's config): that limit; ``python -m fastprune.llm`` takes it as its
  default ``--seqlen``.

Without them torch raises ``IndexError: index out of range in self`` or
``Tensor.item() cannot be called on meta tensors`` from deep inside the forward.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
from torch import nn

__all__ = ["check_model_has_data", "check_calibration_fits", "position_limit", "config_position_limit",
           "calibration_labels", "LEARNED_POSITION_TYPES"]


def check_model_has_data(model: nn.Module, device: torch.device) -> None:
    """Raise ``ValueError`` naming the device when ``device`` or a tensor of ``model`` is on the meta device.

    Args:
        model: the model to prune.
        device: where the blocks are to be pruned.

    Raises:
        ValueError: naming the first parameter or buffer on the meta device,
            or ``device``.
    """
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.device.type == "meta":
                raise ValueError(
                    f"model: {kind} {name} is on the meta device and holds no data, so nothing can be "
                    "calibrated or selected; materialise the model first (load it with from_pretrained, or "
                    "model.to_empty(device=...) and load its weights)"
                )
    if device.type == "meta":
        raise ValueError(
            "device='meta' holds no data: the blocks moved there would lose their weights; "
            "give the device to prune on (cpu, cuda, ...)"
        )


def _position_table(model: nn.Module) -> Optional[Tuple[str, nn.Embedding]]:
    """The table of learned positions (GPT-2's ``wpe``, OPT's ``embed_positions``), if the model has one."""
    inputs = _input_embeddings(model)
    for name, m in model.named_modules():
        if not isinstance(m, nn.Embedding) or m is inputs:
            continue
        last = name.rsplit(".", 1)[-1]
        if last == "wpe" or "position" in last or last.startswith("pos_emb"):
            return name, m
    return None


def _input_embeddings(model: nn.Module) -> Optional[nn.Module]:
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        return getter()
    except (AttributeError, NotImplementedError, TypeError):
        return None


# transformers model types whose positions are rows of a learned table (GPT-2's wpe, OPT's and
# BioGPT's embed_positions): a sequence longer than the table cannot run. Rotary (Llama, Mistral,
# Qwen2, GPT-NeoX...) and ALiBi models are not listed: they run past max_position_embeddings.
LEARNED_POSITION_TYPES = frozenset({"gpt2", "opt", "gpt_neo", "gpt_bigcode", "biogpt"})


def config_position_limit(config) -> Tuple[Optional[int], bool]:
    """``(positions, learned)`` from a transformers config alone (``max_position_embeddings``, or
    GPT-2's ``n_positions``; ``learned`` from :data:`LEARNED_POSITION_TYPES`), for a checkpoint
    whose weights are not loaded. ``(None, False)`` when the config states no limit."""
    stated = getattr(config, "max_position_embeddings", None)
    if not (isinstance(stated, int) and not isinstance(stated, bool) and stated > 0):
        return None, False
    return stated, getattr(config, "model_type", None) in LEARNED_POSITION_TYPES


def position_limit(model: nn.Module) -> Tuple[Optional[int], bool]:
    """``(positions, learned)``: the longest sequence the model is made for and whether it is a hard limit.

    ``learned`` is True for a table of learned positions (GPT-2, OPT): a longer
    sequence cannot run. Otherwise ``positions`` is the config's
    ``max_position_embeddings`` (rotary models run past it, extrapolating), or
    ``None`` when the model states none.

    Example::

        >>> position_limit(gpt2)       # GPT2Config(n_positions=1024)
        (1024, True)
    """
    config = getattr(model, "config", None)
    stated = getattr(config, "max_position_embeddings", None) if config is not None else None
    stated = stated if isinstance(stated, int) and not isinstance(stated, bool) and stated > 0 else None
    table = _position_table(model)
    if table is not None:
        _, emb = table
        # OPT's table holds `offset` (2) rows before position 0.
        rows = emb.num_embeddings - int(getattr(emb, "offset", 0) or 0)
        return (min(rows, stated) if stated is not None else rows), True
    return stated, False


def calibration_labels(calibration, count: int) -> List[str]:
    """How each of the ``count`` normalised batches of ``calibration`` is named in messages."""
    if isinstance(calibration, torch.Tensor):
        return ["calibration"]
    return [f"calibration[{i}]" for i in range(count)]


def check_calibration_fits(model: nn.Module, batches, labels: List[str]) -> None:
    """Every token id is a row of the input embeddings, and no sequence is longer than the model's positions.

    Args:
        model: the model the calibration runs through.
        batches: ``(input_ids [b, s], attention mask or None)`` pairs, as
            :func:`~fastprune.llm.calibration.normalize_calibration` returns them.
        labels: the name of each batch in messages (``calibration``,
            ``calibration[1]``, ``--seqlen`` ...).

    Raises:
        ValueError: a token id outside ``[0, vocabulary size)`` (padding
            included: it is looked up too), or a sequence longer than a table
            of learned positions (``seqlen 2048 > max_position_embeddings 1024``).

    Warns:
        UserWarning: a sequence longer than ``max_position_embeddings`` of a
            model without a position table (rotary positions are extrapolated
            past the length the model was trained for).
    """
    emb = _input_embeddings(model)
    vocab = emb.num_embeddings if isinstance(emb, nn.Embedding) else None
    limit, learned = position_limit(model)
    longest, longest_label = 0, None
    for (ids, _), label in zip(batches, labels):
        if vocab is not None:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                raise ValueError(
                    f"{label}: token id {bad} is outside the vocabulary: the input embeddings of "
                    f"{type(model).__name__} have {vocab} rows (ids 0 to {vocab - 1}); was the calibration "
                    "tokenized with this model's tokenizer?"
                )
        seqlen = int(ids.shape[-1])
        if limit is not None and seqlen > limit and learned:
            raise ValueError(
                f"{label}: seqlen {seqlen} > max_position_embeddings {limit}: {type(model).__name__} looks "
                f"positions up in a table of {limit} learned positions; use sequences of at most {limit} tokens"
            )
        if seqlen > longest:
            longest, longest_label = seqlen, label
    if limit is not None and longest > limit:
        warnings.warn(
            f"{longest_label}: seqlen {longest} > max_position_embeddings {limit} of {type(model).__name__}: "
            "its rotary positions run past the length the model was made for, so the calibration statistics "
            f"may not be representative; sequences of at most {limit} tokens are safer",
            UserWarning,
            stacklevel=3,
        )
