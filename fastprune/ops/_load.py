"""Loading of the compiled extension, and the build information it reports.

The extension (``fastprune._C``) registers the ``fastprune`` op library with the
dispatcher when it is imported. When it cannot be imported, or the user sets
``FASTPRUNE_NO_EXT=1``, :mod:`fastprune.ops` defines the same ops from Python
on top of :mod:`fastprune.ops.reference`, so every caller sees the same
``torch.ops.fastprune.*`` either way.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional

import torch

from .._version import __version__

_C: Optional[Any] = None
_load_error: Optional[str] = None


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _load() -> None:
    global _C, _load_error
    if _truthy(os.environ.get("FASTPRUNE_NO_EXT")):
        _load_error = "disabled by FASTPRUNE_NO_EXT=1"
        return
    import importlib.util

    try:
        if importlib.util.find_spec("fastprune._C") is None:
            raise ImportError("the extension fastprune._C was not compiled (no _C shared library in the package)")
        from .. import _C as compiled  # noqa: WPS433 (import inside function on purpose)
    except Exception as exc:  # ImportError, or an undefined symbol from a torch mismatch
        _load_error = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            "fastprune: the compiled extension could not be loaded "
            f"({_load_error}); using the pure-torch fallback, which gives the same "
            "results more slowly. Rebuild with `pip install --no-build-isolation .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    _C = compiled


_load()


def extension_loaded() -> bool:
    """True when the compiled ops are registered with the dispatcher."""
    return _C is not None


def build_info() -> Dict[str, Any]:
    """What this installation of fastprune runs on.

    Keys: ``extension`` (compiled ops loaded), ``cuda`` (compiled CUDA kernels),
    ``openmp``, ``num_threads``, ``torch_version`` (the torch the extension was
    built against, else the running one), ``torch_runtime`` (the running torch),
    ``version`` and ``fallback_reason`` (why the fallback is used, or ``None``).

    Returns:
        dict: the keys above. Without the extension (not compiled, failed to
        load, or ``FASTPRUNE_NO_EXT=1``) ``extension`` is ``False`` and
        ``fallback_reason`` says why; the ops then run on the pure-torch
        reference with the same results.

    Example::

        info = prune.build_info()
        if not info["extension"]:
            print("pure-torch fallback:", info["fallback_reason"])
    """


    info: Dict[str, Any] = {
        "extension": False,
        "cuda": False,
        "openmp": False,
        "num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torch_runtime": torch.__version__,
        "version": __version__,
        "fallback_reason": _load_error,
    }
    if _C is not None:
        info.update(dict(_C.build_info()))
        info["extension"] = True
        info["fallback_reason"] = None
        info["torch_runtime"] = torch.__version__
    return info
