"""The functions of ``torch.nn.utils.prune``, same names, signatures and results."""
from __future__ import annotations

import torch
import torch.nn.utils.prune as torch_prune

from .. import ops
from .reparam import forget_deepcopy, install_many
from .sharding import PLAIN_TENSOR_TYPES, replayable, same_error_everywhere, sharded_handler
from .targets import existing_mask, mark_binary, resolve_scores, resolve_targets
from .validation import (
    _validate_pruning_amount,
    _validate_pruning_amount_init,
    _validate_pruning_dim,
    _validate_structured_pruning,
)
from .methods import (
    CustomFromMask,
    Identity,
    L1Unstructured,
    LnStructured,
    PruningContainer,
    RandomStructured,
    applies_plain_product,
    RandomUnstructured,
    has_soft_values,
    kselect_amount,
    torch_compute_norm,
    uses_fast_l1,
)

TorchBase = torch_prune.BasePruningMethod
TorchContainer = torch_prune.PruningContainer


def identity(module, name):
    """Reparametrise ``module.<name>`` with a mask of ones, pruning nothing.

    Modifies ``module`` in place, as torch does: the parameter moves to
    ``name + "_orig"``, the mask is registered as the buffer
    ``name + "_mask"``, and a forward pre-hook recomputes ``module.<name>`` as
    their product. A tensor that is already pruned (by fastprune or torch)
    gets the new method appended to its ``PruningContainer``. On any error the
    module is left exactly as it was.

    Args:
        module (nn.Module): module containing the tensor to prune.
        name (str): name of the parameter of ``module`` to prune.

    Returns:
        module (nn.Module): the input module, pruned.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, ``name`` is not a str
            or does not name a parameter (a buffer, a plain attribute).
        PruningNameError: ``module`` has no attribute ``name`` (an
            ``AttributeError``, as in torch).

    Example::

        m = prune.identity(nn.Linear(2, 3), "weight")
        assert list(m.state_dict()) == ["bias", "weight_orig", "weight_mask"]
    """
    Identity.apply(module, name)
    return module


def random_unstructured(module, name, amount):
    """Prune ``amount`` randomly chosen (still unpruned) units of ``module.<name>``.

    Same random draws as torch (``torch.rand_like`` on the tensor), so under the
    same ``torch.manual_seed`` the same units are pruned (barring equal draws).

    Modifies ``module`` in place, as torch does: the parameter moves to
    ``name + "_orig"``, the mask is registered as the buffer
    ``name + "_mask"``, and a forward pre-hook recomputes ``module.<name>`` as
    their product. A tensor that is already pruned (by fastprune or torch)
    gets the new method appended to its ``PruningContainer``. On any error the
    module is left exactly as it was.

    Args:
        module (nn.Module): module containing the tensor to prune.
        name (str): name of the parameter of ``module`` to prune.
        amount (int or float): quantity to prune. A float in [0, 1] is the
            fraction of the (still unpruned) units, rounded as
            ``round(amount * n)``; an int is an absolute count.

    Returns:
        module (nn.Module): the input module, pruned.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``; ``name`` is not a str or
            does not name a parameter (a buffer, a plain attribute); ``amount``
            is not an int or float (``bool`` included).
        PruningNameError: ``module`` has no attribute ``name`` (an
            ``AttributeError``, as in torch).
        ValueError: ``amount`` is a negative int, a float outside [0, 1], or
            more than the units still unpruned.

    Example::

        m = prune.random_unstructured(nn.Linear(2, 3), "weight", amount=1)
        assert int((m.weight_mask == 0).sum()) == 1
    """
    RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module, name, amount, importance_scores=None):
    """Prune the ``amount`` (still unpruned) units of ``module.<name>`` with the lowest ``|score|``.

    Fast path: one exact k-selection kernel instead of ``torch.topk``; for a
    tensor already pruned, the earlier mask is the exclusion set of that
    selection (no gather of the surviving units). Exactly ``amount`` units are
    pruned; among equal ``|score|`` the unit with the lower flat index is
    pruned first, and NaN ranks above ``+inf`` (pruned last). On tie-free
    scores the mask is torch's, bit for bit.

    Modifies ``module`` in place, as torch does: the parameter moves to
    ``name + "_orig"``, the mask is registered as the buffer
    ``name + "_mask"``, and a forward pre-hook recomputes ``module.<name>`` as
    their product. A tensor that is already pruned (by fastprune or torch)
    gets the new method appended to its ``PruningContainer``. On any error the
    module is left exactly as it was.

    Args:
        module (nn.Module): module containing the tensor to prune.
        name (str): name of the parameter of ``module`` to prune.
        amount (int or float): quantity to prune. A float in [0, 1] is the
            fraction of the (still unpruned) units, rounded as
            ``round(amount * n)``; an int is an absolute count.
        importance_scores (torch.Tensor, optional): scores of the parameter's
            shape ranking its units instead of the parameter's own values.
            Default: ``None``.

    Returns:
        module (nn.Module): the input module, pruned.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``; ``name`` is not a str or
            does not name a parameter (a buffer, a plain attribute); ``amount``
            is not an int or float (``bool`` included); ``importance_scores``
            is not a tensor.
        PruningNameError: ``module`` has no attribute ``name`` (an
            ``AttributeError``, as in torch).
        PruningShapeError: ``importance_scores`` is not shaped like the
            parameter (a ``ValueError`` and torch's ``AssertionError``).
        ValueError: ``amount`` is a negative int, a float outside [0, 1], or
            more than the units still unpruned.

    Example::

        m = prune.l1_unstructured(nn.Linear(2, 3), "weight", amount=0.5)
        assert int((m.weight_mask == 0).sum()) == 3
    """
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_structured(module, name, amount, dim):
    """Prune ``amount`` randomly chosen channels of ``module.<name>`` along ``dim``.

    Same random draws as torch, so the same seed prunes the same channels
    (barring equal draws).

    Modifies ``module`` in place, as torch does: the parameter moves to
    ``name + "_orig"``, the mask is registered as the buffer
    ``name + "_mask"``, and a forward pre-hook recomputes ``module.<name>`` as
    their product. A tensor that is already pruned (by fastprune or torch)
    gets the new method appended to its ``PruningContainer``. On any error the
    module is left exactly as it was.

    Args:
        module (nn.Module): module containing the tensor to prune.
        name (str): name of the parameter of ``module`` to prune.
        amount (int or float): channels to prune. A float in [0, 1] is the
            fraction of the channels along ``dim``; an int is a count.
        dim (int): index of the dimension of the channels.

    Returns:
        module (nn.Module): the input module, pruned.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``; ``name`` is not a str or
            does not name a parameter (a buffer, a plain attribute); ``amount``
            is not an int or float (``bool`` included); ``dim`` is not an int.
        PruningNameError: ``module`` has no attribute ``name`` (an
            ``AttributeError``, as in torch).
        ValueError: ``amount`` is a negative int, a float outside [0, 1], or
            more than the channels still unpruned; the tensor has fewer than 2
            dimensions.
        IndexError: ``dim`` is out of range for the tensor.

    Example::

        m = prune.random_structured(nn.Linear(5, 3), "weight", amount=1, dim=0)
        assert int((m.weight_mask.sum(1) == 0).sum()) == 1
    """
    RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module, name, amount, n, dim, importance_scores=None):
    """Prune the ``amount`` channels of ``module.<name>`` along ``dim`` with the lowest L``n`` norm.

    Fast path: a numeric ``n`` computes all channel norms in one pass of the
    ``channel_norms`` kernel, and the channels are chosen by the k-selection
    kernel. Among channels of equal norm, the lower index is pruned first.

    Modifies ``module`` in place, as torch does: the parameter moves to
    ``name + "_orig"``, the mask is registered as the buffer
    ``name + "_mask"``, and a forward pre-hook recomputes ``module.<name>`` as
    their product. A tensor that is already pruned (by fastprune or torch)
    gets the new method appended to its ``PruningContainer``. On any error the
    module is left exactly as it was.

    Args:
        module (nn.Module): module containing the tensor to prune.
        name (str): name of the parameter of ``module`` to prune.
        amount (int or float): channels to prune. A float in [0, 1] is the
            fraction of the channels along ``dim``; an int is a count.
        n (int, float, inf, -inf, "fro", "nuc"): order of the norm, as in
            :func:`torch.norm`.
        dim (int): index of the dimension of the channels.
        importance_scores (torch.Tensor, optional): scores of the parameter's
            shape whose channel norms rank the channels. Default: ``None``.

    Returns:
        module (nn.Module): the input module, pruned.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``; ``name`` is not a str or
            does not name a parameter (a buffer, a plain attribute); ``amount``
            is not an int or float (``bool`` included); ``dim`` is not an int;
            ``importance_scores`` is not a tensor.
        PruningNameError: ``module`` has no attribute ``name`` (an
            ``AttributeError``, as in torch).
        PruningShapeError: ``importance_scores`` is not shaped like the
            parameter (a ``ValueError`` and torch's ``AssertionError``).
        ValueError: ``amount`` is a negative int, a float outside [0, 1], or
            more than the channels still unpruned; the tensor has fewer than 2
            dimensions.
        IndexError: ``dim`` is out of range for the tensor.

    Example::

        m = prune.ln_structured(nn.Conv2d(5, 3, 2), "weight", amount=0.3, n=2, dim=1)
        assert int((m.weight_mask.sum((0, 2, 3)) == 0).sum()) == 2
    """
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module, name, mask):
    """Prune ``module.<name>`` with the given ``mask`` (0 = pruned).

    The mask is multiplied into the mask of an earlier pruning, if any.

    Modifies ``module`` in place, as torch does: the parameter moves to
    ``name + "_orig"``, the mask is registered as the buffer
    ``name + "_mask"``, and a forward pre-hook recomputes ``module.<name>`` as
    their product. A tensor that is already pruned (by fastprune or torch)
    gets the new method appended to its ``PruningContainer``. On any error the
    module is left exactly as it was.

    Args:
        module (nn.Module): module containing the tensor to prune.
        name (str): name of the parameter of ``module`` to prune.
        mask (torch.Tensor): the mask, shaped like the parameter; it is
            converted to the parameter's device and the mask dtype.

    Returns:
        module (nn.Module): the input module, pruned.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``; ``name`` is not a str or
            does not name a parameter (a buffer, a plain attribute); ``mask``
            is not a tensor.
        PruningNameError: ``module`` has no attribute ``name`` (an
            ``AttributeError``, as in torch).
        PruningShapeError: ``mask`` is not shaped like the parameter (a
            ``ValueError`` and torch's ``AssertionError``).

    Example::

        m = prune.custom_from_mask(nn.Linear(5, 3), "bias", mask=torch.tensor([0, 1, 0]))
        assert m.bias[0] == 0 and m.bias[2] == 0
    """
    CustomFromMask.apply(module, name, mask)
    return module


def _pruning_method_instance(pruning_method, kwargs):
    if not callable(pruning_method):
        raise TypeError(f"pruning_method must be a pruning method class, got {pruning_method!r}")
    method = pruning_method(**kwargs)
    if not isinstance(method, TorchBase):
        raise TypeError(f"pruning_method must build a BasePruningMethod, got {type(method).__name__}")
    method._tensor_name = "temp"
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError(
            'Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. '
            f"Found method {pruning_method} of type {method.PRUNING_TYPE}"
        )
    return method


def global_unstructured(parameters, pruning_method, importance_scores=None, **kwargs) -> None:
    """Prune all ``parameters`` together, as one tensor, with an unstructured ``pruning_method``.

    Every tensor is reparametrised as by :func:`l1_unstructured`
    (``name_orig``, ``name_mask``, a forward pre-hook), the new mask entering
    through ``CustomFromMask``. ``amount`` counts among the units of all
    tensors together that are not pruned yet.

    Fast path: the L1 method (fastprune's or torch's ``L1Unstructured``) runs
    as one k-selection over all tensors in place, without concatenating them.
    Ties: among equal ``|score|`` the unit with the lower global flat index
    (the tensors in the order given, each in row-major order) is pruned first,
    and NaN ranks above ``+inf``; on tie-free scores the masks are torch's,
    bit for bit. Any other
    unstructured method runs on the concatenated scores exactly as torch does.
    Either way, nothing is modified unless every mask could be computed.

    Args:
        parameters (Iterable of (module, name) tuples): the tensors to prune
            together; ``module`` an ``nn.Module``, ``name`` a str.
        pruning_method (type): a ``BasePruningMethod`` subclass (fastprune's,
            torch's or a user's) with ``PRUNING_TYPE = "unstructured"``, built
            as ``pruning_method(**kwargs)``.
        importance_scores (dict, optional): ``{(module, name): tensor}`` of
            scores shaped like their parameters, used instead of the
            parameters to rank the units. Entries for tensors not in
            ``parameters`` are ignored, as in torch. Default: ``None``.
        kwargs: arguments of ``pruning_method``, e.g. ``amount`` (int or
            float): a fraction of all the unpruned units, or a count.

    Raises:
        TypeError: ``parameters`` is not an iterable of ``(module, name)``
            pairs, a module or name is invalid, ``importance_scores`` is not a
            dict of real dense tensors, ``pruning_method`` does not build a
            ``BasePruningMethod``, or its ``PRUNING_TYPE`` is not
            ``"unstructured"`` (as in torch).
        PruningNameError: a module has no attribute ``name``.
        PruningShapeError: a score tensor is not shaped like its parameter.
        ValueError: ``parameters`` is empty (as in torch), a tensor listed
            twice, a tensor on the meta device, or an ``amount`` out of range
            or larger than the units left.

    Example::

        net = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 1))
        prune.global_unstructured(
            [(net[0], "weight"), (net[2], "weight")],
            pruning_method=prune.L1Unstructured,
            amount=20,
        )
        pruned = sum(int((m.weight_mask == 0).sum()) for m in (net[0], net[2]))
        assert pruned == 20
    """
    parameters = replayable(parameters)
    # sharded parameters: an argument error on one process is raised on every process
    with same_error_everywhere(parameters, importance_scores):
        found = resolve_targets(parameters, fn="global_unstructured")
        targets = [t.pair for t in found]
        scores = [
            getattr(t.module, t.name) if s is None else s
            for t, s in zip(found, resolve_scores(found, importance_scores))
        ]
        method = _pruning_method_instance(pruning_method, kwargs)
        if not targets:
            # torch raises here too (its torch.cat of no tensors); its words are kept so that code
            # matching them still does. A filter that matched nothing is a mistake to report.
            raise ValueError(
                "global_unstructured: parameters is empty, there is nothing to prune "
                "(torch.cat(): expected a non-empty list of Tensors)"
            )

        params = [getattr(m, n) for m, n in targets]
        masks = [existing_mask(m, n) for m, n in targets]
        for i, p in enumerate(params):
            if p.device.type == "meta" or scores[i].device.type == "meta":
                # torch refuses too; a mask "selected" on meta would be uninitialised memory after to_empty
                raise ValueError(
                    f"global_unstructured: parameters[{i}] is on the meta device and holds no data, so no unit "
                    "can be selected; materialise the model first (to_empty and load its weights)"
                )
        handler = sharded_handler(params + scores)
    soft = [handler is None and mk is not None and has_soft_values(mk) for mk in masks]
    products = None
    if handler is not None:  # sharded parameters: the selection spans every process
        new_masks = handler.global_masks(targets, scores, method, masks)
    elif uses_fast_l1(method) and not any(soft):
        new_masks = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
        # The pruned weights (orig * mask) are written in the selection's own
        # pass over the weights, instead of by one more pass at installation.
        origs = _plain_origs(targets, masks)
        if origs is not None:
            products = [torch.empty_like(o, memory_format=torch.contiguous_format) for o in origs]
        kselect_amount([s.detach() for s in scores], masks, new_masks, method.amount, values=origs,
                       applied=products)
        new_masks = [mark_binary(mk) for mk in new_masks]
    else:
        new_masks = _global_masks_by_concatenation(method, params, scores, masks)

    # torch installs every global mask with custom_from_mask, which multiplies it
    # into the existing one: values other than 0/1 come out squared. Same here.
    new_masks = [old * new if is_soft else new for old, new, is_soft in zip(masks, new_masks, soft)]
    entries = []
    for (module, name), mask in zip(targets, new_masks):
        hook = CustomFromMask(mask)
        hook._tensor_name = name
        entries.append((module, name, hook, mask))
    install_many(entries, PruningContainer, products)


def _plain_origs(targets, masks):
    """The original tensors (detached) of ``targets`` when the pruned weights can
    be written together with the masks, else ``None``: every target installs
    a plain ``orig * mask``, and every tensor is a plain one outside any
    torch function mode or compilation (elsewhere the installation multiplies).
    ``masks``: each target's existing mask, or ``None`` where it is not pruned."""
    if torch._C._is_torch_function_mode_enabled() or torch.compiler.is_compiling():
        return None
    origs = []
    for (module, name), mask in zip(targets, masks):
        orig = module._parameters.get(name if mask is None else name + "_orig")
        if type(orig) not in PLAIN_TENSOR_TYPES or orig.device.type == "meta" or not applies_plain_product(module, name):
            return None
        origs.append(orig.detach())
    return origs


def _global_masks_by_concatenation(method, params, scores, masks):
    """torch's algorithm for methods without a fast path: one flat tensor of scores."""
    flat_scores = torch.cat([s.detach().reshape(-1) for s in scores])
    flat_default = torch.cat(
        [
            (mk if mk is not None else torch.ones_like(p)).reshape(-1).to(flat_scores.dtype)
            for p, mk in zip(params, masks)
        ]
    )
    container = PruningContainer()
    container._tensor_name = "temp"
    container.add_pruning_method(method)
    final = container.compute_mask(flat_scores, flat_default)
    out, offset = [], 0
    for p in params:
        n = p.numel()
        out.append(final[offset:offset + n].reshape(p.shape).to(p.dtype).clone())
        offset += n
    return out


def remove(module, name):
    """Make the pruning of ``module.<name>`` permanent and drop the reparametrisation.

    ``name_orig`` becomes the parameter ``name`` again, holding
    ``name_orig * name_mask`` (computed in place, without a second copy of the
    weight); ``name_mask`` and the forward pre-hook are deleted. Works on
    tensors pruned by torch as well. The pruning itself is not undone.

    Args:
        module (nn.Module): module containing the pruned tensor.
        name (str): name of the pruned parameter of ``module``.

    Returns:
        module (nn.Module): the input module.

    Raises:
        ValueError: ``module.<name>`` is not pruned (as in torch).

    Example::

        m = prune.random_unstructured(nn.Linear(5, 7), name="weight", amount=0.2)
        m = prune.remove(m, name="weight")
        assert "weight" in dict(m.named_parameters())
    """
    for k, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, TorchBase) and hook._tensor_name == name:
            hook.remove(module)
            del module._forward_pre_hooks[k]
            forget_deepcopy(module, leaving=None)  # also when the hook was torch's own class
            return module
    raise ValueError(f"Parameter '{name}' of module {module} has to be pruned before pruning can be removed")


def is_pruned(module) -> bool:
    """Whether ``module`` or any of its submodules carries a pruning hook.

    Hooks of fastprune and of ``torch.nn.utils.prune`` both count.

    Args:
        module (nn.Module): the module to inspect.

    Returns:
        bool: ``True`` when some tensor of ``module`` is pruned torch-style.

    Example::

        m = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 1))
        assert not prune.is_pruned(m)
        prune.random_unstructured(m[1], name="weight", amount=0.2)
        assert prune.is_pruned(m)
    """
    for _, submodule in module.named_modules():
        for hook in submodule._forward_pre_hooks.values():
            if isinstance(hook, TorchBase):
                return True
    return False


def _compute_norm(t, n, dim):
    """Per-channel L``n`` norm of ``t`` along ``dim`` (torch's helper of the same name).

    Args:
        t (torch.Tensor): tensor whose channels are measured.
        n (int, float, inf, -inf, "fro", "nuc"): order of the norm.
        dim (int): dimension of the channels.

    Returns:
        torch.Tensor: one norm per channel, of length ``t.shape[dim]``.
    """
    return torch_compute_norm(t, n, dim)
