"""Argument checks shared by the pruning API.

Every check runs before a module is touched, and every message names the
argument at fault. Where torch raises a particular exception type for the same
mistake, the exception raised here is also an instance of that type, so code
written against ``torch.nn.utils.prune`` keeps catching what it caught.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn


from .errors import PruningNameError, PruningShapeError  # noqa: F401 (re-exported)


def _is_count(amount) -> bool:
    """``amount`` is an integer (a count of units), not a fraction.

    Exact ``int`` and ``float`` are decided by type: an ``isinstance`` against
    the ``numbers`` ABCs costs about 0.5 us, several times per pruning call.
    """
    kind = type(amount)
    if kind is int:
        return True
    if kind is float:
        return False
    return isinstance(amount, numbers.Integral)


def _validate_pruning_amount_init(amount) -> None:
    """Check ``amount`` on its own: an int >= 0 or a float in [0, 1].

    Torch's helper of the same name, with a ``TypeError`` for ``bool`` too.

    Args:
        amount (int or float): quantity to prune, a count or a fraction.

    Raises:
        TypeError: ``amount`` is not a real number, or is a ``bool``.
        ValueError: a negative int, or a float outside [0, 1] (NaN included).
    """
    kind = type(amount)
    if kind is not int and kind is not float and (not isinstance(amount, numbers.Real) or isinstance(amount, bool)):
        # bool is an int to Python, but amount=True is a caller's bug, not "1 unit"
        raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float.")
    if _is_count(amount):
        if amount < 0:
            raise ValueError(
                f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer"
            )
        return
    value = float(amount)
    if math.isnan(value) or value < 0.0 or value > 1.0:
        raise ValueError(
            f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer"
        )


def _validate_pruning_amount(amount, tensor_size) -> None:
    """Check that an absolute ``amount`` fits into ``tensor_size`` units.

    A float is always accepted here (it was checked to lie in [0, 1]).

    Args:
        amount (int or float): quantity to prune, already checked by
            :func:`_validate_pruning_amount_init`.
        tensor_size (int): units that may be pruned.

    Raises:
        ValueError: ``amount`` is an int larger than ``tensor_size``.
    """
    if _is_count(amount) and amount > tensor_size:
        raise ValueError(
            f"amount={amount} should be smaller than the number of parameters to prune={tensor_size}"
        )


def _compute_nparams_toprune(amount, tensor_size):
    """Units to prune: ``amount`` itself if an int, else ``round(amount * tensor_size)``.

    ``round`` is Python's (halves to even), as in torch.

    Args:
        amount (int or float): a count, or a fraction in [0, 1].
        tensor_size (int): units that may be pruned.

    Returns:
        int: the number of units to prune.
    """
    if _is_count(amount):
        return amount
    return round(amount * tensor_size)


def _validate_structured_pruning(t) -> None:
    """Structured pruning needs channels, i.e. a tensor of at least 2 dims.

    Args:
        t (torch.Tensor): the tensor to prune.

    Raises:
        ValueError: ``t`` has fewer than 2 dimensions.
    """
    shape = t.shape
    if len(shape) <= 1:
        raise ValueError(
            "Structured pruning can only be applied to multidimensional tensors. "
            f"Found tensor of shape {shape} with {len(shape)} dims"
        )


def _validate_pruning_dim(t, dim) -> None:
    """``dim`` must index a dimension of ``t`` (negative dims count from the end).

    Args:
        t (torch.Tensor): the tensor to prune.
        dim (int): index of the dimension of the channels.

    Raises:
        TypeError: ``dim`` is not an int (or is a ``bool``).
        IndexError: ``dim`` is out of range for ``t`` (as in torch).
    """
    if type(dim) is not int and (not isinstance(dim, numbers.Integral) or isinstance(dim, bool)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if dim >= t.dim() or dim < -t.dim():
        raise IndexError(f"Invalid index {dim} for tensor of size {t.shape}")
