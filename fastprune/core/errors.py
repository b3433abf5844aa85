"""The exception types fastprune raises, one per kind of mistake.

Where torch raises a particular exception type for the same mistake, the type
here is also an instance of it, so code written against
``torch.nn.utils.prune`` keeps catching what it caught.
"""
from __future__ import annotations

__all__ = ["PruningShapeError", "PruningNameError"]


class PruningShapeError(ValueError, AssertionError):
    """A tensor whose shape does not match the parameter it belongs to.

    Raised for importance scores, masks and saved states of the wrong shape.
    torch raises ``AssertionError`` here; a ``ValueError`` is what the mistake
    is, so this is both, and ``except AssertionError`` written for torch still
    catches it.

    Args:
        args: the message, as for any exception.

    Example::

        try:
            prune.l1_unstructured(nn.Linear(2, 3), "weight", amount=1,
                                  importance_scores=torch.ones(2))
        except prune.PruningShapeError as err:
            print(err)
    """


class PruningNameError(AttributeError, ValueError):
    """``name`` does not name a tensor of ``module``.

    torch raises ``AttributeError`` here, so this is one (and a
    ``ValueError``, since the argument's value is what is wrong).

    Args:
        args: the message, as for any exception.

    Example::

        try:
            prune.l1_unstructured(nn.Linear(2, 3), "weights", amount=1)
        except AttributeError as err:  # a PruningNameError
            print(err)
    """
