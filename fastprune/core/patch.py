"""``patch_torch()``: make ``torch.nn.utils.prune`` run on fastprune.

While the patch is active, the functions and classes of
``torch.nn.utils.prune`` are fastprune's, so third-party code that calls
``torch.nn.utils.prune.global_unstructured`` (or subclasses
``torch.nn.utils.prune.BasePruningMethod``) gets fastprune without edits.

``patch_torch()`` patches at once and returns a handle; ``handle.restore()``
or leaving a ``with patch_torch():`` block undoes it. Patches nest: torch's
originals come back when the last active handle is restored, in whatever
order handles are restored. Names bound before patching
(``from torch.nn.utils.prune import l1_unstructured``) keep torch's objects.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List

import torch.nn.utils.prune as _torch_prune

from . import api as _api

__all__ = ["patch_torch", "is_torch_patched", "PATCHED_NAMES"]

# torch's names (fastprune.__all__ minus the extras). ``_compute_norm`` is left
# alone: fastprune's version delegates to torch's at call time, and it has
# nothing to speed up.
PATCHED_NAMES = tuple(name for name in _api.__all__ if name != "_compute_norm")

_lock = threading.Lock()
_active: List["TorchPatch"] = []
_originals: Dict[str, Any] = {}


def _replacements() -> Dict[str, Any]:
    return {name: getattr(_api, name) for name in PATCHED_NAMES if hasattr(_torch_prune, name)}


class TorchPatch:
    """An active patch of ``torch.nn.utils.prune``; a context manager.

    Made by :func:`patch_torch`, not constructed directly (the constructor
    takes no arguments and patches nothing).

    Attributes:
        active (bool): whether this handle still holds the patch.
    """

    def __init__(self) -> None:
        self.active = False

    def _apply(self) -> None:
        with _lock:
            if not _active:
                repl = _replacements()
                _originals.clear()
                _originals.update({name: getattr(_torch_prune, name) for name in repl})
                for name, value in repl.items():
                    setattr(_torch_prune, name, value)
            _active.append(self)
            self.active = True

    def restore(self) -> None:
        """Undo this patch; torch's objects return once no other patch is active.

        Idempotent: a second call does nothing.
        """
        with _lock:
            if not self.active:
                return
            _active.remove(self)
            self.active = False
            if not _active:
                for name, value in _originals.items():
                    setattr(_torch_prune, name, value)
                _originals.clear()

    def __enter__(self) -> "TorchPatch":
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False

    def __repr__(self) -> str:
        return f"<fastprune TorchPatch {'active' if self.active else 'restored'}>"


def patch_torch() -> TorchPatch:
    """Point ``torch.nn.utils.prune``'s functions and classes at fastprune's.

    Every name of ``torch.nn.utils.prune`` that fastprune implements (except
    the ``_compute_norm`` helper) is replaced in torch's module, so code calling
    ``torch.nn.utils.prune.*`` runs on fastprune unchanged. Names imported from
    torch's module before the patch keep torch's objects. Patches nest and are
    thread-safe; torch's originals return when the last handle is restored.

    Returns:
        TorchPatch: the handle; call ``restore()`` or use it as a context
        manager to undo the patch.

    Example::

        import torch.nn.utils.prune as torch_prune

        with prune.patch_torch():
            assert torch_prune.l1_unstructured is prune.l1_unstructured
            torch_prune.l1_unstructured(nn.Linear(4, 4), "weight", amount=0.5)
        assert not prune.is_torch_patched()
    """
    handle = TorchPatch()
    handle._apply()
    return handle


def is_torch_patched() -> bool:
    """Whether ``torch.nn.utils.prune`` is patched now.

    Returns:
        bool: ``True`` while at least one :func:`patch_torch` handle is active.
    """
    with _lock:
        return bool(_active)
