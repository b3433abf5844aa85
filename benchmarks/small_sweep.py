"""Per-call cost from 8 elements to 100M: fastprune against torch.nn.utils.prune, interleaved.

    python benchmarks/small_sweep.py                       # 8 ... 100M, plus the many-small-layers models
    python benchmarks/small_sweep.py --sizes 8,64,4K --rounds 9
    python benchmarks/small_sweep.py --paths-only           # extension against pure-torch fallback only

Rows:
- ``l1_unstructured n``: one call on one tensor of n fp32 elements (amount 0.3;
  below 100K elements each round reports the mean of up to 100 calls);
- ``kselect n``: the selection alone, ``fastprune.ops.kselect_`` against ``torch.topk``
  of |w| (what torch's L1Unstructured runs);
- ``l1 2000 x Linear(8, 8)`` / ``ln 500 x Linear(64, 64)``: per-layer pruning of a
  model made of many small layers, the whole loop timed; likewise
  ``random_unstructured`` and ``remove`` (of an L1 pruning) on 2000 x Linear(8, 8),
  and ``global_unstructured`` over groups of 4 of them (500 calls).

``l1 1000 x Linear(8, 8)`` by path: the same loop (``l1_unstructured``, amount
0.3, on 1000 fresh ``Linear(8, 8)``) with the compiled extension and with the
pure-torch fallback (``FASTPRUNE_NO_EXT=1``), each in a subprocess of its own
(the mode is fixed when fastprune is imported) that times fastprune and torch
interleaved; the two subprocesses alternate ``--path-runs`` times and each
figure is the best. It shows what a user without a compiler pays against
torch (``--paths-only`` runs just this table).

Both libraries run in the same process, one after the other inside every
round, so that the load of a shared machine hits both alike; each figure is
the best (``--stat best``, default) or the median (``--stat median``) of
``--rounds`` rounds (torch: fewer rounds where one call takes over 2 s).
``--clock process`` times CPU time of the process instead of wall time: on a
machine shared with other jobs the wall time of a small call mostly measures
how long the process waited for a core; CPU time does not (but it adds up the
threads of multithreaded sizes instead of timing their latency). fastprune's
masks are checked against torch's on every row (equal, or different only among
units tied with the threshold). Prints a Markdown table with the ratio
fastprune / torch (below 1: fastprune faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.utils.prune as tp

import fastprune
from fastprune import bench
from fastprune.progress import progress_bar

DEFAULT_SIZES = "8,64,512,4K,32K,256K,2M,16M,100M"
AMOUNT = 0.3
CLOCK = time.perf_counter  # --clock
REDUCE = min  # --stat


def parse_size(text):
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def best_of(fn, setup, rounds):
    best = float("inf")
    for _ in range(rounds):
        state = setup()
        t0 = CLOCK()
        fn(state)
        best = min(best, CLOCK() - t0)
    return best


def mean_call(fn, setup, reps):
    """Mean time of ``reps`` calls, each after its own (untimed) ``setup``."""
    total = 0.0
    for _ in range(reps):
        state = setup()
        t0 = CLOCK()
        fn(state)
        total += CLOCK() - t0
    return total / reps


def reduce_times(times):
    return {lib: REDUCE(ts) if ts else float("inf") for lib, ts in times.items()}


def fresh_linear(n, seed=0):
    lin = torch.nn.Linear(1, 1, bias=False)
    g = torch.Generator().manual_seed(seed)
    lin.weight = torch.nn.Parameter(torch.randn(n, generator=g))
    return lin


def unprune(module):
    """Back to a plain dense ``weight`` (the pruned call left ``weight_orig`` untouched)."""
    if "weight_orig" not in module._parameters:
        return
    orig = module._parameters.pop("weight_orig")
    module._buffers.pop("weight_mask")
    module.__dict__.pop("weight", None)
    module.__dict__.pop("__deepcopy__", None)
    module._forward_pre_hooks.clear()
    module.weight = orig


def check_l1(fp_mask, tp_mask, weight):
    if torch.equal(fp_mask, tp_mask):
        return "equal"
    threshold = weight.abs()[fp_mask == 0].max()
    differ = fp_mask != tp_mask
    ok = bool((weight.abs()[differ] == threshold).all())
    return f"ties ({int(differ.sum())})" if ok else "DIFFER"


def row_l1(n, rounds):
    lin = {"fastprune": fresh_linear(n), "torch": fresh_linear(n)}
    libs = {"fastprune": fastprune, "torch": tp}

    def setup_for(lib):
        def setup():
            unprune(lin[lib])
            return lin[lib]
        return setup

    def call_for(lib):
        return lambda m: libs[lib].l1_unstructured(m, "weight", amount=AMOUNT)

    reps = max(1, min(100, 100_000 // max(n, 1)))  # small sizes: each round times the mean of many calls
    times = {"fastprune": [], "torch": []}
    torch_rounds = rounds
    for r in range(rounds):
        for lib in ("fastprune", "torch"):
            if lib == "torch" and r >= torch_rounds:
                continue
            t = mean_call(call_for(lib), setup_for(lib), reps)
            times[lib].append(t)
            if lib == "torch" and t > 2.0:
                torch_rounds = min(torch_rounds, 2)
    check = check_l1(lin["fastprune"].weight_mask, lin["torch"].weight_mask, lin["fastprune"].weight_orig.detach())
    for m in lin.values():
        unprune(m)
    return reduce_times(times), check


def row_kselect(n, rounds):
    w = torch.randn(n, generator=torch.Generator().manual_seed(0))
    k = round(AMOUNT * n)
    out = torch.empty(n)

    def fp_call(_):
        fastprune.ops.kselect_([w], [None], [out], k, largest=False, exclude_masked=False)

    def torch_call(_):
        torch.topk(torch.abs(w), k=k, largest=False)

    reps = max(1, min(2000, 200_000 // max(n, 1)))  # small sizes: time a batch of calls

    def batched(fn):
        def run(_):
            for _ in range(reps):
                fn(None)
        return run

    times = {"fastprune": [], "torch": []}
    torch_rounds = rounds
    for r in range(rounds):
        times["fastprune"].append(best_of(batched(fp_call), lambda: None, 1) / reps)
        if r < torch_rounds:
            t = best_of(batched(torch_call), lambda: None, 1) / reps
            times["torch"].append(t)
            if t > 2.0:
                torch_rounds = min(torch_rounds, 2)
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.topk(torch.abs(w), k=k, largest=False).indices] = False
    return reduce_times(times), check_l1(out.bool(), keep, w)


MODEL_CASES = {
    # name: (layers, width)
    "l1": (2000, 8),
    "ln": (500, 64),
    "random": (2000, 8),
    "global": (2000, 8),
    "remove": (2000, 8),
}


def row_many_layers(case, rounds):
    count, width = MODEL_CASES[case]

    def setup(lib):
        torch.manual_seed(0)
        layers = [torch.nn.Linear(width, width) for _ in range(count)]
        if case == "remove":  # untimed: the pruning that remove() makes permanent
            for m in layers:
                lib.l1_unstructured(m, "weight", amount=AMOUNT)
        torch.manual_seed(1)  # random_unstructured: both libraries draw the same numbers
        return layers

    def call_for(lib):
        if case == "l1":
            return lambda layers: [lib.l1_unstructured(m, "weight", amount=AMOUNT) for m in layers]
        if case == "random":
            return lambda layers: [lib.random_unstructured(m, "weight", amount=AMOUNT) for m in layers]
        if case == "global":
            return lambda layers: [
                lib.global_unstructured([(m, "weight") for m in layers[i:i + 4]], pruning_method=lib.L1Unstructured,
                                        amount=AMOUNT)
                for i in range(0, len(layers), 4)
            ]
        if case == "remove":
            return lambda layers: [lib.remove(m, "weight") for m in layers]
        return lambda layers: [lib.ln_structured(m, "weight", amount=AMOUNT, n=2, dim=0) for m in layers]

    times = {"fastprune": [], "torch": []}
    results = {}
    for _ in range(rounds):
        for name, lib in (("fastprune", fastprune), ("torch", tp)):
            layers = setup(lib)
            t0 = CLOCK()
            call_for(lib)(layers)
            times[name].append(CLOCK() - t0)
            results[name] = [m.weight if case == "remove" else m.weight_mask for m in layers]
    equal = all(torch.equal(a, b) for a, b in zip(results["fastprune"], results["torch"]))
    return reduce_times(times), "equal" if equal else "DIFFER"


PATH_LAYERS = 1000


def path_worker(rounds):
    """In this process (extension or fallback, as imported): best-of-``rounds`` time of the
    l1_unstructured loop over PATH_LAYERS fresh Linear(8, 8), fastprune and torch interleaved."""
    times = {"fastprune": [], "torch": []}
    masks = {}
    for _ in range(rounds):
        for name, lib in (("fastprune", fastprune), ("torch", tp)):
            torch.manual_seed(0)
            layers = [torch.nn.Linear(8, 8) for _ in range(PATH_LAYERS)]
            t0 = CLOCK()
            for m in layers:
                lib.l1_unstructured(m, "weight", amount=AMOUNT)
            times[name].append(CLOCK() - t0)
            masks[name] = [m.weight_mask for m in layers]
    equal = all(torch.equal(a, b) for a, b in zip(masks["fastprune"], masks["torch"]))
    info = fastprune.build_info()
    return {"extension": bool(info["extension"]), "fallback_reason": info["fallback_reason"],
            **reduce_times(times), "masks": "equal" if equal else "DIFFER"}


def rows_by_path(rounds, runs, clock, stat):
    """The path table's rows: one subprocess per path and run, the paths alternating; each
    figure reduced (``--stat``) over the runs' figures."""
    found = {}
    for _ in range(runs):
        for path, no_ext in (("compiled extension", False), ("pure-torch fallback", True)):
            env = {k: v for k, v in os.environ.items() if k != "FASTPRUNE_NO_EXT"}
            if no_ext:
                env["FASTPRUNE_NO_EXT"] = "1"
            cmd = [sys.executable, os.path.abspath(__file__), "--path-worker", "--rounds", str(rounds),
                   "--clock", clock, "--stat", stat]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            found.setdefault(path, []).append(json.loads(res.stdout.strip().splitlines()[-1]))
    best = {}
    for path, results in found.items():
        row = dict(results[-1])
        row["fastprune"] = REDUCE([r["fastprune"] for r in results])
        row["torch"] = REDUCE([r["torch"] for r in results])
        row["masks"] = "equal" if all(r["masks"] == "equal" for r in results) else "DIFFER"
        best[path] = row
    return best


def print_paths(best, rounds, runs):
    print(f"| l1 {PATH_LAYERS} x Linear(8, 8), by path | fastprune | torch | fastprune / torch | per layer "
          "(fastprune; torch) | masks |")
    print("|---|---:|---:|---:|---:|---|")
    for path, r in best.items():
        label = path if path == "pure-torch fallback" or r["extension"] else f"{path} (not loaded: {r['fallback_reason']})"
        print(f"| {label} | {fmt(r['fastprune'])} | {fmt(r['torch'])} | {r['fastprune'] / r['torch']:.2f} | "
              f"{fmt(r['fastprune'] / PATH_LAYERS)}; {fmt(r['torch'] / PATH_LAYERS)} | {r['masks']} |")
    print()
    print(f"each path in its own subprocesses ({runs} runs, the paths alternating), fastprune and torch "
          f"interleaved inside each ({rounds} rounds); each figure reduced over rounds and runs")


def fmt(t):
    if t == float("inf"):
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1:
        return f"{t * 1e3:.1f} ms"
    return f"{t:.2f} s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated element counts (K = 1024, M = 10^6)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-models", action="store_true", help="skip the many-small-layers rows")
    p.add_argument("--stat", choices=("best", "median"), default="best", help="figure reported per row")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="wall time, or CPU time of the process (robust to other jobs on the machine)")
    p.add_argument("--paths-only", action="store_true",
                   help=f"only the l1 {PATH_LAYERS} x Linear(8, 8) table, compiled extension against fallback")
    p.add_argument("--path-runs", type=int, default=3, help="alternating subprocess runs per path")
    p.add_argument("--path-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global CLOCK, REDUCE
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    REDUCE = min if args.stat == "best" else statistics.median
    if args.path_worker:
        print(json.dumps(path_worker(args.rounds)))
        return
    if args.paths_only:
        load_before = os.getloadavg()
        best = rows_by_path(args.rounds, args.path_runs, args.clock, args.stat)
        print_paths(best, args.rounds, args.path_runs)
        print(f"{args.stat} of rounds, {args.clock} clock; torch {torch.__version__}, {torch.get_num_threads()} threads; "
              + bench.machine_description(torch.device("cpu")))
        print("load average before: " + ", ".join(f"{x:.2f}" for x in load_before)
              + "; after: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
        return
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    jobs = [("kselect", n) for n in sizes] + [("l1_unstructured", n) for n in sizes]
    if not args.no_models:
        jobs += [("l1 2000 x Linear(8, 8)", None), ("ln 500 x Linear(64, 64)", None),
                 ("random 2000 x Linear(8, 8)", None), ("global 500 x [4 x Linear(8, 8)]", None),
                 ("remove 2000 x Linear(8, 8)", None)]
    load_before = os.getloadavg()
    rows = []
    for case, n in progress_bar(jobs, enabled=True, desc="sweep", unit="row"):
        if case == "kselect":
            times, check = row_kselect(n, args.rounds)
        elif case == "l1_unstructured":
            times, check = row_l1(n, args.rounds)
        else:
            times, check = row_many_layers(case.split()[0], args.rounds)
        rows.append((case if n is None else f"{case} {n:,}", times, check))
    print("| case | fastprune | torch | fastprune / torch | masks |")
    print("|---|---:|---:|---:|---|")
    for name, times, check in rows:
        ratio = times["fastprune"] / times["torch"] if times["torch"] < float("inf") else float("nan")
        print(f"| {name} | {fmt(times['fastprune'])} | {fmt(times['torch'])} | {ratio:.2f} | {check} |")
    print()
    print(f"{args.stat} of {args.rounds} interleaved rounds, {args.clock} clock (torch: 2 rounds where a call takes "
          "over 2 s); kselect rows: "
          "fastprune.ops.kselect_ vs torch.topk(|w|), both per call; torch " + torch.__version__ + ", "
          + str(torch.get_num_threads()) + " threads; " + bench.machine_description(torch.device("cpu")))
    if not args.no_models:
        print()
        print_paths(rows_by_path(args.rounds, args.path_runs, args.clock, args.stat), args.rounds, args.path_runs)
    load_after = os.getloadavg()
    print("load average before: " + ", ".join(f"{x:.2f}" for x in load_before)
          + "; after: " + ", ".join(f"{x:.2f}" for x in load_after))


if __name__ == "__main__":
    main()
