"""The collectives of one sharded pruning call over one process group, with the bytes they carry."""
from __future__ import annotations

import pickle

import torch
import torch.distributed as dist

from ..core.chunked_select import LocalComm

Tensor = torch.Tensor


class Comm(LocalComm):
    """:class:`~fastprune.core.chunked_select.LocalComm` over a process group.

    ``bytes`` counts the payload this process contributes and receives per
    collective (an ``all_reduce`` of n bytes counts n, an ``all_gather`` counts
    the world size times the gathered object), the figure a user can compare
    with the size of the weights.
    """

    def __init__(self, group, device_type: str = "cpu") -> None:
        # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
        if device_type == "cuda" and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        super().__init__(device)
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def all_reduce(self, t: Tensor) -> Tensor:
        if self.world > 1:
            dist.all_reduce(t, group=self.group)
        self.bytes += t.numel() * t.element_size()
        self.collectives += 1
        return t

    def all_gather_object(self, obj) -> list:
        out = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(out, obj, group=self.group)
        else:
            out[0] = obj
        self.bytes += len(pickle.dumps(obj)) * self.world
        self.collectives += 1
        return out

    def broadcast_tensor(self, t: Tensor) -> Tensor:
        """``t`` as the group's first process holds it (same shape and dtype on every process)."""
        if self.world > 1:
            buf = t.to(self.device, copy=True)
            src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
            dist.broadcast(buf, src=src, group=self.group)
            t = buf.to(t.device)
        self.bytes += t.numel() * t.element_size()
        self.collectives += 1
        return t
