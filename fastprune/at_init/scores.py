"""Importance scores for pruning at initialisation.

Every public function returns ``{(module, name): score_tensor}``, the dict that
``fastprune.global_unstructured(..., importance_scores=...)`` takes: units with
the smallest ``|score|`` are pruned first.

The scores are computed without touching the model: the forward passes run
through :func:`torch.func.functional_call` on substituted tensors, so weights,
``.grad``, buffers (e.g. BatchNorm running statistics) and the cached pruned
attribute (``module.weight`` of a pruned module) are left exactly as they were.

``masks`` (optional, ``{(module, name): keep_mask}``) replaces the masks the
modules carry; without it a pruned module's ``name_mask`` is used and an
unpruned tensor counts as all-ones. The *dense* weights of a pruned tensor are
its ``name_orig`` parameter.
"""
from __future__ import annotations

import functools
import warnings

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..core.targets import Target, eval_mode, resolve_masks, resolve_targets

__all__ = ["snip_scores", "force_scores", "synflow_scores", "magnitude_scores"]

Param = Tuple[nn.Module, str]
ScoreDict = Dict[Param, Tensor]


# ---------------------------------------------------------------------------
# parameter resolution (shared with fastprune.at_init and fastprune.lottery)
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# data handling
# ---------------------------------------------------------------------------

def _batches(data: Any) -> List[Tuple[Any, Any]]:
    """Read ``data`` once into a list of ``(inputs, targets)`` pairs.

    A bare ``(inputs, targets)`` pair of tensors is accepted as one batch, since
    iterating it would otherwise split the inputs tensor row by row.
    """
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], Tensor)
        and isinstance(data[1], Tensor)
    ):
        return [(data[0], data[1])]
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError("data must be an iterable of (inputs, targets) batches")
    batches = []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(
                f"data must yield (inputs, targets) pairs, got an item of type {type(batch).__name__}"
            )
        batches.append((batch[0], batch[1]))
    if not batches:
        raise ValueError("data is empty: at least one (inputs, targets) batch is needed")
    return batches


# ---------------------------------------------------------------------------
# running the model on substituted tensors
# ---------------------------------------------------------------------------

class _Substituted:
    """Calls ``model`` with some parameters/buffers replaced, leaving the model untouched.

    Buffers are always replaced by copies so that in-place updates during the
    forward (BatchNorm running statistics) land on the copies. The pruning
    forward pre-hooks write ``module.name`` as a side effect; those cached
    attributes are put back on exit.
    """

    def __init__(self, model: nn.Module, subst: Dict[str, Tensor]):
        self.model = model
        self.subst = dict(subst)
        for qual, buf in model.named_buffers():
            if qual not in self.subst and buf is not None:
                self.subst[qual] = buf.clone()
        self._saved = []

    def __enter__(self):
        for module in self.model.modules():
            for key in list(module._parameters):
                if key.endswith("_orig"):
                    base = key[: -len("_orig")]
                    if base in module.__dict__:
                        self._saved.append((module, base, module.__dict__[base]))
        return self

    def __call__(self, *args):
        return functional_call(self.model, self.subst, args)

    def __exit__(self, *exc):
        for module, base, value in self._saved:
            module.__dict__[base] = value
        return False


def _effective_leaves(targets, masks, transform: Callable[[Tensor], Tensor]):
    """Leaf tensors ``transform(dense) * mask`` standing in for each target's effective weight."""
    leaves, subst = [], {}
    for t, m in zip(targets, masks):
        dense = transform(t.dense.detach())
        eff = dense * m.to(dense.dtype) if m is not None else dense.clone()
        eff.requires_grad_(True)
        leaves.append(eff)
        if t.reparametrized:
            # The pruning hook recomputes name = name_orig * name_mask; feeding the
            # effective weight as name_orig with a ones mask keeps the hook in play.
            subst[t.prefix + t.name + "_orig"] = eff
            subst[t.prefix + t.name + "_mask"] = torch.ones_like(eff)
        else:
            subst[t.prefix + t.name] = eff
    return leaves, subst


def _label(module: nn.Module, name: str) -> str:
    return f"{type(module).__name__}.{name}"


def _grads(output: Tensor, leaves: List[Tensor], targets, what: str) -> List[Tensor]:
    if not isinstance(output, Tensor) or output.numel() != 1:
        raise ValueError(f"{what} must be a tensor with a single element")
    if not torch.isfinite(output.detach()).all():
        raise ValueError(f"{what} is not finite ({output.item()})")
    if not output.requires_grad:
        raise ValueError(f"{what} does not depend on the parameters being scored")
    grads = torch.autograd.grad(output.reshape(()), leaves, allow_unused=True)
    unused = [_label(t.module, t.name) for g, t in zip(grads, targets) if g is None]
    if unused:
        raise ValueError(f"{what} does not depend on parameter(s) {', '.join(unused)}")
    return list(grads)


def _sensitivity(model, targets, masks, batches, loss_fn, require_signal=True) -> Tuple[List[Tensor], List[Tensor]]:
    """Gradient of the summed batch losses w.r.t. each effective weight, and the dense weights.

    ``require_signal`` rejects a loss whose gradient is 0 everywhere (it carries no
    ranking); iterative methods only ask this of the first, user-facing step,
    since a heavily pruned network may legitimately stop passing gradient.
    """
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(model(inputs), targets)")
    leaves, subst = _effective_leaves(targets, masks, lambda t: t)
    totals: List[Optional[Tensor]] = [None] * len(leaves)
    with _Substituted(model, subst) as run:
        for inputs, tgt in batches:
            loss = loss_fn(run(inputs), tgt)
            grads = _grads(loss, leaves, targets, "the loss returned by loss_fn")
            totals = [g if t is None else t + g for t, g in zip(totals, grads)]
    if require_signal and all(not bool(t.any()) for t in totals):
        raise ValueError(
            "the loss returned by loss_fn has zero gradient with respect to every parameter "
            "being scored; connection sensitivities would all be 0"
        )
    dense = [t.dense.detach() for t in targets]
    return totals, dense


def _as_dict(targets, tensors) -> ScoreDict:
    return {t.pair: x for t, x in zip(targets, tensors)}


# ---------------------------------------------------------------------------
# public score functions
# ---------------------------------------------------------------------------

def _snip_scores(model, loss_fn, batches, targets, masks, require_signal=True) -> List[Tensor]:
    grads, dense = _sensitivity(model, targets, masks, batches, loss_fn, require_signal)
    out = []
    for g, w, m in zip(grads, dense, masks):
        s = (g * w).abs()
        if m is not None:
            s = s * m.to(s.dtype)
        out.append(s)
    return out


def _force_scores(model, loss_fn, batches, targets, masks, require_signal=True) -> List[Tensor]:
    grads, dense = _sensitivity(model, targets, masks, batches, loss_fn, require_signal)
    return [(g * w).abs() for g, w in zip(grads, dense)]


def snip_scores(model: nn.Module, loss_fn: Callable, data: Any, parameters: Optional[Iterable[Param]] = None,
                masks: Optional[Dict[Param, Tensor]] = None) -> ScoreDict:
    """Connection sensitivity ``|dL/dc|`` of Lee et al. (2019), SNIP.

    With ``c`` the mask and ``w`` the dense weights, the network computes with
    ``c * w``, so ``dL/dc = dL/d(c*w) * w``. ``L`` is the sum of
    ``loss_fn(model(inputs), targets)`` over the batches of ``data``. Pruned
    units (mask 0) score 0. The forward passes run in the model's current mode
    (``train()`` as in the paper unless the caller changed it). The model is
    not modified.

    Args:
        model: the network.
        loss_fn: ``loss_fn(model(inputs), targets)`` returning a scalar.
        data: an iterable of ``(inputs, targets)`` batches, or one such pair.
        parameters: ``(module, name)`` pairs to score (default: the weight of
            every ``nn.Linear`` and ``nn.Conv*`` of ``model``). Tensors already
            pruned torch-style are scored on their dense ``name_orig``.
        masks: optional ``{(module, name): keep_mask}`` to score the network
            as pruned by these masks (default: the installed masks).

    Returns:
        ``{(module, name): scores}``, the dict that
        ``global_unstructured(..., importance_scores=...)`` takes.

    Raises:
        TypeError: ``model`` not a module, malformed ``parameters`` or ``masks``.
        ValueError: nothing to score, a module outside ``model``, a tensor
            listed twice, a mask key that is not scored, no gradient signal.
        PruningShapeError: a mask of the wrong shape.

    Example::

        scores = fastprune.scores.snip_scores(model, F.cross_entropy, [(x, y)])
        fastprune.global_unstructured(list(scores), fastprune.L1Unstructured,
                                      importance_scores=scores, amount=0.9)
    """
    targets = resolve_targets(parameters, fn="snip_scores", model=model, nonempty=True)
    m = resolve_masks(targets, masks)
    return _as_dict(targets, _snip_scores(model, loss_fn, _batches(data), targets, m))


def force_scores(model: nn.Module, loss_fn: Callable, data: Any, parameters: Optional[Iterable[Param]] = None,
                 masks: Optional[Dict[Param, Tensor]] = None) -> ScoreDict:
    """FORCE sensitivity ``|dL/d(c*w) * w|`` of de Jorge et al. (2021).

    Unlike :func:`snip_scores`, the gradient taken at the pruned network is
    multiplied by the *dense* weights and not by the mask, so a pruned
    connection whose gradient has grown scores above zero and can be brought
    back. The model is not modified.

    Args:
        model: the network.
        loss_fn: ``loss_fn(model(inputs), targets)`` returning a scalar.
        data: an iterable of ``(inputs, targets)`` batches, or one such pair.
        parameters: ``(module, name)`` pairs to score (default: the weight of
            every ``nn.Linear`` and ``nn.Conv*`` of ``model``). Tensors already
            pruned torch-style are scored on their dense ``name_orig``.
        masks: optional ``{(module, name): keep_mask}`` to score the network
            as pruned by these masks (default: the installed masks).

    Returns:
        ``{(module, name): scores}``.

    Raises:
        TypeError: ``model`` not a module, malformed ``parameters`` or ``masks``.
        ValueError: nothing to score, a module outside ``model``, a tensor
            listed twice, a mask key that is not scored, no gradient signal.
        PruningShapeError: a mask of the wrong shape.
    """
    targets = resolve_targets(parameters, fn="force_scores", model=model, nonempty=True)
    m = resolve_masks(targets, masks)
    return _as_dict(targets, _force_scores(model, loss_fn, _batches(data), targets, m))


def _check_example_input(example_input: Any) -> None:
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    if not example_input.is_floating_point():
        raise TypeError("example_input must be a floating-point tensor (SynFlow feeds all-ones inputs)")
    if example_input.numel() == 0:
        raise ValueError("example_input is empty")


def _synflow_scores(model, example_input, targets, masks) -> List[Tensor]:
    # Linearise the network: every floating tensor replaced by its absolute value,
    # in float64 because the synaptic-flow product spans many orders of magnitude.
    def linear(t: Tensor) -> Tensor:
        return t.abs().to(torch.float64) if t.is_floating_point() else t

    leaves, subst = _effective_leaves(targets, masks, linear)
    for qual, p in model.named_parameters():
        subst.setdefault(qual, linear(p.detach()))
    for qual, b in model.named_buffers():
        if qual not in subst and b is not None:
            subst[qual] = linear(b.detach())
    ones = torch.ones_like(example_input, dtype=torch.float64)
    with eval_mode(model), _Substituted(model, subst) as run:
        out = run(ones)
        if not isinstance(out, Tensor):
            raise TypeError("synflow needs a model whose forward returns a single tensor")
        grads = _grads(out.sum(), leaves, targets, "the synaptic flow R = sum(model(ones))")
    return [(g * leaf.detach()).abs() for g, leaf in zip(grads, leaves)]


def synflow_scores(model: nn.Module, example_input: Tensor, parameters: Optional[Iterable[Param]] = None,
                   masks: Optional[Dict[Param, Tensor]] = None) -> ScoreDict:
    """Synaptic-flow scores of Tanaka et al. (2020): ``|dR/dw * w|``.

    ``R`` is the sum of the output of the network with every parameter and
    buffer replaced by its absolute value (masked weights stay 0), fed with an
    all-ones tensor shaped like ``example_input``, in eval mode and float64.
    Data-free; the model itself is not modified (its signs never change).

    Args:
        model: a network whose forward returns one tensor.
        example_input: a floating-point tensor with the shape of one input batch.
        parameters: ``(module, name)`` pairs to score (default: the weight of
            every ``nn.Linear`` and ``nn.Conv*`` of ``model``). Tensors already
            pruned torch-style are scored on their dense ``name_orig``.
        masks: optional ``{(module, name): keep_mask}`` to score the network
            as pruned by these masks (default: the installed masks).

    Returns:
        ``{(module, name): scores}`` in float64.

    Raises:
        TypeError: ``example_input`` not a floating-point tensor, a forward
            that does not return one tensor, and as :func:`snip_scores`.
        ValueError: an empty ``example_input``, and as :func:`snip_scores`.
    """
    _check_example_input(example_input)
    targets = resolve_targets(parameters, fn="synflow_scores", model=model, nonempty=True)
    m = resolve_masks(targets, masks)
    return _as_dict(targets, _synflow_scores(model, example_input, targets, m))


def magnitude_scores(model: nn.Module, parameters: Optional[Iterable[Param]] = None,
                     masks: Optional[Dict[Param, Tensor]] = None) -> ScoreDict:
    """``|w|`` of the dense weights, masked units scoring 0 (magnitude pruning at initialisation).

    Args:
        model: the network.
        parameters: ``(module, name)`` pairs to score (default: the weight of
            every ``nn.Linear`` and ``nn.Conv*`` of ``model``). Tensors already
            pruned torch-style are scored on their dense ``name_orig``.
        masks: optional ``{(module, name): keep_mask}`` to score the network
            as pruned by these masks (default: the installed masks).

    Returns:
        ``{(module, name): |w|}``.

    Raises:
        TypeError: ``model`` not a module, malformed ``parameters`` or ``masks``.
        ValueError: nothing to score, a module outside ``model``, a tensor
            listed twice, a mask key that is not scored, no gradient signal.
        PruningShapeError: a mask of the wrong shape.
    """
    targets = resolve_targets(parameters, fn="magnitude_scores", model=model, nonempty=True)
    ms = resolve_masks(targets, masks)
    out = []
    for t, m in zip(targets, ms):
        s = t.dense.detach().abs()
        if m is not None:
            s = s * m.to(s.dtype)
        out.append(s)
    return _as_dict(targets, out)


def _deprecated(new: Callable, old_name: str) -> Callable:
    """``old_name`` kept working for existing code: warns, then calls ``new``."""

    @functools.wraps(new)
    def alias(*args, **kwargs):
        warnings.warn(
            f"fastprune.scores.{old_name} is deprecated; use fastprune.scores.{new.__name__} "
            f"(fastprune.{old_name} prunes, the *_scores functions only score)",
            DeprecationWarning,
            stacklevel=2,
        )
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated alias of :func:`{new.__name__}`."
    return alias


snip = _deprecated(snip_scores, "snip")
force = _deprecated(force_scores, "force")
synflow = _deprecated(synflow_scores, "synflow")
magnitude = _deprecated(magnitude_scores, "magnitude")
