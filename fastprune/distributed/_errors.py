"""Errors that one process found, raised on every process.

Only the exception's type and message travel between processes (a traceback or
an arbitrary exception object may not unpickle elsewhere). The type is the
nearest one every process can rebuild: the first class of its MRO defined in
``builtins`` or in fastprune (``torch.linalg.LinAlgError`` becomes
``RuntimeError``, an ``OSError`` subclass ``OSError``).
"""
from __future__ import annotations

# Modules whose exception types an error found on one process is raised as on
# every process; others become the nearest of these.
PORTABLE_MODULES = ("builtins", "fastprune")


def portable(exc_type) -> type:
    """The nearest class in ``exc_type``'s MRO that every process can build from a message."""
    for cls in getattr(exc_type, "__mro__", ()):
        module = getattr(cls, "__module__", "")
        if issubclass(cls, Exception) and (module == "builtins" or module.split(".")[0] in PORTABLE_MODULES):
            return cls
    return RuntimeError


def build_error(exc_type, message: str) -> Exception:
    """``portable(exc_type)(message)``, or a ``RuntimeError`` when that type wants more than a message."""
    try:
        return portable(exc_type)(message)
    except Exception:  # a type whose constructor wants more than a message
        return RuntimeError(message)
