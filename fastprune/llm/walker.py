"""The block walker: one loop over a decoder's blocks that every LLM feature runs on.

:func:`fastprune.llm.prune` (a model in memory), :func:`fastprune.llm.prune_checkpoint`
(a checkpoint folder read block by block and written to another folder), the
data-parallel calibration on ``torch.distributed`` and the structured shrinking
of :mod:`fastprune.llm` all walk the blocks with :class:`Walker`. What differs
between them is plugged in through four small seams, and through the
:class:`Stage` that says what happens to each block:

========================  ==========================================  ==========================================
seam                      one process, model in memory                other implementations
========================  ==========================================  ==========================================
:class:`BlockSource`      :class:`ModelSource`: the model's blocks,   ``checkpoint.CheckpointSource``: blocks
                          moved to ``device`` for their turn          materialised from safetensors shards
:class:`BlockSink`        :class:`BlockSink` itself: blocks stay      ``checkpoint.ShardSink``: pruned tensors
                          where they are                              written to the destination's shards
:class:`StatsReducer`     :class:`StatsReducer` itself: every         ``distributed.llm.OrderedSums``: each
                          micro-batch is local, nothing to reduce     process its share of the micro-batches,
                                                                      float64 sums added in micro-batch order
:class:`SolveScheduler`   :class:`SolveScheduler` itself: every       ``distributed.llm.WeightParallel``: layers
                          layer solved here, in order                 split among processes, the results
                                                                      broadcast from each layer's owner
========================  ==========================================  ==========================================

The calibration inputs of block 0 come from :meth:`Walker.capture`: the
calibration's micro-batches this process runs (``reducer.samples(n)``; all of
them in one process) go through the model up to the first block, whose forward
pre-hook records its arguments (:class:`MicroBatch`: ``index`` in the whole
calibration, ``args`` / ``kwargs``, ``token_mask``). One pass
(:meth:`Walker.walk`) over the blocks then does, for each block ``i``, under
``torch.no_grad()``:

1. ``block = source.load(i, device)``: the block, ready to run on ``device``.
2. ``stats = stage.statistics(turn)``: ``{module: Statistic}``. If any and the
   walk has calibration inputs, the block runs on every local micro-batch with
   a forward hook on each of those modules: the statistic's ``add(x)``
   receives the module's input as rows ``[tokens, in_features]`` of real
   tokens (padding, attention mask 0, is left out), ``add(x, y)`` also its
   output rows when ``wants_output`` is set. The forward calls go through
   ``reducer.accumulate`` (which may exchange each micro-batch's sums between
   them); then ``reducer.reduce(stats)`` leaves the sums over every process's
   micro-batches in the statistics (identity in one process).
3. ``stage.update(turn, stats)``: the stage changes the block (prunes it,
   shrinks it) or only reads it. Per-layer solves go through
   ``turn.solve(jobs)`` (:class:`SolveScheduler`).
4. If ``stage.recompute``, the block runs again on the micro-batches (with
   ``stage.measures(turn)`` hooked the same way, reduced, then handed to
   ``stage.measured(turn, measures)``) and its outputs become the next
   block's inputs (written into the inputs' memory); otherwise the outputs of
   step 2's forward are. The last block's outputs are not computed (its
   forward runs only when measures ask for it).
5. ``stage.block_done(turn)``, ``sink.put(turn)`` (only when ``stage.final``:
   a pass that leaves the result, not one that only reads the blocks, such as
   OWL's), ``source.release(i, block)``, and ``on_block(i, inputs)`` (the
   caller's progress record: ``inputs`` are block ``i + 1``'s, None after the
   last block).

Each step's local work (the capture, 1-2, 3, 4, 5) runs inside
:meth:`StatsReducer.agree`: every process learns whether any process failed
before the next collective, so an error on one process is raised on all of
them instead of a hang (in one process the error is simply raised). A
data-parallel reducer's ``accumulate`` and scheduler's ``run`` do the same
between their own exchanges (an error in one process's forward or solve).

Statistics (:class:`Statistic`) keep their sums in float64 (``buffers()``),
added micro-batch by micro-batch in the order of the samples: this is the
contract that makes results independent of the micro-batch size (Wanda's
norms) and, reduced across processes in a fixed order, of the number of
processes. The micro-batches (:func:`micro_batches`) are cut from the
calibration batches the caller passes, at most ``batch_size`` sequences each;
:func:`default_batch_size` picks the size that keeps one micro-batch's block
activations within :data:`ACTIVATION_BUDGET`.

A new feature writes a :class:`Stage`, e.g. to gather per-channel statistics
(``tests/test_llm_walker.py`` runs this one)::

    class ChannelNorms(Stage):
        recompute = False               # the block is only read (and the sink left alone)
        def __init__(self):
            self.norms = {}
        def statistics(self, turn):
            return {l.module: InputNorms(l.shape[1], turn.device) for l in turn.layers}
        def update(self, turn, stats):
            for l in turn.layers:
                self.norms[l.name] = stats[l.module].norms()

    blocks = find_blocks(model)
    walker = Walker(ModelSource(model, blocks), plan_layers(model, blocks),
                    micro_batches(normalize_calibration(ids), 8), device="cpu")
    stage = ChannelNorms()
    walker.walk(stage, walker.capture())
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..progress import progress_bar
from .blocks import block_linears, weight_rows

__all__ = [
    "ACTIVATION_BUDGET",
    "Layer",
    "MicroBatch",
    "Statistic",
    "ErrorSums",
    "SolveJob",
    "BlockTurn",
    "Stage",
    "BlockSource",
    "ModelSource",
    "BlockSink",
    "StatsReducer",
    "SolveScheduler",
    "Walker",
    "plan_layers",
    "micro_batches",
    "default_batch_size",
]

# Bytes that one micro-batch's activations inside a block may take (the
# block's intermediate tensors for the sequences of one forward call); see
# default_batch_size for the estimate.
ACTIVATION_BUDGET = 32 * 2 ** 20


class _Stop(Exception):
    """Raised by the capture hook once the first block's inputs are recorded."""


# ----------------------------------------------------------------------------
# Layers of a block
# ----------------------------------------------------------------------------


class Layer:
    """One linear layer inside a block (or the embeddings / LM head, ``block=None``).

    Attributes:
        name: qualified module name in the model (``"model.layers.3.mlp.up_proj"``).
        module: the ``nn.Linear`` / ``Conv1D`` (the same object for the whole
            walk: sources materialise weights into it, never replace it).
        block: index of its block, or None.
    """

    __slots__ = ("name", "module", "block")

    def __init__(self, name: str, module: nn.Module, block: Optional[int]) -> None:
        self.name = name
        self.module = module
        self.block = block

    @property
    def shape(self) -> Tuple[int, int]:
        """``(out_features, in_features)`` (works on the meta device too)."""
        w = weight_rows(self.module, self.module.weight)
        return int(w.shape[0]), int(w.shape[1])

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, block={self.block})"


def plan_layers(model: nn.Module, blocks: Sequence[nn.Module]) -> List[List[Layer]]:
    """The linear layers of every block, named as in ``model``.

    Raises:
        ValueError: a weight carries a pruning reparametrisation, or the
            blocks hold no linear layer.
        TypeError: a weight is not floating point.
    """
    names = {id(m): n for n, m in model.named_modules()}
    plan = []
    for i, block in enumerate(blocks):
        layers = []
        for name, m in block_linears(block, names.get(id(block), f"blocks.{i}")):
            if "weight_orig" in m._parameters or "weight" not in m._parameters:
                raise ValueError(
                    f"{name}: its weight carries a pruning reparametrisation; call fastprune.remove(module, 'weight') first"
                )
            if m.weight.is_complex() or not m.weight.is_floating_point():
                raise TypeError(f"{name}: weight must be floating point, got {m.weight.dtype}")
            layers.append(Layer(name, m, i))
        plan.append(layers)
    if not any(plan):
        raise ValueError("blocks: the blocks hold no linear layers to prune")
    return plan


# ----------------------------------------------------------------------------
# Calibration micro-batches and the inputs of a block
# ----------------------------------------------------------------------------


def micro_batches(batches: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]],
                  batch_size: Optional[int]) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The calibration as forward calls of at most ``batch_size`` sequences.

    Each batch (``(ids [b, s], mask or None)`` as
    :func:`~fastprune.llm.normalize_calibration` returns them) is cut into
    consecutive slices of ``batch_size`` rows; smaller batches are kept as they
    are (batches of different lengths are never merged). ``None`` keeps every
    batch whole. The order of the sequences is kept: statistics are added in it.
    """
    if batch_size is None:
        return list(batches)
    out = []
    for ids, mask in batches:
        for start in range(0, ids.shape[0], batch_size):
            out.append((ids[start:start + batch_size], None if mask is None else mask[start:start + batch_size]))
    return out


def _config_value(config, *names) -> Optional[int]:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def default_batch_size(model: nn.Module, plan: Sequence[Sequence[Layer]], seq_len: int,
                       budget: int = ACTIVATION_BUDGET) -> int:
    """Sequences per forward call so that one call's block activations fit ``budget`` bytes.

    The estimate of one block's activations for a sequence of ``s`` tokens,
    ``e`` bytes per element (the blocks' dtype) is::

        s * (e * (4 * hidden + 2 * sum(out_features of the block's linear layers))
             + 12 * max(in_features)                  # one layer's input in float32 and float64 (statistics)
             + e * heads * s)                         # attention scores

    ``hidden`` is the first layer's input width, ``heads`` the model config's
    ``num_attention_heads`` / ``n_head`` (0 when unknown), the largest block
    counts. The result is ``max(1, budget // that)``.
    """
    biggest = 0
    for layers in plan:
        if not layers:
            continue
        elem = layers[0].module.weight.element_size()
        hidden = layers[0].shape[1]
        outs = sum(l.shape[0] for l in layers)
        widest = max(l.shape[1] for l in layers)
        heads = _config_value(getattr(model, "config", None), "num_attention_heads", "n_head") or 0
        per_seq = seq_len * (elem * (4 * hidden + 2 * outs) + 12 * widest + elem * heads * seq_len)
        biggest = max(biggest, per_seq)
    return max(1, int(budget // max(biggest, 1)))


class MicroBatch:
    """The inputs of the current block for one calibration micro-batch.

    Attributes:
        index: position of the micro-batch in the whole calibration (the same
            on every process).
        args, kwargs: what the model passes to its blocks (hidden states
            first, then attention mask, position embeddings, ...).
        token_mask: bool ``[b * s]`` of real tokens, or None (all real).
    """

    __slots__ = ("index", "args", "kwargs", "token_mask")

    def __init__(self, index: int, args, kwargs, token_mask: Optional[torch.Tensor]) -> None:
        self.index = index
        self.args = args
        self.kwargs = kwargs
        self.token_mask = token_mask

    @property
    def hidden(self) -> torch.Tensor:
        """The hidden states going into the block, ``[b, s, hidden]``."""
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    @hidden.setter
    def hidden(self, value: torch.Tensor) -> None:
        if self.args:
            self.args = (value,) + tuple(self.args[1:])
        else:
            self.kwargs = dict(self.kwargs)
            self.kwargs["hidden_states"] = value

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., features]`` as rows ``[real tokens, features]``."""
        rows = x.reshape(-1, x.shape[-1])
        if self.token_mask is not None and self.token_mask.numel() == rows.shape[0]:
            rows = rows[self.token_mask.to(rows.device)]
        return rows


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


class _OutsideBlocksOn:
    """Moves every parameter and buffer that is not inside a block to ``device``
    for the duration of the ``with`` (to run the embeddings during capture)."""

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], device) -> None:
        inside = {id(t) for b in blocks for t in list(b.parameters()) + list(b.buffers())}
        self.moved = []
        self.device = device
        for m in model.modules():
            for kind in ("_parameters", "_buffers"):
                for name, t in getattr(m, kind).items():
                    if (t is not None and id(t) not in inside and t.device != torch.device(device)
                            and t.device.type != "meta"):  # what is not materialised is not needed
                        self.moved.append((m, kind, name, t.device))

    def _move(self, restore: bool) -> None:
        for m, kind, name, home in self.moved:
            t = getattr(m, kind)[name]
            target = home if restore else self.device
            if kind == "_parameters":
                t.data = t.data.to(target)
            else:
                getattr(m, kind)[name] = t.to(target)

    def __enter__(self):
        self._move(False)
        return self

    def __exit__(self, *exc) -> bool:
        self._move(True)
        return False


def model_call_kwargs(model: nn.Module) -> Dict[str, object]:
    """Keyword arguments for calling ``model`` on calibration ids (``use_cache=False`` where accepted)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def capture_inputs(model: nn.Module, blocks: Sequence[nn.Module], calls, device,
                   indices: Optional[Sequence[int]] = None) -> List[MicroBatch]:
    """The first block's inputs for each calibration call (``(ids, mask)``), on ``device``.

    The model runs up to its first block, whose forward pre-hook records the
    arguments and stops the call. ``indices`` (default: all) are the
    positions of ``calls`` in the whole calibration, kept in
    :attr:`MicroBatch.index`.
    """
    captured = []

    def hook(module, args, kwargs):
        captured.append((_to(args, device), _to(kwargs, device)))
        raise _Stop

    extra = model_call_kwargs(model)
    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    out = []
    try:
        with _OutsideBlocksOn(model, blocks, device):
            for j, (ids, mask) in enumerate(calls):
                kwargs = dict(extra)
                if mask is not None:
                    kwargs["attention_mask"] = mask.to(device)
                try:
                    model(ids.to(device), **kwargs)
                except _Stop:
                    pass
                else:
                    raise ValueError("blocks: the first block was never called by the model's forward")
                args, kw = captured.pop()
                token_mask = None if mask is None else (mask.reshape(-1) != 0).to(device)
                out.append(MicroBatch(indices[j] if indices is not None else j, args, kw, token_mask))
    finally:
        handle.remove()
    return out


# ----------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------


class Statistic:
    """A sum over calibration tokens, gathered by a forward hook on one module.

    Subclasses implement :meth:`add` and :meth:`buffers`. The walker calls
    ``add(x)`` with the module's input rows ``[tokens, features]`` for every
    micro-batch (``add(x, y)`` with the output rows too when
    ``wants_output``), then hands the statistics of a block to
    :meth:`StatsReducer.reduce`, which sums every tensor of ``buffers()``
    over the processes. A ``shareable`` statistic depends on the input rows
    only: modules that receive the very same input tensor (a block's q, k and
    v projections, gate and up) then get one statistic object, which the
    walker puts in the stage's dict for each of them (and reduces once). Sums are float64 (counts may be int64): adding
    micro-batch by micro-batch in float64 keeps the result independent of
    how the samples are cut into micro-batches and processes.
    """

    wants_output = False
    shareable = False

    def add(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        raise NotImplementedError

    def buffers(self) -> List[torch.Tensor]:
        """The tensors to sum across processes (in this order)."""
        raise NotImplementedError


class ErrorSums(Statistic):
    """``sum ||W x - W' x||^2`` and ``sum ||W x||^2`` over the tokens (``W`` dense, ``W'`` pruned).

    ``dense`` is the layer's dense weight in the module's layout; the hook
    sees the pruned layer's input ``x`` and output ``y``.
    """

    wants_output = True

    def __init__(self, module: nn.Module, dense: torch.Tensor) -> None:
        self.module = module
        self.dense = dense
        self.sums = torch.zeros(2, dtype=torch.float64, device=dense.device)

    def add(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        import torch.nn.functional as F

        from .blocks import is_conv1d

        w = self.dense.to(x.dtype)
        ref = x @ w if is_conv1d(self.module) else F.linear(x, w)
        bias = getattr(self.module, "bias", None)
        if bias is not None:
            ref = ref + bias.to(ref.dtype)
        ref = ref.float()
        diff = ref - y.float()
        self.sums[0] += (diff * diff).sum(dtype=torch.float64)
        self.sums[1] += (ref * ref).sum(dtype=torch.float64)

    def buffers(self) -> List[torch.Tensor]:
        return [self.sums]

    def relative(self) -> float:
        """``sum ||W x - W' x||^2 / sum ||W x||^2`` (0 when both are 0, inf when only the reference is)."""
        num, den = (float(v) for v in self.sums.tolist())
        if den > 0:
            return num / den
        return 0.0 if num == 0 else math.inf


# ----------------------------------------------------------------------------
# The seams
# ----------------------------------------------------------------------------


class BlockSource:
    """Where the blocks come from. Subclasses: :class:`ModelSource`, ``checkpoint.CheckpointSource``.

    Attributes:
        model: the model whose forward leads to the first block (it may hold
            its blocks on the meta device between their turns).
        blocks: the block modules, in order.
    """

    model: nn.Module
    blocks: List[nn.Module]

    def __len__(self) -> int:
        return len(self.blocks)

    def capture(self, calls, device, indices: Optional[Sequence[int]] = None) -> List[MicroBatch]:
        """The first block's inputs for each calibration call (see :func:`capture_inputs`)."""
        return capture_inputs(self.model, self.blocks, calls, device, indices)

    def load(self, i: int, device: torch.device) -> nn.Module:
        """Block ``i`` with its weights, ready to run on ``device``."""
        raise NotImplementedError

    def release(self, i: int, block: nn.Module) -> None:
        """Block ``i``'s turn is over (the sink has it)."""


class ModelSource(BlockSource):
    """The blocks of a model in memory.

    With ``offload`` a block is moved to the walk's device for its turn and
    back to where it was afterwards; without, blocks moved to the device stay there.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], offload: bool = True) -> None:
        self.model = model
        self.blocks = list(blocks)
        self.offload = offload
        self._homes: Dict[int, Optional[torch.device]] = {}

    def load(self, i: int, device: torch.device) -> nn.Module:
        block = self.blocks[i]
        home = block_device(block)
        self._homes[i] = home
        if self.offload or home != device:
            block.to(device)
        return block

    def release(self, i: int, block: nn.Module) -> None:
        home = self._homes.pop(i, None)
        if self.offload and home is not None and home != block_device(block):
            block.to(home)


class BlockSink:
    """Where processed blocks go. This base keeps them in place (a model in memory);
    ``checkpoint.ShardSink`` writes their tensors to a checkpoint folder."""

    def put(self, turn: "BlockTurn") -> None:
        """Block ``turn.index`` is final (called before the source releases it)."""


class StatsReducer:
    """How statistics from several processes are combined. This base: one process.

    A data-parallel implementation (``fastprune.distributed.llm``) returns its
    share of the micro-batches from :meth:`samples`, exchanges every
    micro-batch's contribution to the statistics' ``buffers()`` between the
    forward calls of :meth:`accumulate`, leaves in them the float64 sums over
    every process's micro-batches, added in micro-batch order, in
    :meth:`reduce`, and raises an error found on any process on every process
    in :meth:`agree`.
    """

    #: Whether modules that receive the very same input tensor (q/k/v, gate/up) may share one
    #: statistic. The sharing is decided during the first micro-batch's forward, so a reducer
    #: that gathers the statistics' buffers before running any forward (or on a process that
    #: runs none) sets this False and every module keeps its own.
    shares_inputs = True

    def samples(self, count: int) -> List[int]:
        """Indices (into the whole calibration's micro-batches) that this process runs."""
        return list(range(count))

    def accumulate(self, inputs: Sequence["MicroBatch"], run: Callable[["MicroBatch"], None],
                   stats: Sequence[Statistic]) -> None:
        """Runs ``run(mb)`` (the block's forward with ``stats`` hooked) on each of this
        process's micro-batches, in order. This base: nothing else. A data-parallel
        reducer exchanges each micro-batch's contribution to ``stats`` between the
        calls, so that it can add every process's contributions in micro-batch order
        (and an error in one process's forward reaches every process there)."""
        for mb in inputs:
            run(mb)

    def reduce(self, stats: Sequence[Statistic]) -> None:
        """Sum each statistic's buffers over the processes, in place; ``stats`` is in the same order everywhere."""

    def agree(self, error: Optional[BaseException]) -> None:
        """Called by every process at the same points of the walk with the error it met, or None;
        raises on every process if any process met one (here: re-raises ``error``)."""
        if error is not None:
            raise error


class SolveJob:
    """One layer's solve.

    Attributes:
        layer: the :class:`Layer`.
        weight: the tensor that holds the layer's pruned values once the job has
            run (the module's weight, in the module's layout).
        solve: computes and writes the pruned values into ``weight``; returns
            the keep-mask (bool, the module's weight layout, True = kept).
        masks_only: True when the pruned values are ``weight`` with the pruned
            entries set to 0 (Wanda, magnitude): the keep-mask alone reproduces
            them, so a weight-parallel scheduler sends only the mask. False
            (SparseGPT) sends the solved weight too.
    """

    __slots__ = ("layer", "weight", "solve", "masks_only")

    def __init__(self, layer: Layer, weight: torch.Tensor, solve: Callable[[], torch.Tensor],
                 masks_only: bool = False) -> None:
        self.layer = layer
        self.weight = weight
        self.solve = solve
        self.masks_only = masks_only


class SolveScheduler:
    """Who solves which layer. This base: every layer here, in order.

    A weight-parallel implementation runs the jobs it owns and broadcasts
    each job's ``weight`` and keep-mask from its owner, so that every process
    returns the same masks and holds the same weights.
    """

    def run(self, jobs: Sequence[SolveJob]) -> List[torch.Tensor]:
        """Runs ``jobs``; returns their keep-masks, in order."""
        return [job.solve() for job in jobs]


# ----------------------------------------------------------------------------
# Stages and the walk
# ----------------------------------------------------------------------------


class BlockTurn:
    """What a :class:`Stage` sees of the block whose turn it is.

    Attributes:
        index: the block's index; ``name``: its qualified name.
        module: the block, materialised on ``device``.
        layers: its linear layers (:class:`Layer`).
        device: where the walk runs.
        inputs: the block's inputs, one :class:`MicroBatch` per local
            micro-batch, or None when the walk has no calibration.
        started: ``time.perf_counter()`` when the turn began.
    """

    def __init__(self, walker: "Walker", index: int, module: nn.Module, inputs) -> None:
        self.walker = walker
        self.index = index
        self.name = walker.block_names[index]
        self.module = module
        self.layers = walker.plan[index]
        self.device = walker.device
        self.inputs = inputs
        self.started = time.perf_counter()

    def solve(self, jobs: Sequence[SolveJob]) -> List[torch.Tensor]:
        """Runs the layer solves through the walk's :class:`SolveScheduler`."""
        return self.walker.scheduler.run(jobs)


class Stage:
    """What a pass of the walk does with each block (subclass and override).

    Attributes:
        desc: the progress bar's label.
        recompute: True when :meth:`update` changes the block, so its outputs
            are computed again for the next block; False when the block is only
            read (the outputs of the statistics pass are the next inputs).
        final: see the property.
    """

    desc = "blocks"
    recompute = True

    @property
    def final(self) -> bool:
        """Whether the blocks this pass leaves are the result, handed to the sink (default:
        ``recompute``; a pass that only reads, such as OWL's, leaves the sink alone)."""
        return self.recompute

    def statistics(self, turn: BlockTurn) -> Dict[nn.Module, Statistic]:
        """Statistics to gather on the block as it is (before :meth:`update`)."""
        return {}

    def update(self, turn: BlockTurn, stats: Dict[nn.Module, Statistic]) -> None:
        """Change (or read) the block, given the reduced statistics."""

    def measures(self, turn: BlockTurn) -> Dict[nn.Module, Statistic]:
        """Statistics to gather while the updated block's outputs are recomputed."""
        return {}

    def measured(self, turn: BlockTurn, measures: Dict[nn.Module, Statistic]) -> None:
        """The reduced :meth:`measures`."""

    def block_done(self, turn: BlockTurn) -> None:
        """The block is final (before the sink gets it)."""


class Walker:
    """Walks the blocks of a decoder (see the module docstring).

    Args:
        source: the :class:`BlockSource`.
        plan: the linear layers of every block (:func:`plan_layers`).
        calls: the calibration micro-batches (``(ids, mask)``, see
            :func:`micro_batches`), or None for a walk without calibration.
        device: where the blocks run.
        sink, reducer, scheduler: the other seams (defaults: one process,
            blocks kept in place).
        progress: show a progress bar per pass.
    """

    def __init__(self, source: BlockSource, plan: Sequence[Sequence[Layer]], calls=None, *,
                 device, sink: Optional[BlockSink] = None, reducer: Optional[StatsReducer] = None,
                 scheduler: Optional[SolveScheduler] = None, progress: bool = True) -> None:
        self.source = source
        self.plan = [list(layers) for layers in plan]
        self.calls = list(calls) if calls is not None else None
        self.device = torch.device(device)
        self.sink = sink if sink is not None else BlockSink()
        self.reducer = reducer if reducer is not None else StatsReducer()
        self.scheduler = scheduler if scheduler is not None else SolveScheduler()
        self.progress = progress
        names = {id(m): n for n, m in source.model.named_modules()}
        self.block_names = [names.get(id(b), f"blocks.{i}") for i, b in enumerate(source.blocks)]

    def capture(self) -> Optional[List[MicroBatch]]:
        """The first block's inputs for this process's micro-batches (None without calibration)."""
        if self.calls is None:
            return None
        mine = self.reducer.samples(len(self.calls))
        with torch.no_grad():
            return self._agreed(lambda: self.source.capture([self.calls[j] for j in mine], self.device, mine))

    def walk(self, stage: Stage, inputs: Optional[List[MicroBatch]] = None, start: int = 0,
             on_block: Optional[Callable[[int, Optional[List[MicroBatch]]], None]] = None) -> Optional[List[MicroBatch]]:
        """One pass of ``stage`` over blocks ``start, start + 1, ...``.

        Args:
            stage: what to do with each block.
            inputs: block ``start``'s inputs (what :meth:`capture` returns for
                block 0, or what a previous pass left); None: no calibration
                forward at all.
            start: the first block (a resumed walk starts later).
            on_block: called as ``on_block(i, inputs)`` once block ``i`` is
                in the sink, with block ``i + 1``'s inputs.

        Returns:
            the inputs after the last block (None when they were not computed).
        """
        with torch.no_grad():
            return self._walk(stage, inputs, start, on_block)

    def _walk(self, stage, inputs, start, on_block):
        n = len(self.source)
        bar = progress_bar(range(start, n), enabled=bool(self.progress), desc=stage.desc, unit="block")
        for i in bar:
            last = i + 1 == n
            turn = None

            def gather():
                nonlocal turn
                turn = BlockTurn(self, i, self.source.load(i, self.device), inputs)
                stats = stage.statistics(turn) if inputs is not None else {}
                keep_outputs = not stage.recompute and not last
                if inputs is not None and (stats or keep_outputs):
                    self._forward(turn.module, inputs, stats, keep_outputs)
                return stats

            stats = self._agreed(gather)
            self._reduce(stats)
            self._agreed(lambda: stage.update(turn, stats))
            del stats
            trim_heap()  # the forward's activations and the solves' matrices are freed by now
            if inputs is not None and stage.recompute:
                def recompute():
                    measures = stage.measures(turn)
                    if measures or not last:
                        self._forward(turn.module, inputs, measures, keep_outputs=not last)
                    return measures

                measures = self._agreed(recompute)
                self._reduce(measures)
                self._agreed(lambda: stage.measured(turn, measures))
                del measures

            def finish():
                stage.block_done(turn)
                if stage.final:
                    self.sink.put(turn)
                self.source.release(i, turn.module)

            self._agreed(finish)
            trim_heap()
            if last:
                inputs = None  # the last block's outputs are not computed
            if on_block is not None:
                on_block(i, inputs)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(block_s=f"{time.perf_counter() - turn.started:.2f}")
        return inputs

    def _agreed(self, step: Callable[[], object]):
        """Runs ``step``; every process then learns whether any process failed (:meth:`StatsReducer.agree`)."""
        error, result = None, None
        try:
            result = step()
        except Exception as e:  # noqa: BLE001 - handed to agree(), which raises it (everywhere)
            error = e
        self.reducer.agree(error)
        return result

    def _reduce(self, stats: Dict[nn.Module, Statistic]) -> None:
        if stats:
            unique = list({id(s): s for s in stats.values()}.values())  # a shared statistic once
            self.reducer.reduce(unique)

    def _forward(self, block: nn.Module, inputs: List[MicroBatch], stats: Dict[nn.Module, Statistic],
                 keep_outputs: bool) -> None:
        """Runs ``block`` on every micro-batch with ``stats`` hooked; with ``keep_outputs`` each
        micro-batch's hidden states are replaced by the block's outputs (one copy alive)."""
        current: List[MicroBatch] = []
        # Inputs seen in this forward call: id -> (the tensor, kept alive so that its id stays its
        # own; its rows; the first module that received it).
        seen: Dict[int, Tuple[torch.Tensor, torch.Tensor, nn.Module]] = {}
        shared: Dict[nn.Module, nn.Module] = {}  # module -> the module whose statistic it shares

        def make_hook(module: nn.Module):
            def hook(mod, args, output):
                mb = current[0]
                x_in = args[0]  # the object itself: the same one reaches q, k and v
                stat = stats[module]
                if stat.wants_output:
                    stat.add(mb.rows(x_in.detach()), mb.rows(output.detach()))
                    return
                first = seen.get(id(x_in))
                if first is not None and first[0] is x_in:
                    owner = first[2]
                    if shared.get(module) is owner:
                        return  # its statistic is the owner's, which has these rows
                    other = stats[owner]
                    if (mb is inputs[0] and self.reducer.shares_inputs and stat.shareable and type(other) is type(stat)
                            and module not in shared):
                        # Same input tensor as an earlier module (q/k/v, gate/up): one statistic.
                        stats[module] = other
                        shared[module] = owner
                        return
                    x = first[1]
                else:
                    x = mb.rows(x_in.detach())
                    seen[id(x_in)] = (x_in, x, module)
                if module in shared:
                    raise RuntimeError(f"{type(module).__name__}: its input differs from the module whose "
                                       f"statistic it shares; the block's forward is not the same on every "
                                       f"micro-batch")
                stat.add(x)
            return hook

        def run(mb: MicroBatch) -> None:
            current[:] = [mb]
            seen.clear()
            out = block(*mb.args, **mb.kwargs)
            seen.clear()
            if keep_outputs:
                hidden = out[0] if isinstance(out, (tuple, list)) else out
                if hidden.shape == mb.hidden.shape and hidden.dtype == mb.hidden.dtype:
                    # Into the input's memory: the hidden states are allocated once, at the capture,
                    # not anew among every block's transient tensors (where each block's outputs,
                    # alive until the next block, would keep the allocator from returning memory).
                    mb.hidden.copy_(hidden)
                else:
                    mb.hidden = hidden
                del hidden
            del out

        handles = [module.register_forward_hook(make_hook(module)) for module in stats]
        try:
            self.reducer.accumulate(inputs, run, list(stats.values()))
        finally:
            for h in handles:
                h.remove()


@functools.lru_cache(maxsize=None)
def _libc():
    """The C library the process runs on (``ctypes``), or None where there is none to load."""
    try:
        import ctypes

        return ctypes.CDLL(None)
    except (OSError, ImportError, TypeError):  # pragma: no cover - no ctypes / no dynamic C library
        return None


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows)."""
    import ctypes

    fn = getattr(_libc(), "malloc_trim", None)
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> None:
    """Hands the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A block's forward and solves allocate and free tens of megabytes; glibc
    keeps freed chunks below its (adaptive) mmap threshold in the heap, where
    the next block's differently sized tensors fragment it, so without a trim
    the resident size creeps up to several blocks' worth of transient tensors.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def fix_mmap_threshold() -> None:
    """glibc only: a fixed mmap threshold of 128 KiB (its default) for the rest of the process.

    By default glibc raises the threshold to the size of every mapped block it frees (up to
    32 MiB), so after the first block's tensors are freed, tensors of a few MiB come from the
    heap; interleaved with the walk's small long-lived allocations they leave it in holes it
    cannot return, and the resident size of a streaming run crept up block after block, by
    different amounts from run to run (55-150 MB on a 145 MB test checkpoint). With the
    threshold fixed, tensors of 128 KiB and more are mapped and unmapped, and the peak is
    the same in every run.
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:
        M_MMAP_THRESHOLD = -3
        mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def block_device(block: nn.Module) -> Optional[torch.device]:
    p = next(iter(block.parameters()), None)
    return p.device if p is not None else None
