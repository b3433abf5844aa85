"""Lean large-model mode: prune weights in place and keep 1-bit masks.

``torch.nn.utils.prune`` keeps, for every pruned tensor, the dense original
(``name_orig``), a mask in the weight's dtype (``name_mask``) and a recomputed
``name``: three times the weight's memory. That does not fit a billion-parameter
model on an ordinary machine. :func:`sparsify_` instead zeroes the pruned units
of the weights themselves and returns a :class:`MaskSet` holding one bit per
unit (N/8 bytes for N parameters), which is all that is needed to keep the
zeros in place during fine-tuning, to save and restore the pruning, or to
convert to the torch-style reparametrisation when some code expects it.

The masks of a parameter are remembered (weakly keyed by the parameter) so
that a later ``sparsify_`` on the same parameters counts ``amount`` among the
units still kept, as iterated pruning does in ``torch.nn.utils.prune``; every
:class:`MaskSet` that covers a parameter shares its one mask tensor.
"""
from __future__ import annotations

import numbers
import weakref
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.weak import WeakIdKeyDictionary

from . import ops
from .core import sharding
from .core.chunked_select import LocalComm, Piece, Selection, draw_seed
from .core.functional import custom_from_mask, remove
from .core.errors import PruningShapeError
from .core.targets import REFUSE, Target, check_scores_shape, pruning_hooks, resolve_scores, resolve_targets
from .core.validation import _compute_nparams_toprune, _validate_pruning_amount_init

__all__ = ["sparsify_", "MaskSet"]

Tensor = torch.Tensor

_METHODS = ("l1", "random")
_SCOPES = ("global", "local")
_STATE_FORMAT = "fastprune.MaskSet/1"

# Bytes of packed mask counted per bincount call (bounds its temporaries).
_POPCOUNT_CHUNK = 1 << 22


class _MaskCell:
    """The packed keep-mask of one parameter, shared by every MaskSet covering it.

    ``kept`` caches the number of set bits (``None`` = not known yet); it is
    reset whenever the bits change.
    """

    __slots__ = ("packed", "numel", "kept", "__weakref__")

    def __init__(self, packed: Tensor, numel: int, kept: Optional[int]) -> None:
        self.packed = packed
        self.numel = numel
        self.kept = kept

    def count_kept(self) -> int:
        if self.kept is None:
            self.kept = _popcount(self.packed)
        return self.kept


# Parameter -> _MaskCell. Keyed by identity and weakly, so a parameter that
# goes away takes its mask with it; the cell holds no reference back to the
# parameter, hence no cycle keeps either alive.
_CELLS = WeakIdKeyDictionary()

# Every MaskSet alive, weakly: make_permanent finds the hooks of a model's
# MaskSets here without the model having to know about them.
_LIVE = weakref.WeakSet()


def release_parameters(params: Iterable[Tensor]) -> int:
    """Detach every live MaskSet covering one of ``params`` and forget their masks.

    The weights keep their zeros. Returns how many MaskSets were detached.
    """
    params = list(params)
    ids = {id(p) for p in params}
    count = 0
    for ms in list(_LIVE):
        if any(id(t.param) in ids for t in ms._targets):
            ms.detach()
            count += 1
    for p in params:
        if p in _CELLS:
            del _CELLS[p]
    return count


_POPCOUNT_TABLE: Dict[torch.device, Tensor] = {}


def _popcount(packed: Tensor) -> int:
    """Number of set bits of a uint8 tensor, in bounded extra memory."""
    table = _POPCOUNT_TABLE.get(packed.device)
    if table is None:
        table = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64, device=packed.device)
        _POPCOUNT_TABLE[packed.device] = table
    flat = packed.reshape(-1)
    total = 0
    for start in range(0, flat.numel(), _POPCOUNT_CHUNK):
        hist = torch.bincount(flat[start:start + _POPCOUNT_CHUNK], minlength=256)
        total += int(torch.dot(hist, table))
    return total


def _fill_ones_packed(out: Tensor, numel: int) -> None:
    """All units kept; padding bits beyond ``numel`` stay 0 as the format requires."""
    out.fill_(0xFF)
    rem = numel % 8
    if rem:
        out[-1] = (1 << rem) - 1


def _clear_padding(packed: Tensor, numel: int) -> None:
    rem = numel % 8
    if rem and packed.numel():
        packed[-1] &= (1 << rem) - 1


# ----------------------------------------------------------------------------
# Argument resolution and validation (nothing is modified here)
# ----------------------------------------------------------------------------


def _check_choice(value, allowed, arg: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{arg} must be one of {allowed}, got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{arg}={value!r} is not supported; choose one of {allowed}")
    return value


def _resolve_scores(targets: List[Target], importance_scores, method: str) -> List[Tensor]:
    if importance_scores is not None and method == "random":
        raise ValueError("importance_scores cannot be combined with method='random'")
    scores = resolve_scores(targets, importance_scores, same_device=True)
    return [t.param.detach() if s is None else s for t, s in zip(targets, scores)]


def _existing_cells(targets: List[Target]) -> List[Optional[_MaskCell]]:
    cells = []
    for t in targets:
        cell = _CELLS.get(t.param)
        if cell is not None and (cell.numel != sharding.local_tensor(t.param).numel() or cell.packed.device != t.param.device):
            raise ValueError(
                f"parameters ({t.label}): its remembered mask was made for {cell.numel} units on "
                f"{cell.packed.device}, the parameter now has {t.param.numel()} on {t.param.device}; "
                "call .remove() on the MaskSet that pruned it to forget the old mask"
            )
        cells.append(cell)
    return cells


def _k_for(amount, selectable: int, what: str) -> int:
    k = _compute_nparams_toprune(amount, selectable)
    if k > selectable:
        raise ValueError(f"amount={amount} should be smaller than the number of {what}={selectable}")
    return int(k)


# ----------------------------------------------------------------------------
# Mask computation (allocates the new packed masks; parameters untouched)
# ----------------------------------------------------------------------------


def _l1_masks(scores, cells, ks, scope) -> List[Tensor]:
    existing = [None if c is None else c.packed for c in cells]
    if scope == "global":
        # One k-selection across every tensor: no concatenation, no |w| copy.
        return ops.kselect(scores, existing, ks[0], largest=False, exclude_masked=True, packed=True)
    outs = []
    for s, m, k in zip(scores, existing, ks):
        outs.extend(ops.kselect([s], [m], k, largest=False, exclude_masked=True, packed=True))
    return outs


def _random_masks(targets, cells, ks, scope, selectable) -> List[Tensor]:
    """Exactly k uniformly random units among those still kept, in bounded memory.

    One seed is drawn from torch's generator (so ``torch.manual_seed``
    decides); the key of a unit is a hash of that seed and of its global flat
    index (tensors in the order given, then row-major), and the ``k`` units of
    smallest key among the selectable ones are pruned. The keys are recomputed
    chunk by chunk by the radix selection, never stored for the whole model.
    Sharded parameters (:mod:`fastprune.distributed`) run this same selection
    on the same keys, so they get these units on any number of processes.
    """
    seed = draw_seed()
    pieces, base = [], 0
    for i, (t, c) in enumerate(zip(targets, cells)):
        shape = tuple(t.param.shape)
        eligible = None if c is None else c.packed
        group = 0 if scope == "global" else i
        pieces.append(Piece(None, eligible, True, True, shape, shape, (0,) * len(shape), base, group, t.param.device))
        base += t.param.numel()
    groups = [sum(selectable)] if scope == "global" else list(selectable)
    outs = [torch.empty(ops.packed_numel(t.param.numel()), dtype=torch.uint8, device=t.param.device) for t in targets]
    with torch.no_grad():
        sel = Selection(pieces, ks, groups, base, "random", LocalComm(targets[0].param.device), seed).run()
        sel.write(outs, packed=True)
    return outs


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


def sparsify_(
    parameters: Union[nn.Module, Iterable[Tuple[nn.Module, str]]],
    amount,
    *,
    method: str = "l1",
    scope: str = "global",
    importance_scores: Optional[Dict[Tuple[nn.Module, str], Tensor]] = None,
) -> "MaskSet":
    """Prune in place: zero the pruned units of the weights themselves.

    Args:
        parameters: an iterable of ``(module, name)`` pairs, or an ``nn.Module``
            (then the ``weight`` of every ``nn.Linear`` and ``nn.Conv*`` in it,
            tied weights once).
        amount: units to prune, an int (a count) or a float in [0, 1] (a
            fraction, rounded as ``torch.nn.utils.prune`` rounds). Counted among
            the units still kept when the parameters were sparsified before.
        method: ``"l1"`` prunes the units of smallest ``|score|`` (ties: lower
            flat index in the order given first, exactly as
            :func:`fastprune.global_unstructured`); ``"random"`` prunes units
            drawn uniformly at random (follows ``torch.manual_seed``: one seed
            drawn from torch's generator, hashed with each unit's global
            index; sharded parameters get the same units on any number of
            processes).
        scope: ``"global"`` ranks all tensors together, ``"local"`` prunes
            ``amount`` of each tensor separately.
        importance_scores: optional ``{(module, name): tensor}`` ranking the
            units instead of the weights (``l1`` only).

    Returns:
        a :class:`MaskSet` with the 1-bit masks. No ``_orig`` copy, no mask in
        the weight's dtype and no forward hook are created; the extra memory is
        the packed masks (N/8 bytes) plus the kernel's small working set.

    All arguments are checked before any weight changes; on an error nothing
    is modified.

    Raises:
        TypeError: ``parameters`` is neither a module nor an iterable of
            ``(module, name)`` pairs, a name is not a str or not a parameter,
            ``amount`` is not an int or float (``bool`` included), ``method``
            or ``scope`` is not a str, ``importance_scores`` is not a dict of
            real dense tensors, or a parameter is bool or complex.
        PruningNameError: a module has no attribute ``name``.
        PruningShapeError: an importance score is not shaped like its parameter.
        ValueError: ``amount`` out of range or more than the units still kept;
            an unknown ``method`` or ``scope``; ``importance_scores`` with
            ``method="random"`` or on another device than its parameter; a
            tensor listed twice (tied weights included); a tensor already
            pruned torch-style (``name_orig``) or without data (meta device,
            lazy, sparse); ``scope="global"`` over several devices; a
            parameter whose remembered mask no longer fits it.

    Example::

        model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        masks = prune.sparsify_(model, amount=0.5)
        assert masks.sparsity() == 0.5
        assert int((model[0].weight == 0).sum() + (model[2].weight == 0).sum()) == 60
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        masks.attach(optimizer)  # pruned weights stay 0 through training
    """
    parameters = sharding.replayable(parameters)
    # sharded parameters: an argument error on one process is raised on every process
    with sharding.same_error_everywhere(parameters, importance_scores):
        targets = resolve_targets(
            parameters, fn="sparsify_", accept_module=True, reparametrized=REFUSE, data=True, unique_tensors=True
        )
        _validate_pruning_amount_init(amount)
        method = _check_choice(method, _METHODS, "method")
        scope = _check_choice(scope, _SCOPES, "scope")
        scores = _resolve_scores(targets, importance_scores, method)
        cells = _existing_cells(targets)
        for t in targets:
            if t.param.dtype == torch.bool:
                raise TypeError(f"parameters ({t.label}): bool parameters cannot be sparsified")
        handler = sharding.sharded_handler([t.param for t in targets] + scores)
    if handler is not None:  # sharded parameters: counts and selection span every process
        packed = [None if c is None else c.packed for c in cells]
        new_masks = handler.sparsify_masks([t.param for t in targets], scores, packed, amount, method, scope)
        return _install_masks(targets, cells, new_masks, [None] * len(targets))

    selectable = [t.param.numel() if c is None else c.count_kept() for t, c in zip(targets, cells)]
    if scope == "global":
        devices = {t.param.device for t in targets}
        if len(devices) > 1:
            raise ValueError(
                f"parameters are on several devices ({sorted(map(str, devices))}); scope='global' needs one device"
            )
        ks = [_k_for(amount, sum(selectable), "parameters to prune")]
    else:
        ks = [_k_for(amount, n, f"units of {t.label} to prune") for t, n in zip(targets, selectable)]

    if not targets:
        return MaskSet([], [])
    if method == "l1":
        new_masks = _l1_masks(scores, cells, ks, scope)
    else:
        new_masks = _random_masks(targets, cells, ks, scope, selectable)

    kept = [selectable[i] - ks[i] if scope == "local" else (selectable[i] if ks[0] == 0 else None)
            for i in range(len(targets))]
    return _install_masks(targets, cells, new_masks, kept)


def _install_masks(targets, cells, new_masks, kept) -> "MaskSet":
    """Zero the weights where ``new_masks`` say so and remember the masks (nothing can fail before)."""
    with torch.no_grad():
        ops.apply_packed_mask_([sharding.local_tensor(t.param.detach()) for t in targets], new_masks)
    result_cells = []
    for t, cell, mask, kept in zip(targets, cells, new_masks, kept):
        if cell is None:
            cell = _MaskCell(mask, sharding.local_tensor(t.param).numel(), kept)
            _CELLS[t.param] = cell
        else:
            cell.packed.copy_(mask)  # in place: every MaskSet sharing the cell sees the new mask
            cell.kept = kept
        result_cells.append(cell)
    return MaskSet(targets, result_cells)


class _HookGroup:
    """Handles registered together, removed together (like torch's RemovableHandle)."""

    def __init__(self, handles, owner: "MaskSet") -> None:
        self._handles = list(handles)
        self._owner = owner

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self in self._owner._hook_groups:
            self._owner._hook_groups.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class MaskSet:
    """1-bit keep-masks of in-place pruned parameters (returned by :func:`sparsify_`).

    Unit ``j`` of parameter ``i`` is kept where bit ``j % 8`` of byte ``j // 8``
    of ``masks[i]`` is 1 (the packed format of :mod:`fastprune.ops`).

    Keeping the zeros while training: an optimizer step moves pruned weights
    away from zero (momentum, weight decay, or any gradient). Either re-zero
    after each step with :meth:`attach` (``optimizer.register_step_post_hook``)
    or by calling :meth:`apply_` yourself, and/or zero the pruned units'
    gradients with :meth:`mask_gradients`. Both return a handle with
    ``remove()``; :meth:`detach` removes all of them.

    A MaskSet is made by :func:`sparsify_` (or by a feature built on it), not
    constructed by hand. Each mask is looked up through its module when used,
    so a parameter replaced after pruning (``load_state_dict(assign=True)``)
    is followed.

    Args:
        targets (sequence of Target): the resolved ``(module, name)`` targets,
            from :mod:`fastprune.core.targets`.
        cells (sequence): the shared packed mask of each target, in order.

    Example::

        model = nn.Linear(16, 4)
        masks = prune.sparsify_(model, amount=0.75)
        state = masks.state_dict()  # torch.save-able
        masks.load_state_dict(state)  # and zero the weights again
        hooks = masks.to_pruning()  # torch-style weight_orig / weight_mask
        assert prune.is_pruned(model)
    """

    def __init__(self, targets: Sequence[Target], cells: Sequence[_MaskCell]) -> None:
        self._targets = list(targets)
        self._cells = list(cells)
        self._hook_groups: List[_HookGroup] = []
        _LIVE.add(self)

    @classmethod
    def from_masks(
        cls,
        parameters: Iterable[Tuple[nn.Module, str]],
        masks: Sequence[Tensor],
        *,
        labels: Optional[Sequence[str]] = None,
        packed: bool = False,
        copy: bool = True,
    ) -> "MaskSet":
        """Prune in place with given keep-masks and return their :class:`MaskSet`.

        For pruning methods that choose their masks elsewhere (calibration-based
        LLM pruning, for instance) but want the lean 1-bit representation.

        Args:
            parameters: ``(module, name)`` pairs.
            masks: one mask per pair, shaped like the parameter (non-zero =
                keep), any dtype; or, with ``packed=True``, 1-bit packed
                ``uint8`` masks (the format of :attr:`masks`).
            labels: optional names for :attr:`names` (e.g. qualified names).
            packed: the masks are already packed.
            copy: with ``packed=True``, False makes the given tensors the
                MaskSet's own storage instead of copying them (their padding
                bits are cleared in place); the caller must not reuse them.
                For callers that built the packed masks for this purpose,
                so that they are not held twice.

        Returns:
            a :class:`MaskSet`; the weights are zeroed where the masks are 0. A
            parameter that already has a remembered mask keeps the units both
            masks keep.

        Raises:
            TypeError: a pair or a mask of the wrong type.
            ValueError: a mask's count or device does not match, the same
                tensor twice, a tensor already pruned torch-style.
            PruningShapeError: a mask of the wrong shape.
            Nothing is modified then.

        Example::

            lin = nn.Linear(8, 4)
            keep = lin.weight.abs() > 0.1
            ms = fastprune.MaskSet.from_masks([(lin, "weight")], [keep])
            assert bool((lin.weight[~keep] == 0).all())
        """
        if not isinstance(copy, bool):
            raise TypeError(f"copy must be a bool, got {type(copy).__name__}")
        targets = resolve_targets(
            parameters, fn="MaskSet.from_masks", reparametrized=REFUSE, data=True, unique_tensors=True
        )
        masks = list(masks)
        if len(masks) != len(targets):
            raise ValueError(f"masks: got {len(masks)} masks for {len(targets)} parameters")
        if labels is not None:
            labels = list(labels)
            if len(labels) != len(targets):
                raise ValueError(f"labels: got {len(labels)} labels for {len(targets)} parameters")
            for t, label in zip(targets, labels):
                t.label = str(label)
        for t, mask in zip(targets, masks):
            if packed:
                if not isinstance(mask, Tensor):
                    raise TypeError(f"masks ({t.label}) must be a torch.Tensor, got {type(mask).__name__}")
                if mask.dtype != torch.uint8 or mask.dim() != 1 or mask.numel() != ops.packed_numel(t.param.numel()):
                    raise ValueError(
                        f"masks ({t.label}): a packed mask must be a 1-d uint8 tensor of "
                        f"{ops.packed_numel(t.param.numel())} bytes"
                    )
            else:
                check_scores_shape(mask, t.param, f"masks ({t.label})")
            if mask.device != t.param.device:
                raise ValueError(f"masks ({t.label}) is on {mask.device}, the parameter on {t.param.device}")
        cells = _existing_cells(targets)
        bits = [(m.clone() if copy else m) if packed else ops.pack_mask(m) for m in masks]
        for i, (t, cell) in enumerate(zip(targets, cells)):
            _clear_padding(bits[i], t.param.numel())
            if cell is not None:
                bits[i] = bits[i] & cell.packed
        return _install_masks(targets, cells, bits, [None] * len(targets))

    # -- contents --------------------------------------------------------

    def __len__(self) -> int:
        return len(self._targets)

    def __iter__(self) -> Iterator[Tuple[nn.Module, str, Tensor]]:
        """``(module, name, packed_mask)`` for every parameter, in order."""
        for t, c in zip(self._targets, self._cells):
            yield t.module, t.name, c.packed

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} tensors, {self.numel()} units, sparsity={self.sparsity():.4f}, {self.nbytes} bytes)"

    @property
    def names(self) -> List[str]:
        """A label per parameter: the qualified name when built from a module."""
        return [t.label for t in self._targets]

    @property
    def parameters(self) -> List[Tuple[nn.Module, str]]:
        """The ``(module, name)`` pair of every parameter, in order."""
        return [(t.module, t.name) for t in self._targets]

    @property
    def masks(self) -> List[Tensor]:
        """The packed uint8 masks (shared, live: do not write to them)."""
        return [c.packed for c in self._cells]

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed masks (one bit per unit, rounded up per tensor)."""
        return sum(c.packed.numel() for c in self._cells)

    def _index(self, key) -> int:
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            if not -len(self) <= key < len(self):
                raise IndexError(f"index {key} out of range for a MaskSet of {len(self)} tensors")
            return int(key) % len(self)
        if isinstance(key, str):
            for i, t in enumerate(self._targets):
                if t.label == key:
                    return i
            raise KeyError(f"no parameter labelled {key!r} in this MaskSet; labels: {self.names}")
        if isinstance(key, tuple) and len(key) == 2:
            for i, t in enumerate(self._targets):
                if t.module is key[0] and t.name == key[1]:
                    return i
            raise KeyError(f"({type(key[0]).__name__}, {key[1]!r}) is not in this MaskSet")
        raise TypeError(f"key must be an int, a label or a (module, name) pair, got {type(key).__name__}")

    def _live(self, i: int) -> Tensor:
        """The tensor mask ``i`` belongs to, looked up through its module now.

        A parameter replaced after pruning (``load_state_dict(assign=True)``,
        a conversion that swaps parameters) is followed, never the detached old
        tensor; the mask is re-registered for the new parameter so that a later
        :func:`sparsify_` keeps counting among the kept units.
        """
        t, c = self._targets[i], self._cells[i]
        live = t.module._parameters.get(t.name + "_orig" if t.reparametrized else t.name)  # see targets.dense_tensor
        if live is None:
            raise ValueError(f"{t.label}: {type(t.module).__name__} no longer has a parameter {t.name!r}")
        local = sharding.local_tensor(live)
        if local.numel() != c.numel or local.device != c.packed.device:
            raise ValueError(
                f"{t.label}: the parameter was replaced by one with {local.numel()} units on {local.device}; "
                f"this MaskSet's mask covers {c.numel} units on {c.packed.device}"
            )
        if not t.reparametrized and _CELLS.get(live) is not c:
            _CELLS[live] = c
        return live

    def mask(self, key, dtype: torch.dtype = torch.bool) -> Tensor:
        """The unpacked keep-mask of one parameter, shaped like it, in ``dtype``.

        Args:
            key (int, str or (module, name)): the parameter, by position, by
                label (see :attr:`names`) or by pair.
            dtype (torch.dtype, optional): dtype of the result (1 = kept).
                Default: ``torch.bool``.

        Returns:
            torch.Tensor: a new tensor shaped like the parameter.

        Raises:
            IndexError: an int ``key`` out of range.
            KeyError: a label or pair that is not in this MaskSet.
            TypeError: ``key`` of another type.
            ValueError: the module no longer has the parameter, or it was
                replaced by one of another size or device.
        """
        i = self._index(key)
        t, c = self._targets[i], self._cells[i]
        live = self._live(i)
        local = sharding.local_tensor(live)
        return sharding.wrap_like(live, ops.unpack_mask(c.packed, c.numel, dtype).reshape(local.shape))

    def numel(self) -> int:
        """Units covered by the masks: the total number of elements of the parameters.

        Returns:
            int: the sum of the parameters' ``numel()``.
        """
        return sum(c.numel for c in self._cells)

    def kept_counts(self) -> List[int]:
        """Units kept (mask bit 1) in each parameter, in order.

        Returns:
            list of int: one count per parameter.
        """
        return [c.count_kept() for c in self._cells]

    def num_pruned(self) -> int:
        """Units pruned across all parameters.

        Returns:
            int: :meth:`numel` minus the units kept.
        """
        return self.numel() - sum(self.kept_counts())

    def sparsity(self, key=None) -> float:
        """Fraction of units pruned: of all parameters, or of the one ``key`` names.

        Args:
            key (int, str or (module, name), optional): one parameter, as in
                :meth:`mask`. Default: all parameters together.

        Returns:
            float: in [0, 1]; 0.0 for parameters without elements.

        Raises:
            IndexError, KeyError, TypeError: ``key`` as in :meth:`mask`.
        """
        if key is not None:
            c = self._cells[self._index(key)]
            return 1.0 - c.count_kept() / c.numel if c.numel else 0.0
        total = self.numel()
        return self.num_pruned() / total if total else 0.0

    def sparsities(self) -> Dict[str, float]:
        """The fraction pruned of every parameter.

        Returns:
            dict: ``{label: fraction pruned}``, labels as in :attr:`names`.
        """
        return {t.label: (1.0 - c.count_kept() / c.numel if c.numel else 0.0) for t, c in zip(self._targets, self._cells)}

    # -- keeping the zeros ------------------------------------------------

    def apply_(self) -> "MaskSet":
        """Zero every pruned unit again (one multi-tensor kernel call).

        Call after anything that may have written into pruned units (an
        optimizer step, a weight load); :meth:`attach` does it after every step.

        Returns:
            MaskSet: ``self``.

        Raises:
            ValueError: a module no longer has its parameter, or it was
                replaced by one of another size or device.
        """
        if not self._targets:  # the dispatcher cannot route an op with no tensor at all
            return self
        with torch.no_grad():
            ops.apply_packed_mask_(
                [sharding.local_tensor(self._live(i).detach()) for i in range(len(self))],
                [c.packed for c in self._cells],
            )
        return self

    def mask_gradients(self) -> _HookGroup:
        """Zero the pruned units of each parameter's ``.grad`` once it is accumulated.

        With plain SGD (no momentum, no weight decay) this alone keeps the
        zeros; stateful optimizers need :meth:`attach` too. Parameters that do
        not require grad get no hook.

        Returns:
            handle: its ``remove()`` removes the hooks this call installed
            (also usable as a context manager).

        Raises:
            ValueError: a module no longer has its parameter, or it was
                replaced by one of another size or device.
        """
        handles = []
        for i, c in enumerate(self._cells):
            param = self._live(i)
            if not param.requires_grad:
                continue

            def hook(param, _cell=c):
                if param.grad is not None:
                    ops.apply_packed_mask_([sharding.local_tensor(param.grad)], [_cell.packed])

            handles.append(param.register_post_accumulate_grad_hook(hook))
        group = _HookGroup(handles, self)
        self._hook_groups.append(group)
        return group

    def attach(self, optimizer: torch.optim.Optimizer, mask_gradients: bool = True) -> _HookGroup:
        """Re-apply the masks after every ``optimizer.step()`` (and mask gradients).

        Args:
            optimizer (torch.optim.Optimizer): the optimizer training the
                parameters; a step post-hook calls :meth:`apply_`.
            mask_gradients (bool, optional): also zero the pruned units of the
                gradients, as :meth:`mask_gradients`. Default: ``True``.

        Returns:
            handle: its ``remove()`` removes all the hooks this call installed.

        Raises:
            TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.
            ValueError: a module no longer has its parameter, or it was
                replaced by one of another size or device.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        handles = [optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply_())]
        if mask_gradients:
            inner = self.mask_gradients()
            handles.extend(inner._handles)
            self._hook_groups.remove(inner)
        group = _HookGroup(handles, self)
        self._hook_groups.append(group)
        return group

    def detach(self) -> None:
        """Remove every gradient and optimizer hook this MaskSet installed."""
        for group in list(self._hook_groups):
            group.remove()

    def remove(self) -> None:
        """Detach the hooks and forget the masks; the weights keep their zeros.

        A later :func:`sparsify_` on these parameters then starts afresh
        (already-zero weights rank lowest under ``"l1"``).
        """
        self.detach()
        for t, c in zip(self._targets, self._cells):
            param = t.module._parameters.get(t.name + "_orig" if t.reparametrized else t.name)
            if param is not None and _CELLS.get(param) is c:
                del _CELLS[param]

    # -- persistence ------------------------------------------------------

    def state_dict(self) -> Dict[str, object]:
        """Masks (packed, copied), labels and shapes; ``torch.save``-able.

        Returns:
            dict: with keys ``"format"``, ``"names"``, ``"shapes"`` and
            ``"masks"`` (one 1-d ``uint8`` tensor per parameter).

        Raises:
            ValueError: a module no longer has its parameter, or it was
                replaced by one of another size or device.
        """
        return {
            "format": _STATE_FORMAT,
            "names": self.names,
            "shapes": [tuple(self._live(i).shape) for i in range(len(self))],
            "masks": [sharding.mask_state(self._live(i), c.packed, c.numel) for i, c in enumerate(self._cells)],
        }

    def load_state_dict(self, state_dict, strict: bool = True, apply: bool = True) -> "MaskSet":
        """Load masks saved by :meth:`state_dict`, then (``apply``) zero the weights.

        Every check runs before any mask or weight changes.

        Args:
            state_dict (dict): what :meth:`state_dict` returned, for the same
                parameters in the same order.
            strict (bool, optional): also require the labels to match.
                Default: ``True``.
            apply (bool, optional): zero the pruned units of the weights with
                :meth:`apply_` once loaded. Default: ``True``.

        Returns:
            MaskSet: ``self``.

        Raises:
            TypeError: ``state_dict`` is not a dict, or a mask is not a 1-d
                ``uint8`` tensor.
            ValueError: keys missing, another format, another number of masks,
                labels that differ (with ``strict``), a shape or a mask size
                that does not match its parameter.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("format", "shapes", "masks") if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing}; it was not made by MaskSet.state_dict()")
        if state_dict["format"] != _STATE_FORMAT:
            raise ValueError(f"state_dict has format {state_dict['format']!r}, expected {_STATE_FORMAT!r}")
        shapes, masks = list(state_dict["shapes"]), list(state_dict["masks"])
        if len(shapes) != len(self) or len(masks) != len(self):
            raise ValueError(f"state_dict holds {len(masks)} masks, this MaskSet has {len(self)} tensors")
        masks = [sharding.mask_from_state(self._live(i), m) for i, m in enumerate(masks)]
        if strict and list(state_dict.get("names", [])) != self.names:
            raise ValueError(
                f"state_dict labels {state_dict.get('names')} differ from this MaskSet's {self.names} (strict=True)"
            )
        for i, (t, shape, m) in enumerate(zip(self._targets, shapes, masks)):
            live = self._live(i)
            if tuple(shape) != tuple(live.shape):
                raise PruningShapeError(f"state_dict['shapes'][{i}]={tuple(shape)} does not match {t.label} {tuple(live.shape)}")
            if not isinstance(m, Tensor) or m.dtype != torch.uint8 or m.dim() != 1:
                raise TypeError(f"state_dict['masks'][{i}] must be a 1-d uint8 tensor")
            if m.numel() != ops.packed_numel(sharding.local_tensor(live).numel()):
                raise ValueError(
                    f"state_dict['masks'][{i}] has {m.numel()} bytes, "
                    f"{t.label} needs {ops.packed_numel(sharding.local_tensor(live).numel())}"
                )
        for c, m in zip(self._cells, masks):
            c.packed.copy_(m)
            _clear_padding(c.packed, c.numel)
            c.kept = None
        if apply:
            self.apply_()
        return self

    # -- torch-style reparametrisation -------------------------------------

    def to_pruning(self) -> List[object]:
        """Install ``name_orig`` / ``name_mask`` / ``CustomFromMask`` on every parameter.

        For code that expects ``torch.nn.utils.prune``'s reparametrisation
        (``prune.is_pruned``, ``prune.remove``...). ``name_orig`` is the very
        Parameter this MaskSet holds, so :meth:`apply_` and the gradient hooks
        keep working; the masks are unpacked into the weights' dtype, as
        torch stores them. All parameters are converted or none.

        Returns:
            list: the installed pruning hooks, one per parameter.

        Raises:
            ValueError: a parameter is already in the torch-style layout, or
                no longer matches its mask.
        """
        for i, t in enumerate(self._targets):
            if t.reparametrized or pruning_hooks(t.module, t.name):
                raise ValueError(
                    f"{t.label}: {type(t.module).__name__}.{t.name} is no longer a plain parameter "
                    "(already in the torch-style layout)"
                )
            self._live(i)
        done = []
        try:
            for i, t in enumerate(self._targets):
                custom_from_mask(t.module, t.name, self.mask(i, dtype=self._live(i).dtype))
                done.append(t)
        except BaseException:
            # orig is already zeroed where the mask is 0, so remove() restores the weight exactly.
            for t in reversed(done):
                remove(t.module, t.name)
            raise
        hooks = []
        for t in self._targets:
            for h in t.module._forward_pre_hooks.values():
                if getattr(h, "_tensor_name", None) == t.name:
                    hooks.append(h)
        return hooks
