"""The pure-torch fallback's kernels, lean on the calls that matter: one small tensor at a time.

Without the compiled extension every op runs on :mod:`fastprune.ops.reference`,
the specification, which is written for clarity: float64 keys for every dtype,
concatenations, a candidate list, a boolean keep vector copied into each
output. On a tiny layer (``Linear(8, 8)``) that costs several times torch's
own ``l1_unstructured``, and the Python op behind ``torch.ops.fastprune``
adds the dispatcher's boxed round trip on top.

:func:`kselect_` here handles the per-layer case (one real floating-point
score tensor, unpacked masks, outputs and scores on one device) with as few
torch calls as the result allows: the keys are ``|score|`` in the score's own
dtype (``abs`` is exact and a stable sort orders them as the float64 keys,
NaN above ``+inf``, ``-0.0`` equal to ``0.0``; off the CPU every NaN is made
the positive one, as the reference does), the stable sort runs on
them directly, and the output is written in place. Every other case, and every
call whose arguments the specification would refuse, goes to
:func:`fastprune.ops.reference.kselect_`, so results and errors are the
reference's. ``tests/test_small_inputs.py`` checks the two against each other.

:func:`direct_ok` tells the Python wrapper when it may call this function
itself instead of going through ``torch.ops`` (plain tensors, no
``__torch_function__`` or dispatch mode, not compiling): the same rule as the
extension's direct entry points.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import reference

Tensor = torch.Tensor

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_grad_enabled = torch.is_grad_enabled


# Up to this many units, the mask is scattered from a cached [0] * k + [1] * (n - k).
_SMALL = 4096
_PATTERNS: dict = {}


def _zeros_then_ones(n: int, k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``k`` zeros then ``n - k`` ones in ``dtype`` (read-only, cached: layers of one shape share it)."""
    key = (n, k, dtype, device)
    pattern = _PATTERNS.get(key)
    if pattern is None:
        if len(_PATTERNS) >= 256:
            _PATTERNS.clear()
        pattern = torch.ones(n, dtype=dtype, device=device)
        pattern[:k] = 0
        _PATTERNS[key] = pattern
    return pattern


def direct_ok(*groups) -> bool:
    """Whether a call on these tensor lists may skip the dispatcher: only exact ``Tensor`` /
    ``Parameter`` objects (or ``None``), none requiring a gradient while autograd is on (the
    dispatcher keeps autograd out of the kernel), no TorchFunctionMode and no dispatch mode."""
    if _function_mode_enabled() or _dispatch_modes():
        return False
    grad = _grad_enabled()
    for group in groups:
        if group is None:
            continue
        for t in group:
            if t is not None and (type(t) not in _PLAIN or (grad and t.requires_grad)):
                return False
    return True


def kselect_(
    scores: Sequence[Tensor],
    masks: Sequence[Optional[Tensor]],
    out: Sequence[Tensor],
    k: int,
    largest: bool,
    exclude_masked: bool,
    packed: bool,
    fraction: Optional[float] = None,
    values: Optional[Sequence[Tensor]] = None,
    applied: Optional[Sequence[Tensor]] = None,
) -> None:
    """:func:`fastprune.ops.reference.kselect_`, with its result, cheaper on one small tensor."""
    if packed or len(scores) != 1 or len(masks) != 1 or len(out) != 1 or (values is None) != (applied is None):
        return reference.kselect_(scores, masks, out, k, largest, exclude_masked, packed, fraction, values, applied)
    s, m, o = scores[0], masks[0], out[0]
    n = s.numel()
    device = s.device
    if (
        s.dtype not in _FLOATS
        or o.numel() != n
        or not o.is_contiguous()
        or o.device != device
        or (m is not None and (m.numel() != n or m.device != device))
        or (fraction is not None and (k != -1 or not 0.0 <= fraction <= 1.0))
        or (values is not None and (len(values) != 1 or len(applied) != 1 or values[0].device != device
                                    or applied[0].device != device))
    ):
        return reference.kselect_(scores, masks, out, k, largest, exclude_masked, packed, fraction, values, applied)
    if values is not None:
        reference._check_applied(scores, masks, out, values, applied)  # noqa: SLF001 (the spec's own rules)
    keys = s.reshape(-1).abs()
    if device.type != "cpu":
        # On CUDA abs() keeps a NaN's sign bit and the sort puts a negative NaN first: every NaN
        # becomes the positive quiet NaN, as in the reference's keys. The CPU's abs() clears it.
        keys = keys.masked_fill(keys.isnan(), float("nan"))
    candidates = None
    if exclude_masked and m is not None:
        candidates = (m.reshape(-1) != 0).nonzero().reshape(-1)
        keys = keys[candidates]
    count = keys.numel()
    if fraction is not None:
        k = round(fraction * count)
    if k < 0 or k > count:
        raise ValueError(f"kselect_: k={k} must be between 0 and the number of selectable units ({count})")
    flat = o.view(-1)
    # A stable sort: among equal keys the lower index comes first, as in the reference.
    if m is None and 0 < k and n <= _SMALL:
        # One scatter writes the whole mask: 0 at the first k positions of the order, 1 after.
        flat.scatter_(0, keys.argsort(descending=largest, stable=True), _zeros_then_ones(n, k, o.dtype, device))
    else:
        if m is None:
            flat.fill_(1)
        else:
            flat.copy_(m.reshape(-1) != 0)  # a new tensor first: o may alias m
        if k:
            selected = keys.argsort(descending=largest, stable=True)[:k]
            flat.index_fill_(0, selected if candidates is None else candidates[selected], 0)
    if values is not None:
        v, a = values[0], applied[0]
        a.copy_((v.reshape(-1) * flat.to(v.dtype)).reshape(a.shape))
