"""Loading of the compiled extension, and the build information it reports.

The extension (``fastprune._C``) registers the ``fastprune`` op library with the
dispatcher when it is imported; :mod:`fastprune.ops` defines their schemas.
When it cannot be imported, or the user sets ``FASTPRUNE_NO_EXT=1``,
:mod:`fastprune.ops` backs the same ops with :mod:`fastprune.ops.reference`,
so every caller sees the same ``torch.ops.fastprune.*`` either way.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Iterable, Optional

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

    Returns:
        dict: ``extension`` (the compiled ops are loaded), ``cuda`` (compiled CUDA
        kernels), ``cuda_fallback_reason`` (why there are none, e.g. the installed
        torch has no CUDA or the CUDA compile failed and the CPU extension was built
        instead; ``None`` when ``cuda`` is true), ``openmp``, ``num_threads``,
        ``torch_version`` (the torch the extension was built against, else the
        running one), ``torch_runtime`` (the running torch), ``version`` and
        ``fallback_reason`` (why the pure-torch fallback is used, or ``None``).
        Without the extension the ops run on the pure-torch reference with the
        same results.

    Example::

        info = prune.build_info()
        if not info["extension"]:
            print("pure-torch fallback:", info["fallback_reason"])
    """


    info: Dict[str, Any] = {
        "extension": False,
        "cuda": False,
        "cuda_fallback_reason": f"no compiled extension ({_load_error})",
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
        info.setdefault("cuda_fallback_reason", None if info["cuda"] else "built without CUDA kernels")
    return info


def kernel_registrations(ops: Iterable[str], keys: Iterable[str] = ("CPU", "CUDA")) -> Dict[str, Dict[str, Optional[str]]]:
    """Where the dispatcher's kernel for each op and dispatch key was registered.

    Args:
        ops: op names in the ``fastprune`` namespace, e.g. ``["mask_mul"]``.
        keys: dispatch keys to look up.

    Returns:
        dict: ``{op: {key: location}}`` with ``location`` the registering source
        file and line as the dispatcher reports it (a ``csrc/...`` C++ file for a
        compiled kernel, a ``.py`` file for the pure-torch reference), or ``None``
        when the op has no kernel for that key.
    """
    result: Dict[str, Dict[str, Optional[str]]] = {}
    for op in ops:
        dump = torch._C._dispatch_dump(f"fastprune::{op}")
        found: Dict[str, Optional[str]] = {}
        for key in keys:
            found[key] = None
            prefix = f"{key}: registered at "
            for line in dump.splitlines():
                if line.startswith(prefix):
                    found[key] = line[len(prefix):].split(" :: ")[0].strip()
        result[op] = found
    return result
