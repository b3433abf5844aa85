"""Peak resident memory of streaming a checkpoint (fastprune.llm.prune_checkpoint) against its size.

Writes a random-init Llama-shaped checkpoint with ``save_pretrained`` (sharded
safetensors) to ``--folder`` (default ``/tmp/fastprune-bench-stream``; kept for
the next run when its config matches), then, each in a fresh process:

* ``stream``: ``prune_checkpoint(src, dst, ids, method=...)``;
* ``memory`` (``--in-memory``): ``from_pretrained(src)``, weights copied into
  ordinary memory, ``prune(model, ids, ...)``, ``save_pretrained(dst)``: what
  the same job costs when the model is loaded.

Peak memory is the kernel's high-water mark (VmHWM) reset just before the work
(``/proc/self/clear_refs``), minus the resident size at that moment: what the
work itself added to a process that had imported torch, transformers and
fastprune. The streamed and in-memory outputs are compared tensor by tensor.

    # the figures of docs/llm.md (2.7 GB checkpoint: hidden 2048, MLP 5632, 12 blocks, vocabulary 32000)
    python benchmarks/bench_llm_stream.py --methods magnitude wanda sparsegpt --in-memory wanda

Prints a Markdown table, with the machine's load (``uptime``) before and after each run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PEAK = r'''
import re

def _status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")

def peak_mb():
    return _status("VmHWM")
'''


def load():
    return os.getloadavg()[0]


def config(args):
    from bench_llm import llama_config

    return llama_config(args, tie_word_embeddings=False)


def write_checkpoint(args, src):
    """A save_pretrained folder of a random-init model (normal(0, 0.02) weights, unit norms)."""
    from bench_llm import build_model

    cfg = config(args)
    stamp = os.path.join(src, "bench-config.json")
    want = json.dumps(cfg.to_dict(), sort_keys=True)
    if os.path.isfile(stamp) and open(stamp).read() == want:
        return
    shutil.rmtree(src, ignore_errors=True)
    model = build_model(args, cfg=cfg)
    model.save_pretrained(src, max_shard_size=args.shard)
    del model
    with open(stamp, "w") as f:
        f.write(want)


def checkpoint_bytes(folder):
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def worker(args):
    """One measurement in this (fresh) process; prints a JSON line."""
    exec(PEAK, globals())
    import torch

    torch.set_num_threads(args.threads)
    import transformers
    import transformers.models.llama.modeling_llama  # noqa: F401 (imported before the measurement)

    import fastprune.llm as llm

    transformers.utils.logging.disable_progress_bar()
    ids = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    shutil.rmtree(args.dst, ignore_errors=True)
    base = reset_peak()  # noqa: F821 (defined by PEAK)
    t0 = time.perf_counter()
    if args.kind == "stream":
        llm.prune_checkpoint(args.src, args.dst, ids, method=args.method, sparsity=0.5, progress=False)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.src)
        with torch.no_grad():  # from_pretrained may leave weights mapped from the file: own them
            for p in model.parameters():
                p.data = p.data.clone()
        llm.prune(model, ids, method=args.method, sparsity=0.5, progress=False)
        model.save_pretrained(args.dst, max_shard_size=args.shard)
    seconds = time.perf_counter() - t0
    print(json.dumps({"peak_mb": peak_mb() - base, "seconds": seconds}))  # noqa: F821


def run(args, kind, method, dst):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--method", method, "--src", args.src,
           "--dst", dst, "--threads", str(args.threads), "--nsamples", str(args.nsamples), "--seqlen",
           str(args.seqlen), "--vocab", str(args.vocab), "--shard", args.shard]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(args.threads))
    before = load()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    after = load()
    if r.returncode != 0:
        raise SystemExit(f"{kind} {method} failed:\n{r.stderr[-4000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["load"] = f"{before:.1f}-{after:.1f}"
    return out


def tensors_digest(folder):
    from safetensors import safe_open

    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as h:
                for k in h.keys():
                    t = h.get_tensor(k)
                    out[k] = hashlib.sha256(t.reshape(-1).view(-1).numpy().tobytes()).hexdigest()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shard", default="1GB", help="max_shard_size of the checkpoint written")
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--in-memory", nargs="*", default=[], help="methods also run in memory, for comparison")
    p.add_argument("--folder", default="/tmp/fastprune-bench-stream")
    p.add_argument("--keep", action="store_true", help="keep the pruned outputs")
    # worker mode
    p.add_argument("--worker", choices=["stream", "memory"])
    p.add_argument("--method")
    p.add_argument("--src")
    p.add_argument("--dst")
    args = p.parse_args()
    if args.worker:
        args.kind = args.worker
        return worker(args)

    import torch

    os.makedirs(args.folder, exist_ok=True)
    args.src = os.path.join(args.folder, "src")
    t0 = time.perf_counter()
    write_checkpoint(args, args.src)
    size = checkpoint_bytes(args.src)
    print(f"checkpoint: {size / 1e9:.2f} GB in {len(os.listdir(args.src))} files "
          f"(ready in {time.perf_counter() - t0:.0f} s); torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads, calibration {args.nsamples} x {args.seqlen}",
          flush=True)
    rows = []
    for method in args.methods:
        dst = os.path.join(args.folder, f"stream-{method}")
        s = run(args, "stream", method, dst)
        row = {"method": method, "stream": s}
        print(f"  stream {method}: {s}", flush=True)
        if method in args.in_memory:
            mdst = os.path.join(args.folder, f"memory-{method}")
            m = run(args, "memory", method, mdst)
            print(f"  in memory {method}: {m}", flush=True)
            row["memory"] = m
            row["same"] = tensors_digest(dst) == tensors_digest(mdst)
            if not args.keep:
                shutil.rmtree(mdst, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(dst, ignore_errors=True)
        rows.append(row)

    gb = size / 1e9
    print()
    print("| method | checkpoint GB | streamed: peak MB above imports | peak / checkpoint | streamed s | "
          "in memory: peak MB | in memory s | same tensors | load (streamed; in memory) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, m = r["stream"], r.get("memory")
        print(f"| {r['method']} | {gb:.2f} | {s['peak_mb']:.0f} | {s['peak_mb'] * 2 ** 20 / size:.1%} | "
              f"{s['seconds']:.1f} | {m['peak_mb']:.0f} | {m['seconds']:.1f} | {'yes' if r['same'] else 'NO'} | "
              f"{s['load']}; {m['load']} |" if m else
              f"| {r['method']} | {gb:.2f} | {s['peak_mb']:.0f} | {s['peak_mb'] * 2 ** 20 / size:.1%} | "
              f"{s['seconds']:.1f} | | | | {s['load']} |")


if __name__ == "__main__":
    main()
