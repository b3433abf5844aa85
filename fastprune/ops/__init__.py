"""The fastprune ops, reached through the dispatcher as ``torch.ops.fastprune.*``.

The op schemas are defined here, once (:data:`SCHEMAS`), whether or not the
compiled extension is present. The extension only registers kernels for them
(CPU, and CUDA when built with it); the dispatcher checks every C++ kernel's
signature against its schema. Without the extension, the same ops are
implemented by :mod:`fastprune.ops.reference`, so callers never branch on which
one is present. Fake (meta) kernels and autograd are registered here in both
cases, which is what lets ``torch.compile`` trace through the ops.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from . import _fallback, _load, reference
from ._load import build_info, extension_loaded
from .reference import pack_mask, packed_numel, unpack_mask

Tensor = torch.Tensor

# The op schemas: the one definition of the fastprune op library. In-place list
# arguments are ``Tensor(a!)[]`` and return ``()``.
SCHEMAS = {
    "kselect_": "kselect_(Tensor[] scores, Tensor?[] masks, Tensor(a!)[] out, int k, bool largest, "
    "bool exclude_masked, bool packed, float? fraction=None, Tensor[]? values=None, "
    "Tensor(b!)[]? applied=None) -> ()",
    "mask_mul": "mask_mul(Tensor input, Tensor mask) -> Tensor",
    "mask_mul_": "mask_mul_(Tensor(a!)[] inputs, Tensor[] masks) -> ()",
    "apply_packed_mask_": "apply_packed_mask_(Tensor(a!)[] inputs, Tensor[] packed) -> ()",
    "channel_norms": "channel_norms(Tensor t, int dim, float p) -> Tensor",
    "row_kselect": "row_kselect(Tensor scores, int k) -> Tensor",
    "nm_select": "nm_select(Tensor scores, int n, int m) -> Tensor",
}

# The kernels without the extension: the reference (the specification), with
# kselect_'s per-tensor case on a leaner path that gives the same results.
_REFERENCE_IMPLS = {
    "kselect_": _fallback.kselect_,
    "mask_mul": reference.mask_mul,
    "mask_mul_": reference.mask_mul_,
    "apply_packed_mask_": reference.apply_packed_mask_,
    "channel_norms": reference.channel_norms,
    "row_kselect": reference.row_kselect,
    "nm_select": reference.nm_select,
}

# Libraries must stay referenced for their registrations to stay alive.
_libraries: List[torch.library.Library] = []


def _define_ops() -> None:
    """Define the schemas; back them with the reference where no compiled kernel exists."""
    lib = torch.library.Library("fastprune", "DEF")
    _libraries.append(lib)
    for name, schema in SCHEMAS.items():
        lib.define(schema)
    if not extension_loaded():
        for name in SCHEMAS:
            lib.impl(name, _REFERENCE_IMPLS[name], "CompositeExplicitAutograd")
    elif not build_info()["cuda"]:
        # A CPU-only build still serves CUDA tensors, through the reference.
        for name in SCHEMAS:
            lib.impl(name, _REFERENCE_IMPLS[name], "CUDA")


def _register_fakes() -> None:
    @torch.library.register_fake("fastprune::kselect_")
    def _kselect_fake(scores, masks, out, k, largest, exclude_masked, packed, fraction=None, values=None,
                      applied=None):
        return None

    @torch.library.register_fake("fastprune::mask_mul")
    def _mask_mul_fake(input, mask):
        torch._check(input.shape == mask.shape, lambda: "mask_mul: mask must have the shape of input")
        return torch.empty_like(input)

    @torch.library.register_fake("fastprune::mask_mul_")
    def _mask_mul__fake(inputs, masks):
        return None

    @torch.library.register_fake("fastprune::apply_packed_mask_")
    def _apply_packed_mask__fake(inputs, packed):
        return None

    @torch.library.register_fake("fastprune::channel_norms")
    def _channel_norms_fake(t, dim, p):
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        return t.new_empty((t.shape[dim],), dtype=acc)

    @torch.library.register_fake("fastprune::row_kselect")
    def _row_kselect_fake(scores, k):
        torch._check(scores.dim() > 0, lambda: "row_kselect: scores must have at least one dimension")
        return torch.empty_like(scores, dtype=torch.bool)

    @torch.library.register_fake("fastprune::nm_select")
    def _nm_select_fake(scores, n, m):
        torch._check(scores.dim() > 0, lambda: "nm_select: scores must have at least one dimension")
        return torch.empty_like(scores, dtype=torch.bool)


def _register_autograd() -> None:
    """mask_mul's formula in Python, unless the extension registered it in C++.

    The compiled one (csrc/autograd.cpp) keeps each call in C++; this one makes
    every call, gradients wanted or not, pass through the interpreter. Same
    formula: d input = mask_mul(grad, mask), d mask = grad * input.
    """
    if torch._C._dispatch_has_kernel_for_dispatch_key("fastprune::mask_mul", "Autograd"):
        return

    def setup_context(ctx, inputs, output):
        input, mask = inputs
        ctx.save_for_backward(mask, input if ctx.needs_input_grad[1] else None)

    def backward(ctx, grad):
        mask, input = ctx.saved_tensors
        grad_input = torch.ops.fastprune.mask_mul(grad, mask) if ctx.needs_input_grad[0] else None
        grad_mask = None
        if ctx.needs_input_grad[1]:
            grad_mask = (grad * input).to(mask.dtype)
        return grad_input, grad_mask

    torch.library.register_autograd("fastprune::mask_mul", backward, setup_context=setup_context)


_define_ops()
_register_fakes()
_register_autograd()

# The extension's direct entry points into the dispatcher (see csrc/ops.cpp):
# the same ops, dispatched the same way, without the ~3 us of the Python
# torch.ops call, which decides the cost of pruning small layers. They decline
# (and torch.ops is called) for tensors with a __torch_function__ override or
# under a TorchFunctionMode; torch.compile traces torch.ops, so they are not
# used while compiling. None without the extension (or with an older build).
_DIRECT = _load._C if getattr(_load._C, "mask_mul__direct", None) is not None else None
_MASK_MUL__DIRECT = None if _DIRECT is None else _DIRECT.mask_mul__direct
_is_compiling = torch.compiler.is_compiling
_INT64_MAX = 2**63 - 1
# Without the extension, the wrappers call the Python kernels themselves where the
# dispatcher would only add its boxed round trip into Python (~10-20 us a call,
# as much as a small layer's whole selection): plain tensors, no function or
# dispatch mode, not compiling (the rule of the extension's direct entry
# points), and no tensor that autograd would have to see.
_PYTHON_KERNELS = not extension_loaded()

# The overload itself: calling it skips the overload resolution of
# ``torch.ops.fastprune.mask_mul(...)`` (~1 us, a sizeable part of a
# pruned layer's forward pre-hook on small layers).
_MASK_MUL = torch.ops.fastprune.mask_mul.default


# ----------------------------------------------------------------------------
# Python-facing wrappers (argument defaults, list conversion, allocation).
# ----------------------------------------------------------------------------


def kselect_(
    scores: Sequence[Tensor],
    masks: Optional[Sequence[Optional[Tensor]]],
    out: Sequence[Tensor],
    k: Optional[int],
    largest: bool = False,
    exclude_masked: bool = True,
    packed: bool = False,
    fraction: Optional[float] = None,
    values: Optional[Sequence[Tensor]] = None,
    applied: Optional[Sequence[Tensor]] = None,
) -> None:
    """Select exactly ``k`` units across ``scores``; write keep-masks into ``out``.

    The exact k-selection behind every magnitude method; the compiled kernels
    run one radix select over all tensors together, without concatenating or
    sorting them (the pure-torch fallback sorts a concatenation). The ranking
    key of a unit is ``|score|``; among equal keys the unit with the lower
    global flat index (the tensors in the order given, each in row-major
    order) is selected first; NaN ranks above ``+inf``. See
    :func:`fastprune.ops.reference.kselect_`, the specification.

    Args:
        scores (sequence of Tensor): the scores of each tensor (real or bool).
        masks (sequence of Tensor or None, optional): the existing keep-mask of
            each tensor (non-zero = kept), ``None`` for all ones; ``None`` for
            the whole argument means no masks.
        out (sequence of Tensor): one output per score, shaped like it (or
            packed ``uint8`` bytes with ``packed``); may alias ``masks[i]``.
        k (int or None): units to select; ``None`` together with ``fraction``.
        largest (bool, optional): select the largest keys instead of the
            smallest. Default: ``False``.
        exclude_masked (bool, optional): select only among units the existing
            masks keep (iterated and global pruning); else every unit may be
            selected and the existing mask is only combined into the result
            (``compute_mask`` semantics). Default: ``True``.
        packed (bool, optional): ``masks`` and ``out`` hold 1 bit per unit
            (bit ``i % 8`` of byte ``i // 8``). Default: ``False``.
        fraction (float, optional): instead of ``k``, select
            ``round(fraction * selectable units)`` (half to even, as Python's
            ``round`` and torch's amounts). The compiled kernels count the
            selectable units in their first pass over the data, so iterated
            pruning needs no separate pass over the existing masks.
            Default: ``None``.
        values (sequence of Tensor, optional): with ``applied``: tensors
            with as many elements as ``scores`` (usually the weights).
            Default: ``None``.
        applied (sequence of Tensor, optional): receives ``values[i] *
            out[i]`` in ``values[i]``'s dtype (the pruned weight of torch's
            layout: ``x * 0`` is ``-0.0`` for negative ``x`` and NaN for inf or
            NaN). The CPU kernel writes it in the same pass as the masks, so
            the pruned weights cost no pass of their own. Must not share
            memory with any other argument. Default: ``None``.

    Raises:
        ValueError: lists of different lengths, ``k`` outside
            ``[0, selectable units]``, both or neither of ``k`` and
            ``fraction``, ``fraction`` outside ``[0, 1]``, a mask or output of
            the wrong size, only one of ``values`` and ``applied``, or
            ``applied`` sharing memory with another argument.
        TypeError: an unsupported dtype, or a packed mask that is not
            ``uint8`` (compiled ops).
        RuntimeError: tensors on different devices (compiled ops).

    Example::

        w = torch.tensor([0.5, -0.1, 0.3, 0.1])
        out = torch.empty(4)
        prune.ops.kselect_([w], None, [out], k=1)
        assert out.tolist() == [1.0, 0.0, 1.0, 1.0]  # tie |-0.1| == |0.1|: lower index
    """
    if type(scores) is not list:
        scores = list(scores)
    if masks is None:
        masks = [None] * len(scores)
    elif type(masks) is not list:
        masks = list(masks)
    if type(out) is not list:
        out = list(out)
    if (values is None) != (applied is None):
        raise ValueError("kselect_: give both values and applied, or neither")
    if values is not None and type(values) is not list:
        values = list(values)
    if applied is not None and type(applied) is not list:
        applied = list(applied)
    if (k is None) == (fraction is None):
        raise ValueError(f"kselect_: give exactly one of k and fraction, got k={k} and fraction={fraction}")
    if fraction is not None:
        fraction = float(fraction)
        if not 0.0 <= fraction <= 1.0:  # also refuses NaN
            raise ValueError(f"kselect_: fraction={fraction} must be between 0 and 1")
    if not scores:  # the dispatcher cannot pick a backend without a tensor
        if k is not None and int(k) != 0:
            raise ValueError(f"kselect_: k={k} must be between 0 and the number of selectable units (0)")
        return
    k = -1 if k is None else int(k)
    largest, exclude_masked, packed = bool(largest), bool(exclude_masked), bool(packed)
    if (
        _DIRECT is not None
        and -_INT64_MAX <= k <= _INT64_MAX
        and not _is_compiling()
        and _DIRECT.kselect_direct(scores, masks, out, k, largest, exclude_masked, packed, fraction, values, applied)
    ):
        return
    if _PYTHON_KERNELS and not _is_compiling() and _fallback.direct_ok(scores, masks, out, values, applied):
        _fallback.kselect_(scores, masks, out, k, largest, exclude_masked, packed, fraction, values, applied)
        return
    torch.ops.fastprune.kselect_(scores, masks, out, k, largest, exclude_masked, packed, fraction, values, applied)


def kselect(
    scores: Sequence[Tensor],
    masks: Optional[Sequence[Optional[Tensor]]] = None,
    k: int = 0,
    largest: bool = False,
    exclude_masked: bool = True,
    packed: bool = False,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    fraction: Optional[float] = None,
) -> List[Tensor]:
    """Functional :func:`kselect_`: returns one new keep-mask per score tensor.

    Masks are in ``dtypes[i]`` (default: the score's dtype), or 1-bit packed
    ``uint8`` tensors when ``packed``.

    Args:
        scores, masks, k, largest, exclude_masked, packed: as in :func:`kselect_`.
        dtypes (sequence of torch.dtype, optional): dtype of each output when
            not ``packed``. Default: the scores' dtypes.
        fraction (float, optional): as in :func:`kselect_` (then ``k`` is
            ignored). Default: ``None``.

    Returns:
        list of Tensor: the keep-masks (1 = kept, 0 = selected or masked).

    Raises:
        ValueError, TypeError, RuntimeError: as :func:`kselect_`.

    Example::

        (keep,) = prune.ops.kselect([torch.tensor([3.0, 1.0, 2.0])], k=1, dtypes=[torch.bool])
        assert keep.tolist() == [True, False, True]
    """
    scores = list(scores)
    outs = reference.allocate_masks(scores, packed, dtypes)
    kselect_(scores, masks, outs, None if fraction is not None else k, largest, exclude_masked, packed, fraction)
    return outs


def mask_mul(input: Tensor, mask: Tensor) -> Tensor:
    """``input * mask`` (mask in any dtype, bool included); gradient = grad x mask.

    One fused pass that reads the mask in its own dtype, without first
    converting it to ``input``'s; differentiable in both arguments and
    traceable by ``torch.compile``.

    Args:
        input (Tensor): the tensor to mask.
        mask (Tensor): the mask, shaped like ``input``.

    Returns:
        Tensor: ``input * mask`` in ``input``'s dtype.

    Raises:
        RuntimeError: shapes that do not match, or tensors on different
            devices.

    Example::

        x = torch.tensor([1.0, 2.0, 3.0])
        assert prune.ops.mask_mul(x, torch.tensor([True, False, True])).tolist() == [1.0, 0.0, 3.0]
    """
    return _MASK_MUL(input, mask)


def _call_on_pairs(name: str, inputs, others, other_name: str, direct=None) -> None:
    """Run the multi-tensor in-place op ``name`` on matching lists; empty lists are a no-op.

    ``direct``: the op's direct entry point in the extension, if it has one.
    """
    if type(inputs) is not list:
        inputs = list(inputs)
    if type(others) is not list:
        others = list(others)
    if len(inputs) != len(others):
        raise ValueError(
            f"{name}: inputs and {other_name} must have the same length, got {len(inputs)} and {len(others)}"
        )
    if not inputs:  # the dispatcher cannot pick a backend without a tensor
        return
    if direct is not None and not _is_compiling() and direct(inputs, others):
        return
    if _PYTHON_KERNELS and not _is_compiling() and _fallback.direct_ok(inputs, others):
        _REFERENCE_IMPLS[name](inputs, others)
        return
    getattr(torch.ops.fastprune, name)(inputs, others)


def mask_mul_(inputs: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """In place ``inputs[i] *= masks[i]`` over many tensors in one call.

    Args:
        inputs (sequence of Tensor): tensors modified in place.
        masks (sequence of Tensor): one mask per input, of any dtype, shaped
            like it (or broadcastable to it).

    Raises:
        ValueError: ``inputs`` and ``masks`` differ in length, or (compiled
            ops) a mask does not broadcast to its input.
        RuntimeError: tensors on different devices, or (pure-torch fallback) a
            mask that does not broadcast.
    """
    _call_on_pairs("mask_mul_", inputs, masks, "masks", _MASK_MUL__DIRECT)


def apply_packed_mask_(inputs: Sequence[Tensor], packed: Sequence[Tensor]) -> None:
    """Zero ``inputs[i]`` wherever its 1-bit mask is 0, over many tensors in one call.

    NaN and inf in pruned units become 0 too (a fill, not a multiply).

    Args:
        inputs (sequence of Tensor): tensors modified in place.
        packed (sequence of Tensor): one packed ``uint8`` mask per input, of
            ``ceil(numel / 8)`` bytes (bit ``i % 8`` of byte ``i // 8`` keeps
            unit ``i``), e.g. from :func:`pack_mask`.

    Raises:
        ValueError: ``inputs`` and ``packed`` differ in length, or a mask has
            the wrong number of bytes.
        TypeError: a mask that is not ``uint8``, an unsupported input dtype
            (compiled ops).
        RuntimeError: tensors on different devices (compiled ops).

    Example::

        w = torch.ones(10)
        prune.ops.apply_packed_mask_([w], [prune.ops.pack_mask(torch.arange(10) % 2)])
        assert w.tolist() == [0.0, 1.0] * 5
    """
    _call_on_pairs("apply_packed_mask_", inputs, packed, "packed")


def channel_norms(t: Tensor, dim: int, p: float = 2.0) -> Tensor:
    """L``p`` norm of each channel of ``t`` along ``dim`` (over all other dims).

    Accumulates in float64 for float64 input and float32 otherwise; the
    compiled kernel reads ``t`` once whatever ``dim`` is (no permuted copy).

    Args:
        t (Tensor): a tensor of at least one dimension.
        dim (int): the channel dimension (negative counts from the end).
        p (float, optional): order of the norm; ``inf``, ``-inf`` and ``0``
            (count of non-zeros) included, as in
            :func:`torch.linalg.vector_norm`. Default: 2.0.

    Returns:
        Tensor: ``t.shape[dim]`` norms, float64 for float64 input, else float32.

    Raises:
        ValueError: ``t`` is 0-dimensional, or ``p`` is NaN (compiled ops).
        IndexError: ``dim`` is out of range.

    Example::

        t = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
        assert prune.ops.channel_norms(t, 0).tolist() == [5.0, 1.0]
    """
    dim, p = int(dim), float(p)
    if _DIRECT is not None and -_INT64_MAX <= dim <= _INT64_MAX and not _is_compiling():
        norms = _DIRECT.channel_norms_direct(t, dim, p)
        if norms is not None:
            return norms
    if _PYTHON_KERNELS and not _is_compiling() and _fallback.direct_ok((t,)):
        return reference.channel_norms(t, dim, p)
    return torch.ops.fastprune.channel_norms(t, dim, p)


__all__ = ["SCHEMAS", *reference.__all__]


def row_kselect(scores: Tensor, k: int) -> Tensor:
    """Keep-mask with exactly ``k`` units pruned in every row of ``scores``.

    Every row (slice along the last dimension) is handled in the same launch.
    In each row the ``k`` units of smallest ``|score|`` are pruned, ties by
    lower column index, NaN ranked above ``+inf``.

    Args:
        scores: a tensor of at least one dimension (any real dtype, any device).
        k: units to prune per row, ``0 <= k <= scores.size(-1)``.

    Returns:
        a ``bool`` tensor shaped like ``scores``; True = keep.

    Raises:
        ValueError: ``k`` out of range or a 0-d ``scores``.

    Example::

        >>> fastprune.ops.row_kselect(torch.tensor([[3., 1., 2.], [0., 5., 4.]]), 1)
        tensor([[ True, False,  True],
                [False,  True,  True]])
    """
    return torch.ops.fastprune.row_kselect(scores, int(k))


def nm_select(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep-mask of the N:M pattern: ``n`` units pruned in every group of ``m``.

    Groups are ``m`` consecutive units along the last dimension. In each group
    the ``n`` units of smallest ``|score|`` are pruned, ties by lower index,
    NaN ranked above ``+inf``.

    Args:
        scores: a tensor whose last dimension is a multiple of ``m``.
        n: units pruned per group, ``0 <= n < m``.
        m: group length.

    Returns:
        a ``bool`` tensor shaped like ``scores``; True = keep.

    Raises:
        ValueError: ``m`` does not divide the last dimension, or ``n`` out of range.

    Example::

        >>> fastprune.ops.nm_select(torch.tensor([[4., 1., 3., 2.]]), 2, 4)
        tensor([[ True, False,  True, False]])
    """
    return torch.ops.fastprune.nm_select(scores, int(n), int(m))
