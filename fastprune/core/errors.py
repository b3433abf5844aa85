"""The exception types fastprune raises, one per kind of mistake.

Where torch raises a particular exception type for the same mistake, the type
here is also an instance of it, so code written against
``torch.nn.utils.prune`` keeps catching what it caught.
"""
from __future__ import annotations

__all__ = ["PruningShapeError", "PruningNameError"]


class PruningShapeError(ValueError, AssertionError):
    """A tensor whose shape does not match the parameter it belongs to.

    torch raises ``AssertionError`` here; a ``ValueError`` is what the mistake
    is, so this is both.
    """


class PruningNameError(AttributeError, ValueError):
    """``name`` does not name a tensor of ``module`` (torch raises AttributeError)."""
