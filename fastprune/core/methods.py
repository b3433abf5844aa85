"""Pruning methods: the classes of ``torch.nn.utils.prune`` with fast ``compute_mask``.

Each class here subclasses both fastprune's :class:`BasePruningMethod` and
torch's class of the same name, so ``isinstance`` checks written against torch
(including torch's own ``is_pruned``, ``remove`` and ``PruningContainer``) accept
fastprune's hooks, and a module pruned by one library can be handled by the
other. The speed lives in ``compute_mask`` (the k-selection and norm kernels),
so a subclass that overrides ``compute_mask`` gets exactly its own behaviour.
"""
from __future__ import annotations

import copy
import numbers

import torch
import torch.nn.utils.prune as torch_prune

from .. import ops
from .reparam import forget_deepcopy, install
from .sharding import PLAIN_TENSOR_TYPES, local_tensor, same_error_everywhere, sharded_handler
from .targets import check_module_and_name, check_scores_shape, detached_mask, known_binary, mark_binary, pruning_hooks
from .errors import PruningShapeError
from .validation import (
    _compute_nparams_toprune,
    _validate_pruning_amount,
    _validate_pruning_amount_init,
    _validate_pruning_dim,
    _validate_structured_pruning,
)

TorchBase = torch_prune.BasePruningMethod
TorchContainer = torch_prune.PruningContainer
# Captured at import so that patching torch's module (patch_torch) cannot make it recurse.
torch_compute_norm = torch_prune._compute_norm


# One marked scalar per dtype for plain CPU tensors, shared by the calls that
# make no tensor of their own kind: outside inference mode, with no
# TorchDispatchMode (fake tensors, tracing) or TorchFunctionMode active.
# Creating the scalar is about half of a ones_view's cost.
_CPU_ONES = {}


def ones_view(like: torch.Tensor) -> torch.Tensor:
    """A mask of ones shaped like ``like`` that costs no memory (stride 0)."""
    if (
        type(like) in PLAIN_TENSOR_TYPES
        and like.is_cpu
        and not torch.is_inference_mode_enabled()
        and not torch._C._len_torch_dispatch_stack()
        and not torch._C._is_torch_function_mode_enabled()
    ):
        one = _CPU_ONES.get(like.dtype)
        if one is None or one._version != 0:  # written through some view: no longer ones
            one = _CPU_ONES[like.dtype] = _marked_one(like)
    else:
        # Anything else gets its own scalar: a shared one would carry inference-mode
        # or fake-tensor state from the call that made it into later calls.
        one = _marked_one(like)
    return one.expand_as(like)


def _marked_one(like: torch.Tensor) -> torch.Tensor:
    one = like.new_ones(())  # like's dtype and device; new_ones parses no keyword arguments
    # is_ones_view() recognises the view by this mark on its base, with no tensor
    # op: reading the value back cost more than a small layer's whole
    # k-selection (and is a device sync on CUDA).
    one._fastprune_ones_view = True
    return one


def is_ones_view(mask: torch.Tensor) -> bool:
    """True for masks made by :func:`ones_view` (and not written since): the kernels then need no mask."""
    base = mask._base
    return base is not None and getattr(base, "_fastprune_ones_view", False) and base._version == 0


def has_soft_values(mask: torch.Tensor) -> bool:
    """True when ``mask`` holds values other than 0 and 1 (a scaling mask, or one loaded as 0.999).

    torch treats only units whose mask is exactly 1 as still prunable and keeps
    the other values (the new mask is multiplied into the old one), so such
    masks take torch's path; the fast paths assume 0/1 masks.
    """
    if mask.dtype == torch.bool or mask.device.type == "meta" or mask.numel() == 0 or known_binary(mask):
        return False
    return bool(((mask != 0) & (mask != 1)).any())


def _materialise(mask: torch.Tensor) -> torch.Tensor:
    # a ones_view holds ones: a fresh tensor of ones is cheaper than cloning the view
    return torch.ones_like(mask, memory_format=torch.contiguous_format) if is_ones_view(mask) else mask


class BasePruningMethod(TorchBase):
    """Abstract base class of pruning methods (torch's ``BasePruningMethod``).

    Subclasses implement ``compute_mask(t, default_mask)`` and set
    ``PRUNING_TYPE`` to ``"unstructured"``, ``"structured"`` or ``"global"``,
    exactly as for ``torch.nn.utils.prune.BasePruningMethod``. This class
    also derives from torch's, so a method built on it is accepted by torch's
    ``is_pruned``, ``remove`` and ``PruningContainer``, and a method built on
    torch's class is accepted by fastprune's functions.

    An instance is installed as a forward pre-hook of the module it prunes:
    before every forward it recomputes ``module.<name>`` as
    ``name_orig * name_mask``.

    Example::

        class EveryOther(prune.BasePruningMethod):
            PRUNING_TYPE = "unstructured"

            def compute_mask(self, t, default_mask):
                mask = default_mask.clone()
                mask.view(-1)[::2] = 0
                return mask

        m = nn.Linear(4, 3)
        EveryOther.apply(m, "weight")
        assert (m.weight.view(-1)[::2] == 0).all()
    """

    def __call__(self, module, inputs):
        """Forward pre-hook: store ``name_orig * name_mask`` as ``module.<name>``.

        Args:
            module (nn.Module): the module being run.
            inputs: its forward inputs (unused; part of the hook signature).
        """
        setattr(module, self._tensor_name, self.apply_mask(module))

    def apply_mask(self, module):
        """Multiply the pruned tensor's original by its mask.

        A mask in the weight's own dtype and shape is a plain ``orig * mask``;
        any other mask dtype (bool, uint8...) goes through the fused
        ``fastprune.ops.mask_mul`` kernel, which does not first convert the mask.

        Args:
            module (nn.Module): module holding ``name_orig`` and ``name_mask``.

        Returns:
            torch.Tensor: the masked tensor (differentiable w.r.t. ``name_orig``).

        Raises:
            AssertionError: this method was never applied to a tensor (as in torch).
        """
        if getattr(self, "_tensor_name", None) is None:
            raise AssertionError(f"Module {module} has to be pruned")
        mask = getattr(module, self._tensor_name + "_mask")
        orig = getattr(module, self._tensor_name + "_orig")
        if mask.dtype == orig.dtype and mask.shape == orig.shape:
            # A mask in the weight's own dtype needs one plain multiply, which
            # torch's mul already does in a single pass with C++ autograd; the
            # fused op would only add the Python autograd hop (~15 us a call).
            return orig * mask
        # bool / uint8 / other-dtype masks: the fused kernel multiplies without
        # first materialising mask.to(orig.dtype).
        return ops.mask_mul(orig, mask)

    @classmethod
    def apply(cls, module, name, *args, importance_scores=None, **kwargs):
        """Prune ``module.<name>`` with a new ``cls(*args, **kwargs)``, in place.

        Adds the buffer ``name_mask``, moves the parameter to ``name_orig`` and
        registers the method as a forward pre-hook (a tensor already pruned gets
        the method appended to its :class:`PruningContainer`, and the new mask is
        computed among the units still kept). The mask is computed before the
        module is touched: on any error the module is left exactly as it was.

        Args:
            module (nn.Module): module containing the tensor to prune.
            name (str): name of the parameter of ``module`` to prune.
            args: positional arguments of ``cls``'s constructor.
            importance_scores (torch.Tensor, optional): scores of the same
                shape as the parameter, ranking its units instead of the
                parameter's own values. Default: ``None``.
            kwargs: keyword arguments of ``cls``'s constructor.

        Returns:
            BasePruningMethod: the hook now installed on ``module`` (the
            method, or the container it was added to).

        Raises:
            TypeError: ``module`` is not an ``nn.Module``, ``name`` is not a str,
                ``module.<name>`` is not a parameter, ``importance_scores`` is
                not a tensor, or the constructor rejects its arguments.
            PruningNameError: ``module`` has no attribute ``name`` (an
                ``AttributeError``, as in torch).
            PruningShapeError: ``importance_scores`` is not shaped like the
                parameter.
            ValueError: ``amount`` out of range or larger than the units left,
                or any other error of ``compute_mask``.
            AssertionError: the tensor carries more than one pruning hook.
        """
        return apply_method(cls, module, name, args, kwargs, importance_scores)

    def prune(self, t, default_mask=None, importance_scores=None):
        """Return ``t`` multiplied by the mask this method computes for it.

        The module is not involved; nothing is installed.

        Args:
            t (torch.Tensor): tensor to prune.
            default_mask (torch.Tensor, optional): mask of a previous pruning
                of ``t`` (default: all ones).
            importance_scores (torch.Tensor, optional): scores ranking the
                units of ``t`` instead of ``t`` itself, of ``t``'s shape.

        Returns:
            torch.Tensor: ``t * compute_mask(importance_scores, default_mask)``.

        Raises:
            PruningShapeError: ``importance_scores`` is not shaped like ``t``.
            ValueError: ``amount`` larger than the units of ``t``, and any
                other error of ``compute_mask``.
        """
        if importance_scores is not None:
            if importance_scores.shape != t.shape:
                raise PruningShapeError(
                    "importance_scores should have the same shape as tensor t, "
                    f"got {tuple(importance_scores.shape)} vs {tuple(t.shape)}"
                )
        else:
            importance_scores = t
        if default_mask is None:
            default_mask = ones_view(t) if accepts_ones_view(type(self)) else torch.ones_like(t)
        return t * self.compute_mask(importance_scores, default_mask=default_mask)

    def remove(self, module) -> None:
        """Make the pruning permanent: ``name`` becomes a Parameter holding ``orig * mask``.

        ``name_orig`` and ``name_mask`` are deleted. The product is computed in
        place in ``name_orig`` (no second copy of the weight) unless a subclass
        overrides :meth:`apply_mask`. The forward pre-hook itself is removed by
        the caller (:func:`fastprune.remove`).

        Args:
            module (nn.Module): the module this method prunes.

        Raises:
            AssertionError: this method was never applied to a tensor (as in torch).
        """
        if getattr(self, "_tensor_name", None) is None:
            raise AssertionError(f"Module {module} has to be pruned before pruning can be removed")
        remove_reparametrization(self, module)


class PruningContainer(BasePruningMethod, torch_prune.PruningContainer):
    """Sequence of pruning methods applied one after the other to one tensor.

    Built by :meth:`BasePruningMethod.apply` when a tensor is pruned a second
    time; each new method's ``amount`` counts among the units the earlier ones
    kept. L1 on unstructured units runs as one k-selection over the whole
    tensor with the old mask excluding the pruned units (torch gathers the
    surviving entries into a copy first); on tie-free scores the mask is the
    same.

    Args:
        args: pruning methods (instances), all acting on the same tensor
            name. A single method gives the container its tensor name.

    Raises:
        TypeError: an argument is not a ``BasePruningMethod`` (fastprune's or
            torch's).
        ValueError: a method acts on a tensor of another name.
    """

    def __init__(self, *args) -> None:
        self._pruning_methods = ()
        if len(args) == 1 and isinstance(args[0], TorchBase):
            self._tensor_name = args[0]._tensor_name
            self.add_pruning_method(args[0])
        else:
            for method in args:
                self.add_pruning_method(method)

    def add_pruning_method(self, method) -> None:
        """Append ``method`` to the methods of this container.

        Args:
            method (BasePruningMethod): method acting on the same tensor name
                as the container (``None`` is appended as is, as in torch).

        Raises:
            TypeError: ``method`` is not a ``BasePruningMethod``.
            ValueError: ``method`` acts on a tensor of another name.
        """
        if method is not None and not isinstance(method, TorchBase):
            raise TypeError(f"{type(method)} is not a BasePruningMethod subclass")
        if method is not None and getattr(self, "_tensor_name", None) != method._tensor_name:
            raise ValueError(
                "Can only add pruning methods acting on the parameter named "
                f"'{getattr(self, '_tensor_name', None)}' to PruningContainer {self}. "
                f"Found '{method._tensor_name}'"
            )
        self._pruning_methods += (method,)

    def __len__(self) -> int:
        return len(self._pruning_methods)

    def __iter__(self):
        return iter(self._pruning_methods)

    def __getitem__(self, idx):
        return self._pruning_methods[idx]

    def compute_mask(self, t, default_mask):
        """Mask of the newest method, computed on what the older ones left, combined with them.

        As torch's ``PruningContainer.compute_mask``: an unstructured method
        selects among the units ``default_mask`` keeps, a structured one among
        the channels it keeps, a global one over the whole tensor.

        Args:
            t (torch.Tensor): scores of the tensor being pruned.
            default_mask (torch.Tensor): the mask the earlier methods produced.

        Returns:
            torch.Tensor: the new mask, shaped like ``t``.

        Raises:
            AttributeError: a structured method without a ``dim`` attribute.
            IndexError: the structured method's ``dim`` is out of range.
            ValueError: an unknown ``PRUNING_TYPE``, an ``amount`` larger than
                the units left, or a tensor on the meta device that is already
                pruned (selection needs the mask's values).
        """
        return combine_masks(self._pruning_methods[-1], t, default_mask)


def kselect_amount(scores, masks, out, amount, values=None, applied=None) -> None:
    """``ops.kselect_`` of torch's ``amount`` among the units ``masks`` keep (iterated / global pruning).

    A float amount is a fraction of the selectable units, which the kernel
    counts in its first pass over the data (no pass of its own over the
    masks); an int amount is a count, validated here with torch's message.
    ``values`` / ``applied``: as in ``ops.kselect_`` (the pruned weights
    written with the masks).
    """
    if isinstance(amount, numbers.Integral):
        selectable = sum(s.numel() if m is None else int(torch.count_nonzero(m)) for s, m in zip(scores, masks))
        k = _compute_nparams_toprune(amount, selectable)
        _validate_pruning_amount(k, selectable)
        ops.kselect_(scores, masks, out, k, largest=False, exclude_masked=True, values=values, applied=applied)
    else:
        ops.kselect_(scores, masks, out, None, largest=False, exclude_masked=True, fraction=float(amount),
                     values=values, applied=applied)


def applies_plain_product(module, name) -> bool:
    """Whether installing a new mask on ``module.<name>`` sets it to exactly ``orig * mask``.

    True for a tensor not pruned yet (fastprune's hook) and for one pruned by a
    single hook whose container multiplies plainly (fastprune's or torch's
    ``apply_mask``); a user's hook class may compute anything.
    """
    hooks = pruning_hooks(module, name)
    if not hooks:
        return CustomFromMask.apply_mask in _PLAIN_APPLY_MASKS
    if len(hooks) != 1:
        return False
    hook = hooks[0][1]
    container = type(hook) if isinstance(hook, torch_prune.PruningContainer) else PruningContainer
    return container.apply_mask in _PLAIN_APPLY_MASKS


def uses_fast_l1(method) -> bool:
    """True when ``method`` ranks by |score| exactly as torch's L1Unstructured does."""
    return type(method).compute_mask in _L1_COMPUTE_MASKS


def combine_masks(method, t, mask):
    """Apply ``method`` to the units (or channels) ``mask`` still keeps; return the new mask.

    Same result as torch's ``PruningContainer`` (amounts count the units still
    unpruned), but L1 on unstructured units runs in one k-selection over the
    whole tensor with the old mask as the exclusion set, instead of gathering
    the surviving entries into a copy.
    """
    pruning_type = getattr(method, "PRUNING_TYPE", None)
    if (
        pruning_type == "unstructured"
        and uses_fast_l1(method)
        and not is_ones_view(mask)
        and mask.device.type != "meta"
        and not has_soft_values(mask)
    ):
        out = torch.empty_like(t, memory_format=torch.contiguous_format)
        kselect_amount([t.detach()], [mask.detach()], [out], method.amount)
        return mark_binary(out)
    if mask.device.type == "meta" and pruning_type != "global":
        raise ValueError(
            "the tensor is on the meta device and already pruned: pruning it again selects among the units "
            "its mask keeps, which needs the mask's values; materialise the module first (to_empty and load "
            "its weights and masks)"
        )
    mask = _materialise(mask)
    new_mask = mask.to(dtype=t.dtype, copy=True)
    if pruning_type == "unstructured":
        slc = mask == 1
    elif pruning_type == "structured":
        if not hasattr(method, "dim"):
            raise AttributeError('Pruning methods of PRUNING_TYPE "structured" need to have the attribute `dim` defined.')
        n_dims = t.dim()
        dim = method.dim + n_dims if method.dim < 0 else method.dim
        if dim < 0 or dim >= n_dims:
            raise IndexError(f"Index is out of bounds for tensor with dimensions {n_dims}")
        keep_channel = mask.sum(dim=[d for d in range(n_dims) if d != dim]) != 0
        slc = [slice(None)] * n_dims
        slc[dim] = keep_channel
        slc = tuple(slc)
    elif pruning_type == "global":
        slc = tuple([slice(None)] * t.dim())
    else:
        raise ValueError(f"Unrecognized PRUNING_TYPE {pruning_type}")
    partial_mask = method.compute_mask(t[slc], default_mask=mask[slc])
    new_mask[slc] = partial_mask.to(dtype=new_mask.dtype)
    return new_mask


class Identity(BasePruningMethod, torch_prune.Identity):
    """Reparametrise without pruning anything (mask of ones).

    The constructor takes no arguments.

    Example::

        m = nn.Linear(4, 3)
        prune.Identity.apply(m, "weight")
        assert bool(m.weight_mask.all())
    """

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        """Return ``default_mask`` unchanged (as a real tensor).

        Args:
            t (torch.Tensor): tensor being pruned (unused).
            default_mask (torch.Tensor): mask of a previous pruning.

        Returns:
            torch.Tensor: a copy of ``default_mask`` where it was a stride-0 view
            of ones, else ``default_mask`` itself.
        """
        return _materialise(default_mask)

    @classmethod
    def apply(cls, module, name):
        """Reparametrise ``module.<name>`` with a mask of ones.

        Args:
            module (nn.Module): module containing the tensor.
            name (str): name of the parameter of ``module``.

        Returns:
            Identity: the installed hook (or the container it was added to).

        Raises:
            TypeError, PruningNameError: as :meth:`BasePruningMethod.apply`.
        """
        return apply_method(cls, module, name, (), {}, None)


class _AmountMethod(BasePruningMethod):
    """Methods with an ``amount`` of units (or channels) to prune."""

    def __init__(self, amount) -> None:
        _validate_pruning_amount_init(amount)
        self.amount = amount


def _select_units(amount, scores, default_mask, largest):
    """Mask that drops ``amount`` units of ``scores`` (smallest, or largest) from ``default_mask``.

    torch's ``compute_mask`` semantics: every unit may be chosen, and the
    result is ``default_mask`` with the chosen units set to 0.
    """
    tensor_size = scores.nelement()
    k = _compute_nparams_toprune(amount, tensor_size)
    _validate_pruning_amount(k, tensor_size)
    out = torch.empty_like(default_mask, memory_format=torch.contiguous_format)
    existing = None if is_ones_view(default_mask) else default_mask.detach()
    if scores.requires_grad:  # the op has no autograd formula; its inputs are data
        scores = scores.detach()
    ops.kselect_([scores], [existing], [out], k, largest=largest, exclude_masked=False)
    return mark_binary(out)


class RandomUnstructured(_AmountMethod, torch_prune.RandomUnstructured):
    """Prune ``amount`` units chosen at random (same random draws as torch).

    The units pruned are those with the ``k`` largest values of
    ``torch.rand_like(t)``, as in torch, so under the same ``torch.manual_seed``
    both libraries prune the same units (barring equal draws); the selection
    runs on the k-selection kernel instead of ``torch.topk``.

    Args:
        amount (int or float): units to prune. A float in [0, 1] is a
            fraction (``round(amount * numel)``), an int a count.

    Raises:
        TypeError: ``amount`` is not an int or float (``bool`` included).
        ValueError: a negative int, or a float outside [0, 1].
    """

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        """``default_mask`` with ``amount`` random units of ``t`` set to 0.

        Args:
            t (torch.Tensor): tensor being pruned (only its shape is used).
            default_mask (torch.Tensor): mask of a previous pruning.

        Returns:
            torch.Tensor: the new mask, in ``default_mask``'s dtype.

        Raises:
            ValueError: ``amount`` is larger than the number of units of ``t``.
        """
        if _compute_nparams_toprune(self.amount, t.nelement()) == 0:
            # torch draws no random numbers in this case; neither may we
            return default_mask.clone(memory_format=torch.contiguous_format)
        return _select_units(self.amount, torch.rand_like(t), default_mask, largest=True)

    @classmethod
    def apply(cls, module, name, amount):
        """Prune ``amount`` random (still unpruned) units of ``module.<name>``, in place.

        Args:
            module (nn.Module): module containing the tensor to prune.
            name (str): name of the parameter of ``module``.
            amount (int or float): units to prune, a fraction or a count.

        Returns:
            RandomUnstructured: the installed hook (or the container it was
            added to).

        Raises:
            TypeError, PruningNameError, ValueError: as
                :meth:`BasePruningMethod.apply`.
        """
        return apply_method(cls, module, name, (), {"amount": amount}, None)


class L1Unstructured(_AmountMethod, torch_prune.L1Unstructured):
    """Prune the ``amount`` units of smallest ``|score|``.

    Fast path: the units are chosen by one exact k-selection (radix select)
    instead of ``torch.topk`` over a copy of ``|t|``. Among equal ``|score|``,
    the unit with the lower flat index is pruned first; NaN ranks above
    ``+inf`` (it is pruned last). On tie-free scores the mask is torch's, bit
    for bit.

    Args:
        amount (int or float): units to prune. A float in [0, 1] is a
            fraction (``round(amount * numel)``), an int a count.

    Raises:
        TypeError: ``amount`` is not an int or float (``bool`` included).
        ValueError: a negative int, or a float outside [0, 1].

    Example::

        m = nn.Linear(10, 4)
        prune.L1Unstructured.apply(m, "weight", amount=0.25)
        assert int((m.weight_mask == 0).sum()) == 10
    """

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        """``default_mask`` with the ``amount`` units of smallest ``|t|`` set to 0.

        As in torch, every unit of ``t`` may be chosen; to count among the units
        still kept, apply the method through a :class:`PruningContainer`.

        Args:
            t (torch.Tensor): scores of the tensor being pruned.
            default_mask (torch.Tensor): mask of a previous pruning.

        Returns:
            torch.Tensor: the new mask, in ``default_mask``'s dtype.

        Raises:
            ValueError: ``amount`` is larger than the number of units of ``t``.
        """
        return _select_units(self.amount, t, default_mask, largest=False)

    @classmethod
    def apply(cls, module, name, amount, importance_scores=None):
        """Prune the ``amount`` (still unpruned) units of ``module.<name>`` of smallest ``|score|``.

        Args:
            module (nn.Module): module containing the tensor to prune.
            name (str): name of the parameter of ``module``.
            amount (int or float): units to prune, a fraction or a count.
            importance_scores (torch.Tensor, optional): scores of the
                parameter's shape ranking its units (default: the parameter).

        Returns:
            L1Unstructured: the installed hook (or the container it was added to).

        Raises:
            TypeError, PruningNameError, PruningShapeError, ValueError: as
                :meth:`BasePruningMethod.apply`.
        """
        return apply_method(cls, module, name, (), {"amount": amount}, importance_scores)


def _structured_mask(t, dim, keep_channels, default_mask):
    """Broadcast a per-channel keep vector (on ``t``'s device) along ``dim`` and combine it with ``default_mask``."""
    shape = [1] * t.dim()
    shape[dim] = t.shape[dim]
    keep = keep_channels.view(shape)
    if is_ones_view(default_mask):
        # one broadcasting copy converts and expands at once
        return torch.empty_like(t, memory_format=torch.contiguous_format).copy_(keep)
    return keep.to(dtype=t.dtype) * default_mask.to(dtype=t.dtype)


def _keep_channels(scores, k):
    """Keep-vector over channels (1 = kept, in ``scores``' dtype): the ``k`` lowest ``scores`` dropped.

    Ties: the lower index is dropped first.
    """
    keep = torch.empty_like(scores, memory_format=torch.contiguous_format)
    ops.kselect_([scores], [None], [keep], k)
    return keep


def _channels_to_prune(t, amount, dim):
    """(channels along ``dim``, how many of them to prune), after torch's checks."""
    _validate_structured_pruning(t)
    _validate_pruning_dim(t, dim)
    nchannels = t.shape[dim]
    k = _compute_nparams_toprune(amount, nchannels)
    _validate_pruning_amount(k, nchannels)
    return nchannels, k


class RandomStructured(_AmountMethod, torch_prune.RandomStructured):
    """Prune ``amount`` whole channels along ``dim`` chosen at random.

    The random numbers are drawn as torch draws them (one ``torch.rand`` per
    channel on the CPU generator), so the same seed prunes the same channels
    (barring equal draws).

    Args:
        amount (int or float): channels to prune, a fraction of the channels
            along ``dim`` or a count.
        dim (int, optional): dimension along which channels are pruned.
            Default: -1.

    Raises:
        TypeError: ``amount`` is not an int or float (``bool`` included).
        ValueError: a negative int, or a float outside [0, 1].
    """

    PRUNING_TYPE = "structured"

    def __init__(self, amount, dim=-1) -> None:
        super().__init__(amount)
        self.dim = dim

    def compute_mask(self, t, default_mask):
        """``default_mask`` with ``amount`` random channels of ``t`` along ``dim`` set to 0.

        Args:
            t (torch.Tensor): tensor being pruned, at least 2-dimensional.
            default_mask (torch.Tensor): mask of a previous pruning.

        Returns:
            torch.Tensor: the new mask, shaped like ``t``.

        Raises:
            ValueError: ``t`` has fewer than 2 dimensions, or ``amount`` is
                larger than the number of channels.
            TypeError: ``dim`` is not an int.
            IndexError: ``dim`` is out of range for ``t``.
        """
        nchannels, k = _channels_to_prune(t, self.amount, self.dim)
        if k == 0:
            return _materialise(default_mask)
        prob = torch.rand(nchannels)  # torch draws these on the CPU generator too
        keep = _keep_channels(prob, k)
        if t.device.type != "cpu":
            keep = keep.to(t.device)
        return _structured_mask(t, self.dim % t.dim(), keep, default_mask)

    @classmethod
    def apply(cls, module, name, amount, dim=-1):
        """Prune ``amount`` random channels of ``module.<name>`` along ``dim``, in place.

        Args:
            module (nn.Module): module containing the tensor to prune.
            name (str): name of the parameter of ``module``.
            amount (int or float): channels to prune, a fraction or a count.
            dim (int, optional): dimension of the channels. Default: -1.

        Returns:
            RandomStructured: the installed hook (or the container it was
            added to).

        Raises:
            TypeError, PruningNameError, ValueError, IndexError: as
                :meth:`BasePruningMethod.apply` and :meth:`compute_mask`.
        """
        return apply_method(cls, module, name, (), {"amount": amount, "dim": dim}, None)


def channel_scores(t, n, dim):
    """Per-channel L``n`` norms; numeric ``n`` runs on the norm kernel."""
    if type(n) in (int, float) or (isinstance(n, numbers.Real) and not isinstance(n, bool)):
        return ops.channel_norms(t.detach(), dim, float(n))
    return torch_compute_norm(t.detach(), n, dim)


class LnStructured(_AmountMethod, torch_prune.LnStructured):
    """Prune the ``amount`` channels along ``dim`` with the smallest L``n`` norm.

    Fast path: for a numeric ``n`` the per-channel norms come from one pass of
    the ``channel_norms`` kernel and the channels from the k-selection kernel;
    other ``n`` (``"fro"``, ``"nuc"``) use torch's norm. Among channels of equal
    norm, the one with the lower index is pruned first.

    Args:
        amount (int or float): channels to prune, a fraction of the channels
            along ``dim`` or a count.
        n (int, float, inf, -inf, "fro", "nuc"): order of the norm, as in
            :func:`torch.norm`.
        dim (int, optional): dimension along which channels are pruned.
            Default: -1.

    Raises:
        TypeError: ``amount`` is not an int or float (``bool`` included).
        ValueError: a negative int, or a float outside [0, 1].

    Example::

        m = nn.Conv2d(3, 8, 3)
        prune.LnStructured.apply(m, "weight", amount=2, n=2, dim=0)
        assert int((m.weight_mask.flatten(1).sum(1) == 0).sum()) == 2
    """

    PRUNING_TYPE = "structured"

    def __init__(self, amount, n, dim=-1) -> None:
        super().__init__(amount)
        self.n = n
        self.dim = dim

    def compute_mask(self, t, default_mask):
        """``default_mask`` with the ``amount`` channels of ``t`` of smallest norm set to 0.

        Args:
            t (torch.Tensor): scores of the tensor being pruned, at least
                2-dimensional.
            default_mask (torch.Tensor): mask of a previous pruning.

        Returns:
            torch.Tensor: the new mask, shaped like ``t``.

        Raises:
            ValueError: ``t`` has fewer than 2 dimensions, or ``amount`` is
                larger than the number of channels.
            TypeError: ``dim`` is not an int.
            IndexError: ``dim`` is out of range for ``t``.
        """
        _, k = _channels_to_prune(t, self.amount, self.dim)
        norms = channel_scores(t, self.n, self.dim)
        if k == 0:
            return _materialise(default_mask)
        keep = _keep_channels(norms, k)
        return _structured_mask(t, self.dim % t.dim(), keep, default_mask)

    @classmethod
    def apply(cls, module, name, amount, n, dim, importance_scores=None):
        """Prune the ``amount`` channels of ``module.<name>`` along ``dim`` of smallest L``n`` norm.

        Args:
            module (nn.Module): module containing the tensor to prune.
            name (str): name of the parameter of ``module``.
            amount (int or float): channels to prune, a fraction or a count.
            n (int, float, inf, -inf, "fro", "nuc"): order of the norm.
            dim (int): dimension of the channels.
            importance_scores (torch.Tensor, optional): scores of the
                parameter's shape whose norms rank the channels (default: the
                parameter).

        Returns:
            LnStructured: the installed hook (or the container it was added to).

        Raises:
            TypeError, PruningNameError, PruningShapeError, ValueError,
                IndexError: as :meth:`BasePruningMethod.apply` and
                :meth:`compute_mask`.
        """
        return apply_method(cls, module, name, (), {"amount": amount, "n": n, "dim": dim}, importance_scores)


class CustomFromMask(BasePruningMethod, torch_prune.CustomFromMask):
    """Prune with a mask given by the user.

    Args:
        mask (torch.Tensor): the mask, shaped like the tensor it prunes (0 =
            pruned). It is checked when the mask is computed.
    """

    PRUNING_TYPE = "global"

    def __init__(self, mask) -> None:
        self.mask = mask

    def compute_mask(self, t, default_mask):
        """``default_mask * mask``, in ``default_mask``'s dtype and device.

        Args:
            t (torch.Tensor): tensor being pruned (unused).
            default_mask (torch.Tensor): mask of a previous pruning.

        Returns:
            torch.Tensor: the new mask.

        Raises:
            TypeError: ``mask`` is not a tensor.
            PruningShapeError: ``mask`` is not shaped like ``default_mask``.
        """
        if not isinstance(self.mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(self.mask).__name__}")
        if default_mask.shape != self.mask.shape:
            raise PruningShapeError(
                f"mask shape {tuple(self.mask.shape)} must match the parameter's shape {tuple(default_mask.shape)}"
            )
        # One multiply, also for a ones_view (it reads as ones and costs no memory):
        # a fresh tensor, never the caller's, in default_mask's dtype and device.
        return default_mask * self.mask.to(default_mask)

    @classmethod
    def apply(cls, module, name, mask):
        """Prune ``module.<name>`` with ``mask``, in place.

        Args:
            module (nn.Module): module containing the tensor to prune.
            name (str): name of the parameter of ``module``.
            mask (torch.Tensor): mask shaped like the parameter (0 = pruned).

        Returns:
            CustomFromMask: the installed hook (or the container it was added to).

        Raises:
            TypeError, PruningNameError, PruningShapeError: as
                :meth:`BasePruningMethod.apply` and :meth:`compute_mask`.
        """
        return apply_method(cls, module, name, (), {"mask": mask}, None)


def _container_for_compute(old, method):
    """A container holding ``old``'s methods then ``method``, for computing the new mask.

    The module's own hook is not touched here (it is extended only once the mask
    exists). torch's container class is swapped for fastprune's: same result,
    but its L1 step runs on the kernel instead of gathering the survivors.
    """
    if isinstance(old, TorchContainer):
        if type(old) in (TorchContainer, PruningContainer):
            temp = PruningContainer()
        else:
            temp = copy.copy(old)
        temp._tensor_name = old._tensor_name
        temp._pruning_methods = tuple(old._pruning_methods) + (method,)
        return temp
    temp = PruningContainer(old)
    temp.add_pruning_method(method)
    return temp


def apply_method(cls, module, name, args, kwargs, importance_scores):
    """``cls.apply``: compute the new mask, then reparametrise ``module.<name>``."""
    # sharded parameters: an argument error on one process is raised on every process
    with same_error_everywhere(module, importance_scores):
        orig = check_module_and_name(module, name)
        existing = pruning_hooks(module, name)
        if len(existing) > 1:
            raise AssertionError(
                f"Avoid adding multiple pruning hooks to the same tensor {name} of module {module}. "
                "Use a PruningContainer."
            )
        if not existing and name not in module._parameters:
            raise TypeError(f"name={name!r}: {type(module).__name__}.{name} is not a parameter and cannot be pruned")
        if importance_scores is not None:
            check_scores_shape(importance_scores, orig, "importance_scores")
        else:
            importance_scores = orig

        method = cls(*args, **kwargs)
        method._tensor_name = name
        handler = sharded_handler([orig, importance_scores])
    if handler is not None:  # sharded parameter: the selection spans every process
        old_mask = getattr(module, name + "_mask").detach() if existing else None
        mask = handler.method_mask(module, name, method, importance_scores, old_mask)
    elif not existing:
        default_mask = ones_view(orig) if accepts_ones_view(cls) else torch.ones_like(orig)
        mask = method.compute_mask(importance_scores, default_mask=default_mask)
    else:
        default_mask = detached_mask(getattr(module, name + "_mask"))
        container = _container_for_compute(existing[0][1], method)
        mask = container.compute_mask(importance_scores, default_mask=default_mask)
        if mask is default_mask:  # some methods hand the default back; the buffer must not alias itself
            mask = mask.clone()
    return install(module, name, method, mask, PruningContainer, existing)


def remove_reparametrization(method, module) -> None:
    """Make ``method``'s pruning of ``module`` permanent (torch's ``remove``)."""
    name = method._tensor_name
    orig = module._parameters[name + "_orig"]
    mask = module._buffers[name + "_mask"]
    if _uses_fast_apply(method):
        # orig * mask in place: no second copy of the weight. ``.data`` is not
        # tracked by autograd, so no no_grad() is needed around the write.
        data = orig.data
        if sharded_handler([data, mask]) is not None:
            data, mask = local_tensor(data), local_tensor(mask)
        ops.mask_mul_([data], [mask])
    else:
        weight = method.apply_mask(module)
        orig.data = weight.data
    if name in module.__dict__:
        delattr(module, name)
    del module._parameters[name + "_orig"]
    del module._buffers[name + "_mask"]
    setattr(module, name, orig)
    forget_deepcopy(module, method)


def _uses_fast_apply(method) -> bool:
    return type(method).apply_mask is BasePruningMethod.apply_mask or type(method).apply_mask is TorchBase.apply_mask


_L1_COMPUTE_MASKS = (L1Unstructured.compute_mask, torch_prune.L1Unstructured.compute_mask)


# compute_mask implementations known to handle ones_view() (they never write
# into default_mask nor view it flat). A subclass overriding compute_mask is
# not in this set and gets a real tensor of ones, as with torch. Identity is
# not in it either: its mask is the ones themselves, which torch.ones_like
# makes more cheaply than a ones_view and its copy.
_ONES_VIEW_SAFE = frozenset(
    cls.compute_mask
    for cls in (RandomUnstructured, L1Unstructured, RandomStructured, LnStructured, CustomFromMask)
)


def accepts_ones_view(cls) -> bool:
    return getattr(cls, "compute_mask", None) in _ONES_VIEW_SAFE


# The apply_mask functions that compute exactly orig * mask, as defined (a
# function patched onto the classes later is not one of them).
_PLAIN_APPLY_MASKS = (BasePruningMethod.apply_mask, torch_prune.BasePruningMethod.apply_mask)
