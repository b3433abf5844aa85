"""Time and bytes communicated per sharded pruning call against the number of processes.

Runs one global pruning call (``--call``: ``sparsify_`` with L1, ``sparsify_``
with ``method="random"``, or ``global_unstructured`` with
``RandomUnstructured``) on a model of ``--layers`` square ``Linear`` weights,
whose weights are DTensors with alternating ``Shard(0)`` / ``Shard(1)``
placements, with 1, 2, 3, 4... processes on the gloo backend over loopback,
next to the same call in one process on the whole (unsharded) model, after the
same ``torch.manual_seed``. Every sharded run is checked against the
one-process masks (bit for bit).

Usage::

    python benchmarks/bench_distributed.py --layers 16 --dim 1024 --world-sizes 1 2 4 --repeat 3
    python benchmarks/bench_distributed.py --call global_random --layers 4 --dim 1024

Prints a markdown table: world size, best time of the sharded call (the
slowest process), bytes this process sent and received, collectives, radix
and tie passes, and the one-process time.
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import tempfile
import time

import torch
from torch import nn


def _model(layers: int, dim: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(dim, dim, bias=False) for _ in range(layers)])
    with torch.no_grad():
        for lin in model:
            lin.weight.copy_(torch.randn(dim, dim, generator=gen) * 0.02)
    return model


def _prune(model, args):
    """The benchmarked call; returns the keep-masks (local shards for DTensors)."""
    import fastprune

    torch.manual_seed(args.seed)
    if args.call == "global_random":
        pairs = [(lin, "weight") for lin in model]
        fastprune.global_unstructured(pairs, fastprune.RandomUnstructured, amount=args.amount)
        return [lin.weight_mask != 0 for lin in model]
    method = "random" if args.call == "sparsify_random" else "l1"
    ms = fastprune.sparsify_(model, args.amount, method=method)
    masks = [ms.mask((lin, "weight")) for lin in model]
    ms.remove()
    return masks


def _worker(rank, ws, port, args, out_dir):
    import torch.distributed as dist
    import torch.distributed.nn as _dist_nn  # noqa: F401 - before the group (docs/llm.md, several processes)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    import fastprune

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=ws)
    mesh = init_device_mesh("cpu", (ws,))
    ref_masks = torch.load(os.path.join(out_dir, "ref.pt"))
    times, stats = [], None
    for rep in range(args.repeat):
        model = _model(args.layers, args.dim, args.seed)
        for i, lin in enumerate(model):
            full = lin.weight.detach()
            pl = Shard(i % 2)
            shape, off = compute_local_shape_and_global_offset(full.shape, mesh, [pl])
            local = full[tuple(slice(o, o + s) for o, s in zip(off, shape))].clone()
            lin.weight = nn.Parameter(
                DTensor.from_local(local, mesh, [pl], run_check=False, shape=full.shape, stride=full.stride())
            )
        dist.barrier()
        start = time.perf_counter()
        masks = _prune(model, args)
        elapsed = torch.tensor([time.perf_counter() - start])
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed))
        stats = fastprune.distributed.last_call_stats()
        if rep == 0:  # exactness: every local mask equals its block of the one-process mask
            for i, m in enumerate(masks):
                shape, off = compute_local_shape_and_global_offset(m.shape, mesh, m.placements)
                want = ref_masks[i][tuple(slice(o, o + s) for o, s in zip(off, shape))]
                assert torch.equal(m.to_local(), want), f"world size {ws}: mask {i} differs from one process"
    if rank == 0:
        torch.save({"times": times, "stats": stats}, os.path.join(out_dir, f"ws{ws}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--call", choices=["sparsify_l1", "sparsify_random", "global_random"], default="sparsify_l1")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (and for the one-process run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch.multiprocessing as mp

    import fastprune
    from fastprune.progress import progress_bar

    n = args.layers * args.dim * args.dim
    torch.set_num_threads(args.threads)
    one = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            model = _model(args.layers, args.dim, args.seed)
            start = time.perf_counter()
            masks = _prune(model, args)
            one.append(time.perf_counter() - start)
        torch.save(masks, os.path.join(tmp, "ref.pt"))
        rows = []
        for ws in progress_bar(args.world_sizes, desc="world sizes"):
            mp.spawn(_worker, args=(ws, _free_port(), args, tmp), nprocs=ws, join=True)
            res = torch.load(os.path.join(tmp, f"ws{ws}.pt"))
            rows.append((ws, min(res["times"]), res["stats"]))

    info = fastprune.build_info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"fastprune kernels: {'C++ extension' if info['extension'] else 'pure-torch fallback'}; load {load:.1f}")
    print(f"Model: {args.layers} x Linear({args.dim}, {args.dim}) fp32 = {n / 1e6:.1f}M parameters, "
          f"{args.call} amount={args.amount}; best of {args.repeat}, "
          f"{args.threads} thread(s) per process.")
    print(f"One process, whole model: {min(one) * 1e3:.1f} ms\n")
    print("| processes | time (ms) | vs one process | bytes per process | collectives | radix passes | tie passes |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for ws, t, st in rows:
        print(f"| {ws} | {t * 1e3:.1f} | {t / min(one):.2f}x | {st['bytes']:,} | {st['collectives']} | "
              f"{st['radix_passes']} | {st['tie_passes']} |")


if __name__ == "__main__":
    main()
