"""Typed records the rules leave on the graph besides couplings and edges.

They say which weight dimension a layer reads or writes (``Role``), which
module attribute holds the size of a dimension (``AttrNote``), where attention
runs (``HeadNote``) and where a flat dimension is split into heads
(``SplitNote``). The builder records them on dimension *spaces*; the finished
graph holds them on dimension *classes* (see ``remap``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Tuple, Union

__all__ = ["Role", "AttrNote", "HeadNote", "SplitNote"]


class Role(NamedTuple):
    """Dimension ``dim`` of weight ``fqn`` is the ``kind`` (``"out"`` or ``"in"``) channels of its layer.

    ``module`` is the qualified name of the module whose forward runs the op
    (for a tied weight it differs from the module that owns ``fqn``: an LM
    head reading the embedding matrix); calibration statistics of the layer's
    input are keyed by it.
    """

    cls: int
    kind: str
    fqn: str
    dim: int
    module: str = ""

    def remap(self, f: Callable[[int], int]) -> "Role":
        """The same record with every class id replaced by ``f(id)``.

        Args:
            f: maps a space id to its class id.

        Returns:
            a record of the same type.
        """
        return self._replace(cls=f(self.cls))


class AttrNote(NamedTuple):
    """Attribute ``name`` of the module at ``path`` holds the size of ``classes``.

    ``classes`` is one id, or a tuple of ids for tuple attributes such as
    ``normalized_shape``.
    """

    path: str
    name: str
    classes: Union[int, Tuple[int, ...]]

    def remap(self, f: Callable[[int], int]) -> "AttrNote":
        """The same record with every class id replaced by ``f(id)``.

        Args:
            f: maps a space id to its class id.

        Returns:
            a record of the same type.
        """
        c = self.classes
        return self._replace(classes=tuple(f(x) for x in c) if isinstance(c, tuple) else f(c))


class HeadNote(NamedTuple):
    """Attention runs in the module at ``path`` with query heads ``q`` and key/value heads ``kv``."""

    path: str
    q: int
    kv: int

    def remap(self, f: Callable[[int], int]) -> "HeadNote":
        """The same record with every class id replaced by ``f(id)``.

        Args:
            f: maps a space id to its class id.

        Returns:
            a record of the same type.
        """
        return self._replace(q=f(self.q), kv=f(self.kv))


class SplitNote(NamedTuple):
    """The module at ``path`` views flat dimension ``flat`` as ``count`` heads (or back)."""

    path: str
    count: int
    flat: int

    def remap(self, f: Callable[[int], int]) -> "SplitNote":
        """The same record with every class id replaced by ``f(id)``.

        Args:
            f: maps a space id to its class id.

        Returns:
            a record of the same type.
        """
        return self._replace(count=f(self.count), flat=f(self.flat))
