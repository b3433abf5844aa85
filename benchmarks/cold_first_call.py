"""First global_unstructured call of a fresh process (every page it writes is new).

The benchmark command reports the best of several runs in one process, where
the allocator can hand back pages freed by the previous run; a script that
prunes once pays the kernel's zero-filling of every new page (the masks and the
pruned weights torch's layout requires) on top. This prints that cold time for
torch and fastprune, each in its own process, next to a first-touch copy of
the weights (a fresh process copying them into new memory), and for each the
process's CPU time (user, system) and minor page faults, which show the part
spent by the kernel handing out new pages. A second row copies the weights
twice: the two new tensors of the weights' size that torch's layout needs
(masks and pruned weights), written from the weights, with nothing selected:
the floor of any first call that produces that layout (the same
``fastprune.bench.first_touch_copies`` that ``python -m fastprune.bench``
measures as the ``two_copies`` floor of its cases). Then the warm
figures: best of ``--warm`` calls in one process against a copy into reused
memory.

    python benchmarks/cold_first_call.py [--runs 3] [--skip-torch] [--thp]

``--thp`` sets ``THP_MEM_ALLOC_ENABLE=1`` in the children (torch's CPU
allocator then asks for transparent huge pages on large allocations).
"""
import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys, time, resource, torch
from fastprune.bench import first_touch_copies
lib = sys.argv[1]
torch.manual_seed(0)
layers = [torch.nn.Linear(2048, 2048, bias=False) for _ in range(25)]
if lib == "copy":
    run = lambda: first_touch_copies([l.weight for l in layers], 1)
elif lib == "two":  # the floor of the benchmark command's global_l1 case (fastprune.bench.FLOORS["two_copies"])
    run = lambda: first_touch_copies([l.weight for l in layers], 2)
else:
    if lib == "torch":
        import torch.nn.utils.prune as P
    else:
        import fastprune as P
    def run():
        P.global_unstructured([(l, "weight") for l in layers], pruning_method=P.L1Unstructured, amount=0.5)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
keep = run()
t1 = time.perf_counter()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt)
"""

WARM = r"""
import sys, time, torch
import fastprune
from fastprune import bench
torch.manual_seed(0)
layers = [torch.nn.Linear(2048, 2048, bias=False) for _ in range(25)]
ws = [l.weight.detach() for l in layers]
dst = [torch.empty_like(w) for w in ws]
best_copy, best_prune = 1e9, 1e9
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter()
    for w, d in zip(ws, dst):
        d.copy_(w)
    best_copy = min(best_copy, time.perf_counter() - t0)
    bench.unprune_(layers)
    t0 = time.perf_counter()
    fastprune.global_unstructured([(l, "weight") for l in layers], pruning_method=fastprune.L1Unstructured, amount=0.5)
    best_prune = min(best_prune, time.perf_counter() - t0)
print(best_prune, best_copy)
"""


def child(code, *args, thp=False):
    env = dict(os.environ)
    if thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env)
    return [float(x) for x in out.stdout.strip().splitlines()[-1].split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warm", type=int, default=7)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--thp", action="store_true")
    args = ap.parse_args()
    print("25 x Linear(2048, 2048) fp32 (0.42 GB), global L1, amount 0.5; each run a fresh process"
          + (" (THP_MEM_ALLOC_ENABLE=1)" if args.thp else ""))
    print("| first call | wall (best) | user CPU | system CPU | minor faults | runs (wall, ms) |")
    print("|---|---:|---:|---:|---:|---|")
    rows = {}
    libs = ["copy", "two", "fastprune"] + ([] if args.skip_torch else ["torch"])
    for lib in libs:
        runs = [child(CHILD, lib, thp=args.thp) for _ in range(1 if lib == "torch" else args.runs)]
        best = min(runs, key=lambda r: r[0])
        rows[lib] = best
        name = {"copy": "first-touch copy of the weights", "two": "two first-touch copies (the layout's floor)",
                "fastprune": "fastprune", "torch": "torch"}[lib]
        print(f"| {name} | {1e3 * best[0]:.1f} ms | {1e3 * best[1]:.0f} ms | {1e3 * best[2]:.0f} ms | "
              f"{int(best[3]):,} | {[round(1e3 * r[0]) for r in runs]} |", flush=True)
    fp, cp = rows["fastprune"], rows["copy"]
    print(f"fastprune / first-touch copy: wall {fp[0] / cp[0]:.2f}x, CPU (user + system) "
          f"{(fp[1] + fp[2]) / (cp[1] + cp[2]):.2f}x, page faults {fp[3] / cp[3]:.2f}x")
    two = rows["two"]
    print(f"fastprune / two first-touch copies: wall {fp[0] / two[0]:.2f}x, CPU {(fp[1] + fp[2]) / (two[1] + two[2]):.2f}x")
    if "torch" in rows:
        print(f"torch / fastprune: {rows['torch'][0] / fp[0]:.1f}x")
    prune, copy = child(WARM, str(args.warm), thp=args.thp)
    print(f"warm, best of {args.warm} in one process: fastprune {1e3 * prune:.1f} ms, copy into reused memory "
          f"{1e3 * copy:.1f} ms: {prune / copy:.1f}x")


if __name__ == "__main__":
    main()
