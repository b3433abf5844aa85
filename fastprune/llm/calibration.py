"""Calibration data: normalising what the user passes, and reading text files."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch

__all__ = ["normalize_calibration", "load_text_calibration"]

Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]


def _as_ids(t, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a tensor of token ids, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must hold integer token ids, got dtype {t.dtype}")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"{what} must be [batch, seq_len] (or one sequence), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(t.shape)})")
    return t


def _as_mask(mask, ids: torch.Tensor, what: str) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(mask).__name__}")
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"{what} has shape {tuple(mask.shape)}, the input ids {tuple(ids.shape)}")
    if not bool((mask != 0).any()):
        raise ValueError(f"{what} masks out every token: nothing to calibrate on")
    return mask


def normalize_calibration(calibration) -> List[Batch]:
    """Every calibration batch as ``(input_ids [b, s], attention_mask [b, s] or None)``.

    Args:
        calibration: a tensor of token ids (``[n, seq_len]`` or one sequence),
            or an iterable of batches, each a tensor of ids, a ``(ids, mask)``
            pair, or a mapping with ``"input_ids"`` and optionally
            ``"attention_mask"`` (what a tokenizer returns). Positions where
            the attention mask is 0 (padding) take no part in the statistics.

    Returns:
        the batches as a list (they are read several times).

    Raises:
        TypeError, ValueError: naming ``calibration`` and the batch at fault,
            including an empty calibration.
    """
    if calibration is None:
        raise ValueError("calibration is required for this method (a tensor of token ids or an iterable of batches)")
    if isinstance(calibration, torch.Tensor):
        return [(_as_ids(calibration, "calibration"), None)]
    if isinstance(calibration, (str, bytes)):
        raise TypeError("calibration must be token ids, not text; tokenize it first (or use load_text_calibration)")
    if isinstance(calibration, dict):
        calibration = [calibration]
    try:
        items = list(calibration)
    except TypeError:
        raise TypeError(
            f"calibration must be a tensor of token ids or an iterable of batches, got {type(calibration).__name__}"
        ) from None
    if not items:
        raise ValueError("calibration is empty: give at least one sequence of token ids")
    batches: List[Batch] = []
    for i, item in enumerate(items):
        what = f"calibration[{i}]"
        if isinstance(item, torch.Tensor):
            batches.append((_as_ids(item, what), None))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            ids = _as_ids(item[0], what + "[0] (input ids)")
            batches.append((ids, _as_mask(item[1], ids, what + "[1] (attention mask)")))
        elif hasattr(item, "keys") and "input_ids" in item:
            ids = _as_ids(item["input_ids"], what + "['input_ids']")
            mask = item["attention_mask"] if "attention_mask" in item else None
            batches.append((ids, _as_mask(mask, ids, what + "['attention_mask']")))
        else:
            raise TypeError(
                f"{what} must be a tensor of ids, an (ids, attention_mask) pair or a dict with 'input_ids', "
                f"got {type(item).__name__}"
            )
    return batches


def load_text_calibration(path: str, tokenizer, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens from a text file or a folder of them.

    The files (a folder is read recursively, files in sorted order) are
    tokenized one by one and concatenated; windows start at uniformly random
    offsets drawn from ``seed``, as the papers sample C4 / WikiText.

    Args:
        path: a text file, or a folder of text files.
        tokenizer: a transformers tokenizer (``tokenizer(text)["input_ids"]``).
        nsamples: number of windows.
        seqlen: tokens per window.
        seed: seed of the window offsets.

    Returns:
        a ``[nsamples, seqlen]`` int64 tensor.

    Raises:
        ValueError: the path does not exist, holds no text, or fewer than
            ``seqlen + 1`` tokens.
    """
    if nsamples < 1:
        raise ValueError(f"nsamples={nsamples} must be at least 1")
    if seqlen < 1:
        raise ValueError(f"seqlen={seqlen} must be at least 1")
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    elif os.path.isfile(path):
        files = [path]
    else:
        raise ValueError(f"calibration: {path!r} is neither a file nor a folder")
    ids: List[int] = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                text = fh.read()
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable files in a folder are skipped
        if text:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"calibration: no readable text in {path!r}")
    if len(ids) <= seqlen:
        raise ValueError(f"calibration: {path!r} holds {len(ids)} tokens, fewer than seqlen={seqlen} + 1")
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([stream[s:s + seqlen] for s in starts.tolist()])
