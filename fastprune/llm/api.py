"""``fastprune.llm.prune``: one-shot pruning of decoder models, block by block."""
from __future__ import annotations

import numbers
import time
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..core.functional import custom_from_mask
from ..core.targets import eval_mode
from ..maskset import MaskSet
from ..ops import pack_mask, packed_numel
from .blocks import find_blocks
from .calibration import normalize_calibration
from .checks import calibration_labels, check_calibration_fits, check_model_has_data
from .owl import owl_sparsities
from .patterns import parse_pattern
from .report import PruneReport
from .stages import OwlStage, PruneStage, magnitude_layer
from .walker import Layer, ModelSource, Walker, default_batch_size, micro_batches, plan_layers

__all__ = ["prune", "METHODS"]

METHODS = ("magnitude", "wanda", "sparsegpt")
_MODES = ("inplace", "reparam")


# ----------------------------------------------------------------------------
# Validation (nothing is modified here)
# ----------------------------------------------------------------------------


def _check_fraction(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a float in [0, 1), got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{what}={value} must be in [0, 1)")
    return value


def _check_choice(value, allowed, what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what}={value!r} is not supported; choose one of {allowed}")
    return value


def _check_prunable_weight(module: nn.Module, name: str, what: str) -> None:
    if not isinstance(module, nn.Module) or not isinstance(module._parameters.get("weight"), torch.Tensor):
        if isinstance(module, nn.Module) and "weight_orig" in module._parameters:
            raise ValueError(f"{what}: {name}.weight carries a pruning reparametrisation; "
                             f"call fastprune.remove(module, 'weight') first")
        raise ValueError(f"{what}: {name or type(module).__name__} has no weight parameter to prune")
    w = module.weight
    if w.dim() != 2 or w.is_complex() or not w.is_floating_point():
        raise TypeError(f"{what}: {name}.weight must be a 2-d floating-point matrix, got {w.dtype} {tuple(w.shape)}")


def _outside_layers(model: nn.Module, prune_embeddings, prune_lm_head) -> List[Layer]:
    """The input embeddings and / or LM head to prune as well (``block=None``), in model order.

    Found with transformers' ``get_input_embeddings()`` / ``get_output_embeddings()``.
    A weight tied between the two is one tensor: it is pruned once, and only
    when both are asked for (pruning one would silently prune the other).
    """
    for value, what in ((prune_embeddings, "prune_embeddings"), (prune_lm_head, "prune_lm_head")):
        if not isinstance(value, bool):
            raise TypeError(f"{what} must be a bool, got {type(value).__name__}")
    if not (prune_embeddings or prune_lm_head):
        return []
    names = {id(m): n for n, m in model.named_modules()}
    found = {}
    for asked, getter, what in ((prune_embeddings, "get_input_embeddings", "prune_embeddings"),
                                (prune_lm_head, "get_output_embeddings", "prune_lm_head")):
        if not asked:
            continue
        module = _get_embeddings(model, getter)
        if module is None:
            raise ValueError(f"{what}: {type(model).__name__} does not say where its "
                             f"{'input embeddings are' if getter == 'get_input_embeddings' else 'LM head is'} "
                             f"({getter}() is missing or returns None)")
        name = names.get(id(module), getter)
        _check_prunable_weight(module, name, what)
        found[what] = Layer(name, module, None)
    emb = _get_embeddings(model, "get_input_embeddings")
    head = _get_embeddings(model, "get_output_embeddings")
    tied = (emb is not None and head is not None and isinstance(getattr(emb, "weight", None), torch.Tensor)
            and isinstance(getattr(head, "weight", None), torch.Tensor) and emb.weight is head.weight)
    if tied and prune_embeddings != prune_lm_head:
        asked = "prune_embeddings" if prune_embeddings else "prune_lm_head"
        other = "prune_lm_head" if prune_embeddings else "prune_embeddings"
        raise ValueError(f"{asked}: the input embeddings and the LM head share one weight (tied); "
                         f"pass {other}=True as well to prune the shared tensor")
    if tied:
        return [found["prune_embeddings"]]
    return list(found.values())


def _layer_targets(plan, sparsity: float, layer_sparsity, outside=()) -> Tuple[List[float], Dict[str, float]]:
    """Per-block sparsity and per-layer overrides from ``layer_sparsity`` (a dict)."""
    per_block = [sparsity] * len(plan)
    per_layer: Dict[str, float] = {}
    if not isinstance(layer_sparsity, dict):
        return per_block, per_layer
    names = {l.name for layers in plan for l in layers} | {l.name for l in outside}
    for key, value in layer_sparsity.items():
        what = f"layer_sparsity[{key!r}]"
        s = _check_fraction(value, what)
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError(f"layer_sparsity keys must be block indices (int) or layer names (str), got {key!r}")
        if isinstance(key, int):
            if not -len(plan) <= key < len(plan):
                raise IndexError(f"{what}: there are {len(plan)} blocks")
            per_block[key % len(plan)] = s
        else:
            if key not in names:
                raise ValueError(f"{what}: no prunable layer of that name in the blocks "
                                 f"(nor among the embeddings / LM head asked for)")
            per_layer[key] = s
    return per_block, per_layer


# ----------------------------------------------------------------------------
# The public function
# ----------------------------------------------------------------------------


def prune(
    model: nn.Module,
    calibration=None,
    method: str = "wanda",
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    *,
    layer_sparsity=None,
    blocks=None,
    device=None,
    offload: bool = True,
    mode: str = "inplace",
    progress: Optional[bool] = True,
    owl_lambda: float = 0.08,
    owl_m: float = 5.0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    measure_errors: Optional[bool] = None,
    prune_embeddings: bool = False,
    prune_lm_head: bool = False,
    batch_size: Optional[int] = None,
    distributed: Optional[bool] = None,
    group=None,
) -> PruneReport:
    """Prune the linear layers of a decoder model one-shot, block by block.

    The inputs of the first decoder block are captured once on the
    calibration data. Then, for each block in turn: its linear layers'
    statistics are gathered with forward hooks (Wanda: the L2 norm of every
    input feature over the calibration tokens; SparseGPT: the Hessian
    ``2 X X^T / n``), the layers are pruned, and the block's outputs,
    recomputed with the pruned weights, become the next block's inputs.
    Norms stay dense; so do the embeddings and the LM head unless
    ``prune_embeddings`` / ``prune_lm_head`` ask for them.

    Args:
        model: a transformers decoder model (Llama / Mistral / Qwen2 / GPT-2 /
            OPT ...) or any model whose blocks are given with ``blocks``.
        calibration: token ids ``[n, seq_len]``, or an iterable of batches
            (tensors, ``(ids, attention_mask)`` pairs or tokenizer dicts);
            padding (attention mask 0) is left out of the statistics. Not
            needed for ``method="magnitude"`` without OWL, which runs no
            calibration forward.
        method: ``"wanda"`` (score ``|W_ij| * ||X_j||_2`` compared within each
            output row), ``"sparsegpt"`` (Hessian-based selection and weight
            reconstruction) or ``"magnitude"`` (``|W_ij|`` within each row).
        sparsity: fraction pruned in ``[0, 1)``; for an N:M pattern it must be
            ``N / M``.
        pattern: ``"unstructured"`` or ``"N:M"`` (``N`` of every ``M``
            consecutive input weights of a row pruned, e.g. ``"2:4"``).
        layer_sparsity: ``None`` (every block at ``sparsity``), ``"owl"``
            (outlier-weighted per-block sparsities whose parameter-weighted mean
            is ``sparsity``) or a dict ``{block index or layer name: sparsity}``.
        blocks: the decoder blocks (a path such as ``"model.layers"``, or the
            modules), found automatically when ``None``.
        device: where each block is pruned; default: the device of the first
            block's parameters.
        offload: True: each block is moved to ``device`` for its turn and back
            afterwards (peak memory: one block plus the activations). False:
            blocks are moved to ``device`` and stay there.
        mode: ``"inplace"`` (weights zeroed, 1-bit masks returned in
            ``report.masks``) or ``"reparam"`` (``weight_orig`` /
            ``weight_mask`` as ``torch.nn.utils.prune`` makes them; works with
            ``remove`` and ``is_pruned``).
        progress: show a progress bar over the blocks.
        owl_lambda, owl_m: OWL's lambda (largest deviation from ``sparsity``)
            and M (outlier threshold as a multiple of the mean score).
        blocksize, percdamp: SparseGPT's column block size and dampening
            (fraction of the mean Hessian diagonal).
        measure_errors: compute each layer's reconstruction error while the
            pruned block's outputs are recomputed (one extra matrix product
            per layer); False leaves ``error`` NaN. Default (None): measured
            for Wanda and SparseGPT, which recompute the outputs anyway, not
            for magnitude, which then runs no forward pass at all (True makes
            it run the blocks on the calibration to measure them).
        prune_embeddings, prune_lm_head: prune the input embeddings
            (``model.get_input_embeddings()``) / the LM head
            (``model.get_output_embeddings()``) too, at ``sparsity`` (or their
            name's entry in a ``layer_sparsity`` dict) with ``pattern``, by
            magnitude within each row (a token's embedding vector, an output
            row of the head) whatever ``method`` is: they sit outside the
            block walk that gathers calibration statistics. The embeddings are
            pruned first, so the blocks calibrate on their pruned output; the
            head last. A weight tied between the two is pruned once and needs
            both flags. Their masks join the others (``report.masks``, or
            ``weight_mask`` with ``mode="reparam"``); ``report`` lists them with
            ``block=None``.
        batch_size: the most calibration sequences run through a block in one
            forward call (larger batches are cut, smaller ones run as given);
            statistics are summed over the calls in float64. Default (None):
            as many as keep one call's block activations within
            ``fastprune.llm.walker.ACTIVATION_BUDGET`` (32 MiB; the estimate is
            :func:`~fastprune.llm.walker.default_batch_size`'s). Wanda gives
            the same masks for any ``batch_size``; SparseGPT's Hessians differ
            by float32 rounding of each call's ``X^T X``.
        distributed: data-parallel calibration on ``torch.distributed``.
            None (default): when a process group is initialised, every
            process of it takes part (each must make this same call: same
            model, calibration and options); else this process alone. True:
            the same, but an error without a process group. False: this
            process alone, even inside a process group. Process ``r`` of
            ``W`` runs micro-batches ``r, r + W, ...`` of the calibration
            through the blocks; the statistics are summed over every process
            in micro-batch order, so the result is bit for bit the
            one-process result for any number of processes; the layers'
            solves are split among the processes and the results broadcast;
            every process returns the same report (times: the slowest
            process's). An error on one process is raised on every process.
            See ``fastprune.distributed.llm`` and docs/llm.md, "Several
            processes".
        group: the process group to calibrate over (default: the default group).

    Returns:
        a :class:`PruneReport` (per-layer sparsity and reconstruction error,
        time per block; ``print(report)`` shows a table).

    Raises:
        TypeError, ValueError, IndexError: bad arguments (naming the argument),
            raised before any weight changes (in a process group: on every
            process, ``... (on process r of W)``).
        fastprune.distributed.ShardedInputError: the processes of a group
            disagree on the model, the calibration or the options.

    Example::

        >>> ids = tokenizer(texts, return_tensors="pt", padding=True)
        >>> report = fastprune.llm.prune(model, [ids], method="wanda", sparsity=0.5)
        >>> print(report)
    """
    # -- every check first: a bad call changes nothing ------------------------
    # In a process group every process checks, then all agree (an error on one is raised on all).
    dp = data_parallel(distributed, group)
    try:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        mode = _check_choice(mode, _MODES, "mode")
        job = _Job.check(method=method, sparsity=sparsity, pattern=pattern, layer_sparsity=layer_sparsity,
                         owl_lambda=owl_lambda, owl_m=owl_m, blocksize=blocksize, percdamp=percdamp,
                         measure_errors=measure_errors)
        block_list = find_blocks(model, blocks)
        job.plan_model(model, block_list, prune_embeddings, prune_lm_head)
        calls = job.calibration_calls(calibration, batch_size, model)
        if device is None:
            first = next(iter(block_list[0].parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        device = _check_device(device)
        check_model_has_data(model, device)
        if job.batches:
            check_calibration_fits(model, job.batches, calibration_labels(calibration, len(job.batches)))
    except Exception as e:
        if dp is None:
            raise
        dp.agree_inputs(None, None, None, error=e)  # raises it on every process
    if dp is not None:
        dp.agree_inputs(dict(job.signature(), mode=mode, device_type=device.type), job.batches, model)
        progress = progress and dp.rank == 0
    step = dp.run if dp is not None else (lambda f: f())

    report = PruneReport(method=job.method, pattern=pattern, sparsity=job.sparsity, mode=mode)
    start = time.perf_counter()
    plan, outside = job.plan, job.outside
    pairs, masks_out, labels = [], [], []
    # Where each mask ends up: with the weight, home after offloading or on `device`.
    finals = [(l, l.module.weight.device if offload else device) for layers in plan for l in layers]
    finals += [(l, l.module.weight.device) for l in outside]  # never moved
    store = _PackedStore(finals) if mode == "inplace" else None
    head = [l for l in outside if l.module is not _get_embeddings(model, "get_input_embeddings")]
    first = [l for l in outside if l not in head]

    def keep_mask(l, keep):
        if mode == "inplace":  # 1 bit per weight is all we keep
            masks_out.append(store.put(l, _pack(keep)))
            pairs.append((l.module, "weight"))
            labels.append(l.name + ".weight")

    def prune_outside(layers):
        for l in layers:
            keep, rep = magnitude_layer(l, job.per_layer.get(l.name, job.sparsity), job.nm)
            report.layers.append(rep)
            if mode == "reparam":  # torch-style: weight_orig keeps the dense values
                custom_from_mask(l.module, "weight", keep)
            else:
                l.module.weight.masked_fill_(~keep, 0)
                keep_mask(l, keep)

    def block_masks(turn, layers, keeps, dense):
        for l, keep in zip(layers, keeps):
            keep_mask(l, keep)
            if mode == "reparam":
                if job.method != "sparsegpt":  # torch-style: weight_orig keeps the dense values
                    l.module.weight.copy_(dense[l.name])
                custom_from_mask(l.module, "weight", keep)

    with torch.no_grad(), eval_mode(model):
        step(lambda: prune_outside(first))
        walker = Walker(ModelSource(model, block_list, offload), plan, calls, device=device, progress=progress,
                        reducer=dp.reducer() if dp is not None else None,
                        scheduler=dp.scheduler() if dp is not None else None)
        job.walk(walker, report, keep_dense=mode == "reparam" and job.method != "sparsegpt", on_block=block_masks)
        step(lambda: prune_outside(head))
        if mode == "inplace":
            # The slices of the store become the MaskSet's storage: the masks are never held twice.
            report.masks = MaskSet.from_masks(pairs, masks_out, labels=labels, packed=True, copy=False)
            del masks_out, store
    report.seconds = time.perf_counter() - start
    if dp is not None:
        dp.same_report(report)
    return report


def data_parallel(distributed, group):
    """The :class:`fastprune.distributed.llm.DataParallel` of a call, or None for this process alone.

    Looks at ``torch.distributed`` (which ``import torch`` has loaded) without
    importing anything; the data-parallel module is imported only when a
    process group is initialised.

    Raises:
        TypeError, ValueError: a bad ``distributed`` / ``group`` (in a process
            group: on every process).
    """
    tdist = getattr(torch, "distributed", None)
    active = bool(tdist is not None and tdist.is_available() and tdist.is_initialized())
    error = None
    if distributed is not None and not isinstance(distributed, bool):
        error = TypeError(f"distributed must be None, True or False, got {type(distributed).__name__}")
    elif distributed is False and group is not None:
        error = ValueError("group is given with distributed=False; pass one or the other")
    elif distributed is True and not active:
        raise ValueError("distributed=True: no torch.distributed process group is initialised "
                         "(call torch.distributed.init_process_group, or run under torchrun)")
    if not active or distributed is False:
        if error is not None:
            raise error
        if group is not None:
            raise ValueError("group is given but no torch.distributed process group is initialised")
        return None
    from ..distributed.llm import DataParallel

    dp = DataParallel(group)
    if error is not None:
        dp.agree_inputs(None, None, None, error=error)
    return dp


def _check_device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device torch knows") from None


class _Job:
    """The checked options of one pruning call and its plan; runs the passes on a walker.

    Shared by :func:`prune` and :func:`~fastprune.llm.prune_checkpoint`, so
    both check the same things and prune the same way.
    """

    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)

    @classmethod
    def check(cls, *, method, sparsity, pattern, layer_sparsity, owl_lambda, owl_m, blocksize, percdamp,
              measure_errors) -> "_Job":
        method = _check_choice(method, METHODS, "method")
        if measure_errors is not None and not isinstance(measure_errors, bool):
            raise TypeError(f"measure_errors must be None or a bool, got {type(measure_errors).__name__}")
        if measure_errors is None:
            measure_errors = method != "magnitude"
        sparsity = _check_fraction(sparsity, "sparsity")
        nm = parse_pattern(pattern)
        if nm is not None and abs(sparsity - nm[0] / nm[1]) > 1e-9:
            raise ValueError(f"sparsity={sparsity} does not match pattern={pattern!r}, which prunes {nm[0] / nm[1]}")
        if layer_sparsity is not None and not (layer_sparsity == "owl" or isinstance(layer_sparsity, dict)):
            raise ValueError(f"layer_sparsity={layer_sparsity!r} must be None, 'owl' or a dict")
        if layer_sparsity is not None and nm is not None:
            raise ValueError(f"layer_sparsity cannot be combined with pattern={pattern!r} (N:M fixes every layer's sparsity)")
        for value, what in ((owl_lambda, "owl_lambda"), (owl_m, "owl_m"), (percdamp, "percdamp")):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"{what}={value!r} must be a non-negative number")
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
            raise ValueError(f"blocksize={blocksize!r} must be a positive int")
        if nm is not None and method == "sparsegpt" and blocksize % nm[1]:
            raise ValueError(f"blocksize={blocksize} must be a multiple of M in pattern={pattern!r}")
        return cls(method=method, sparsity=sparsity, pattern=pattern, nm=nm, layer_sparsity=layer_sparsity,
                   owl_lambda=float(owl_lambda), owl_m=float(owl_m), blocksize=blocksize, percdamp=float(percdamp),
                   measure_errors=measure_errors)

    def plan_model(self, model: nn.Module, blocks: List[nn.Module], prune_embeddings, prune_lm_head) -> None:
        """The layers to prune, their targets; N:M divisibility (the model may live on the meta device)."""
        self.plan = plan_layers(model, blocks)
        self.outside = _outside_layers(model, prune_embeddings, prune_lm_head)
        self.per_block, self.per_layer = _layer_targets(self.plan, self.sparsity, self.layer_sparsity, self.outside)
        if self.nm is not None:
            for layers in self.plan + [self.outside]:
                for l in layers:
                    if l.shape[1] % self.nm[1]:
                        raise ValueError(f"pattern={self.pattern!r}: M={self.nm[1]} does not divide the input "
                                         f"dimension {l.shape[1]} of {l.name}")

    def signature(self) -> dict:
        """The checked options, the plan and the micro-batches' shapes: what every process of a
        data-parallel call must agree on (plain values, compared across processes)."""
        return {
            "method": self.method, "sparsity": self.sparsity, "pattern": self.pattern,
            "layer_sparsity": self.layer_sparsity if not isinstance(self.layer_sparsity, dict)
            else sorted((repr(k), v) for k, v in self.layer_sparsity.items()),
            "owl": (self.owl_lambda, self.owl_m), "blocksize": self.blocksize, "percdamp": self.percdamp,
            "measure_errors": self.measure_errors, "batch_size": getattr(self, "batch_size", None),
            "micro_batches": None if getattr(self, "batches", None) is None else len(self.calls),
            "layers": [(l.name, l.shape) for layers in self.plan for l in layers],
            "outside": [l.name for l in self.outside],
        }

    @property
    def prune_forward(self) -> bool:
        """Whether the pruning pass runs the blocks on the calibration (magnitude: only to measure errors)."""
        return self.method != "magnitude" or self.measure_errors

    @property
    def needs_data(self) -> bool:
        return self.prune_forward or self.layer_sparsity == "owl"

    def calibration_calls(self, calibration, batch_size, model):
        """The calibration as forward calls of at most ``batch_size`` sequences, or None when no pass needs it."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r} must be None or a positive int")
        if not self.needs_data and calibration is None:
            self.batches, self.batch_size = None, batch_size
            return None
        if self.method == "magnitude" and self.measure_errors and calibration is None:
            raise ValueError("measure_errors=True needs calibration with method='magnitude' (errors are measured on it)")
        self.batches = normalize_calibration(calibration)
        if batch_size is None:
            seq_len = max(ids.shape[1] for ids, _ in self.batches)
            batch_size = default_batch_size(model, self.plan, seq_len)
        self.batch_size = batch_size
        self.calls = micro_batches(self.batches, batch_size)
        return self.calls

    def owl_targets(self, walker: Walker) -> None:
        """OWL's dense pass: per-block targets from the outlier ratios."""
        owl = OwlStage(self.owl_m)
        walker.walk(owl, walker.capture())
        self.per_block = owl_sparsities(owl.ratios, owl.params, self.sparsity, self.owl_lambda)

    def walk(self, walker: Walker, report: PruneReport, *, keep_dense: bool,
             on_block=None, start: int = 0, inputs=None, on_block_written=None) -> None:
        """The pruning pass (after OWL's when asked for) over ``walker``'s blocks."""
        if self.layer_sparsity == "owl" and start == 0 and inputs is None:
            self.owl_targets(walker)
        stage = PruneStage(self.method, self.nm, self.per_block, self.per_layer, report, blocksize=self.blocksize,
                           percdamp=self.percdamp, measure_errors=self.measure_errors, keep_dense=keep_dense,
                           on_block=on_block)
        if inputs is None and start == 0 and walker.calls is not None and self.prune_forward:
            inputs = walker.capture()
        walker.walk(stage, inputs, start=start, on_block=on_block_written)


class _PackedStore:
    """One buffer per device for every layer's 1-bit mask, allocated before the first block.

    Why one buffer: the packed masks are the only allocations that outlive a
    block. Allocated one by one between the block's transient tensors (scores,
    keep-masks, activations), each small mask pins the heap above the freed
    transients, and glibc's allocator cannot give that memory back to the
    system: the process grew by ~2 MB per layer (277 MB on a 246M-parameter
    model, where the masks themselves are 22 MB). Allocated up front, the
    masks sit below everything transient and the heap shrinks back after
    every layer.

    Each mask goes to the device its weight ends up on (home with ``offload``,
    ``device`` without), so masks never accumulate on the pruning device.
    """

    def __init__(self, finals: List[Tuple[Layer, torch.device]]) -> None:
        sizes: Dict[torch.device, int] = {}
        self.where: Dict[str, Tuple[torch.device, int, int]] = {}
        for l, home in finals:
            n = packed_numel(l.module.weight.numel())
            start = sizes.get(home, 0)
            self.where[l.name] = (home, start, n)
            sizes[home] = start + n
        self.buffers = {dev: torch.empty(n, dtype=torch.uint8, device=dev) for dev, n in sizes.items()}

    def put(self, layer: Layer, packed: torch.Tensor) -> torch.Tensor:
        dev, start, n = self.where[layer.name]
        slot = self.buffers[dev][start:start + n]
        slot.copy_(packed)
        return slot


def _pack(keep: torch.Tensor) -> torch.Tensor:
    """1-bit packed copy of a keep-mask (fastprune's format: unit i is bit i % 8 of byte i // 8).

    On the CPU numpy's ``packbits`` does it in one pass; elsewhere the ops' packer.
    """
    if keep.device.type == "cpu" and keep.dtype == torch.bool:
        import numpy as np  # a runtime dependency of fastprune

        return torch.from_numpy(np.packbits(keep.reshape(-1).numpy(), bitorder="little"))
    return pack_mask(keep)


def _get_embeddings(model: nn.Module, getter: str):
    """``model.get_input_embeddings()`` / ``get_output_embeddings()``, or None where the model has none."""
    try:
        return getattr(model, getter)()
    except (AttributeError, NotImplementedError, TypeError):
        return None
