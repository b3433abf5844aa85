"""fastprune.llm.prune on 1, 2 and 4 processes (data-parallel calibration on gloo) on this machine.

Every row runs in fresh processes: ``P`` processes with ``T`` torch threads
each, joined in a gloo process group over a file rendezvous (``P = 1`` also
without any group, the plain one-process call). Each process builds the same
random-init Llama-shaped model (seeded) and the same calibration, and times
the call from a barrier to its return (the report's time: the slowest
process's). The rows say whether the pruned weights are bit for bit those of
the first row (a CRC-32 of every weight).

    # the table of docs/llm.md, "Several processes" (~125M parameters, Wanda, 32 x 256 tokens)
    python benchmarks/bench_llm_dp.py
    python benchmarks/bench_llm_dp.py --rows 1x1,1x2,2x1,4x1 --method sparsegpt --nsamples 16

Prints a Markdown table with the CPU time the processes used in the call (user + system, all
threads; what the machine's load cannot inflate) and the load (``os.getloadavg``) before and after
each row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
    """One process of a row (``--worker``): prints a JSON line with its time and the weights' CRC."""
    import torch

    torch.set_num_threads(args.threads)
    import torch.distributed as dist
    import torch.distributed.nn as _dist_nn  # noqa: F401 - before the group (docs/llm.md, several processes)

    import fastprune.llm as llm
    from bench_llm import build_model  # the builder every LLM benchmark shares

    rank = int(os.environ.get("BENCH_RANK", "0"))
    world = int(os.environ.get("BENCH_WORLD", "0"))  # 0: no process group
    if world:
        from datetime import timedelta

        dist.init_process_group("gloo", init_method=f"file://{args.store}", rank=rank, world_size=world,
                                timeout=timedelta(minutes=30))
    model = build_model(args)
    ids = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(1))
    if world:
        dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    report = llm.prune(model, ids, method=args.method, sparsity=0.5, batch_size=args.batch_size, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    crc = 0
    for name, p in model.named_parameters():
        crc = zlib.crc32(p.detach().contiguous().view(torch.uint8).numpy().tobytes(), crc)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rank": rank, "seconds": seconds, "cpu": cpu, "report_seconds": report.seconds, "crc": crc,
                      "rss": rss, "blocks": [b.seconds for b in report.blocks]}), flush=True)
    if world:
        dist.destroy_process_group()


def run_row(args, procs: int, threads: int, group: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
                "--store", os.path.join(tmp, "store")] + args.passthrough
        children = []
        for r in range(procs):
            env = dict(os.environ, BENCH_RANK=str(r), BENCH_WORLD=str(procs if group else 0),
                       OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
            children.append(subprocess.Popen(base, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        outs = []
        for c in children:
            out, _ = c.communicate()
            if c.returncode != 0:
                raise SystemExit(f"a worker failed with status {c.returncode}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    return {"procs": procs, "threads": threads, "group": group,
            "seconds": outs[0]["report_seconds"], "crc": outs[0]["crc"],
            "same_on_all": len({o["crc"] for o in outs}) == 1, "cpu": sum(o["cpu"] for o in outs),
            "rss": max(o["rss"] for o in outs)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1x1,1x2,2x1,4x1",
                   help="PxT: P processes with T threads each ('1x1g': one process inside a group of one)")
    p.add_argument("--method", default="wanda", choices=["wanda", "sparsegpt", "magnitude"])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2, help="sequences per micro-batch (the unit processes share)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    args.passthrough = ["--method", args.method, "--hidden", str(args.hidden), "--intermediate",
                        str(args.intermediate), "--layers", str(args.layers), "--heads", str(args.heads),
                        "--kv-heads", str(args.kv_heads), "--vocab", str(args.vocab), "--nsamples",
                        str(args.nsamples), "--seqlen", str(args.seqlen), "--batch-size", str(args.batch_size)]
    import torch

    with torch.device("meta"):
        n_params = sum(p.numel() for p in _meta_model(args).parameters())
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}; Llama {n_params / 1e6:.0f}M "
          f"parameters ({args.layers} blocks, hidden {args.hidden}, MLP {args.intermediate}, {args.heads}/"
          f"{args.kv_heads} heads), {args.method} 50%, calibration {args.nsamples} x {args.seqlen} tokens in "
          f"micro-batches of {args.batch_size}")
    print()
    print("| processes x threads | group | seconds | vs 1x1 | vs 1x2 | CPU s (all processes) | same weights "
          "| peak RSS / process | load before -> after |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for spec in args.rows.split(","):
        group = spec.endswith("g") or not spec.startswith("1x")
        procs, threads = (int(x) for x in spec.rstrip("g").split("x"))
        before = os.getloadavg()[0]
        row = run_row(args, procs, threads, group)
        row["load"] = (before, os.getloadavg()[0])
        rows.append(row)
        ref = rows[0]
        one = next((r for r in rows if r["procs"] == 1 and r["threads"] == 1), None)
        two = next((r for r in rows if r["procs"] == 1 and r["threads"] == 2), None)
        vs1 = f"{one['seconds'] / row['seconds']:.2f}x" if one else "-"
        vs2 = f"{two['seconds'] / row['seconds']:.2f}x" if two else "-"
        same = "yes" if row["crc"] == ref["crc"] and row["same_on_all"] else "NO"
        print(f"| {procs} x {threads} | {'yes' if group else 'no'} | {row['seconds']:.2f} | {vs1} | {vs2} "
              f"| {row['cpu']:.1f} | {same} "
              f"| {row['rss'] / 2 ** 20:.0f} MiB | {row['load'][0]:.2f} -> {row['load'][1]:.2f} |", flush=True)


def _meta_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=max(args.seqlen, 128))
    return LlamaForCausalLM(cfg)


if __name__ == "__main__":
    main()
