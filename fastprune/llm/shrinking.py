"""``fastprune.llm.shrink``: a smaller dense decoder, from calibration data.

Structured shrinking removes whole MLP channels, whole key-value groups (with
their query heads) and whole decoder blocks, so the result is the same model
class with smaller matrices: faster on every device, no sparse kernels needed.

How it runs (every pass on the block walker of :mod:`fastprune.llm.walker`):

1. Checks, before anything changes: the arguments, and that the model's
   config can state the result. A meta-device twin of the first block is cut
   by :func:`fastprune.structured.prune_channels` exactly as every block will
   be, and the whole model's shapes after the cut (plus the biases bias
   compensation adds) are checked by building the model from the rewritten
   config on the meta device; block removal is checked by
   :func:`fastprune.structured.remove_blocks` with ``dry_run=True``.
2. The dense model is measured on the calibration data: parameters,
   multiply-accumulates and forward time on the first micro-batch, the
   calibration loss (language-model loss over all micro-batches).
3. ``blocks > 0``: a walker pass over the dense model measures every block's
   angular distance between its input and output hidden states
   (``arccos(cos(x, f(x))) / pi`` averaged over the real tokens, as in
   ShortGPT and "The Unreasonable Ineffectiveness of the Deeper Layers");
   the ``blocks`` blocks with the smallest distance are removed by
   :func:`fastprune.structured.remove_blocks`.
4. ``importance="taylor"``: the gradients of the language-model loss over the
   calibration micro-batches (full forward and backward passes; the walker
   has no backward seam) give ``|w * dL/dw|`` per weight.
5. ``mlp`` / ``heads > 0``: a walker pass over the remaining blocks; in each
   block the walker gathers every linear layer's input sums (``sum x^2``
   for the activation importance, ``sum x`` for bias compensation) on the
   block's calibration inputs, then :func:`fastprune.structured.prune_channels`
   traces the block alone and removes the same number of channels / key-value
   groups from it as from every other block, ranked by the importance; the
   block's outputs are recomputed, so the next block calibrates on the shrunk
   model (as FLAP and Wanda-sp do). Then the config is rewritten
   (:func:`fastprune.structured.rewrite_config`).
6. The shrunk model is measured as in 2.

Any failure after the first change rolls every change back.
"""
from __future__ import annotations

import copy
import math
import numbers
import statistics as _stats
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.targets import eval_mode
from ..structured import hf_config
from ..structured.blocks import remove_blocks
from ..structured.channels import prune_channels
from ..structured.importance import IMPORTANCES
from ..structured.report import count_macs, count_params
from ..structured.statistics import CalibrationStats, InputStats, causal_lm_loss, saliency_of
from .blocks import find_blocks
from .calibration import normalize_calibration
from .walker import (BlockTurn, ModelSource, Stage, Statistic, Walker, default_batch_size,
                     micro_batches, model_call_kwargs, plan_layers)

__all__ = ["shrink", "ShrinkReport", "ShrinkBlock", "ChannelSums", "AngularDistance"]

_KIND_ARG = {"mlp": "mlp", "heads": "heads"}


# ----------------------------------------------------------------------------
# Statistics gathered by the walker
# ----------------------------------------------------------------------------


class ChannelSums(InputStats, Statistic):
    """A linear layer's input sums ``sum x_j^2``, ``sum x_j`` and token count, in float64.

    The walker's statistic for structured shrinking; it is also the
    :class:`fastprune.structured.statistics.InputStats` that the activation
    importance and bias compensation read.
    """

    def __init__(self, in_features: int, device) -> None:
        InputStats.__init__(self, in_features, device)

    def add(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        InputStats.add(self, x, -1)


class AngularDistance(Statistic):
    """Mean angular distance ``arccos(cos(x, y)) / pi`` between a block's input and output per token."""

    wants_output = True

    def __init__(self, device) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        cos = F.cosine_similarity(x.double(), y.double(), dim=-1).clamp(-1.0, 1.0)
        self.sums[0] += (torch.arccos(cos) / math.pi).sum()
        self.sums[1] += cos.numel()

    def buffers(self) -> List[torch.Tensor]:
        return [self.sums]

    def value(self) -> float:
        """The mean distance (0: the block leaves its input's direction unchanged; 1: reversed)."""
        n = float(self.sums[1])
        return float(self.sums[0]) / n if n else 0.0


class _DistanceStage(Stage):
    desc = "block distances"
    recompute = False

    def __init__(self) -> None:
        self.distances: List[float] = []

    def statistics(self, turn: BlockTurn) -> Dict[nn.Module, Statistic]:
        return {turn.module: AngularDistance(turn.device)}

    def update(self, turn: BlockTurn, stats) -> None:
        self.distances.append(stats[turn.module].value())


class _ShrinkStage(Stage):
    desc = "shrinking blocks"
    recompute = True

    def __init__(self, amounts, importance, bias_compensation, round_to, saliency, undo) -> None:
        self.amounts = amounts
        self.importance = importance
        self.needs_inputs = IMPORTANCES[importance].needs_inputs or bias_compensation
        self.bias_compensation = bias_compensation
        self.round_to = round_to
        self.saliency = saliency
        self.undo = undo
        self.reports = []

    def statistics(self, turn: BlockTurn) -> Dict[nn.Module, Statistic]:
        if not self.needs_inputs:
            return {}
        return {l.module: ChannelSums(l.shape[1], turn.device) for l in turn.layers}

    def update(self, turn: BlockTurn, stats) -> None:
        t0 = time.perf_counter()
        cut = len(turn.name) + 1
        calib = CalibrationStats(
            {l.name[cut:]: stats[l.module] for l in turn.layers if l.module in stats},
            self.saliency.within(turn.name).saliency if self.saliency is not None else {})
        mb = turn.inputs[0]
        rep = prune_channels(turn.module, (mb.args, mb.kwargs), self.amounts,
                             importance=self.importance, statistics=calib, round_to=self.round_to,
                             bias_compensation=self.bias_compensation, undo=self.undo)
        self.reports.append((turn.index, rep, time.perf_counter() - t0))


# ----------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------


@dataclass
class ShrinkBlock:
    """What happened to one block (numbered as in the model before the call).

    Attributes:
        index: the block's index before the call.
        removed: True when the whole block was removed.
        distance: its input/output angular distance on the calibration data
            (measured when ``blocks > 0``).
        mlp: ``(channels before, after)`` of its MLP, or None when untouched.
        kv_groups: ``(before, after)`` key-value groups (plain multi-head
            attention: heads), or None when untouched.
        attention_width: ``(before, after)`` query channels (heads x head_dim).
        compensated: layers whose bias received the removed channels' mean contribution.
        seconds: time spent on the block's cut (tracing, ranking, removal).
    """

    index: int
    removed: bool = False
    distance: Optional[float] = None
    mlp: Optional[Tuple[int, int]] = None
    kv_groups: Optional[Tuple[int, int]] = None
    attention_width: Optional[Tuple[int, int]] = None
    compensated: List[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ShrinkReport:
    """Result of :func:`shrink`.

    Attributes:
        importance, mlp, heads, blocks_asked, bias_compensation: what was asked.
        blocks: a :class:`ShrinkBlock` per block of the model before the call.
        params_before, params_after: parameter counts.
        macs_before, macs_after: multiply-accumulates of one forward on the
            first calibration micro-batch.
        forward_s_before, forward_s_after: median wall time of that forward
            (same process, same inputs).
        loss_before, loss_after: the language-model loss over the calibration
            data (mean over its predicted tokens); None for models without one.
        config_changes: ``{field: (old, new)}`` written to the config.
        seconds: total wall time of the call.
    """

    importance: str
    mlp: float
    heads: float
    blocks_asked: int
    bias_compensation: bool
    blocks: List[ShrinkBlock] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: Optional[int] = None
    macs_after: Optional[int] = None
    forward_s_before: float = math.nan
    forward_s_after: float = math.nan
    loss_before: Optional[float] = None
    loss_after: Optional[float] = None
    config_changes: Dict[str, Tuple[object, object]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def removed_blocks(self) -> List[int]:
        """Indices (before the call) of the blocks removed."""
        return [b.index for b in self.blocks if b.removed]

    @property
    def param_reduction(self) -> float:
        """Fraction of the parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def speedup(self) -> float:
        """Forward time before / after on the calibration micro-batch."""
        return self.forward_s_before / self.forward_s_after if self.forward_s_after else math.nan

    def table(self) -> str:
        """A plain-text table: one line per block, then the totals."""
        def pair(p):
            return "" if p is None else f"{p[0]} -> {p[1]}"

        lines = [f"{'block':>5}  {'distance':>8}  {'mlp channels':>14}  {'kv groups':>10}  "
                 f"{'attn width':>12}  {'bias':>4}  {'s':>6}"]
        for b in self.blocks:
            dist = "" if b.distance is None else f"{b.distance:.4f}"
            if b.removed:
                lines.append(f"{b.index:>5}  {dist:>8}  {'removed':>14}")
                continue
            if b.mlp is None and b.kv_groups is None:
                lines.append(f"{b.index:>5}  {dist:>8}")
                continue
            lines.append(f"{b.index:>5}  {dist:>8}  {pair(b.mlp):>14}  {pair(b.kv_groups):>10}  "
                         f"{pair(b.attention_width):>12}  {len(b.compensated):>4}  {b.seconds:>6.2f}")

        def fmt(v, spec=","):
            return "n/a" if v is None else format(v, spec)

        lines += [
            "",
            f"params: {self.params_before:,} -> {self.params_after:,} (-{100 * self.param_reduction:.1f}%)",
            f"MACs per calibration micro-batch: {fmt(self.macs_before)} -> {fmt(self.macs_after)}",
            f"forward on a calibration micro-batch: {1e3 * self.forward_s_before:.2f} ms -> "
            f"{1e3 * self.forward_s_after:.2f} ms ({self.speedup:.2f}x)",
            f"calibration loss: {fmt(self.loss_before, '.4f')} -> {fmt(self.loss_after, '.4f')}",
        ]
        for name, (old, new) in self.config_changes.items():
            lines.append(f"config.{name}: {old} -> {new}")
        lines.append(f"importance={self.importance}, mlp={self.mlp}, heads={self.heads}, "
                     f"blocks={self.blocks_asked}, bias_compensation={self.bias_compensation}: "
                     f"{self.seconds:.2f} s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ----------------------------------------------------------------------------
# Checks (nothing is modified)
# ----------------------------------------------------------------------------


def _fraction(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a float in [0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what}={value} must be in [0, 1)")
    return value


def _positive_int(value, what: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be None or a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what}={value} must be a positive int")
    return int(value)


def _to_meta(obj):
    if isinstance(obj, torch.Tensor):
        return torch.empty_like(obj, device="meta")
    if isinstance(obj, tuple):
        return tuple(_to_meta(o) for o in obj)
    if isinstance(obj, list):
        return [_to_meta(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    return obj


def _meta_twin(block: nn.Module) -> nn.Module:
    """A copy of ``block`` whose parameters and buffers live on the meta device (no memory)."""
    memo = {}
    for t in list(block.parameters()) + list(block.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(
            t, nn.Parameter) else empty
    return copy.deepcopy(block, memo)


def _renamed(exc: Exception) -> str:
    msg = str(exc)
    for kind, arg in _KIND_ARG.items():
        msg = msg.replace(f"amount[{kind!r}]", arg)
    return msg


def _check_cut(model, block_list, block_names, first, amounts, round_to, bias_compensation):
    """Cut a meta twin of block 0 as every block will be cut; check the whole model's config.

    Returns the twin's report (what one block loses).
    """
    twin = _meta_twin(block_list[0])
    try:
        rep = prune_channels(twin, (_to_meta(first.args), _to_meta(first.kwargs)), amounts,
                             importance="random", round_to=round_to)
    except (ValueError, TypeError) as exc:
        raise type(exc)(_renamed(exc)) from exc
    if not hf_config.has_transformers_config(model):
        return rep
    twin_shapes = hf_config.current_shapes(twin)
    readers = {c.module_name for c in (rep.plan.cuts if rep.plan else []) if c.role == "in"}
    for path in readers if bias_compensation else ():
        if path + ".bias" not in twin_shapes:
            w = twin_shapes[path + ".weight"]
            conv1d = type(twin.get_submodule(path)).__name__ == "Conv1D"
            twin_shapes[path + ".bias"] = (w[1] if conv1d else w[0],)
    shapes = {}
    prefixes = [n + "." for n in block_names]
    for name, shape in hf_config.current_shapes(model).items():
        if not any(name.startswith(p) for p in prefixes):
            shapes[name] = shape
    for p in prefixes:
        for rel, shape in twin_shapes.items():
            shapes[p + rel] = shape
    what = ", ".join([f"{k}={v}" for k, v in amounts.items()]
                     + (["bias_compensation=True"] if bias_compensation else []))
    try:
        hf_config.plan_config_update(model, shapes)
    except hf_config.ConfigError as exc:
        raise hf_config.ConfigError(f"{what}: {exc}") from exc
    return rep


# ----------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------


def _input_device(model: nn.Module) -> torch.device:
    emb = None
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        pass
    p = next(iter(emb.parameters()), None) if emb is not None else None
    if p is None:
        p = next(iter(model.parameters()))
    return p.device


def _forward_kwargs(model, mask, device):
    kw = dict(model_call_kwargs(model))
    if mask is not None:
        kw["attention_mask"] = mask.to(device)
    return kw


def _forward_time(model: nn.Module, call, repeats: int = 5) -> float:
    ids, mask = call
    dev = _input_device(model)
    ids = ids.to(dev)
    kw = _forward_kwargs(model, mask, dev)
    times = []
    with torch.no_grad(), eval_mode(model):
        model(ids, **kw)  # warm-up
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            model(ids, **kw)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
    return _stats.median(times)


def _labels(ids, mask):
    labels = ids.clone()
    if mask is not None:
        labels = labels.masked_fill(mask == 0, -100)
    return labels


def _calibration_loss(model: nn.Module, calls) -> Optional[float]:
    if causal_lm_loss(model) is None:
        return None
    dev = _input_device(model)
    total, count = 0.0, 0
    with torch.no_grad(), eval_mode(model):
        for ids, mask in calls:
            labels = _labels(ids, mask).to(dev)
            n = int((labels[:, 1:] != -100).sum())
            if n == 0:
                continue
            loss = model(ids.to(dev), labels=labels, **_forward_kwargs(model, mask, dev)).loss
            total += float(loss) * n
            count += n
    return total / count if count else None


def _taylor_saliency(model: nn.Module, calls) -> CalibrationStats:
    """``|w * dL/dw|`` per weight, reduced per dimension; ``L`` the mean-token LM loss over all calls."""
    if causal_lm_loss(model) is None:
        raise ValueError(f"importance='taylor' needs a language-model loss: {type(model).__name__} "
                         "is not a transformers causal LM")
    dev = _input_device(model)
    counts = [int((_labels(ids, mask)[:, 1:] != -100).sum()) for ids, mask in calls]
    total = sum(counts)
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    flags = [p.requires_grad for _, p in params]
    acc = [torch.zeros_like(p, dtype=torch.float32) for _, p in params]
    try:
        for _, p in params:
            p.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            for (ids, mask), n in zip(calls, counts):
                if n == 0:
                    continue
                labels = _labels(ids, mask).to(dev)
                loss = model(ids.to(dev), labels=labels, **_forward_kwargs(model, mask, dev)).loss
                grads = torch.autograd.grad(loss * (n / total), [p for _, p in params],
                                            allow_unused=True)
                for a, g in zip(acc, grads):
                    if g is not None:
                        a += g.float()
                del grads, loss
    finally:
        for (_, p), f in zip(params, flags):
            p.requires_grad_(f)
    stats = CalibrationStats()
    names: Dict[int, List[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    for (n, p), a in zip(params, acc):
        sal = saliency_of(p, a)
        for alias in names.get(id(p), [n]):
            stats.saliency[alias] = sal
    return stats


def _unit_pairs(rep) -> Dict[str, Tuple[int, int]]:
    """kind -> (units before, after) and the channel widths, from a structured PruneReport."""
    out = {}
    for (name, kind, before, removed), (_, ch_before, ch_after) in zip(rep.units, rep.layers):
        if kind in ("mlp", "heads"):
            out[kind] = (before, before - removed)
            out[kind + "_width"] = (ch_before, ch_after)
    return out


# ----------------------------------------------------------------------------
# The public function
# ----------------------------------------------------------------------------


def shrink(model: nn.Module, calibration, *, mlp: float = 0.0, heads: float = 0.0, blocks: int = 0,
           importance: str = "activation", bias_compensation: bool = False,
           round_to: Optional[int] = None, batch_size: Optional[int] = None, device=None,
           offload: bool = True, progress: Optional[bool] = True) -> ShrinkReport:
    """Shrink a decoder model: fewer MLP channels, key-value groups and blocks, chosen from calibration data.

    The result is the same model class with a rewritten config
    (``intermediate_size`` / ``ffn_dim`` / ``n_inner``,
    ``num_key_value_heads``, ``num_attention_heads``, ``num_hidden_layers``,
    bias flags), so ``save_pretrained`` / ``from_pretrained`` give identical
    logits. Supported: Llama, Mistral, Qwen2, Gemma (grouped-query attention),
    OPT and GPT-2 (MLP and blocks; their configs derive the head width from the
    hidden size, so heads cannot be stated); any model whose config cannot
    state the result gets a ``ConfigError`` naming what it cannot state.
    Models without a transformers config (blocks found or given as for
    :func:`fastprune.llm.prune`) are shrunk the same way, without a config.

    Args:
        model: a transformers decoder (or any model whose blocks
            :func:`find_blocks` finds).
        calibration: token ids ``[n, seq_len]`` or an iterable of batches, as
            for :func:`fastprune.llm.prune` (padding is left out of every statistic).
        mlp: fraction of the intermediate channels removed in every block
            (the same count in each), in ``[0, 1)``.
        heads: fraction of the key-value groups removed in every block with
            their query heads (plain multi-head attention: heads), in ``[0, 1)``.
        blocks: number of whole blocks removed, those whose output hidden
            states differ least from their inputs (angular distance on the
            calibration data, on the dense model).
        importance: how channels and groups are ranked: ``"activation"``
            (Wanda-sp / FLAP: ``||X_j|| * ||W[:, j]||`` of the layers reading
            them, summed over the group), ``"taylor"`` (LLM-Pruner:
            ``|w * dL/dw|`` summed over every weight of the group, from the
            language-model loss on the calibration data) or ``"magnitude"``
            (norms of every coupled weight); any name registered with
            :func:`fastprune.structured.register_importance`.
        bias_compensation: FLAP: the mean contribution of the removed
            channels on the calibration data is added to the bias of the
            layer that read them (``down_proj``, ``o_proj``, ...); the config's
            bias flag is set so ``from_pretrained`` builds those biases (Llama:
            ``mlp_bias`` / ``attention_bias``; OPT and GPT-2 have biases
            already; Mistral and Qwen2 have no flag: ``ConfigError``).
        round_to: keep every group's remaining width a multiple of it
            (removing less where needed).
        batch_size: sequences per forward call (micro-batch); default: what
            keeps one call's block activations within the walker's budget.
        device: where each block is processed (default: where its parameters are).
        offload: move each block to ``device`` for its turn and back afterwards.
        progress: progress bars over the blocks.

    Returns:
        ShrinkReport: per block what was removed; parameters, MACs and the
        forward time on a calibration micro-batch before and after; the
        calibration loss before and after (``print(report)`` shows a table).

    Raises:
        TypeError, ValueError: bad arguments, naming them: fractions outside
            ``[0, 1)`` or that would remove every channel / group, ``blocks``
            not below the number of blocks, an unknown importance, no
            recognisable blocks, a meta-device model, a bad calibration.
        ConfigError: the model's config cannot state the result.
        RuntimeError: a shrunk block fails to run (everything rolled back).

    Nothing is modified when an error is raised.

    Example::

        >>> report = fastprune.llm.shrink(model, ids, mlp=0.5, heads=0.25, blocks=1,
        ...                               importance="activation", bias_compensation=True)
        >>> print(report)
        >>> model.save_pretrained("smaller")
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mlp = _fraction(mlp, "mlp")
    heads = _fraction(heads, "heads")
    if isinstance(blocks, bool) or not isinstance(blocks, numbers.Integral):
        raise TypeError(f"blocks must be an int (a number of blocks), got {type(blocks).__name__}")
    if blocks < 0:
        raise ValueError(f"blocks={blocks} must be >= 0")
    if not isinstance(importance, str):
        raise TypeError(f"importance must be a string, got {type(importance).__name__}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance={importance!r} is not known; choose one of "
                         f"{sorted(IMPORTANCES)}")
    if not isinstance(bias_compensation, bool):
        raise TypeError(f"bias_compensation must be a bool, got {type(bias_compensation).__name__}")
    round_to = _positive_int(round_to, "round_to")
    batch_size = _positive_int(batch_size, "batch_size")
    if not isinstance(offload, bool):
        raise TypeError(f"offload must be a bool, got {type(offload).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("model: its parameters are on the meta device; shrinking reads weights "
                         "and runs the model on calibration data (load real weights first)")
    try:
        block_list = find_blocks(model)
    except ValueError as exc:
        raise ValueError("model: " + str(exc).split(": ", 1)[-1].split("; pass blocks=")[0]
                         + "; shrink finds the blocks at those attributes") from None
    if blocks >= len(block_list):
        raise ValueError(f"blocks={blocks} must be smaller than the number of blocks "
                         f"({len(block_list)})")
    if bias_compensation and mlp == 0.0 and heads == 0.0:
        raise ValueError("bias_compensation=True compensates removed channels: ask for mlp > 0 "
                         "or heads > 0")
    plan = plan_layers(model, block_list)
    batches = normalize_calibration(calibration)
    if batch_size is None:
        batch_size = default_batch_size(model, plan, max(ids.shape[1] for ids, _ in batches))
    calls = micro_batches(batches, batch_size)
    if device is None:
        first = next(iter(block_list[0].parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device torch knows") from None
    amounts = {k: v for k, v in (("mlp", mlp), ("heads", heads)) if v > 0}
    names = {id(m): n for n, m in model.named_modules()}
    block_names = [names[id(b)] for b in block_list]

    report = ShrinkReport(importance, mlp, heads, int(blocks), bias_compensation,
                          [ShrinkBlock(i) for i in range(len(block_list))])
    with torch.no_grad(), eval_mode(model):
        if amounts:
            first_inputs = ModelSource(model, block_list, offload).capture(calls[:1], device)[0]
            _check_cut(model, block_list, block_names, first_inputs, amounts, round_to,
                       bias_compensation)
        if blocks:
            remove_blocks(model, list(range(len(block_list) - blocks, len(block_list))),
                          blocks=block_list_path(model, block_list), dry_run=True)
        report.params_before = count_params(model)
        report.macs_before = _macs(model, calls[0])
        report.forward_s_before = _forward_time(model, calls[0])
        report.loss_before = _calibration_loss(model, calls)

    undo: list = []
    try:
        with eval_mode(model):
            _run(model, block_list, plan, calls, device, offload, progress, blocks, amounts,
                 importance, bias_compensation, round_to, report, undo)
    except BaseException:
        for fn in reversed(undo):
            fn()
        raise
    with torch.no_grad(), eval_mode(model):
        report.params_after = count_params(model)
        report.macs_after = _macs(model, calls[0])
        report.forward_s_after = _forward_time(model, calls[0])
        report.loss_after = _calibration_loss(model, calls)
    report.seconds = time.perf_counter() - t_start
    return report


def block_list_path(model: nn.Module, block_list) -> str:
    """Dotted name of the ``nn.ModuleList`` holding ``block_list`` (for :func:`remove_blocks`)."""
    names = {id(m): n for n, m in model.named_modules()}
    path = names[id(block_list[0])].rsplit(".", 1)[0]
    return path


def _macs(model, call) -> Optional[int]:
    ids, mask = call
    dev = _input_device(model)
    return count_macs(model, ((ids.to(dev),), _forward_kwargs(model, mask, dev)))


def _run(model, block_list, plan, calls, device, offload, progress, blocks, amounts, importance,
         bias_compensation, round_to, report, undo) -> None:
    path = block_list_path(model, block_list)
    alive = list(range(len(block_list)))
    if blocks:
        with torch.no_grad():
            stage = _DistanceStage()
            walker = Walker(ModelSource(model, block_list, offload), plan, calls, device=device,
                            progress=progress)
            walker.walk(stage, walker.capture())
        for b, d in zip(report.blocks, stage.distances):
            b.distance = d
        order = sorted(range(len(block_list)), key=lambda i: (stage.distances[i], i))
        gone = sorted(order[:blocks])
        removal = remove_blocks(model, gone, blocks=path, undo=undo)
        report.config_changes.update(removal.config_changes)
        for i in gone:
            report.blocks[i].removed = True
        alive = [i for i in alive if i not in gone]
        block_list = find_blocks(model, path)
        plan = plan_layers(model, block_list)
    if not amounts:
        return
    saliency = _taylor_saliency(model, calls) if IMPORTANCES[importance].needs_saliency else None
    stage = _ShrinkStage(amounts, importance, bias_compensation, round_to, saliency, undo)
    with torch.no_grad():
        walker = Walker(ModelSource(model, block_list, offload), plan, calls, device=device,
                        progress=progress)
        walker.walk(stage, walker.capture())
    for j, rep, seconds in stage.reports:
        b = report.blocks[alive[j]]
        pairs = _unit_pairs(rep)
        b.mlp = pairs.get("mlp_width")
        b.kv_groups = pairs.get("heads")
        b.attention_width = pairs.get("heads_width")
        b.compensated = [f"{path}.{j}.{c}" for c in rep.compensated]
        b.seconds = seconds
    if hf_config.has_transformers_config(model):
        changes = hf_config.rewrite_config(model, undo=undo)
        report.config_changes.update(changes)
