"""First global_unstructured call of a fresh process (every page it writes is new).

The benchmark command reports the best of several runs in one process, where
the allocator can hand back pages freed by the previous run; a script that
prunes once pays the kernel's zero-filling of every new page (the masks and the
pruned weights torch's layout requires) on top. This prints that cold time for
torch and fastprune, each in its own process.

    python benchmarks/cold_first_call.py [--runs 3] [--skip-torch]
"""
import argparse
import subprocess
import sys

CHILD = r"""
import sys, time, torch
lib = sys.argv[1]
if lib == "torch":
    import torch.nn.utils.prune as P
else:
    import fastprune as P
torch.manual_seed(0)
layers = [torch.nn.Linear(2048, 2048, bias=False) for _ in range(25)]
t0 = time.perf_counter()
P.global_unstructured([(l, "weight") for l in layers], pruning_method=P.L1Unstructured, amount=0.5)
print(time.perf_counter() - t0)
"""


def cold_time(lib):
    out = subprocess.run([sys.executable, "-c", CHILD, lib], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    fast = [cold_time("fastprune") for _ in range(args.runs)]
    print(f"fastprune, 25 x Linear(2048, 2048) fp32, first call of a fresh process: "
          f"min {1e3 * min(fast):.1f} ms, runs {[round(1e3 * t, 1) for t in fast]}")
    if not args.skip_torch:
        slow = cold_time("torch")
        print(f"torch, same, one run: {slow:.2f} s -> speedup {slow / min(fast):.1f}x")


if __name__ == "__main__":
    main()
