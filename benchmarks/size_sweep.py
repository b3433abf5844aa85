"""Size sweep: global L1 pruning from 1M to 400M parameters, fastprune and torch side by side.

    python benchmarks/size_sweep.py                        # 1M 3M 10M 30M 100M 200M 400M
    python benchmarks/size_sweep.py --sizes 1M,10M --torch-max 100M

Each measurement runs in a fresh process (``fastprune.bench.run_job``): time of
the best of ``--repeat`` runs (torch: one run when it takes over 3 s), peak RSS
of the call above the RSS before it, masks compared bit for bit; "x floor" is
fastprune's time over its floor's (two first-touch copies of the weights,
``fastprune.bench.FLOORS["two_copies"]``, timed by the same worker loop in its
own fresh process), "x memcpy" over the warm bandwidth reference. All fastprune
runs come first, then torch from the smallest size up, so that torch's largest
run (about 20 GB at 400M) runs last and alone; torch is skipped, with the reason
printed, where its estimated need exceeds the memory available at that moment.
"""
import argparse
import os
import shutil
import sys
import tempfile

import torch

from fastprune import bench
from fastprune.ops import build_info
from fastprune.progress import progress_bar

DEFAULT_SIZES = "1M,3M,10M,30M,100M,200M,400M"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES)
    p.add_argument("--model", choices=("llama", "square"), default="llama")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--amount", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--torch-max", type=bench.parse_count, default=None, help="largest size torch runs at")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--min-free-gb", type=float, default=None,
                   help="run torch only when at least this much memory is available (default: its estimated need)")
    args = p.parse_args(argv)
    cpu = torch.device("cpu")
    sizes = [bench.parse_count(s) for s in args.sizes.split(",") if s.strip()]
    tmp = tempfile.mkdtemp(prefix="fastprune-sweep-")
    rows = {}
    jobs = [(n, "fastprune") for n in sizes] + [(n, "torch") for n in sorted(sizes)]
    try:
        for n, lib in progress_bar(jobs, desc="sweep", unit="run", file=sys.stderr):
            shapes = bench.model_shapes(n, args.model, args.width)
            row = rows.setdefault(n, {"numel": bench.model_numel(shapes), "layers": len(shapes), "shapes": shapes})
            if lib == "torch":
                note = torch_skip_reason(args, n, shapes, cpu)
                if note:
                    row["torch_note"] = note
                    continue
            job = {
                "lib": lib, "case": "global_l1", "dtype": "float32", "device": "cpu", "seed": 0,
                "amount": args.amount, "repeat": args.repeat, "shapes": shapes,
                "bits": os.path.join(tmp, f"{n}-{lib}.bits"),
            }
            if lib == "fastprune":
                memcpy = bench.run_job(dict(job, case="memcpy", lib="torch"))
                row["memcpy"] = min(memcpy["times"]) if "times" in memcpy else None
                floor = bench.run_job(dict(job, lib="floor"))
                row["floor"] = min(floor["times"]) if "times" in floor else None
            row[lib] = bench.run_job(job)
        print(format_rows(rows, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def torch_skip_reason(args, n, shapes, device):
    """Why torch does not run at size ``n`` (empty when it does)."""
    if args.skip_torch:
        return "--skip-torch"
    if args.torch_max and n > args.torch_max:
        return "above --torch-max"
    if args.min_free_gb:
        free = bench.available_memory(device)
        if free < args.min_free_gb * 2**30:
            return f"skipped: {free / 2**30:.1f} GiB available, --min-free-gb {args.min_free_gb}"
        return ""
    fits, why = bench.torch_fits("global_l1", shapes, torch.float32, args.amount, device)
    return "" if fits else f"skipped: {why}"


def format_rows(rows, tmp):
    out = [
        "| params | layers | fastprune | ns/param | floor | x floor | x memcpy | fastprune peak | torch | torch peak "
        "| speedup | masks |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []
    for n in sorted(rows):
        r = rows[n]
        fp, tc = r.get("fastprune", {}), r.get("torch", {})
        ft = min(fp["times"]) if "times" in fp else None
        tt = min(tc["times"]) if "times" in tc else None
        fpk = max(fp["peaks"]) if "peaks" in fp else None
        tpk = max(tc["peaks"]) if "peaks" in tc else None
        if ft and tt:
            masks = bench.mask_verdict(os.path.join(tmp, f"{n}-fastprune.bits"), os.path.join(tmp, f"{n}-torch.bits"),
                                       "global_l1", r["shapes"], torch.float32, torch.device("cpu"), 0, fp["check"])
        else:
            masks = "exact" if fp.get("check", {}).get("exact") else "-"
        for lib, res in (("fastprune", fp), ("torch", tc)):
            if "error" in res:
                notes.append(f"{n / 1e6:.0f}M {lib}: {res['error']}")
        out.append(
            "| {:.1f}M | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["numel"] / 1e6,
                r["layers"],
                bench.format_time(ft),
                f"{ft / r['numel'] * 1e9:.2f}" if ft else "-",
                bench.format_time(r.get("floor")),
                f"{ft / r['floor']:.2f}" if ft and r.get("floor") else "-",
                f"{ft / r['memcpy']:.1f}" if ft and r.get("memcpy") else "-",
                bench.format_mb(fpk),
                bench.format_time(tt) if tt else r.get("torch_note", "-"),
                bench.format_mb(tpk),
                f"{tt / ft:.0f}x" if ft and tt else "-",
                masks,
            )
        )
    out.append("")
    out.append(
        "fastprune: global_unstructured, best of --repeat runs; torch: one run above 3 s; "
        "peak = peak RSS of the call above the RSS before it; floor = two first-touch copies of the weights (the "
        "mask and pruned weight torch's layout creates), same runs in a fresh process; x floor = fastprune time / "
        "floor time; x memcpy = fastprune time / time to copy the same bytes into reused memory (warm bandwidth "
        "reference, not a floor); 'ties (n bits)' = masks differ only among units whose |w| equals the threshold "
        "(torch's topk breaks ties arbitrarily, fastprune by lower index)."
    )
    kernels = "compiled extension" if build_info()["extension"] else "pure-torch fallback"
    out.append(f"machine: {bench.machine_description(torch.device('cpu'))}; torch {torch.__version__}; "
               f"fastprune kernels: {kernels}; load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    out.extend(notes)
    return "\n".join(out)


if __name__ == "__main__":
    main()
