"""Exact k-selection over tensors read chunk by chunk, possibly spread across processes.

The selection of :func:`fastprune.ops.reference.kselect_` (the ``k`` units of
smallest key, ties broken by the lower global flat index), computed in
bounded memory: keys are recomputed chunk by chunk in every pass, never
stored whole. Used by :func:`fastprune.sparsify_` for ``method="random"`` (in
one process) and by :mod:`fastprune.distributed` for sharded parameters; both
run this same code, which is what makes their results equal.

Every process holds some *pieces* (its local shards; in one process, whole
tensors). A piece knows, for each of its local units, whether the unit may be
selected (existing mask), whether this process *owns* it (replicated units are
counted by one process only), its ranking key, and its global flat index
(tensors in the order given, then row-major in the full tensor).

1. Radix select on the keys: each pass histograms one digit of the keys that
   share the prefix found so far, the histograms are summed over all
   processes (one ``all_reduce`` of :class:`LocalComm`'s subclass; nothing in
   one process), and every process narrows to the same bin. After the last
   pass the threshold key ``T`` and the number of selectable units below it
   are known exactly, hence how many units *at* ``T`` (ties) are selected.
2. If only some ties are selected, the same radix select runs on the global
   flat indices of the tied units, giving the largest selected index ``G``.
3. Every process writes its masks locally: a unit is selected when its key is
   below ``T``, or equal to ``T`` with a global index at most ``G``.

The extra memory is the histograms plus one chunk, never a copy of the scores.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .. import ops

Tensor = torch.Tensor

# Units per chunk (a multiple of 8 so that chunks of packed masks start on whole bytes):
# small on the CPU (cache-sized temporaries), large on GPUs where each op is a launch.
CHUNK = 1 << 18
CHUNK_CUDA = 1 << 24
# Bits per radix digit: 2048 bins, 16 KiB of int64 counts per group and pass.
DIGIT_BITS = 11
_I64_MAX = (1 << 63) - 1
_F32_NAN_KEY = 0x7F800001
_F64_NAN_KEY = 0x7FF0000000000001
_SHORT_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class LocalComm:
    """The reductions of one selection when everything lives in one process: none.

    :mod:`fastprune.distributed` subclasses it with the collectives of a
    process group; the selection calls only these methods, so one process and
    many run the same code. ``bytes`` counts the payload this process
    contributes and receives per collective (an ``all_reduce`` of n bytes
    counts n, an ``all_gather`` counts the world size times the gathered
    object).
    """

    def __init__(self, device=None) -> None:
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.world = 1
        self.rank = 0
        self.bytes = 0
        self.collectives = 0
        self.radix_passes = 0
        self.tie_passes = 0

    def all_reduce(self, t: Tensor) -> Tensor:
        return t

    def all_gather_object(self, obj) -> list:
        return [obj]

    def broadcast_tensor(self, t: Tensor) -> Tensor:
        """``t`` as the first process holds it (here: ``t``)."""
        return t

    def stats(self) -> dict:
        return {
            "bytes": self.bytes,
            "collectives": self.collectives,
            "radix_passes": self.radix_passes,
            "tie_passes": self.tie_passes,
            "world_size": self.world,
        }


class Piece:
    """This process's part of one tensor, as the selection sees it.

    Args:
        scores: the local scores (any shape; read flat in row-major order),
            the keys themselves for the ``"rand32"`` / ``"rand64"`` kinds, or
            ``None`` for counter-based random keys.
        eligible: existing local mask (non-zero = selectable), packed bits when
            ``packed``, or ``None`` (all selectable).
        owned: whether this process counts these units (``False`` on all but
            one replica of a replicated tensor).
        local_shape / global_shape / offset: the local block's shape, the full
            tensor's shape and the block's offset in it (per dimension).
        base: global flat index of the full tensor's first unit (sum of the
            numels of the tensors before it in the group).
        group: index of the selection this tensor belongs to.
        device: where the keys are computed (default: the device of
            ``scores``, else of ``eligible``, else the CPU).
    """

    def __init__(self, scores, eligible, packed, owned, local_shape, global_shape, offset, base, group, device=None):
        self.scores = None if scores is None else scores.detach().reshape(-1)
        self.eligible = None if eligible is None else eligible.detach().reshape(-1)
        if device is None:
            src = self.scores if self.scores is not None else self.eligible
            device = src.device if src is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.packed = packed
        self.owned = owned
        self.local_shape = tuple(local_shape)
        self.numel = 1
        for s in self.local_shape:
            self.numel *= s
        strides, acc = [], 1
        for s in reversed(tuple(global_shape)):
            strides.append(acc)
            acc *= s
        self.gstrides = tuple(reversed(strides))
        self.origin = base + sum(o * st for o, st in zip(offset, self.gstrides))
        self.contiguous = tuple(local_shape)[1:] == tuple(global_shape)[1:]
        self.group = group

    def chunks(self):
        step = CHUNK_CUDA if self.device.type == "cuda" else CHUNK
        for lo in range(0, self.numel, step):
            yield lo, min(self.numel, lo + step)

    def eligible_chunk(self, lo: int, hi: int) -> Optional[Tensor]:
        if self.eligible is None:
            return None
        if self.packed:
            return ops.unpack_mask(self.eligible[lo // 8:(hi + 7) // 8], hi - lo)
        return self.eligible[lo:hi] != 0

    def global_index(self, local_idx: Tensor) -> Tensor:
        """Global flat indices of the local flat indices ``local_idx``."""
        if self.contiguous:  # a block of whole rows: one run of global indices
            return local_idx + self.origin
        g = torch.full_like(local_idx, self.origin)
        rem = local_idx
        for size, gstride in zip(reversed(self.local_shape), reversed(self.gstrides)):
            g += (rem % size) * gstride
            rem = rem // size
        return g


def key_kind(dtypes: Sequence[torch.dtype]) -> str:
    """How keys are made for a list of score dtypes (the reference's comparison rules).

    ``"int"``: all integer/bool, compared as int64 ``|x|``. ``"f32"``: all
    float32/16/bf16, compared as float32 ``|x|`` (exact for all three).
    ``"f64"``: anything else, compared as float64, as the reference does.
    """
    if all(not (d.is_floating_point or d.is_complex) for d in dtypes):
        return "int"
    if all(d in _SHORT_FLOATS for d in dtypes):
        return "f32"
    return "f64"


# "random": counter-based keys (random_keys); "rand32" / "rand64": keys of
# torch.rand draws made beforehand (rand_keys), stored as the piece's scores.
KEY_BITS = {"int": 63, "f32": 31, "f64": 63, "random": 33, "rand32": 30, "rand64": 62}
_ONE_F32_BITS = 0x3F800000
_ONE_F64_BITS = 0x3FF0000000000000


def rand_kind(dtype: torch.dtype) -> str:
    """Key kind of ``torch.rand`` draws of ``dtype``: ``"rand64"`` for float64, else ``"rand32"``."""
    return "rand64" if dtype == torch.float64 else "rand32"


def rand_keys(r: Tensor) -> Tensor:
    """Keys of draws ``r`` in ``[0, 1)`` such that the *largest* draw has the smallest key.

    ``RandomUnstructured`` prunes the units of largest ``torch.rand`` value and
    the selection picks the smallest keys: the key is ``bits(1.0) - bits(r)``
    (float32 bits for float32/16/bf16, which float32 holds exactly; float64
    bits otherwise), positive, ordered as ``-r``, and equal draws give equal
    keys (ties then fall to the lower global index, as in one process).
    """
    if r.dtype == torch.float64:
        return _ONE_F64_BITS - r.view(torch.int64)
    return _ONE_F32_BITS - r.to(torch.float32).view(torch.int32)


def score_keys(x: Tensor, kind: str) -> Tensor:
    """Non-negative integer keys (int32 for ``"f32"``, else int64) ordered as the reference orders ``|x|`` (NaN above +inf, -0 == 0)."""
    if kind == "int":
        v = x.to(torch.int64)
        key = v.abs()
        return torch.where(v == torch.iinfo(torch.int64).min, _I64_MAX, key)
    # |x| as bits: every NaN's bits lie above +inf's, clamping makes all NaNs one key.
    if kind == "f32":  # int32 keys: half the memory traffic of int64
        return x.to(torch.float32).abs().view(torch.int32).clamp_max(_F32_NAN_KEY)
    return x.to(torch.float64).abs().view(torch.int64).clamp_max(_F64_NAN_KEY)


def _srl(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 values."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def draw_seed() -> int:
    """The seed of counter-based random keys: one draw from torch's default CPU generator.

    One process and the sharded call (after every process took the first
    process's generator state) draw it the same way, so ``torch.manual_seed``
    decides both, alike.
    """
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


def random_keys(global_idx: Tensor, seed: int) -> Tensor:
    """33-bit keys that depend only on ``seed`` and the global index: the top bits of splitmix64.

    The same unit gets the same key whatever the sharding, which is what makes
    the random methods give the same units on any number of processes. 33
    bits take 3 radix passes; equal keys (about ``n**2 / 2**34`` pairs among
    ``n`` units, and only those straddling the threshold matter) fall to the
    lower global index.
    """
    z = global_idx * _GOLDEN
    z.add_(_signed(seed & ((1 << 64) - 1)))
    shifted = torch.empty_like(z)
    for shift, mix in ((30, _MIX1), (27, _MIX2), (31, None)):  # in place: a third of the memory traffic
        torch.bitwise_right_shift(z, shift, out=shifted)
        z.bitwise_xor_(shifted.bitwise_and_((1 << (64 - shift)) - 1))
        if mix is not None:
            z.mul_(mix)
    return _srl(z, 64 - KEY_BITS["random"])


class Selection:
    """Runs the selection of ``ks[g]`` units in each group ``g`` over ``pieces``."""

    def __init__(
        self,
        pieces: List[Piece],
        ks: List[int],
        selectable: List[int],
        total_units: int,
        kind: str,
        comm: LocalComm,
        seed: Optional[int] = None,
    ):
        self.pieces = pieces
        self.selectable = list(selectable)
        self.total_units = int(total_units)
        self.ks = list(ks)
        self.kind = kind
        self.comm = comm
        self.seed = seed
        self.ngroups = len(ks)
        # Per group: threshold key T (-1: nothing selected) and largest selected tied index G.
        self.threshold = [-1] * self.ngroups
        self.max_tied_index = [-1] * self.ngroups

    def _keys(self, piece: Piece, lo: int, hi: int) -> Tensor:
        if self.kind == "random":
            idx = torch.arange(lo, hi, dtype=torch.int64, device=piece.device)
            return random_keys(piece.global_index(idx), self.seed)
        if self.kind in ("rand32", "rand64"):
            return piece.scores[lo:hi]
        return score_keys(piece.scores[lo:hi], self.kind)

    def _candidates(self, piece: Piece, lo: int, hi: int, keys: Tensor) -> Optional[Tensor]:
        """Selectable units of a chunk, ``None`` when all are."""
        return piece.eligible_chunk(lo, hi)

    def _radix(self, nbits: int, need: List[int], values_of, counter: str):
        """Per group, the ``need[g]``-th smallest (1-based) of the values ``values_of`` yields.

        ``values_of(piece)`` yields int64 chunks of the values of a piece's
        selectable units, each in ``[0, 2**nbits)``; only owned pieces are
        counted. Returns ``(value, below, equal)`` per group: the value, how
        many values are smaller and how many equal it, summed over all
        processes. Groups with ``need[g] == 0`` get ``(-1, 0, 0)``.
        """
        active = [n > 0 for n in need]
        prefix = [0] * self.ngroups
        below = [0] * self.ngroups
        equal = [0] * self.ngroups
        shift = nbits
        while shift > 0:
            width = min(DIGIT_BITS, shift)
            shift -= width
            bins = 1 << width
            hist = torch.zeros(self.ngroups, bins, dtype=torch.int64, device=self.comm.device)
            for piece in self.pieces:
                g = piece.group
                if not (active[g] and piece.owned):
                    continue
                for vals in values_of(piece):
                    if shift + width < nbits:  # only values that share the prefix found so far
                        vals = vals[(vals >> (shift + width)) == prefix[g]]
                    if vals.numel():
                        digits = (vals >> shift) & (bins - 1)
                        hist[g] += torch.bincount(digits, minlength=bins).to(hist.device)
            self.comm.all_reduce(hist)
            hist = hist.cpu()  # one synchronisation per pass
            setattr(self.comm, counter, getattr(self.comm, counter) + 1)
            for g in range(self.ngroups):
                if not active[g]:
                    continue
                cum = hist[g].cumsum(0)
                j = int(torch.searchsorted(cum, torch.tensor(need[g] - below[g])))
                if j > 0:
                    below[g] += int(cum[j - 1])
                prefix[g] = (prefix[g] << width) | j
                equal[g] = int(hist[g, j])  # after the last pass: the units equal to the value
        values = [prefix[g] if active[g] else -1 for g in range(self.ngroups)]
        return values, below, equal

    def _key_values(self, piece: Piece):
        for lo, hi in piece.chunks():
            keys = self._keys(piece, lo, hi)
            cand = self._candidates(piece, lo, hi, keys)
            yield keys if cand is None else keys[cand]

    def _tie_values(self, piece: Piece):
        t = self.threshold[piece.group]
        for lo, hi in piece.chunks():
            keys = self._keys(piece, lo, hi)
            hit = keys == t
            cand = self._candidates(piece, lo, hi, keys)
            if cand is not None:
                hit &= cand
            idx = hit.nonzero().reshape(-1)
            if idx.numel():
                yield piece.global_index(idx + lo)

    def run(self) -> "Selection":
        for g, k in enumerate(self.ks):
            if k > self.selectable[g]:
                raise ValueError(f"cannot select {k} units among {self.selectable[g]}")
        self.threshold, below, at = self._radix(KEY_BITS[self.kind], self.ks, self._key_values, "radix_passes")
        # Ties at the threshold: ks[g] - below[g] of the at[g] units equal to T are selected.
        partial = [0] * self.ngroups
        for g in range(self.ngroups):
            if self.ks[g] == 0:
                continue
            need = self.ks[g] - below[g]
            if need < at[g]:
                partial[g] = need
            else:
                self.max_tied_index[g] = _I64_MAX
        if any(partial):
            # Every process knows the same partial[], so all of them run these passes.
            nbits = max(1, (self.total_units - 1).bit_length())
            found, _, _ = self._radix(nbits, partial, self._tie_values, "tie_passes")
            for g in range(self.ngroups):
                if partial[g]:
                    self.max_tied_index[g] = found[g]
        return self

    def write(self, outs: List[Tensor], packed: bool) -> None:
        """Keep-masks of every piece into ``outs`` (flat local views, or packed bytes)."""
        for piece, out in zip(self.pieces, outs):
            t, gmax = self.threshold[piece.group], self.max_tied_index[piece.group]
            flat = out.reshape(-1) if not packed else out
            if piece.numel == 0:
                continue
            for lo, hi in piece.chunks():
                keys = self._keys(piece, lo, hi)
                elig = self._candidates(piece, lo, hi, keys)
                selected = keys < t
                if gmax >= 0:
                    tied = (keys == t).nonzero().reshape(-1)
                    if tied.numel():
                        if gmax == _I64_MAX:
                            selected[tied] = True
                        else:
                            selected[tied] = piece.global_index(tied + lo) <= gmax
                keep = ~selected if elig is None else elig & ~selected
                if packed:
                    flat[lo // 8:(hi + 7) // 8] = ops.pack_mask(keep)
                else:
                    flat[lo:hi] = keep.to(flat.dtype)
