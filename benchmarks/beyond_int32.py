"""global_unstructured and l1_unstructured past 2^31 elements, bf16, torch's layout.

Two cases, each checked for exactly k pruned units and the threshold rule
(every pruned |w| <= every kept |w|; among units equal to the threshold the
lower global index is pruned first):

- "across tensors": ``global_unstructured`` over N tensors of 8192 x 8192
  (34 by default: 2.28e9 elements > 2^31 = 2.147e9);
- "one tensor": ``l1_unstructured`` on one 46400 x 46400 tensor (2.15e9).

Masks are in the weight's dtype (bf16) and ``module.weight`` is the pruned
copy, as torch lays them out, so each case holds about 3x the weights' bytes
(~13-14 GB). Then torch runs on the same input (regenerated from the seed) in
a child process with a time limit and an address-space limit, and its outcome
(result, error message, or time-out) is recorded. Needs ~14 GB free::

    python benchmarks/beyond_int32.py                   # both cases, then torch
    python benchmarks/beyond_int32.py --scale 0.001     # the same logic on small tensors (a quick check)
"""
import argparse
import os
import resource
import subprocess
import sys
import time

import torch
from torch import nn

CHUNK = 1 << 26  # elements per generation / check step: temporaries stay ~0.5 GB


def fill_weights(tensors, seed):
    """N(0, 1) bf16 weights, generated chunk by chunk from one seed (reproducible in any process)."""
    g = torch.Generator().manual_seed(seed)
    for t in tensors:
        flat = t.view(-1)
        for b in range(0, flat.numel(), CHUNK):
            e = min(flat.numel(), b + CHUNK)
            flat[b:e] = torch.randn(e - b, generator=g).to(t.dtype)


def make_modules(shapes, seed):
    mods = []
    for shape in shapes:
        m = nn.Module()
        m.weight = nn.Parameter(torch.empty(shape, dtype=torch.bfloat16), requires_grad=False)
        mods.append(m)
    fill_weights([m.weight.data for m in mods], seed)
    return mods


def check_exact(weights, masks, k):
    """k pruned; max |pruned| <= min |kept|; ties at the threshold pruned in global index order."""
    pruned = 0
    max_pruned = -1.0
    min_kept = float("inf")
    for w, m in zip(weights, masks):
        wf, mf = w.reshape(-1), m.reshape(-1)
        for b in range(0, wf.numel(), CHUNK):
            a = wf[b:b + CHUNK].float().abs()
            keep = mf[b:b + CHUNK] != 0
            pruned += int((~keep).sum())
            if bool((~keep).any()):
                max_pruned = max(max_pruned, float(a[~keep].max()))
            if bool(keep.any()):
                min_kept = min(min_kept, float(a[keep].min()))
    threshold = max_pruned
    # Ties: every pruned unit equal to the threshold comes before every kept one.
    last_pruned_tie, first_kept_tie, offset = -1, None, 0
    for w, m in zip(weights, masks):
        wf, mf = w.reshape(-1), m.reshape(-1)
        for b in range(0, wf.numel(), CHUNK):
            tie = wf[b:b + CHUNK].float().abs() == threshold
            keep = mf[b:b + CHUNK] != 0
            pt = (tie & ~keep).nonzero()
            kt = (tie & keep).nonzero()
            if pt.numel():
                last_pruned_tie = offset + b + int(pt[-1])
            if kt.numel() and first_kept_tie is None:
                first_kept_tie = offset + b + int(kt[0])
        offset += wf.numel()
    ties_ok = first_kept_tie is None or last_pruned_tie < first_kept_tie
    return {
        "k_expected": k,
        "k_pruned": pruned,
        "threshold": threshold,
        "min_kept": min_kept,
        "exact": pruned == k and max_pruned <= min_kept and ties_ok,
        "ties_in_index_order": ties_ok,
    }


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(name, shapes, seed):
    import fastprune

    mods = make_modules(shapes, seed)
    n = sum(m.weight.numel() for m in mods)
    k = round(0.5 * n)
    t0 = time.perf_counter()
    if len(mods) == 1:
        fastprune.l1_unstructured(mods[0], "weight", amount=0.5)
        call = "l1_unstructured"
    else:
        fastprune.global_unstructured([(m, "weight") for m in mods], pruning_method=fastprune.L1Unstructured,
                                      amount=0.5)
        call = "global_unstructured"
    dt = time.perf_counter() - t0
    layout = all(m.weight_mask.dtype == torch.bfloat16 and m.weight_orig.dtype == torch.bfloat16 for m in mods)
    check = check_exact([m.weight_orig for m in mods], [m.weight_mask for m in mods], k)
    # module.weight is orig * mask: spot-check the first and last chunk of every tensor
    for m in mods:
        w, o, mk = m.weight.view(-1), m.weight_orig.view(-1), m.weight_mask.view(-1)
        for sl in (slice(0, CHUNK), slice(max(0, w.numel() - CHUNK), w.numel())):
            assert torch.equal(w[sl], o[sl] * mk[sl]), "module.weight != weight_orig * weight_mask"
    del mods
    return {"case": name, "call": call, "tensors": len(shapes), "elements": n, "over_2^31": n > 2**31,
            "seconds": dt, "torch_layout_bf16": layout, **check, "peak_rss_gb": peak_rss_gb()}


TORCH_CHILD = r"""
import sys, time, resource, torch
sys.path.insert(0, sys.argv[1])
import beyond_int32 as b
import torch.nn.utils.prune as tp
shapes = eval(sys.argv[2]); seed = int(sys.argv[3])
mods = b.make_modules(shapes, seed)
t0 = time.perf_counter()
if len(mods) == 1:
    tp.l1_unstructured(mods[0], "weight", amount=0.5)
else:
    tp.global_unstructured([(m, "weight") for m in mods], pruning_method=tp.L1Unstructured, amount=0.5)
dt = time.perf_counter() - t0
n = sum(m.weight.numel() for m in mods)
pruned = sum(int((m.weight_mask == 0).sum()) for m in mods)
print(f"RESULT ran in {dt:.1f} s, pruned {pruned} of {n} (k={round(0.5 * n)})")
"""


def run_torch(shapes, seed, timeout, as_limit_gb):
    def limit():
        lim = int(as_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", TORCH_CHILD, os.path.dirname(os.path.abspath(__file__)),
                            repr(shapes), str(seed)], capture_output=True, text=True, timeout=timeout,
                           preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return f"no result within the {timeout} s limit"
    dt = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith("RESULT"):
            return line[len("RESULT "):]
    err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    last = err[-1] if err else f"exit status {p.returncode}"
    return f"failed after {dt:.0f} s (address space limited to {as_limit_gb:g} GB): {last[:300]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every tensor's rows by this (quick checks)")
    ap.add_argument("--layers", type=int, default=34)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--torch-timeout", type=int, default=300)
    ap.add_argument("--torch-as-gb", type=float, default=10.0, help="address-space limit of torch's child process")
    a = ap.parse_args()
    rows8k = max(1, int(8192 * a.scale))
    rows46k = max(1, int(46400 * a.scale))
    cases = [("across tensors", [(rows8k, 8192)] * a.layers), ("one tensor", [(rows46k, 46400)])]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 2^31 = {2**31}")
    results = []
    for name, shapes in cases:
        r = run_case(name, shapes, a.seed)
        results.append(r)
        print(r, flush=True)
    print()
    print("| case | call | elements | > 2^31 | fastprune | exact k | threshold rule | peak RSS so far | torch on the same input |")
    print("|---|---|---:|---|---:|---|---|---:|---|")
    for (name, shapes), r in zip(cases, results):
        outcome = "skipped" if a.skip_torch else run_torch(shapes, a.seed, a.torch_timeout, a.torch_as_gb)
        print(f"| {name} ({r['tensors']} x {shapes[0][0]} x {shapes[0][1]}) | `{r['call']}` | {r['elements']:,} | "
              f"{'yes' if r['over_2^31'] else 'no'} | {r['seconds']:.1f} s | "
              f"{r['k_pruned']:,} of k={r['k_expected']:,} | {'holds' if r['exact'] else 'VIOLATED'} "
              f"(threshold {r['threshold']:g}) | {r['peak_rss_gb']:.1f} GB | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
