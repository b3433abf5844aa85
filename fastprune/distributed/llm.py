"""Data-parallel calibration of :mod:`fastprune.llm` on ``torch.distributed``.

When a process group is initialised (``torchrun``, or ``init_process_group``
with gloo on CPUs, NCCL on GPUs), :func:`fastprune.llm.prune` runs on every
process of it, each process passing the same model and the same calibration.
The block walker (:mod:`fastprune.llm.walker`) is the same as in one process;
this module provides its :class:`~fastprune.llm.walker.StatsReducer` and
:class:`~fastprune.llm.walker.SolveScheduler` seams, and the agreement that
makes an error on one process an error on every process.

**Which process runs what.** The calibration is cut into micro-batches the
same way on every process (``batch_size`` sequences, see
:func:`~fastprune.llm.walker.micro_batches`; the default size does not depend
on the number of processes). Of ``W`` processes, process ``r`` runs
micro-batches ``r, r + W, r + 2W, ...`` (strided) through every block, keeping
their hidden states from block to block.

**Statistics in a fixed order** (:class:`OrderedSums`). Each process keeps
what each of its micro-batches added to every statistic of the block
(Wanda's squared norms, SparseGPT's ``X^T X``, OWL's norms, the
reconstruction errors: whatever ``Statistic.buffers()`` holds), sends these
contributions to every process, and every process adds all of them to float64
sums in micro-batch order. These are the additions one process makes walking
the micro-batches in order, so the sums are bit for bit those of one process,
for any number of processes: Wanda's masks and weights and SparseGPT's
Hessians are identical to the one-process call's (the forward passes
themselves are, as long as each micro-batch's forward is: the same machine
type and threads per process). The exchange goes in rounds: a process keeps
up to :data:`ROUND_BYTES` of contributions (Wanda's few KB per layer: the
whole pass in one round, one message per process; SparseGPT's Hessians: one
micro-batch per process and round, sent buffer by buffer). Memory per
process: the statistics twice (the current contributions and the sums) plus
one round's messages; traffic per process and block: the statistics' size
times the number of micro-batches (Wanda: a few KB per layer and micro-batch;
SparseGPT: one ``in x in`` float64 matrix per layer and micro-batch).

**Solves split among the processes** (:class:`WeightParallel`). The layers of
a block are dealt out to the processes by estimated cost (longest first, each
to the least loaded process; the same on every process); each process solves
its layers, then every layer's keep-mask (1 bit per weight) is broadcast from
its owner (one message per process). Where the pruned weight follows from the
mask (Wanda, magnitude) the others zero it themselves; SparseGPT's
reconstructed weights are broadcast.

**Errors.** Every process checks its arguments, then all exchange a signature
(options, the calibration's and the model's fingerprints, versions) before
any work; a process whose check failed sends its error instead. After that,
every collective of the walk starts with an exchange of an error flag: a
process that met an exception (in a forward, a solve, anything between two
collectives) joins the next exchange carrying it, and every process raises it
(``ValueError: ... (on process 2 of 3)``), instead of others waiting in a
collective forever. What no exchange can catch (a process killed, a process
that never calls) ends with the process group's timeout
(``init_process_group(timeout=...)``).
"""
from __future__ import annotations

import os
import warnings
import zlib
from datetime import timedelta
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .. import ops
from .._version import __version__
from ..llm.walker import MicroBatch, SolveJob, SolveScheduler, Statistic, StatsReducer
from ._errors import build_error, portable
from ._stats import ShardedInputError

__all__ = ["DataParallel", "OrderedSums", "WeightParallel", "init_from_env", "calibration_digest", "model_digest"]

# Statistics buffers of one dtype are sent together up to this many bytes per broadcast.
COALESCE_BYTES = 4 << 20
# Bytes of per-micro-batch contributions a process keeps so that several of its micro-batches share
# one exchange (Wanda's few KB per layer: a whole pass in one round; SparseGPT's Hessians: one each).
ROUND_BYTES = 64 << 20
# Values of each tensor that enter the model fingerprint (a strided sample).
FINGERPRINT_VALUES = 4096


def _agreed(exc: BaseException) -> bool:
    return bool(getattr(exc, "_fastprune_agreed", False))


class DataParallel:
    """One data-parallel call over a process group: agreement, broadcasts, the walker's seams.

    Args:
        group: the process group (default: the default group, which must be initialised).

    Attributes:
        rank, world: this process's rank in ``group`` and the group's size.
        device: where collectives take their tensors (CUDA for NCCL, else the CPU).
        collectives, bytes: counts of the collectives made and the bytes this
            process sent or received in them (a broadcast of n bytes counts n).

    Example::

        dp = DataParallel()
        dp.agree_inputs(options, batches, model)      # raises on every process if they differ
        walker = Walker(..., reducer=dp.reducer(), scheduler=dp.scheduler())
    """

    def __init__(self, group=None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("no torch.distributed process group is initialised")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        backend = str(dist.get_backend(group)).lower()
        if "nccl" in backend and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.collectives = 0
        self.bytes = 0

    def _src(self, q: int) -> int:
        return dist.get_global_rank(self.group, q) if self.group is not None else q

    # -- agreement ---------------------------------------------------------

    def check(self, error: Optional[BaseException]) -> None:
        """Every process calls this at the same point with the error it met, or None.

        One all-reduce of a flag; when any process met an error, one all-gather
        of the errors, and every process raises the first (lowest rank) one.
        """
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=self.device)
        if self.world > 1:
            dist.all_reduce(flag, group=self.group)
        self.collectives += 1
        if int(flag.item()) == 0:
            return
        mine = None if error is None else (portable(type(error)), str(error) or type(error).__name__)
        everyone = self._all_gather_object(mine)
        failed = [(r, e) for r, e in enumerate(everyone) if e is not None]
        r, (exc_type, message) = failed[0]
        others = f"; {len(failed) - 1} other process(es) failed too" if len(failed) > 1 else ""
        exc = build_error(exc_type, f"{message} (on process {r} of {self.world}{others})")
        exc._fastprune_agreed = True
        raise exc from error

    def agree(self, error: Optional[BaseException]) -> None:
        """:meth:`check`, except that an error every process already raises is re-raised as it is."""
        if error is not None and _agreed(error):
            raise error
        self.check(error)

    def run(self, step: Callable[[], object]):
        """Runs ``step`` here, then :meth:`agree` on whether it failed anywhere; returns its result."""
        error, result = None, None
        try:
            result = step()
        except Exception as e:  # noqa: BLE001 - handed to agree(), which raises it everywhere
            error = e
        self.agree(error)
        return result

    def agree_inputs(self, options: Optional[dict], batches, model, error: Optional[BaseException] = None) -> None:
        """The first exchange of a call: every process's signature, or the error its checks met.

        Raises (on every process): the first error a process met; else
        :class:`~fastprune.distributed.ShardedInputError` when the processes
        disagree on the options, the calibration, the model, the versions of
        torch / fastprune or the group's size.
        """
        mine = None
        if error is None:
            try:
                mine = ("ok", {
                    "world size": self.world,
                    "torch and fastprune versions": (torch.__version__, __version__),
                    "options": repr(sorted(options.items())),
                    "calibration (token ids and attention masks)": calibration_digest(batches),
                    "model (names, shapes, dtypes and values of its parameters and buffers)": model_digest(model),
                })
            except Exception as e:  # noqa: BLE001 - sent to every process below
                error = e
        if error is not None:
            if _agreed(error):  # pragma: no cover - nothing agreed before the first exchange
                raise error
            mine = ("error", portable(type(error)), str(error) or type(error).__name__)
        everyone = self._all_gather_object(mine)
        for r, got in enumerate(everyone):
            if got[0] == "error":
                exc = build_error(got[1], f"{got[2]} (on process {r} of {self.world})")
                exc._fastprune_agreed = True
                raise exc from error
        first = everyone[0][1]
        for what in first:
            for r, (_, sig) in enumerate(everyone):
                if sig[what] != first[what]:
                    detail = f": {sig[what]} vs {first[what]}" if what in ("world size", "torch and fastprune versions") else ""
                    if what == "options":
                        detail = ": " + _first_difference(eval_safe(sig[what]), eval_safe(first[what]))
                    exc = ShardedInputError(
                        f"the processes disagree on the {what} of this fastprune.llm call (process {r} differs "
                        f"from process 0{detail}); every process of the group must pass the same model, calibration "
                        "and options")
                    exc._fastprune_agreed = True
                    raise exc

    # -- collectives ---------------------------------------------------------

    def _all_gather_object(self, obj) -> list:
        out = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(out, obj, group=self.group)
        else:
            out[0] = obj
        self.collectives += 1
        return out

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int) -> List[torch.Tensor]:
        """The values of ``tensors`` on process ``src`` (same shapes and one dtype everywhere).

        On ``src`` the tensors themselves are returned; elsewhere new tensors on
        each one's device (``tensors`` are left as they are). Several tensors
        travel as one message.
        """
        mine = src == self.rank
        if len(tensors) == 1 and tensors[0].is_contiguous() and tensors[0].device == self.device:
            flat = tensors[0].reshape(-1) if mine else torch.empty(tensors[0].numel(), dtype=tensors[0].dtype,
                                                                   device=self.device)
        elif mine:
            flat = torch.cat([t.reshape(-1).to(self.device) for t in tensors])
        else:
            flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=self.device)
        if self.world > 1:
            dist.broadcast(flat, src=self._src(src), group=self.group)
        self.collectives += 1
        self.bytes += flat.numel() * flat.element_size()
        if mine:
            return list(tensors)
        out, at = [], 0
        for t in tensors:
            out.append(flat[at:at + t.numel()].reshape(t.shape).to(t.device))
            at += t.numel()
        return out

    # -- the walker's seams and the report -------------------------------------

    def reducer(self) -> "OrderedSums":
        return OrderedSums(self)

    def scheduler(self) -> "WeightParallel":
        return WeightParallel(self)

    def same_report(self, report) -> None:
        """Makes every process's report the same: times become the slowest process's.

        Everything else in the report (sparsities, errors, targets) is computed
        from values every process holds alike; a difference there is a bug and
        raises ``RuntimeError`` on every process.
        """
        digest = zlib.crc32(repr([(l.name, l.block, tuple(l.shape), l.sparsity, l.error) for l in report.layers]
                                 + [(b.index, b.target) for b in report.blocks]).encode())
        everyone = self._all_gather_object(([b.seconds for b in report.blocks], report.seconds, digest))
        if any(d != digest for _, _, d in everyone):
            exc = RuntimeError("fastprune.llm: the processes' reports differ (a bug; please report it)")
            exc._fastprune_agreed = True
            raise exc
        for k, b in enumerate(report.blocks):
            b.seconds = max(e[0][k] for e in everyone)
        report.seconds = max(e[1] for e in everyone)


class OrderedSums(StatsReducer):
    """Statistics summed over every process's micro-batches, in micro-batch order (see the module docstring)."""

    # The buffers to exchange are gathered before the first forward, and a process may run none:
    # every module keeps its own statistic, so every process holds the same ones.
    shares_inputs = False

    def __init__(self, dp: DataParallel) -> None:
        self.dp = dp
        self.count: Optional[int] = None

    def samples(self, count: int) -> List[int]:
        self.count = count
        if count < self.dp.world and self.dp.rank == 0:
            warnings.warn(f"fastprune.llm: the calibration makes {count} micro-batch(es) for {self.dp.world} "
                          f"processes, so {self.dp.world - count} of them have none to run; pass a smaller "
                          "batch_size (several micro-batches per process balance best)", stacklevel=2)
        return list(range(self.dp.rank, count, self.dp.world))

    def accumulate(self, inputs: Sequence[MicroBatch], run: Callable[[MicroBatch], None],
                   stats: Sequence[Statistic]) -> None:
        dp = self.dp
        if not stats:  # the outputs alone (no exchange: every process knows there is nothing to add)
            for mb in inputs:
                run(mb)
            return
        if self.count is None:
            raise RuntimeError("OrderedSums.accumulate before samples(): the walker's capture sets the count")
        world, count = dp.world, self.count
        local: Dict[int, MicroBatch] = {}
        error: Optional[BaseException] = None  # met before the first round: raised everywhere there
        for mb in inputs:
            if mb.index % world != dp.rank and error is None:
                error = RuntimeError(f"micro-batch {mb.index} is not this process's (rank {dp.rank} of {world})")
            local[mb.index] = mb
        bufs = [b for s in stats for b in s.buffers()]
        sums = [torch.zeros_like(b) for b in bufs]
        nbytes = sum(b.numel() * b.element_size() for b in bufs)
        # Micro-batches per process and round: as many as keep ROUND_BYTES of contributions (the same
        # on every process: it depends on the statistics' sizes only).
        per = max(1, ROUND_BYTES // max(nbytes, 1))
        groups = _coalesce(bufs) if per == 1 else None
        for first in range(0, count, per * world):
            last = min(count, first + per * world)
            kept: List[torch.Tensor] = []  # this process's contributions in this round (per > 1)
            for j in range(first + dp.rank, last, world):
                if error is None:
                    try:
                        run(local[j])
                    except Exception as e:  # noqa: BLE001 - raised on every process by check()
                        error = e
                if per > 1:
                    kept.append(torch.cat([b.reshape(-1).view(torch.uint8) for b in bufs]).to(dp.device))
                    for b in bufs:
                        b.zero_()
            dp.check(error)
            if per == 1:  # one micro-batch per process: each sender's buffers go as they are
                for q in range(last - first):  # micro-batch first + q, in order
                    for g in groups:
                        got = dp.broadcast([bufs[i] for i in g], q)
                        for i, v in zip(g, got):
                            sums[i] += v
                for b in bufs:
                    b.zero_()
                continue
            # Several micro-batches per process: one message per sender, then added in micro-batch order.
            received = {}
            for q in range(min(world, last - first)):
                n = len(range(first + q, last, world))
                payload = torch.cat(kept) if q == dp.rank else torch.empty(n * nbytes, dtype=torch.uint8,
                                                                           device=dp.device)
                (payload,) = dp.broadcast([payload], q)
                received[q] = payload
            del kept
            for j in range(first, last):
                q, k = j % world, (j - first) // world
                at = k * nbytes
                for i, b in enumerate(bufs):
                    size = b.numel() * b.element_size()
                    piece = received[q][at:at + size].clone().view(b.dtype).reshape(b.shape)
                    sums[i] += piece.to(b.device)
                    at += size
        for b, s in zip(bufs, sums):
            b.copy_(s)

    def reduce(self, stats: Sequence[Statistic]) -> None:
        """Nothing left to do: :meth:`accumulate` left the sums in the statistics."""

    def agree(self, error: Optional[BaseException]) -> None:
        self.dp.agree(error)


def _coalesce(bufs: Sequence[torch.Tensor]) -> List[List[int]]:
    """Indices of ``bufs`` in messages: buffers of one dtype and device together, in their order, at
    most :data:`COALESCE_BYTES` a message (a larger buffer alone). The same on every process."""
    groups: List[List[int]] = []
    open_group: Dict[Tuple[torch.dtype, torch.device], Tuple[int, int]] = {}  # kind -> (group, bytes)
    for i, b in enumerate(bufs):
        n = b.numel() * b.element_size()
        kind = (b.dtype, b.device)
        at = open_group.get(kind)
        if at is not None and at[1] + n <= COALESCE_BYTES:
            groups[at[0]].append(i)
            open_group[kind] = (at[0], at[1] + n)
        else:
            groups.append([i])
            open_group[kind] = (len(groups) - 1, n)
    return groups


class WeightParallel(SolveScheduler):
    """The layers of a block solved by one process each, the results broadcast (see the module docstring)."""

    def __init__(self, dp: DataParallel) -> None:
        self.dp = dp

    def owners(self, jobs: Sequence[SolveJob]) -> List[int]:
        """The process that solves each job: longest first, each to the least loaded process
        (ties: the lower rank); the same on every process (it depends on the shapes only)."""
        cost = []
        for job in jobs:
            rows, cols = job.layer.shape
            # SparseGPT: the Cholesky factorisations (cols^3) and the column updates (rows cols^2);
            # a mask-only selection reads the weights about once.
            cost.append(rows * cols if job.masks_only else cols * cols * (cols + rows))
        order = sorted(range(len(jobs)), key=lambda k: (-cost[k], k))
        load = [0] * self.dp.world
        owner = [0] * len(jobs)
        for k in order:
            q = min(range(self.dp.world), key=lambda r: (load[r], r))
            owner[k] = q
            load[q] += cost[k]
        return owner

    def run(self, jobs: Sequence[SolveJob]) -> List[torch.Tensor]:
        dp = self.dp
        owner = self.owners(jobs)
        keeps: List[Optional[torch.Tensor]] = [None] * len(jobs)
        error = None
        for k, job in enumerate(jobs):
            if owner[k] == dp.rank:
                try:
                    keeps[k] = job.solve()
                    if tuple(keeps[k].shape) != tuple(job.weight.shape):
                        raise RuntimeError(f"{job.layer.name}: keep-mask {tuple(keeps[k].shape)} is not in the "
                                           f"weight's layout {tuple(job.weight.shape)}")
                except Exception as e:  # noqa: BLE001 - raised on every process by check()
                    error = e
                    break
        dp.check(error)
        # The keep-masks, 1 bit per weight: one message per process, its layers' masks one after the other.
        for q in range(dp.world):
            ks = [k for k in range(len(jobs)) if owner[k] == q]
            if not ks:
                continue
            sizes = [ops.packed_numel(jobs[k].weight.numel()) for k in ks]
            if q == dp.rank:
                payload = torch.cat([ops.pack_mask(keeps[k].reshape(-1)).to(dp.device) for k in ks])
            else:
                payload = torch.empty(sum(sizes), dtype=torch.uint8, device=dp.device)
            (payload,) = dp.broadcast([payload], q)
            if q != dp.rank:
                at = 0
                for k, size in zip(ks, sizes):
                    w = jobs[k].weight
                    keeps[k] = ops.unpack_mask(payload[at:at + size], w.numel(), torch.bool).reshape(w.shape).to(
                        w.device)
                    at += size
        # The pruned weights: zeroed here where the mask says it all, else sent by their owner.
        for k, job in enumerate(jobs):
            w, mine = job.weight, owner[k] == dp.rank
            if job.masks_only:
                if not mine:
                    w.detach().masked_fill_(~keeps[k], 0)
                continue
            raw = w.detach().contiguous().reshape(-1).view(torch.uint8) if mine else torch.empty(
                w.numel() * w.element_size(), dtype=torch.uint8, device=w.device)
            (raw,) = dp.broadcast([raw], owner[k])
            if not mine:
                w.detach().copy_(raw.view(w.dtype).reshape(w.shape))
        return keeps


# ----------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------


def calibration_digest(batches) -> Optional[int]:
    """CRC-32 of the calibration batches (``(ids, mask)`` pairs): shapes, dtypes and every value; None for none."""
    if batches is None:
        return None
    crc = 0
    for ids, mask in batches:
        for t in (ids, mask):
            if t is None:
                crc = zlib.crc32(b"none", crc)
                continue
            t = t.detach().cpu().contiguous()
            crc = zlib.crc32(repr((tuple(t.shape), str(t.dtype))).encode(), crc)
            crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
    return crc


def model_digest(model: torch.nn.Module) -> int:
    """CRC-32 of a model's parameter and buffer names, shapes, dtypes and a strided sample of
    :data:`FINGERPRINT_VALUES` values of each (tensors on the meta device: names, shapes, dtypes)."""
    crc = 0
    for kind, items in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            crc = zlib.crc32(repr((kind, name, tuple(t.shape), str(t.dtype))).encode(), crc)
            if t.device.type == "meta" or t.numel() == 0:
                continue
            flat = t.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // FINGERPRINT_VALUES)][:FINGERPRINT_VALUES]
            crc = zlib.crc32(sample.cpu().contiguous().view(torch.uint8).numpy().tobytes(), crc)
    return crc


def eval_safe(text: str):
    """The options' repr back as a list of pairs, for naming the first difference (text if unparsable)."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _first_difference(a, b) -> str:
    if isinstance(a, list) and isinstance(b, list):
        da, db = dict(a), dict(b)
        for key in sorted(set(da) | set(db)):
            if da.get(key) != db.get(key):
                return f"{key}={da.get(key)!r} vs {db.get(key)!r}"
    return f"{a!r} vs {b!r}"


# ----------------------------------------------------------------------------
# The command under torchrun
# ----------------------------------------------------------------------------


def init_from_env(device: Optional[str] = None, timeout_minutes: float = 30.0) -> Tuple[bool, Optional[str]]:
    """Initialises the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    NCCL when ``device`` names CUDA and CUDA is available (each process on GPU
    ``LOCAL_RANK``; ``device="cuda"`` becomes ``"cuda:<LOCAL_RANK>"``), gloo
    otherwise. A group already initialised is kept.

    Returns:
        ``(created, device)``: whether this call initialised the group (the
        caller then destroys it), and the device each block runs on.

    Raises:
        RuntimeError: torch.distributed is not available.
    """
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    if dist.is_initialized():
        return False, device
    backend = "gloo"
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        backend = "nccl"
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if str(device) == "cuda":
            device = f"cuda:{local}"
        torch.cuda.set_device(torch.device(device))
    # torch.distributed.nn.functional's collectives take ``group.WORLD`` as a default argument
    # value, evaluated when the module is first imported: imported after the group exists
    # (transformers does while loading a config), it keeps the group alive past
    # destroy_process_group, and gloo's worker threads then release the last collective's
    # tensors during interpreter shutdown, which aborts the process now and then. Imported
    # now, the defaults are None.
    import torch.distributed.nn as _dist_nn  # noqa: F401 - binds no local "torch"

    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return True, device
