"""Calibration statistics that rank channels and compensate their removal.

Two kinds, both keyed by names relative to the model the
:class:`~fastprune.structured.DependencyGraph` traced:

* per layer that reads channels (``nn.Linear``, transformers' ``Conv1D``,
  convolutions), running sums of its input over the calibration tokens:
  ``sum x_j^2`` (activation importance, Wanda-sp / FLAP) and ``sum x_j``
  (the mean input that bias compensation folds into the bias);
* per parameter, first-order saliencies ``|w * dL/dw|`` reduced along every
  dimension but one (Taylor importance, LLM-Pruner), from gradients
  accumulated over the calibration data.

:func:`collect_statistics` gathers them from example inputs in one forward
(and one backward for saliencies). A block walker that sees the calibration
data block by block fills a :class:`CalibrationStats` itself with
:class:`InputStats` and :func:`saliency_of`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..core.targets import eval_mode
from .trace import split_example_inputs

__all__ = ["InputStats", "CalibrationStats", "input_channel_dim", "register_input_channel_dim",
           "saliency_of", "collect_statistics", "causal_lm_loss"]

# (predicate(module), dim of the module's input that holds the channels its weight reads)
_INPUT_DIMS: List[Tuple[Callable[[nn.Module], bool], int]] = []


def register_input_channel_dim(predicate: Callable[[nn.Module], bool], dim: int) -> None:
    """Declare where the channels a kind of layer reads sit in its input.

    Args:
        predicate: ``module -> bool``, true for the layers concerned.
        dim: the channel dimension of their first input (negative counts from the end).

    Example::

        register_input_channel_dim(lambda m: isinstance(m, MyLinear), -1)
    """
    _INPUT_DIMS.append((predicate, int(dim)))


def _is_conv1d(m: nn.Module) -> bool:  # transformers' Conv1D (GPT-2): y = x @ W + b, W [in, out]
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


register_input_channel_dim(lambda m: isinstance(m, nn.Linear), -1)
register_input_channel_dim(_is_conv1d, -1)
register_input_channel_dim(lambda m: isinstance(m, nn.modules.conv._ConvNd), 1)


def input_channel_dim(module: nn.Module) -> Optional[int]:
    """The dimension of ``module``'s input that holds the channels it reads, or ``None``.

    Args:
        module: any module.

    Returns:
        int or None (a module whose inputs no registered rule describes).
    """
    for pred, dim in _INPUT_DIMS:
        if pred(module):
            return dim
    return None


class InputStats:
    """Running ``sum x_j^2``, ``sum x_j`` and token count of one layer's input channels (float64).

    It also serves as a statistic of :class:`fastprune.llm.walker.Walker`
    (``add(rows)``, ``buffers()``): the walker hands it the layer's input rows
    of real tokens, micro-batch by micro-batch.

    Args:
        channels: number of input channels.
        device: where the sums live.

    Example::

        >>> st = InputStats(4, "cpu"); st.add(torch.ones(3, 4), -1); st.norms()
        tensor([1.7321, 1.7321, 1.7321, 1.7321], dtype=torch.float64)
    """

    def __init__(self, channels: int, device="cpu"):
        self.sq = torch.zeros(channels, dtype=torch.float64, device=device)
        self.sum = torch.zeros(channels, dtype=torch.float64, device=device)
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)

    wants_output = False

    @property
    def count(self) -> int:
        """Number of tokens added."""
        return int(self.tokens)

    def buffers(self) -> List[torch.Tensor]:
        """The sums (for a reduction across processes)."""
        return [self.sq, self.sum, self.tokens]

    def add(self, x: torch.Tensor, dim: int = -1, token_mask: Optional[torch.Tensor] = None):
        """Accumulate an input ``x`` whose channels are along ``dim``.

        Args:
            x: the layer's input.
            dim: its channel dimension.
            token_mask: optional bool tensor with one entry per position of
                ``x`` outside the channel dim (padding = False, left out).
        """
        rows = x.detach().movedim(dim, -1).reshape(-1, x.shape[dim])
        if token_mask is not None and token_mask.numel() == rows.shape[0]:
            rows = rows[token_mask.reshape(-1).to(rows.device)]
        rows = rows.to(self.sq.device, torch.float64)
        self.sq += (rows * rows).sum(0)
        self.sum += rows.sum(0)
        self.tokens += rows.shape[0]

    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` over the calibration tokens."""
        return self.sq.sqrt()

    def mean(self) -> torch.Tensor:
        """Mean input of every channel (zero before any token was seen)."""
        return self.sum / self.tokens.clamp(min=1)


def saliency_of(param: torch.Tensor, grad: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """``|param * grad|`` summed along every dimension but one, for each dimension (float64, CPU).

    Args:
        param: a parameter.
        grad: ``dL/dparam`` (same shape), accumulated over the calibration data.

    Returns:
        tuple with one vector per dimension of ``param``.

    Example::

        >>> saliency_of(torch.ones(2, 3), torch.ones(2, 3))
        (tensor([3., 3.], dtype=torch.float64), tensor([2., 2., 2.], dtype=torch.float64))
    """
    s = (param.detach().double() * grad.detach().double()).abs()
    dims = range(s.dim())
    return tuple(s.sum(dim=[e for e in dims if e != d]).cpu() if s.dim() > 1 else s.cpu()
                 for d in dims)


@dataclass
class CalibrationStats:
    """Calibration statistics for importance and bias compensation.

    Attributes:
        inputs: module name -> :class:`InputStats` of its input channels.
        saliency: parameter name -> per-dimension sums of ``|w * dL/dw|``
            (see :func:`saliency_of`).
        loss: the calibration loss the saliencies come from, if any.

    Example::

        >>> stats = collect_statistics(model, (ids,), inputs=True)
        >>> fastprune.prune_channels(model, (ids,), 0.3, importance="activation", statistics=stats)
    """

    inputs: Dict[str, InputStats] = field(default_factory=dict)
    saliency: Dict[str, Tuple[torch.Tensor, ...]] = field(default_factory=dict)
    loss: Optional[float] = None

    def within(self, prefix: str) -> "CalibrationStats":
        """The statistics under ``prefix`` (a submodule's name), renamed relative to it.

        Args:
            prefix: a dotted module name, e.g. ``"model.layers.3"``.

        Returns:
            CalibrationStats.
        """
        p = prefix + "." if prefix else ""
        return CalibrationStats(
            {k[len(p):]: v for k, v in self.inputs.items() if k.startswith(p)},
            {k[len(p):]: v for k, v in self.saliency.items() if k.startswith(p)}, self.loss)


def _token_mask(args, kwargs) -> Optional[torch.Tensor]:
    mask = kwargs.get("attention_mask")
    ids = kwargs.get("input_ids", args[0] if args else None)
    if isinstance(mask, torch.Tensor) and isinstance(ids, torch.Tensor) and mask.shape == ids.shape:
        return mask.reshape(-1) != 0
    return None


def causal_lm_loss(model: nn.Module) -> Optional[Callable]:
    """The language-model loss for a transformers causal LM, or ``None`` for other models.

    The loss is the model's own next-token cross-entropy with ``labels = input_ids``
    (padding, where an attention mask is 0, is ignored).

    Args:
        model: any module.

    Returns:
        ``loss_fn(model, args, kwargs) -> scalar tensor``, or None.
    """
    name = type(model).__name__
    if not (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")):
        return None
    try:
        if "labels" not in inspect.signature(model.forward).parameters:
            return None
    except (TypeError, ValueError):
        return None

    def loss_fn(model, args, kwargs):
        kwargs = dict(kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        labels = ids.clone()
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
            labels = labels.masked_fill(mask == 0, -100)
        kwargs["labels"] = labels
        return model(*args, **kwargs).loss

    return loss_fn


def collect_statistics(model: nn.Module, example_inputs, *, inputs: bool = True,
                       saliency: bool = False, loss_fn: Optional[Callable] = None
                       ) -> CalibrationStats:
    """Calibration statistics of ``model`` on ``example_inputs``.

    The model runs in eval mode; its parameters, gradients and
    ``requires_grad`` flags are left as they were.

    Args:
        model: the model.
        example_inputs: as for :class:`~fastprune.structured.DependencyGraph`
            (a Tensor, a tuple, a dict or an ``(args, kwargs)`` pair); an
            ``attention_mask`` keyword leaves padding out of the input sums.
        inputs: gather every linear / conv layer's input sums (one forward without gradients).
        saliency: gather ``|w * dL/dw|`` (one forward and backward).
        loss_fn: ``loss_fn(model, args, kwargs) -> scalar`` for the saliencies;
            default: the language-model loss for causal LMs.

    Returns:
        CalibrationStats.

    Raises:
        ValueError: when saliencies are asked for a model that is not a
            causal LM and no ``loss_fn`` is given, or the loss is not a scalar.
    """
    args, kwargs = split_example_inputs(example_inputs)
    stats = CalibrationStats()
    if saliency:
        fn = loss_fn or causal_lm_loss(model)
        if fn is None:
            raise ValueError(
                f"importance='taylor' needs a loss: {type(model).__name__} is not a causal "
                "language model, pass loss_fn(model, args, kwargs) -> scalar")
        params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        flags = [p.requires_grad for _, p in params]
        try:
            for _, p in params:
                p.requires_grad_(True)
            with eval_mode(model), torch.enable_grad():
                loss = fn(model, args, kwargs)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise ValueError("loss_fn must return a scalar tensor")
                grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        finally:
            for (_, p), f in zip(params, flags):
                p.requires_grad_(f)
        stats.loss = float(loss.detach())
        names = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(n)
        for (n, p), g in zip(params, grads):
            sal = saliency_of(p, g if g is not None else torch.zeros_like(p))
            for alias in names.get(id(p), [n]):
                stats.saliency[alias] = sal
        del grads
    if inputs:
        mask = _token_mask(args, kwargs)
        handles = []
        for name, m in model.named_modules():
            dim = input_channel_dim(m)
            if dim is None:
                continue

            def hook(mod, a, out, name=name, dim=dim):
                x = a[0] if a else None
                if not isinstance(x, torch.Tensor) or x.dim() == 0:
                    return
                st = stats.inputs.get(name)
                if st is None:
                    st = stats.inputs[name] = InputStats(x.shape[dim], x.device)
                if st.sq.numel() == x.shape[dim]:
                    st.add(x, dim, mask)

            handles.append(m.register_forward_hook(hook))
        try:
            with eval_mode(model), torch.no_grad():
                model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
    return stats
