"""Lottery tickets (Frankle & Carbin 2019) and iterative magnitude pruning.

:class:`LotteryTicket` remembers the values of some tensors (by default every
parameter of the model) and later writes them back into the *dense* tensors,
``name_orig`` of pruned ones, while the masks stay as they are: the pruned
network ``m * theta_0``. :func:`iterative_magnitude_pruning` runs the classic
train / prune / rewind loop on fastprune's global magnitude pruning.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .core.functional import global_unstructured, remove
from .core.methods import L1Unstructured
from .core.targets import dense_tensor, is_reparametrized, resolve_masks, resolve_targets, unpruned_count
from .schedule import pruning_schedule

__all__ = ["LotteryTicket", "iterative_magnitude_pruning", "pruning_schedule"]

Param = Tuple[nn.Module, str]


def _all_parameters(model: nn.Module) -> List[Param]:
    """Every parameter of the model as (module, name), ``x_orig`` reported as ``x``."""
    out = []
    for module in model.modules():
        for pname, p in module._parameters.items():
            if p is None:
                continue
            base = pname[: -len("_orig")] if pname.endswith("_orig") else pname
            out.append((module, base if base != pname and is_reparametrized(module, base) else pname))
    return out


def _dense_param(module: nn.Module, name: str) -> Tensor:
    if is_reparametrized(module, name):
        return dense_tensor(module, name)
    p = module._parameters.get(name)
    if p is None:
        if hasattr(module, name + "_mask"):
            raise ValueError(
                f"{type(module).__name__}.{name} is pruned in place without a {name}_orig copy; "
                "it cannot be rewound"
            )
        raise ValueError(f"{type(module).__name__} has no parameter named {name!r}")
    return p


def _refresh_pruned(module: nn.Module, name: str) -> None:
    """Recompute the cached ``module.name`` after ``name_orig`` changed, as the pre-hook would."""
    if is_reparametrized(module, name):
        for hook in module._forward_pre_hooks.values():
            if getattr(hook, "_tensor_name", None) == name and hasattr(hook, "apply_mask"):
                setattr(module, name, hook.apply_mask(module))
                return


class LotteryTicket:
    """Remember tensors now; rewind them later while keeping the masks.

    ``parameters`` is an iterable of ``(module, name)`` (default: every parameter
    of ``model``, biases and normalisation layers included, as in Frankle &
    Carbin). A name may refer to a tensor that is pruned later: rewinding writes
    into ``name_orig`` then. Copies are taken at construction and again by
    :meth:`capture` (call it after ``k`` training steps for late rewinding).

    Args:
        model (nn.Module): the network.
        parameters (Iterable of (module, name), optional): the tensors to
            remember; a name of a tensor pruned torch-style means its
            ``name_orig``. Default: every parameter of ``model``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``parameters`` is not
            an iterable of ``(nn.Module, str)`` pairs.
        ValueError: ``parameters`` is empty, names a tensor the module does not
            have, or one pruned in place without a ``name_orig`` copy.

    Example::

        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        ticket = prune.LotteryTicket(model)
        ...  # train
        prune.global_unstructured([(model[0], "weight"), (model[2], "weight")],
                                  pruning_method=prune.L1Unstructured, amount=0.8)
        ticket.rewind()  # surviving weights back to their initial values
    """

    def __init__(self, model: nn.Module, parameters: Optional[Iterable[Param]] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if parameters is None:
            params = _all_parameters(model)
        else:
            if isinstance(parameters, (str, bytes)) or not isinstance(parameters, Iterable):
                raise TypeError("parameters must be an iterable of (module, name) pairs")
            params = []
            for entry in parameters:
                if (not isinstance(entry, (tuple, list)) or len(entry) != 2
                        or not isinstance(entry[0], nn.Module) or not isinstance(entry[1], str)):
                    raise TypeError(f"parameters must contain (nn.Module, str) pairs, got {entry!r}")
                params.append((entry[0], entry[1]))
        if not params:
            raise ValueError("parameters is empty: nothing to remember")
        for module, name in params:
            _dense_param(module, name)
        self.model = model
        self.parameters: List[Param] = params
        self.initial: Dict[Param, Tensor] = {}
        self.capture()

    def capture(self) -> None:
        """Take (or retake) the copies that :meth:`rewind` restores.

        Raises:
            ValueError: a remembered tensor no longer exists on its module.
        """
        self.initial = {(m, n): _dense_param(m, n).detach().clone() for m, n in self.parameters}

    def _resampled(self, init: Union[bool, Callable[[Tensor], object]]) -> Dict[Param, Tensor]:
        fresh: Dict[Param, Tensor] = {}
        if callable(init):
            for key, saved in self.initial.items():
                t = torch.empty_like(saved)
                with torch.no_grad():
                    init(t)
                fresh[key] = t
            return fresh
        by_module: Dict[int, Tuple[nn.Module, List[str]]] = {}
        for m, n in self.parameters:
            by_module.setdefault(id(m), (m, []))[1].append(n)
        for module, names in by_module.values():
            if not callable(getattr(module, "reset_parameters", None)):
                raise ValueError(
                    f"resample=True needs reset_parameters() on {type(module).__name__}; "
                    "pass an init function instead, e.g. resample=torch.nn.init.xavier_normal_"
                )
            # Reset a plain copy so the module's own init scheme draws the new values.

            clone = copy.deepcopy(module)
            for key in [k for k in clone._parameters if k.endswith("_orig")]:
                base = key[: -len("_orig")]
                if base + "_mask" in clone._buffers:
                    remove(clone, base)
            clone.reset_parameters()
            for n in names:
                fresh[(module, n)] = clone._parameters[n].detach()
        return fresh

    def rewind(self, resample: Union[bool, Callable[[Tensor], object]] = False) -> None:
        """Write the remembered values back into the dense tensors; masks are kept.

        ``resample=True`` draws new values instead, with each module's
        ``reset_parameters()``; a callable (e.g. ``torch.nn.init.xavier_normal_``)
        is applied to fresh tensors of the right shape. The parameter objects stay
        the same (values are copied in place), so optimizers keep working; the
        cached pruned attribute (``module.<name>``) is recomputed.

        Args:
            resample (bool or Callable, optional): ``False`` restores the
                remembered values, ``True`` draws new ones with
                ``reset_parameters()``, a callable initialises fresh tensors in
                place. Default: ``False``.

        Raises:
            TypeError: ``resample`` is neither a bool nor callable.
            ValueError: a remembered tensor no longer exists or changed shape,
                or ``resample=True`` on a module without ``reset_parameters()``.
        """
        if not (isinstance(resample, bool) or callable(resample)):
            raise TypeError("resample must be a bool or an init function applied in place to a tensor")
        dsts = {key: _dense_param(*key) for key in self.initial}
        for key, dst in dsts.items():
            if dst.shape != self.initial[key].shape:
                raise ValueError(
                    f"{type(key[0]).__name__}.{key[1]} changed shape from {tuple(self.initial[key].shape)} "
                    f"to {tuple(dst.shape)}; it cannot be rewound"
                )
        src = self._resampled(resample) if resample else self.initial
        with torch.no_grad():
            for key, dst in dsts.items():
                dst.copy_(src[key])
        for module, name in self.initial:
            _refresh_pruned(module, name)


def iterative_magnitude_pruning(
    model: nn.Module,
    train_fn: Callable[[nn.Module, int], object],
    amount,
    rounds: int,
    schedule: str = "exponential",
    parameters: Optional[Iterable[Param]] = None,
    rewind: bool = True,
    resample: Union[bool, Callable[[Tensor], object]] = False,
    ticket: Optional[LotteryTicket] = None,
) -> List[float]:
    """Train, prune the smallest-magnitude weights globally, rewind; ``rounds`` times.

    ``train_fn(model, round_index)`` trains the model in place. After round
    ``r`` the cumulative sparsity of ``parameters`` (default: the weight of every
    Linear and Conv layer) follows :func:`pruning_schedule`; with ``rewind``
    the surviving weights go back to their values when the call started (or to
    those captured by ``ticket``), so the model ends as the lottery ticket,
    ready for its final training. Each round prunes with
    :func:`fastprune.global_unstructured` and ``L1Unstructured`` (the fast
    path: one k-selection over all tensors, ties to the lower flat index).

    Args:
        model (nn.Module): the network.
        train_fn (Callable): ``train_fn(model, round_index)``, trains in place.
        amount (int or float): the final target among the still-unpruned
            units, a fraction in [0, 1] or a count.
        rounds (int): number of train / prune rounds, ``>= 1``.
        schedule (str, optional): how the target is approached, see
            :func:`pruning_schedule`. Default: ``"exponential"``.
        parameters (Iterable of (module, name), optional): the tensors to
            prune. Default: the weight of every ``nn.Linear`` and ``nn.Conv*``.
        rewind (bool, optional): rewind after each pruning. Default: ``True``.
        resample (bool or Callable, optional): passed to
            :meth:`LotteryTicket.rewind`. Default: ``False``.
        ticket (LotteryTicket, optional): the values to rewind to. Default: a
            ticket of every parameter of ``model`` taken when the call starts.

    Returns:
        list of float: the sparsity of ``parameters`` after each round.

    Raises:
        TypeError: ``train_fn`` is not callable, ``rounds`` is not an int,
            ``ticket`` is not a ``LotteryTicket``, or ``model`` /
            ``parameters`` / ``amount`` / ``schedule`` of the wrong type.
        PruningNameError: a module has no attribute ``name``.
        ValueError: ``rounds < 1``, nothing to prune, a module outside
            ``model``, a tensor listed twice, an unknown ``schedule``, or
            ``amount`` out of range.

    Example::

        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

        def train(model, round_index):
            ...  # a few epochs

        history = prune.iterative_magnitude_pruning(model, train, amount=0.9, rounds=3)
        assert abs(history[-1] - 0.9) < 0.01
    """

    targets = resolve_targets(parameters, fn="iterative_magnitude_pruning", model=model, nonempty=True)
    if not callable(train_fn):
        raise TypeError("train_fn must be callable as train_fn(model, round_index)")
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise TypeError(f"rounds must be an int, got {type(rounds).__name__}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    masks = resolve_masks(targets, None)
    n_unpruned = unpruned_count(targets, masks)
    counts = pruning_schedule(n_unpruned, amount, rounds, schedule)
    if ticket is not None and not isinstance(ticket, LotteryTicket):
        raise TypeError("ticket must be a fastprune.LotteryTicket")
    if rewind and ticket is None:
        ticket = LotteryTicket(model)
    pairs = [t.pair for t in targets]
    total = sum(t.dense.numel() for t in targets)
    already = total - n_unpruned
    history, done = [], 0
    for r, target in enumerate(counts):
        train_fn(model, r)
        global_unstructured(pairs, pruning_method=L1Unstructured, amount=target - done)
        done = target
        if rewind:
            ticket.rewind(resample=resample)
        history.append((already + done) / total)
    return history
