"""Checks of a model made before :func:`fastprune.llm.prune` changes anything.

* :func:`check_model_has_data`: no tensor of the model on the meta device, nor
  the pruning ``device`` itself (a block moved there would lose its weights).

Without it torch raises ``Tensor.item() cannot be called on meta tensors``
from deep inside the selection.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_model_has_data"]


def check_model_has_data(model: nn.Module, device: torch.device) -> None:
    """Raise ``ValueError`` naming the device when ``device`` or a tensor of ``model`` is on the meta device.

    Args:
        model: the model to prune.
        device: where the blocks are to be pruned.

    Raises:
        ValueError: naming the first parameter or buffer on the meta device,
            or ``device``.
    """
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.device.type == "meta":
                raise ValueError(
                    f"model: {kind} {name} is on the meta device and holds no data, so nothing can be "
                    "calibrated or selected; materialise the model first (load it with from_pretrained, or "
                    "model.to_empty(device=...) and load its weights)"
                )
    if device.type == "meta":
        raise ValueError(
            "device='meta' holds no data: the blocks moved there would lose their weights; "
            "give the device to prune on (cpu, cuda, ...)"
        )
