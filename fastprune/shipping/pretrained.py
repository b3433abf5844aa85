"""A sparse checkpoint folder of a transformers model, opened as that model in one call."""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

from .sparse_checkpoint import load_sparse

__all__ = ["load_sparse_pretrained"]

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "load_sparse_pretrained needs the transformers package: pip install 'fastprune[transformers]'"
        ) from None
    return transformers


def load_sparse_pretrained(
    path: Union[str, os.PathLike],
    model_class=None,
    *,
    dtype: Union[str, torch.dtype, None] = None,
    device: Union[str, torch.device, None] = None,
    verify: bool = True,
    **from_pretrained_kwargs,
):
    """The transformers model saved in ``path`` by :func:`save_sparse`, with every weight loaded.

    :func:`save_sparse` of a transformers model writes ``config.json`` (and
    ``generation_config.json`` for generative models) beside the sparse files.
    This builds the model those files describe and loads the sparse tensors
    into it through transformers' own ``from_pretrained(None, config=...,
    state_dict=...)`` (tied weights, dtypes and buffers as transformers sets
    them), strictly: a weight missing from the folder or not used by the model
    is an error, never a random initialisation. ``from_pretrained(path)``
    itself cannot read the bitmask layout.

    Args:
        path: the folder given to :func:`save_sparse`.
        model_class: the transformers model class to build; default: the
            class recorded in ``config.json`` (``architectures[0]``), looked
            up in ``transformers``.
        dtype: the model's dtype; default: the one recorded in
            ``config.json`` (the saved model's), as ``dtype="auto"``.
        device: where the model is put afterwards (default: the CPU).
        verify: check every stored tensor's CRC-32, as :func:`load_sparse`.
        from_pretrained_kwargs: passed on to ``from_pretrained`` (for example
            ``attn_implementation="eager"``).

    Returns:
        the model, in eval mode, its weights bit for bit those saved.

    Raises:
        ImportError: transformers is not installed.
        FileNotFoundError: ``path`` is not a folder, has no ``config.json``
            or no sparse checkpoint.
        TypeError: ``model_class`` is not a transformers ``PreTrainedModel``
            class.
        ValueError: a damaged checkpoint (see :func:`load_sparse`), a model
            class that cannot be found, or weights the model does not take
            (missing, unexpected or mis-shaped keys, named).

    Example::

        import tempfile
        import transformers
        cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1)
        model = transformers.LlamaForCausalLM(cfg).eval()
        fastprune.sparsify_(model, 0.5)
        ids = torch.randint(0, 32, (1, 6))
        with tempfile.TemporaryDirectory() as folder:
            fastprune.save_sparse(model, folder)       # model.safetensors, config.json, generation_config.json
            again = fastprune.load_sparse_pretrained(folder)
        assert torch.equal(again(ids).logits, model(ids).logits)
    """
    transformers = _transformers()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path={path!r}: no such folder")
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise FileNotFoundError(
            f"path={path!r} has no {CONFIG_FILE}: save_sparse writes it for transformers models only; "
            "for other models build the model and call load_sparse(path, model=...)"
        )
    if model_class is not None and not (
            isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise TypeError(f"model_class must be a transformers PreTrainedModel class, got {model_class!r}")
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be a bool, got {type(verify).__name__}")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
            raise ValueError(
                f"{os.path.join(path, CONFIG_FILE)}: architectures={names!r} names no transformers model class; "
                "pass model_class="
            )
    state = load_sparse(path, verify=verify)
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=state, dtype="auto" if dtype is None else dtype,
        output_loading_info=True, **from_pretrained_kwargs,
    )
    del state
    problems = [f"{what} {sorted(map(str, info.get(what) or ()))}"
                for what in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(what)]
    if info.get("error_msgs"):
        problems.append(f"errors {list(info['error_msgs'])}")
    if problems:
        raise ValueError(
            f"{path}: the saved weights do not fit {model_class.__name__}: " + "; ".join(problems)
            + " (nothing is left randomly initialised: pass the model_class the checkpoint was saved from)"
        )
    generation = os.path.join(path, GENERATION_CONFIG_FILE)
    if os.path.isfile(generation):
        model.generation_config = transformers.GenerationConfig.from_pretrained(path, local_files_only=True)
    if device is not None:
        model.to(device)
    return model.eval()
