"""Small helpers that read the tensors and arguments of traced ``torch.fx`` nodes.

Shared by the coupling rules and by the graph builder, which both need to know
which arguments of a node are traced tensors.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch

__all__ = ["tensor_val", "shape", "is_tensor_node", "tensors_in", "arg", "norm_dim"]


def tensor_val(node) -> Optional[torch.Tensor]:
    """The fake tensor an exported node produces, or ``None`` when it is not a tensor.

    Args:
        node: a ``torch.fx.Node`` of an exported graph (anything else gives ``None``).

    Returns:
        The ``meta["val"]`` tensor or ``None``.
    """
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return val if isinstance(val, torch.Tensor) else None


def shape(node) -> Tuple[int, ...]:
    """The static shape of the tensor a node produces, as a tuple of ints.

    Args:
        node: a node for which :func:`tensor_val` is not ``None``.

    Returns:
        tuple of int.
    """
    return tuple(int(s) for s in tensor_val(node).shape)


def is_tensor_node(x: Any) -> bool:
    """True when ``x`` is an fx node that produces a single tensor."""
    return isinstance(x, torch.fx.Node) and tensor_val(x) is not None


def tensors_in(args: Sequence[Any]) -> List[Any]:
    """Tensor nodes among ``args``, including those inside lists and tuples (``cat``'s input).

    Args:
        args: positional and keyword argument values of a node.

    Returns:
        list of nodes, in argument order.
    """
    out = []
    for a in args:
        if is_tensor_node(a):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if is_tensor_node(x))
    return out


def arg(node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` of ``node``, given positionally or as keyword ``name``.

    Args:
        node: an fx node.
        i: the positional index in the op's schema.
        name: the keyword name in the op's schema.
        default: returned when the argument was not passed.
    """
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def norm_dim(d: int, n: int) -> int:
    """A possibly negative dim wrapped into ``range(n)``.

    Args:
        d: the dim as given to the op.
        n: the tensor's number of dims.

    Returns:
        int (0 for a 0-d tensor).
    """
    return d % n if n else 0
