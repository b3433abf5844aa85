"""Typed edges between dimension classes: structured maps between channel indexings.

Dimensions that share their channel indexing are merged into one class; the
edges relate classes whose indexings differ by a fixed map. Each edge knows
which classes it touches and how a deletion in one of them propagates to the
others, which is all the closure computation of the graph needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, NamedTuple, Set, Tuple, Union

__all__ = ["BlockEdge", "CatPiece", "CatEdge", "ChunkEdge", "Edge"]

Deletions = List[Tuple[int, Iterable[int]]]


@dataclass(frozen=True)
class BlockEdge:
    """Index ``i`` of ``coarse`` owns indices ``i*r .. i*r+r-1`` of ``fine``.

    A head of ``[.., H, D]`` and its ``D`` features of ``[.., H*D]``, a group of
    a grouped conv and its channels, a key/value head and the query heads
    sharing it.

    Attributes:
        coarse: class of the coarse dimension (heads, groups).
        fine: class of the fine dimension (channels).
        r: channels per coarse index.
    """

    coarse: int
    fine: int
    r: int

    def classes(self) -> Tuple[int, ...]:
        """The classes this edge connects."""
        return (self.coarse, self.fine)

    def remap(self, f: Callable[[int], int]) -> "BlockEdge":
        """The same edge with every class id replaced by ``f(id)``.

        Args:
            f: maps an id (space or class) to its new id.

        Returns:
            an edge of the same type.
        """
        return BlockEdge(f(self.coarse), f(self.fine), self.r)

    def propagate(self, c: int, new: Set[int]) -> Deletions:
        """Deletions implied elsewhere by deleting ``new`` in class ``c``.

        Args:
            c: a class this edge touches.
            new: indices newly deleted in ``c``.

        Returns:
            list of ``(class, indices)`` pairs (may repeat ``c``; the closure skips known ones).
        """
        out: Deletions = []
        if c == self.coarse:
            out.append((self.fine, [i * self.r + j for i in new for j in range(self.r)]))
        if c == self.fine:
            out.append((self.coarse, {i // self.r for i in new}))
        return out


class CatPiece(NamedTuple):
    """One input of a concatenation: its class, its offset in the output, its size."""

    cls: int
    offset: int
    size: int


@dataclass(frozen=True)
class CatEdge:
    """``out`` is the concatenation of ``pieces`` along the channel dimension.

    Attributes:
        out: class of the concatenated dimension.
        pieces: the inputs in order, each a :class:`CatPiece`.
    """

    out: int
    pieces: Tuple[CatPiece, ...]

    def classes(self) -> Tuple[int, ...]:
        """The classes this edge connects."""
        return (self.out, *[p.cls for p in self.pieces])

    def remap(self, f: Callable[[int], int]) -> "CatEdge":
        """The same edge with every class id replaced by ``f(id)``.

        Args:
            f: maps an id (space or class) to its new id.

        Returns:
            an edge of the same type.
        """
        return CatEdge(f(self.out), tuple(CatPiece(f(p.cls), p.offset, p.size)
                                          for p in self.pieces))

    def propagate(self, c: int, new: Set[int]) -> Deletions:
        """Deletions implied elsewhere by deleting ``new`` in class ``c``.

        Args:
            c: a class this edge touches.
            new: indices newly deleted in ``c``.

        Returns:
            list of ``(class, indices)`` pairs (may repeat ``c``; the closure skips known ones).
        """
        out: Deletions = []
        if c == self.out:
            for p in self.pieces:
                out.append((p.cls, [i - p.offset for i in new
                                    if p.offset <= i < p.offset + p.size]))
        for p in self.pieces:
            if c == p.cls:
                out.append((self.out, [i + p.offset for i in new]))
        return out


@dataclass(frozen=True)
class ChunkEdge:
    """``x`` is made of equal pieces ``outs`` of ``size`` channels each.

    Channel ``j`` of one piece goes with channel ``j`` of every piece (GPT-2's
    fused q/k/v projection, gated MLPs, tiling by ``repeat``).

    Attributes:
        x: class of the whole dimension.
        outs: classes of the pieces, in order (a class may repeat).
        size: channels per piece.
    """

    x: int
    outs: Tuple[int, ...]
    size: int

    def classes(self) -> Tuple[int, ...]:
        """The classes this edge connects."""
        return (self.x, *self.outs)

    def remap(self, f: Callable[[int], int]) -> "ChunkEdge":
        """The same edge with every class id replaced by ``f(id)``.

        Args:
            f: maps an id (space or class) to its new id.

        Returns:
            an edge of the same type.
        """
        return ChunkEdge(f(self.x), tuple(f(o) for o in self.outs), self.size)

    def propagate(self, c: int, new: Set[int]) -> Deletions:
        """Deletions implied elsewhere by deleting ``new`` in class ``c``.

        Args:
            c: a class this edge touches.
            new: indices newly deleted in ``c``.

        Returns:
            list of ``(class, indices)`` pairs (may repeat ``c``; the closure skips known ones).
        """
        js: Set[int] = set()
        if c == self.x:
            js |= {i % self.size for i in new}
        if c in self.outs:
            js |= new
        if not js:
            return []
        out: Deletions = [(o, js) for o in self.outs]
        out.append((self.x, [m * self.size + j for m in range(len(self.outs)) for j in js]))
        return out


Edge = Union[BlockEdge, CatEdge, ChunkEdge]
