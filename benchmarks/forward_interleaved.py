"""Pruned forward pass, torch's hooks against fastprune's, interleaved round by round.

    python benchmarks/forward_interleaved.py [--sizes 1M,10M,100M] [--rounds 15]

The Llama-shaped models of ``python -m fastprune.bench``, one row of input per
layer, so the time is the forward pre-hooks' (each recomputes
``weight = weight_orig * weight_mask``), not the matmuls'. Three copies of the
same masks: torch's ``custom_from_mask`` (float masks, torch's hook),
fastprune with float masks, and fastprune with bool masks. Each round runs the
three in turn, so load from other processes hits all of them alike; the table
gives the best and the median round and the ratios against torch.
"""
import argparse
import statistics
import time

import torch
import torch.nn.utils.prune as tp

import fastprune
from fastprune import bench


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,100M")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| params | layers | torch (float masks) | fastprune (float masks) | fastprune (bool masks) | "
          "speedup, float masks | speedup, bool masks |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in a.sizes.split(","):
        shapes = bench.model_shapes(bench.parse_count(size))
        models = {lib: bench.build_model(shapes, torch.float32, torch.device("cpu"), 0) for lib in
                  ("torch", "fastprune", "fastprune-bool")}
        fastprune.global_unstructured(bench.pairs(models["fastprune"]), fastprune.L1Unstructured, amount=0.5)
        masks = [m.weight_mask.clone() for m in models["fastprune"]]
        for m, mk in zip(models["torch"], masks):
            tp.custom_from_mask(m, "weight", mk)
        for m, mk in zip(models["fastprune-bool"], masks):
            fastprune.custom_from_mask(m, "weight", mk)
            m._buffers["weight_mask"] = m._buffers["weight_mask"].bool()
        g = torch.Generator().manual_seed(0)
        xs = {n: torch.randn(1, n, generator=g) for n in {s[1] for s in shapes}}
        outs = {}
        with torch.no_grad():
            for lib, model in models.items():
                outs[lib] = [m(xs[m.weight_orig.shape[1]]) for m in model]
            for lib in ("fastprune", "fastprune-bool"):
                assert all(torch.equal(x, y) for x, y in zip(outs[lib], outs["torch"])), lib
            times = {lib: [] for lib in models}
            for _ in range(a.rounds):
                for lib, model in models.items():
                    t0 = time.perf_counter()
                    for m in model:
                        m(xs[m.weight_orig.shape[1]])
                    times[lib].append(time.perf_counter() - t0)
        best = {lib: min(t) for lib, t in times.items()}
        med = {lib: statistics.median(t) for lib, t in times.items()}

        def cell(lib):
            return f"{1e3 * best[lib]:.2f} ms (median {1e3 * med[lib]:.2f})"

        print(f"| {size} | {len(shapes)} | {cell('torch')} | {cell('fastprune')} | {cell('fastprune-bool')} | "
              f"{best['torch'] / best['fastprune']:.2f}x | {best['torch'] / best['fastprune-bool']:.2f}x |", flush=True)
        del models, masks, outs


if __name__ == "__main__":
    main()
