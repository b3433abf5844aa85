"""Tracing a model with ``torch.export`` and explaining why it failed when it does."""
from __future__ import annotations

import linecache
import os
import re
import warnings
from typing import Tuple

import torch
from torch import nn

from ..core.targets import eval_mode

__all__ = ["TraceError", "split_example_inputs", "trace", "module_path"]


class TraceError(RuntimeError):
    """The model could not be traced into a graph fastprune can analyse.

    The message quotes ``torch.export``'s reason and, where it names one, the
    line of user code that stopped it. Nothing is modified when it is raised.
    """


def split_example_inputs(example_inputs) -> Tuple[tuple, dict]:
    """Normalise the inputs a model is traced and checked on into ``(args, kwargs)``.

    Args:
        example_inputs: a Tensor, a tuple or list of positional inputs, a dict
            of keyword inputs, or an ``(args, kwargs)`` pair.

    Returns:
        ``(args, kwargs)``: a tuple and a dict.

    Raises:
        TypeError: for any other type.

    Example::

        >>> split_example_inputs(torch.zeros(1, 3))[1]
        {}
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        if (len(example_inputs) == 2 and isinstance(example_inputs[0], (list, tuple))
                and isinstance(example_inputs[1], dict)):
            return tuple(example_inputs[0]), dict(example_inputs[1])
        return tuple(example_inputs), {}
    raise TypeError(
        "example_inputs must be a Tensor, a tuple of positional inputs, a dict of keyword "
        f"inputs or an (args, kwargs) pair; got {type(example_inputs).__name__}")


def trace(model: nn.Module, args: tuple, kwargs: dict):
    """Export ``model`` (non-strict) in eval mode with caches off.

    Args:
        model: the model; its training flags and cache settings are restored.
        args: positional example inputs.
        kwargs: keyword example inputs.

    Returns:
        torch.export.ExportedProgram.

    Raises:
        TraceError: when ``torch.export`` fails, with its reason and the user
            code line it points at.
    """
    with eval_mode(model), warnings.catch_warnings():
        # pruning pre-hooks assign ``weight`` during tracing; export restores it
        warnings.filterwarnings("ignore", message=".*was assigned during export.*")
        try:
            return torch.export.export(model, args, kwargs, strict=False)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            text = str(exc).strip()
            first = text.splitlines()[0] if text else ""
            at = _user_frame(text)
            raise TraceError(
                f"fastprune.DependencyGraph could not trace {type(model).__name__} with "
                f"torch.export: {type(exc).__name__}: {first[:500]}{at}") from exc


def _user_frame(text: str) -> str:
    """`` (at file:line in fn: code)`` for the last non-torch frame export quotes."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [m for m in re.finditer(r'File "([^"]+)", line (\d+), in (\S+)', text)
              if not m.group(1).startswith(torch_dir)]
    if not frames:
        return ""
    path, line, fn = frames[-1].groups()
    code = linecache.getline(path, int(line)).strip()
    return f" (at {path}:{line} in {fn}: {code})" if code else f" (at {path}:{line} in {fn})"


def module_path(node) -> str:
    """Qualified name of the innermost module whose forward produced ``node`` (``""`` at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""
