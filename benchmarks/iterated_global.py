"""Iterated global pruning: a second global_unstructured call on tensors that already have masks.

    python benchmarks/iterated_global.py [--width 2048] [--layers 25] [--repeat 5] [--skip-torch]

The second call selects among the units the existing fp32 masks keep, so
``amount`` counts those units. fastprune counts them inside the k-selection's
first pass over the weights and knows its own masks hold only 0 and 1, so it
makes no pass of its own over the masks; the rows "count the kept units" and
"check the masks for values other than 0/1" time the two passes a call would
otherwise add (what fastprune did before). torch (one run) is the peer.
"""
import argparse
import time

import torch

import fastprune
from fastprune import bench


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-torch", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    layers = [torch.nn.Linear(a.width, a.width, bias=False) for _ in range(a.layers)]
    pairs = [(m, "weight") for m in layers]
    n = sum(m.weight.numel() for m in layers)

    second, count, soft = [], [], []
    for _ in range(a.repeat):
        bench.unprune_(layers)
        fastprune.global_unstructured(pairs, pruning_method=fastprune.L1Unstructured, amount=0.5)
        masks = [m.weight_mask for m in layers]
        t0 = time.perf_counter()
        sum(int(torch.count_nonzero(mk)) for mk in masks)
        count.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        any(bool(((mk != 0) & (mk != 1)).any()) for mk in masks)
        soft.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fastprune.global_unstructured(pairs, pruning_method=fastprune.L1Unstructured, amount=0.5)
        second.append(time.perf_counter() - t0)
    left = sum(int((m.weight_mask != 0).sum()) for m in layers)
    print(f"{a.layers} x Linear({a.width}, {a.width}) fp32, {n / 1e6:.1f}M units, amount 0.5 twice: "
          f"{left:,} kept (expected {n - round(0.5 * n) - round(0.5 * (n - round(0.5 * n))):,}); best of {a.repeat}")
    print(f"  fastprune, second call (masks present)                 {1e3 * min(second):8.1f} ms")
    print(f"  a pass counting the kept units (torch.count_nonzero)   {1e3 * min(count):8.1f} ms")
    print(f"  a pass checking the masks for values other than 0/1    {1e3 * min(soft):8.1f} ms")
    if not a.skip_torch:
        import torch.nn.utils.prune as tp

        bench.unprune_(layers)
        tp.global_unstructured(pairs, pruning_method=tp.L1Unstructured, amount=0.5)
        t0 = time.perf_counter()
        tp.global_unstructured(pairs, pruning_method=tp.L1Unstructured, amount=0.5)
        dt = time.perf_counter() - t0
        print(f"  torch, second call (one run)                           {1e3 * dt:8.1f} ms "
              f"-> fastprune {dt / min(second):.0f}x faster")


if __name__ == "__main__":
    main()
