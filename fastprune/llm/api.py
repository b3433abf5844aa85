"""``fastprune.llm.prune``: one-shot pruning of decoder models, block by block."""
from __future__ import annotations

import inspect
import math
import numbers
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.functional import custom_from_mask
from ..ops import pack_mask, packed_numel
from ..core.targets import eval_mode
from ..maskset import MaskSet
from ..progress import progress_bar
from .blocks import block_linears, find_blocks, is_conv1d, weight_rows
from .calibration import normalize_calibration
from .checks import calibration_labels, check_calibration_fits, check_model_has_data
from .magnitude import magnitude_mask
from .owl import outlier_ratio, owl_sparsities
from .patterns import parse_pattern
from .report import BlockReport, LayerReport, PruneReport
from .sparsegpt import Hessian, sparsegpt_prune
from .wanda import InputNorms, wanda_mask, wanda_scores

__all__ = ["prune", "METHODS"]

METHODS = ("magnitude", "wanda", "sparsegpt")
_MODES = ("inplace", "reparam")


class _Stop(Exception):
    """Raised by the capture hook once the first block's inputs are recorded."""


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


class _Layer:
    __slots__ = ("name", "module", "block")

    def __init__(self, name: str, module: nn.Module, block: Optional[int]) -> None:
        self.name = name
        self.module = module
        self.block = block

    @property
    def shape(self) -> Tuple[int, int]:
        w = weight_rows(self.module, self.module.weight)
        return int(w.shape[0]), int(w.shape[1])


def _plan_layers(model: nn.Module, blocks: List[nn.Module]) -> List[List[_Layer]]:
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
            layers.append(_Layer(name, m, i))
        plan.append(layers)
    if not any(plan):
        raise ValueError("blocks: the blocks hold no linear layers to prune")
    return plan


def _check_prunable_weight(module: nn.Module, name: str, what: str) -> None:
    if not isinstance(module, nn.Module) or not isinstance(module._parameters.get("weight"), torch.Tensor):
        if isinstance(module, nn.Module) and "weight_orig" in module._parameters:
            raise ValueError(f"{what}: {name}.weight carries a pruning reparametrisation; "
                             f"call fastprune.remove(module, 'weight') first")
        raise ValueError(f"{what}: {name or type(module).__name__} has no weight parameter to prune")
    w = module.weight
    if w.dim() != 2 or w.is_complex() or not w.is_floating_point():
        raise TypeError(f"{what}: {name}.weight must be a 2-d floating-point matrix, got {w.dtype} {tuple(w.shape)}")


def _outside_layers(model: nn.Module, prune_embeddings, prune_lm_head) -> List[_Layer]:
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
        found[what] = _Layer(name, module, None)
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
# Moving things between devices
# ----------------------------------------------------------------------------


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

    def __init__(self, model: nn.Module, blocks: List[nn.Module], device) -> None:
        inside = {id(t) for b in blocks for t in list(b.parameters()) + list(b.buffers())}
        self.moved = []
        self.device = device
        for m in model.modules():
            for kind in ("_parameters", "_buffers"):
                for name, t in getattr(m, kind).items():
                    if t is not None and id(t) not in inside and t.device != torch.device(device):
                        self.moved.append((m, kind, name, t.device))
        self.moved_ids = set()

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


def _model_call_kwargs(model: nn.Module) -> Dict[str, object]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def _capture(model, blocks, batches, device):
    """The first block's (args, kwargs) for every batch, on ``device``."""
    captured = []

    def hook(module, args, kwargs):
        captured.append((_to(args, device), _to(kwargs, device)))
        raise _Stop

    extra = _model_call_kwargs(model)
    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with _OutsideBlocksOn(model, blocks, device):
            for ids, mask in batches:
                kwargs = dict(extra)
                if mask is not None:
                    kwargs["attention_mask"] = mask.to(device)
                try:
                    model(ids.to(device), **kwargs)
                except _Stop:
                    pass
                else:
                    raise ValueError("blocks: the first block was never called by the model's forward")
    finally:
        handle.remove()
    return captured


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = hidden
    return args, kwargs


def _run_block(block, inputs) -> List:
    """Runs the block on every captured input; returns the inputs of the next block."""
    outs = []
    for args, kwargs in inputs:
        out = block(*args, **kwargs)
        hidden = out[0] if isinstance(out, (tuple, list)) else out
        outs.append(_with_hidden(args, kwargs, hidden))
    return outs


class _TokenRows:
    """Turns a linear layer's input ``[..., in]`` into the rows of real (non-padding) tokens."""

    def __init__(self, token_masks: List[Optional[torch.Tensor]]) -> None:
        self.token_masks = token_masks
        self.current = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        mask = self.token_masks[self.current]
        if mask is not None and mask.numel() == rows.shape[0]:
            rows = rows[mask.to(rows.device)]
        return rows


def _run_block_with(block, inputs, token_rows: _TokenRows, hooks: Dict[nn.Module, Any]) -> List:
    """The block's outputs over the calibration inputs, with forward ``hooks`` ({module: hook}) attached meanwhile."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        outs = []
        for i, (args, kwargs) in enumerate(inputs):
            token_rows.current = i
            out = block(*args, **kwargs)
            hidden = out[0] if isinstance(out, (tuple, list)) else out
            outs.append(_with_hidden(args, kwargs, hidden))
        return outs
    finally:
        for h in handles:
            h.remove()


def _gather_stats(block, layers: List[_Layer], inputs, token_rows: _TokenRows, kind: str):
    """Forward the block over the calibration with hooks collecting each layer's statistic."""
    stats, hooks = {}, {}
    for l in layers:
        in_features = l.shape[1]
        dev = l.module.weight.device
        stats[l.name] = InputNorms(in_features, dev) if kind == "norms" else Hessian(in_features, dev)

        def hook(module, args, output, acc=stats[l.name]):
            acc.add(token_rows(args[0].detach()))

        hooks[l.module] = hook
    return stats, _run_block_with(block, inputs, token_rows, hooks)


def _measure_errors(block, layers, dense, inputs, token_rows):
    """Forward the pruned block; each layer's relative output error against its dense weight."""
    sums = {l.name: [0.0, 0.0] for l in layers}
    hooks = {}
    for l in layers:
        def hook(module, args, output, l=l):
            x = token_rows(args[0].detach())
            y = token_rows(output.detach())
            w = dense[l.name]
            ref = x @ w.to(x.dtype) if is_conv1d(module) else F.linear(x, w.to(x.dtype))
            if getattr(module, "bias", None) is not None:
                ref = ref + module.bias.to(x.dtype)
            diff = (ref.float() - y.float())
            sums[l.name][0] += float((diff * diff).sum())
            sums[l.name][1] += float((ref.float() * ref.float()).sum())

        hooks[l.module] = hook
    outs = _run_block_with(block, inputs, token_rows, hooks)
    return {k: (a / b if b > 0 else (0.0 if a == 0 else math.inf)) for k, (a, b) in sums.items()}, outs


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
    measure_errors: bool = True,
    prune_embeddings: bool = False,
    prune_lm_head: bool = False,
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
            needed for ``method="magnitude"`` without OWL.
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
            per layer); False leaves ``error`` NaN.
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

    Returns:
        a :class:`PruneReport` (per-layer sparsity and reconstruction error,
        time per block; ``print(report)`` shows a table).

    Raises:
        TypeError, ValueError, IndexError: bad arguments (naming the argument),
            raised before any weight changes.

    Example::

        >>> ids = tokenizer(texts, return_tensors="pt", padding=True)
        >>> report = fastprune.llm.prune(model, [ids], method="wanda", sparsity=0.5)
        >>> print(report)
    """
    # -- every check first: a bad call changes nothing ------------------------
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    method = _check_choice(method, METHODS, "method")
    mode = _check_choice(mode, _MODES, "mode")
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
    block_list = find_blocks(model, blocks)
    plan = _plan_layers(model, block_list)
    outside = _outside_layers(model, prune_embeddings, prune_lm_head)
    per_block, per_layer = _layer_targets(plan, sparsity, layer_sparsity, outside)
    if nm is not None:
        for layers in plan + [outside]:
            for l in layers:
                if l.shape[1] % nm[1]:
                    raise ValueError(
                        f"pattern={pattern!r}: M={nm[1]} does not divide the input dimension {l.shape[1]} of {l.name}"
                    )
    needs_data = method != "magnitude" or layer_sparsity == "owl"
    batches = normalize_calibration(calibration) if needs_data or calibration is not None else None
    if device is None:
        first = next(iter(block_list[0].parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device torch knows") from None
    check_model_has_data(model, device)
    if batches:
        check_calibration_fits(model, batches, calibration_labels(calibration, len(batches)))

    report = PruneReport(method=method, pattern=pattern, sparsity=sparsity, mode=mode)
    start = time.perf_counter()
    token_masks = [None if m is None else (m.reshape(-1) != 0) for _, m in batches] if batches else []
    token_rows = _TokenRows(token_masks)
    pairs, masks_out, labels = [], [], []
    # Where each mask ends up: with the weight, home after offloading or on `device`.
    finals = [(l, l.module.weight.device if offload else device) for layers in plan for l in layers]
    finals += [(l, l.module.weight.device) for l in outside]  # never moved
    store = _PackedStore(finals) if mode == "inplace" else None
    head = [l for l in outside if l.module is not _get_embeddings(model, "get_input_embeddings")]
    first = [l for l in outside if l not in head]

    def prune_outside(layers):
        for l in layers:
            keep = magnitude_mask(l.module.weight.detach(), per_layer.get(l.name, sparsity), nm)
            report.layers.append(LayerReport(l.name, None, l.shape, 1.0 - float(keep.sum()) / keep.numel(), math.nan))
            if mode == "reparam":  # torch-style: weight_orig keeps the dense values
                custom_from_mask(l.module, "weight", keep)
            else:
                l.module.weight.masked_fill_(~keep, 0)
                masks_out.append(store.put(l, _pack(keep)))
                pairs.append((l.module, "weight"))
                labels.append(l.name + ".weight")

    with torch.no_grad(), eval_mode(model):
        prune_outside(first)
        if layer_sparsity == "owl":
            ratios, params = [], []
            inputs = _capture(model, block_list, batches, device)
            bar = progress_bar(range(len(block_list)), enabled=bool(progress), desc="OWL outlier ratios", unit="block")
            for i in bar:
                home = _block_device(block_list[i])
                block = block_list[i].to(device) if offload or home != device else block_list[i]
                stats, inputs = _gather_stats(block, plan[i], inputs, token_rows, "norms")
                scores = [wanda_scores(weight_rows(l.module, l.module.weight), stats[l.name].norms()) for l in plan[i]]
                ratios.append(outlier_ratio(scores, owl_m) if scores else 0.0)
                params.append(sum(s.numel() for s in scores))
                del scores
                if offload and home is not None:
                    block.to(home)
            per_block = owl_sparsities(ratios, params, sparsity, owl_lambda)

        inputs = _capture(model, block_list, batches, device) if batches else None
        bar = progress_bar(range(len(block_list)), enabled=bool(progress), desc=f"{method} pruning", unit="block")
        for i in bar:
            t0 = time.perf_counter()
            home = _block_device(block_list[i])
            block = block_list[i]
            if offload or home != device:
                block.to(device)
            layers = plan[i]
            stats = {}
            if method != "magnitude":
                stats, _ = _gather_stats(block, layers, inputs, token_rows,
                                         "norms" if method == "wanda" else "hessian")
            dense = {}
            for l in layers:
                w = weight_rows(l.module, l.module.weight)
                if (inputs is not None and measure_errors) or (mode == "reparam" and method != "sparsegpt"):
                    dense[l.name] = l.module.weight.detach().clone()
                s = per_layer.get(l.name, per_block[i])
                if method == "magnitude":
                    keep = magnitude_mask(w.detach(), s, nm)
                    new_w = None
                elif method == "wanda":
                    keep = wanda_mask(w.detach(), stats[l.name].norms(), s, nm)
                    new_w = None
                else:
                    H = stats.pop(l.name).take()
                    new_w, keep = sparsegpt_prune(w.detach(), H, s, nm, blocksize, percdamp, l.name,
                                                  overwrite_h=True)
                    del H
                stats.pop(l.name, None)
                if new_w is not None:
                    w.copy_(new_w.to(w.dtype))
                w.masked_fill_(~keep, 0)
                report.layers.append(LayerReport(l.name, i, l.shape, 1.0 - float(keep.sum()) / keep.numel(), math.nan))
                keep_param = keep.t() if is_conv1d(l.module) else keep
                # Reparam needs the mask itself; in place, 1 bit per weight is all we keep.
                masks_out.append(keep_param if mode == "reparam" else store.put(l, _pack(keep_param)))
                pairs.append((l.module, "weight"))
                labels.append(l.name + ".weight")
            if inputs is not None and measure_errors:
                errors, inputs = _measure_errors(block, layers, dense, inputs, token_rows)
                for rep in report.layers[-len(layers):]:
                    rep.error = errors[rep.name]
            elif inputs is not None and i + 1 < len(block_list):
                inputs = _run_block(block, inputs)
            if mode == "reparam":
                for l, keep_param in zip(layers, masks_out[-len(layers):]):
                    if method != "sparsegpt":  # torch-style: weight_orig keeps the dense values
                        l.module.weight.copy_(dense[l.name])
                    custom_from_mask(l.module, "weight", keep_param)
                del masks_out[-len(layers):]  # the modules hold them now
            del dense
            if offload and home is not None and home != device:
                block.to(home)
            seconds = time.perf_counter() - t0
            report.blocks.append(BlockReport(i, per_block[i], seconds))
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(block_s=f"{seconds:.2f}")
        prune_outside(head)
        if mode == "inplace":
            # The slices of the store become the MaskSet's storage: the masks are never held twice.
            report.masks = MaskSet.from_masks(pairs, masks_out, labels=labels, packed=True, copy=False)
            del masks_out, store
    report.seconds = time.perf_counter() - start
    return report


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

    def __init__(self, finals: List[Tuple[_Layer, torch.device]]) -> None:
        sizes: Dict[torch.device, int] = {}
        self.where: Dict[str, Tuple[torch.device, int, int]] = {}
        for l, home in finals:
            n = packed_numel(l.module.weight.numel())
            start = sizes.get(home, 0)
            self.where[l.name] = (home, start, n)
            sizes[home] = start + n
        self.buffers = {dev: torch.empty(n, dtype=torch.uint8, device=dev) for dev, n in sizes.items()}

    def put(self, layer: _Layer, packed: torch.Tensor) -> torch.Tensor:
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


def _block_device(block: nn.Module):
    p = next(iter(block.parameters()), None)
    return p.device if p is not None else None
