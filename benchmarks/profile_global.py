"""Where the time of fastprune.global_unstructured goes (in-process, best of N).

    python benchmarks/profile_global.py [--params 105M] [--width 2048] [--repeat 5]

Phases: k-selection into masks in the weight's dtype (what global_unstructured
writes), the same into 1-bit masks (what sparsify_ writes), the pruned weights
(orig * mask, one new tensor per layer), the whole call, and a copy of the same
bytes. Also a single-thread run of the k-selection, which shows how much of the
2-thread time is spent waiting for the second core on a loaded machine.
"""
import argparse
import time

import torch

import fastprune
from fastprune import bench, ops


def best(fn, repeat, setup=None):
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--params", type=bench.parse_count, default=bench.parse_count("105M"))
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    shapes = bench.model_shapes(a.params, "square", a.width)
    model = bench.build_model(shapes, torch.float32, torch.device("cpu"), 0)
    ws = [m.weight.detach() for m in model]
    n = sum(w.numel() for w in ws)
    k = n // 2
    dst = torch.empty(max(w.numel() for w in ws))
    pairs = bench.pairs(model)
    masks = [torch.empty_like(w) for w in ws]
    rows = []

    def copy():
        for w in ws:
            dst[: w.numel()].copy_(w.reshape(-1))

    rows.append(("memcpy of the weights (reused 1-layer buffer)", best(copy, a.repeat)))
    rows.append(("kselect_ into new fp32 masks (fresh pages)",
                 best(lambda: ops.kselect_(ws, [None] * len(ws), [torch.empty_like(w) for w in ws], k), a.repeat)))
    rows.append(("kselect_ into reused fp32 masks", best(lambda: ops.kselect_(ws, [None] * len(ws), masks, k), a.repeat)))
    rows.append(("kselect packed (1-bit masks)", best(lambda: ops.kselect(ws, None, k, packed=True), a.repeat)))
    rows.append(("pruned weights: mask_mul per layer (fresh pages)",
                 best(lambda: [ops.mask_mul(w, m) for w, m in zip(ws, masks)], a.repeat)))
    rows.append(("global_unstructured, whole call",
                 best(lambda: fastprune.global_unstructured(pairs, fastprune.L1Unstructured, amount=0.5), a.repeat,
                      setup=lambda: bench.unprune_(model))))
    bench.unprune_(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows.append(("kselect_ into reused fp32 masks, 1 thread",
                 best(lambda: ops.kselect_(ws, [None] * len(ws), masks, k), a.repeat)))
    torch.set_num_threads(threads)
    nbytes = n * 4
    print(f"{len(shapes)} x Linear({a.width}, {a.width}), {n / 1e6:.1f}M fp32 ({nbytes / 1e9:.2f} GB), best of {a.repeat}")
    for name, t in rows:
        print(f"  {name:<52} {t * 1e3:8.1f} ms  {nbytes / t / 1e9:6.2f} GB/s")


if __name__ == "__main__":
    main()
