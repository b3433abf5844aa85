"""Lightning's ``ModelPruning`` callback, with every pruning call on fastprune.

``fastprune.lightning.ModelPruning`` takes the constructor arguments of
``lightning.pytorch.callbacks.ModelPruning`` and behaves the same way (pruning
at the end of each training or validation epoch, ``amount`` / ``apply_pruning``
/ ``use_lottery_ticket_hypothesis`` as values or per-epoch callables, the
lottery-ticket rewind with optional resampling, permanent pruning at the end of
training and in checkpoints, the same ``MisconfigurationException`` messages),
but the masks are computed and installed by fastprune: torch's built-in method
classes and the method names map to fastprune's, global pruning is
``fastprune.global_unstructured`` and the rewind is :class:`fastprune.LotteryTicket`.

One difference is deliberate: with ``use_lottery_ticket_hypothesis``, this
callback rewinds to the true initial weights. Lightning's own callback keeps
the initial weights by reference to their ``.data``, which training then
mutates in place, so from the second pruning epoch on it rewinds to (partly)
trained weights; the masks and weights of the two callbacks differ from then on.

It is written against the ``lightning`` package (``lightning.pytorch``), falling
back to the standalone ``pytorch_lightning``; install with
``pip install fastprune[lightning]``. ``import fastprune`` never imports it.
"""
from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn.utils.prune as _torch_prune
from torch import Tensor, nn

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks.callback import Callback
    from lightning.pytorch.core.module import LightningModule
    from lightning.pytorch.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.rank_zero import rank_zero_debug, rank_zero_only
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.callbacks.callback import Callback
        from pytorch_lightning.core.module import LightningModule
        from pytorch_lightning.utilities.exceptions import MisconfigurationException
        from pytorch_lightning.utilities.rank_zero import rank_zero_debug, rank_zero_only
    except ImportError as exc:
        raise ImportError(
            "fastprune.lightning needs Lightning: pip install 'fastprune[lightning]' (or lightning)"
        ) from exc

from .core import functional as _fp
from .core import methods as _methods
from .core.targets import is_reparametrized
from .lottery import LotteryTicket

__all__ = ["ModelPruning"]

log = logging.getLogger(__name__)

_PRUNING_FUNCTIONS: Dict[str, Callable] = {
    "ln_structured": _fp.ln_structured,
    "l1_unstructured": _fp.l1_unstructured,
    "random_structured": _fp.random_structured,
    "random_unstructured": _fp.random_unstructured,
}

_PRUNING_METHODS: Dict[str, type] = {
    "ln_structured": _methods.LnStructured,
    "l1_unstructured": _methods.L1Unstructured,
    "random_structured": _methods.RandomStructured,
    "random_unstructured": _methods.RandomUnstructured,
}

# torch's own classes passed by the user are swapped for fastprune's twins, so the
# installed hooks are fastprune's; user subclasses are kept (their compute_mask is theirs).
_TORCH_TWINS: Dict[type, type] = {
    _torch_prune.L1Unstructured: _methods.L1Unstructured,
    _torch_prune.RandomUnstructured: _methods.RandomUnstructured,
    _torch_prune.LnStructured: _methods.LnStructured,
    _torch_prune.RandomStructured: _methods.RandomStructured,
    _torch_prune.Identity: _methods.Identity,
}

_TorchBase = _torch_prune.BasePruningMethod
_PARAM_TUPLE = Tuple[nn.Module, str]
_PARAM_LIST = Sequence[_PARAM_TUPLE]
_MODULE_CONTAINERS = (LightningModule, nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _is_prunable(module: nn.Module, name: str) -> bool:
    if isinstance(module._parameters.get(name), nn.Parameter):
        return True
    return is_reparametrized(module, name)


class ModelPruning(Callback):
    """Prune parameters during training, on fastprune (see ``lightning.pytorch.callbacks.ModelPruning``).

    Args:
        pruning_fn: ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"``,
            ``"random_structured"``, or a ``BasePruningMethod`` subclass (fastprune's or
            torch's; only with ``use_global_unstructured=True``).
        parameters_to_prune: ``(module, name)`` pairs; empty means every ``parameter_names``
            parameter of every non-container module.
        parameter_names: subset of ``("weight", "bias")``.
        use_global_unstructured: prune all ``parameters_to_prune`` together.
        amount: float fraction, int count, or ``Callable[[epoch], int | float]``.
        apply_pruning: bool or ``Callable[[epoch], bool]``.
        make_pruning_permanent: remove the reparametrisation when training ends and
            save permanently pruned weights in checkpoints.
        use_lottery_ticket_hypothesis: bool or ``Callable[[epoch], bool]``: after pruning,
            rewind the surviving weights to their values at ``setup``.
        resample_parameters: rewind to fresh draws of each module's ``reset_parameters()``.
        pruning_dim: dimension for structured methods.
        pruning_norm: norm for ``ln_structured``.
        verbose: 0 silent, 1 overall sparsity, 2 per-parameter sparsity (logged).
        prune_on_train_epoch_end: prune at the end of the training epoch, else of validation.

    Global pruning runs :func:`fastprune.global_unstructured` (for L1, one
    k-selection over all tensors; ties: lower flat index pruned first), local
    pruning the fastprune function of each tensor. With
    ``use_lottery_ticket_hypothesis`` the rewind goes to the weights as they
    were at ``setup`` (see the module docstring for how this differs from
    Lightning's callback).

    Raises:
        MisconfigurationException: with Lightning's messages, for a
            ``parameter_names`` entry other than ``"weight"`` / ``"bias"``, an
            unknown ``pruning_fn`` name or an object that is neither a name nor
            a ``BasePruningMethod`` class, a structured method without
            ``pruning_dim`` (``ln_structured`` without ``pruning_norm``), a
            method class with ``use_global_unstructured=False``, a method that
            is not ``"unstructured"`` with ``use_global_unstructured=True``, an
            ``amount`` that is neither an int, a float nor a callable, or a
            ``verbose`` outside ``(0, 1, 2)``.

    Example::

        from fastprune.lightning import ModelPruning

        trainer = lightning.pytorch.Trainer(
            max_epochs=10,
            callbacks=[ModelPruning("l1_unstructured", amount=lambda epoch: 0.2 if epoch % 2 else 0)],
        )
        trainer.fit(lit_model)
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(
        self,
        pruning_fn: Union[Callable, str],
        parameters_to_prune: _PARAM_LIST = (),
        parameter_names: Optional[List[str]] = None,
        use_global_unstructured: bool = True,
        amount: Union[int, float, Callable[[int], Union[int, float]]] = 0.5,
        apply_pruning: Union[bool, Callable[[int], bool]] = True,
        make_pruning_permanent: bool = True,
        use_lottery_ticket_hypothesis: Union[bool, Callable[[int], bool]] = True,
        resample_parameters: bool = False,
        pruning_dim: Optional[int] = None,
        pruning_norm: Optional[int] = None,
        verbose: int = 0,
        prune_on_train_epoch_end: bool = True,
    ) -> None:
        self._use_global_unstructured = use_global_unstructured
        self._parameters_to_prune = parameters_to_prune
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._parameter_names = parameter_names or self.PARAMETER_NAMES
        self._global_kwargs: Dict[str, Any] = {}
        self._tickets: List[Tuple[LotteryTicket, bool]] = []
        self._pruning_method_name: Optional[str] = None

        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise MisconfigurationException(
                    f"The provided `parameter_names` name: {name} isn't in {self.PARAMETER_NAMES}"
                )

        if isinstance(pruning_fn, str):
            key = pruning_fn.lower()
            if key not in _PRUNING_FUNCTIONS:
                raise MisconfigurationException(
                    f"The provided `pruning_fn` {pruning_fn} isn't available in PyTorch's"
                    f" built-in functions: {list(_PRUNING_FUNCTIONS.keys())} "
                )
            kwargs: Dict[str, Any] = {}
            if key.endswith("_structured"):
                if pruning_dim is None:
                    raise MisconfigurationException(
                        "When requesting `structured` pruning, the `pruning_dim` should be provided."
                    )
                if key == "ln_structured":
                    if pruning_norm is None:
                        raise MisconfigurationException(
                            "When requesting `ln_structured` pruning, the `pruning_norm` should be provided."
                        )
                    kwargs["n"] = pruning_norm
                kwargs["dim"] = pruning_dim
            pruning_fn = self._create_pruning_fn(key, **kwargs)
        elif self._is_pruning_method(pruning_fn):
            if not use_global_unstructured:
                raise MisconfigurationException(
                    "PyTorch `BasePruningMethod` is currently only supported with `use_global_unstructured=True`."
                )
            pruning_fn = _TORCH_TWINS.get(pruning_fn, pruning_fn)
            self._pruning_method_name = pruning_fn.__name__
        else:
            raise MisconfigurationException(
                f"`pruning_fn` is expected to be a str in {list(_PRUNING_FUNCTIONS.keys())}"
                f" or a PyTorch `BasePruningMethod`. Found: {pruning_fn}."
                " HINT: if passing a `BasePruningMethod`, pass the class, not an instance"
            )

        if use_global_unstructured and getattr(pruning_fn, "PRUNING_TYPE", None) != "unstructured":
            raise MisconfigurationException(
                'Only the "unstructured" PRUNING_TYPE is supported with `use_global_unstructured=True`.'
                f" Found method {pruning_fn} of type {getattr(pruning_fn, 'PRUNING_TYPE', None)}. "
            )

        self.pruning_fn = pruning_fn
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent

        if isinstance(amount, bool) or not (isinstance(amount, (int, float)) or callable(amount)):
            raise MisconfigurationException(
                "`amount` should be provided and be either an int, a float or Callable function."
            )
        self.amount = amount

        if verbose not in (0, 1, 2):
            raise MisconfigurationException("`verbose` must be any of (0, 1, 2)")
        self._verbose = verbose

    # -- configuration ------------------------------------------------------

    def _create_pruning_fn(self, pruning_fn: str, **kwargs: Any) -> Callable:
        """The fastprune class (global pruning) or function (local pruning) called ``pruning_fn``."""
        if self._use_global_unstructured:
            method = _PRUNING_METHODS[pruning_fn]
            self._global_kwargs = kwargs
            self._pruning_method_name = method.__name__
            return method
        fn = _PRUNING_FUNCTIONS[pruning_fn]
        self._pruning_method_name = fn.__name__
        return partial(fn, **kwargs)

    @staticmethod
    def _is_pruning_method(method: Any) -> bool:
        return inspect.isclass(method) and issubclass(method, _TorchBase)

    def filter_parameters_to_prune(self, parameters_to_prune: _PARAM_LIST = ()) -> _PARAM_LIST:
        """Override to choose which ``(module, name)`` pairs get pruned.

        Called once in :meth:`setup`, after :meth:`sanitize_parameters_to_prune`.

        Args:
            parameters_to_prune (sequence of (module, name)): the candidates.

        Returns:
            sequence of (module, name): the pairs to prune (here: all of them).
        """
        return parameters_to_prune

    @staticmethod
    def sanitize_parameters_to_prune(
        pl_module: nn.Module, parameters_to_prune: _PARAM_LIST = (), parameter_names: Sequence[str] = ()
    ) -> _PARAM_LIST:
        """Check ``parameters_to_prune`` against the model, or build it from ``parameter_names``.

        Tensors that are already pruned (``name_orig`` present) count as parameters.

        Args:
            pl_module (nn.Module): the model.
            parameters_to_prune (sequence of (module, name), optional): pairs
                to check; empty means every ``parameter_names`` parameter of
                every module that is not a container.
            parameter_names (sequence of str, optional): names to collect
                when ``parameters_to_prune`` is empty. Default:
                ``("weight", "bias")``.

        Returns:
            list of (module, name): the pairs to prune.

        Raises:
            MisconfigurationException: ``parameters_to_prune`` is not a list
                or tuple of ``(nn.Module, str)`` pairs, or names modules or
                parameters the model does not have.
        """
        names = parameter_names or ModelPruning.PARAMETER_NAMES
        current_modules = [m for m in pl_module.modules() if not isinstance(m, _MODULE_CONTAINERS)]
        if not parameters_to_prune:
            return [(m, p) for p in names for m in current_modules if _is_prunable(m, p)]
        if (
            isinstance(parameters_to_prune, (list, tuple))
            and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in parameters_to_prune)
            and all(isinstance(a, nn.Module) and isinstance(b, str) for a, b in parameters_to_prune)
        ):
            ids = {id(m) for m in current_modules}
            missing_modules, missing_parameters = [], []
            for module, name in parameters_to_prune:
                if id(module) not in ids:
                    missing_modules.append(module)
                    continue
                if not hasattr(module, name):
                    missing_parameters.append(name)
            if missing_modules or missing_parameters:
                raise MisconfigurationException(
                    "Some provided `parameters_to_prune` don't exist in the model."
                    f" Found missing modules: {missing_modules} and missing parameters: {missing_parameters}"
                )
            return [tuple(p) for p in parameters_to_prune]
        raise MisconfigurationException(
            "The provided `parameters_to_prune` should either be list of tuple"
            " with 2 elements: (nn.Module, parameter_name_to_prune) or None"
        )

    # -- pruning ------------------------------------------------------------

    def _resolve_global_kwargs(self, amount: Union[int, float]) -> Dict[str, Any]:
        self._global_kwargs["amount"] = amount
        accepted = set(inspect.signature(self.pruning_fn).parameters)
        accepted.discard("self")
        return {k: v for k, v in self._global_kwargs.items() if k in accepted}

    def _apply_global_pruning(self, amount: Union[int, float]) -> None:
        _fp.global_unstructured(
            list(self._parameters_to_prune), pruning_method=self.pruning_fn, **self._resolve_global_kwargs(amount)
        )

    def _apply_local_pruning(self, amount: Union[int, float]) -> None:
        for module, name in self._parameters_to_prune:
            self.pruning_fn(module, name=name, amount=amount)

    @staticmethod
    def _get_pruned_stats(module: nn.Module, name: str) -> Tuple[int, int]:
        mask = getattr(module, name + "_mask", None)
        if mask is None:
            return 0, 1
        return int((mask == 0).sum()), mask.numel()

    def apply_pruning(self, amount: Union[int, float]) -> None:
        """Prune ``parameters_to_prune`` by ``amount`` (globally or tensor by tensor).

        Args:
            amount (int or float): a fraction of the still-unpruned units, or a
                count.

        Raises:
            TypeError, ValueError: as :func:`fastprune.global_unstructured` or
                the local pruning function (an invalid ``amount``, an
                ``amount`` larger than the units left).
        """
        prev = [self._get_pruned_stats(m, n) for m, n in self._parameters_to_prune] if self._verbose else None
        if self._use_global_unstructured:
            self._apply_global_pruning(amount)
        else:
            self._apply_local_pruning(amount)
        if self._verbose:
            curr = [self._get_pruned_stats(m, n) for m, n in self._parameters_to_prune]
            self._log_sparsity_stats(prev, curr, amount=amount)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Rewind the surviving weights to their values at ``setup`` (or resample them); masks stay."""
        for ticket, resample in self._tickets:
            ticket.rewind(resample=resample)

    def make_pruning_permanent(self, module: nn.Module) -> None:
        """Drop every pruning reparametrisation under ``module``, keeping the pruned values.

        Args:
            module (nn.Module): the model; every pruned tensor of it and of its
                submodules is made permanent with :func:`fastprune.remove`.
        """
        for _, sub in module.named_modules():
            for hook in list(sub._forward_pre_hooks.values()):
                if isinstance(hook, _TorchBase):
                    _fp.remove(sub, hook._tensor_name)

    @rank_zero_only
    def _log_sparsity_stats(self, prev: List[Tuple[int, int]], curr: List[Tuple[int, int]],
                            amount: Union[int, float] = 0) -> None:
        total = sum(t for _, t in curr)
        prev_zeros = sum(z for z, _ in prev)
        curr_zeros = sum(z for z, _ in curr)
        log.info(
            f"Applied `{self._pruning_method_name}`. Pruned:"
            f" {prev_zeros}/{total} ({prev_zeros / total:.2%}) ->"
            f" {curr_zeros}/{total} ({curr_zeros / total:.2%})"
        )
        if self._verbose == 2:
            for i, (module, name) in enumerate(self._parameters_to_prune):
                pz, ps = prev[i]
                cz, cs = curr[i]
                log.info(
                    f"Applied `{self._pruning_method_name}` to `{module!r}.{name}` with amount={amount}. Pruned:"
                    f" {pz} ({pz / ps:.2%}) -> {cz} ({cz / cs:.2%})"
                )

    def _run_pruning(self, current_epoch: int) -> None:
        prune = self._apply_pruning(current_epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(current_epoch) if callable(self.amount) else self.amount
        if not prune or not amount:
            return
        self.apply_pruning(amount)
        lth = self._use_lottery_ticket_hypothesis
        if lth(current_epoch) if callable(lth) else lth:
            self.apply_lottery_ticket_hypothesis()

    # -- Lightning hooks ----------------------------------------------------

    def setup(self, trainer: "pl.Trainer", pl_module: LightningModule, stage: str) -> None:
        """Lightning hook: resolve the parameters to prune and remember the initial weights.

        Args:
            trainer (Trainer): the trainer.
            pl_module (LightningModule): the model.
            stage (str): the stage being set up.

        Raises:
            MisconfigurationException: as :meth:`sanitize_parameters_to_prune`.
        """
        params = self.sanitize_parameters_to_prune(
            pl_module, self._parameters_to_prune, parameter_names=self._parameter_names
        )
        self._parameters_to_prune = list(self.filter_parameters_to_prune(params))
        self._tickets = []
        if self._use_lottery_ticket_hypothesis and self._parameters_to_prune:
            # Lightning resamples only modules that have reset_parameters(); the
            # others go back to their saved values.
            resample, plain = [], []
            for module, name in self._parameters_to_prune:
                can = self._resample_parameters and callable(getattr(module, "reset_parameters", None))
                (resample if can else plain).append((module, name))
            if resample:
                self._tickets.append((LotteryTicket(pl_module, resample), True))
            if plain:
                self._tickets.append((LotteryTicket(pl_module, plain), False))

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: LightningModule) -> None:
        """Lightning hook: prune (and rewind) when ``prune_on_train_epoch_end``.

        Args:
            trainer (Trainer): the trainer.
            pl_module (LightningModule): the model.
        """
        if self._prune_on_train_epoch_end:
            rank_zero_debug("`ModelPruning.on_train_epoch_end`. Applying pruning")
            self._run_pruning(pl_module.current_epoch)

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: LightningModule) -> None:
        """Lightning hook: prune (and rewind) unless ``prune_on_train_epoch_end``; never during sanity checks.

        Args:
            trainer (Trainer): the trainer.
            pl_module (LightningModule): the model.
        """
        if not trainer.sanity_checking and not self._prune_on_train_epoch_end:
            rank_zero_debug("`ModelPruning.on_validation_epoch_end`. Applying pruning")
            self._run_pruning(pl_module.current_epoch)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: LightningModule) -> None:
        """Lightning hook: make the pruning permanent when ``make_pruning_permanent``.

        Args:
            trainer (Trainer): the trainer.
            pl_module (LightningModule): the model.
        """
        if self._make_pruning_permanent:
            rank_zero_debug("`ModelPruning.on_train_end`. Pruning is made permanent for this checkpoint")
            self.make_pruning_permanent(pl_module)

    def _make_pruning_permanent_on_state_dict(self, pl_module: LightningModule) -> Dict[str, Any]:
        state = pl_module.state_dict()
        pruned = {k[: -len("_mask")] for k in state if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in state}
        out: Dict[str, Any] = OrderedDict()
        for key, value in state.items():
            if key.endswith("_orig") and key[: -len("_orig")] in pruned:
                base = key[: -len("_orig")]
                out[base] = value * state[base + "_mask"].to(dtype=value.dtype)
            elif key.endswith("_mask") and key[: -len("_mask")] in pruned:
                continue
            else:
                out[key] = value
        return OrderedDict((k, v.cpu() if isinstance(v, Tensor) else v) for k, v in out.items())

    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        """Lightning hook: with ``make_pruning_permanent``, save ``orig * mask`` as each pruned tensor.

        The model itself keeps its reparametrisation; only the checkpoint's
        ``state_dict`` holds the permanently pruned weights (without
        ``_orig`` / ``_mask`` entries), on the CPU.

        Args:
            trainer (Trainer): the trainer.
            pl_module (LightningModule): the model.
            checkpoint (dict): the checkpoint being saved, modified in place.
        """
        if self._make_pruning_permanent:
            rank_zero_debug("`ModelPruning.on_save_checkpoint`. Pruning is made permanent for this checkpoint")
            checkpoint["state_dict"] = self._make_pruning_permanent_on_state_dict(pl_module)
