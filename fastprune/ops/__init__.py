"""The fastprune ops, reached through the dispatcher as ``torch.ops.fastprune.*``.

With the compiled extension loaded, the schemas and the CPU (and CUDA) kernels
come from C++. Without it, the same schemas are defined here and implemented by
:mod:`fastprune._reference`, so callers never branch on which one is present.
Fake (meta) kernels and autograd are registered here in both cases, which is
what lets ``torch.compile`` trace through the ops.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from . import reference
from ._load import build_info, extension_loaded
from .reference import pack_mask, packed_numel, unpack_mask

Tensor = torch.Tensor

# The one list of op schemas on the Python side; tests check that the C++
# library registered exactly these.
SCHEMAS = {
    "kselect_": "kselect_(Tensor[] scores, Tensor?[] masks, Tensor(a!)[] out, int k, bool largest, "
    "bool exclude_masked, bool packed) -> ()",
    "mask_mul": "mask_mul(Tensor input, Tensor mask) -> Tensor",
    "mask_mul_": "mask_mul_(Tensor(a!)[] inputs, Tensor[] masks) -> ()",
    "apply_packed_mask_": "apply_packed_mask_(Tensor(a!)[] inputs, Tensor[] packed) -> ()",
    "channel_norms": "channel_norms(Tensor t, int dim, float p) -> Tensor",
    "row_kselect": "row_kselect(Tensor scores, int k) -> Tensor",
    "nm_select": "nm_select(Tensor scores, int n, int m) -> Tensor",
}

_REFERENCE_IMPLS = {
    "kselect_": reference.kselect_,
    "mask_mul": reference.mask_mul,
    "mask_mul_": reference.mask_mul_,
    "apply_packed_mask_": reference.apply_packed_mask_,
    "channel_norms": reference.channel_norms,
    "row_kselect": reference.row_kselect,
    "nm_select": reference.nm_select,
}

# Libraries must stay referenced for their registrations to stay alive.
_libraries: List[torch.library.Library] = []


def _register_python_fallbacks() -> None:
    if not extension_loaded():
        lib = torch.library.Library("fastprune", "DEF")
        for name, schema in SCHEMAS.items():
            lib.define(schema)
            lib.impl(name, _REFERENCE_IMPLS[name], "CompositeExplicitAutograd")
        _libraries.append(lib)
    elif not build_info()["cuda"]:
        # A CPU-only build still serves CUDA tensors, through the reference.
        lib = torch.library.Library("fastprune", "IMPL")
        for name in SCHEMAS:
            lib.impl(name, _REFERENCE_IMPLS[name], "CUDA")
        _libraries.append(lib)


def _register_fakes() -> None:
    @torch.library.register_fake("fastprune::kselect_")
    def _kselect_fake(scores, masks, out, k, largest, exclude_masked, packed):
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


_register_python_fallbacks()
_register_fakes()
_register_autograd()


# ----------------------------------------------------------------------------
# Python-facing wrappers (argument defaults, list conversion, allocation).
# ----------------------------------------------------------------------------


def kselect_(
    scores: Sequence[Tensor],
    masks: Optional[Sequence[Optional[Tensor]]],
    out: Sequence[Tensor],
    k: int,
    largest: bool = False,
    exclude_masked: bool = True,
    packed: bool = False,
) -> None:
    """Select exactly ``k`` units across ``scores``; write keep-masks into ``out``.

    See :func:`fastprune.reference.kselect_` for the full contract.
    """
    scores = list(scores)
    masks = [None] * len(scores) if masks is None else list(masks)
    if not scores:  # the dispatcher cannot pick a backend without a tensor
        if int(k) != 0:
            raise ValueError(f"kselect_: k={k} must be between 0 and the number of selectable units (0)")
        return
    torch.ops.fastprune.kselect_(scores, masks, list(out), int(k), bool(largest), bool(exclude_masked), bool(packed))


def kselect(
    scores: Sequence[Tensor],
    masks: Optional[Sequence[Optional[Tensor]]] = None,
    k: int = 0,
    largest: bool = False,
    exclude_masked: bool = True,
    packed: bool = False,
    dtypes: Optional[Sequence[torch.dtype]] = None,
) -> List[Tensor]:
    """Functional :func:`kselect_`: returns one new keep-mask per score tensor.

    Masks are in ``dtypes[i]`` (default: the score's dtype), or 1-bit packed
    ``uint8`` tensors when ``packed``.
    """
    scores = list(scores)
    outs = reference.allocate_masks(scores, packed, dtypes)
    kselect_(scores, masks, outs, k, largest, exclude_masked, packed)
    return outs


def mask_mul(input: Tensor, mask: Tensor) -> Tensor:
    """``input * mask`` (mask in any dtype, bool included); gradient = grad x mask."""
    return torch.ops.fastprune.mask_mul(input, mask)


def _call_on_pairs(name: str, inputs, others, other_name: str) -> None:
    """Run the multi-tensor in-place op ``name`` on matching lists; empty lists are a no-op."""
    inputs, others = list(inputs), list(others)
    if len(inputs) != len(others):
        raise ValueError(
            f"{name}: inputs and {other_name} must have the same length, got {len(inputs)} and {len(others)}"
        )
    if inputs:  # the dispatcher cannot pick a backend without a tensor
        getattr(torch.ops.fastprune, name)(inputs, others)


def mask_mul_(inputs: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """In place ``inputs[i] *= masks[i]`` over many tensors in one call."""
    _call_on_pairs("mask_mul_", inputs, masks, "masks")


def apply_packed_mask_(inputs: Sequence[Tensor], packed: Sequence[Tensor]) -> None:
    """Zero ``inputs[i]`` wherever its 1-bit mask is 0, over many tensors in one call."""
    _call_on_pairs("apply_packed_mask_", inputs, packed, "packed")


def channel_norms(t: Tensor, dim: int, p: float = 2.0) -> Tensor:
    """L``p`` norm of each channel of ``t`` along ``dim`` (over all other dims)."""
    return torch.ops.fastprune.channel_norms(t, int(dim), float(p))


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
