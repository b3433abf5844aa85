"""Time and peak memory of fastprune.llm.prune next to a plain-torch implementation.

The plain implementation is what the research scripts do, in straightforward
torch (``fastprune/llm/reference.py``, also the tests' oracle): the same
block-by-block walk with hooks, masks chosen
with ``torch.sort`` per row (magnitude, Wanda), SparseGPT's loop with a sorted
threshold per column block and ``torch.topk`` per N:M group. Both run in the
same invocation on the same random-init Llama-shaped model, each in a fresh
process so that peak memory (max RSS above the loaded model) is its own.

    # the model the numbers in docs/llm.md were measured on (~250M parameters)
    python benchmarks/bench_llm.py --hidden 1024 --intermediate 2816 --layers 16 --nsamples 4 --seqlen 256
    # ~1B parameters, the calibration of the papers' quick runs (16 x 512)
    python benchmarks/bench_llm.py --hidden 2048 --intermediate 5632 --layers 16 --heads 32 --kv-heads 8 \\
        --nsamples 16 --seqlen 512

Prints a Markdown table: seconds per method and implementation, the ratio,
peak extra memory, and whether the two produced the same masks.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from fastprune.llm import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llama_config(args, **extra):
    """The Llama config the LLM benchmarks build from their size arguments (``extra``: more config fields)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=max(args.seqlen, 128), **extra)


def build_model(args, device="cpu", cfg=None):
    """A seeded random-init Llama of ``llama_config(args)`` (or ``cfg``): normal(0, 0.02) weights, unit norms.

    The builder every LLM benchmark shares (bench_llm_dp, bench_llm_stream, gpu_llm); ``device="meta"``
    gives the shapes only (parameter counts), no memory.
    """
    from transformers import LlamaForCausalLM

    cfg = llama_config(args) if cfg is None else cfg
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    if device == "meta":
        return model
    # Random init without transformers' slow per-module initialisers.
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        model.model.rotary_emb.__init__(cfg)  # buffers (inv_freq) are not parameters
    return model.eval()


# ----------------------------------------------------------------------------
# The plain-torch implementation
# ----------------------------------------------------------------------------


def plain_prune(model, ids, method, sparsity, nm, nblocks):
    if method == "magnitude":
        with torch.no_grad():
            for block in model.model.layers[:nblocks]:
                for m in block.modules():
                    if isinstance(m, nn.Linear):
                        m.weight[~reference.keep_pruned(m.weight.abs(), sparsity, nm)] = 0
    elif method == "wanda":
        reference.prune_block_by_block(model, ids, "norms", reference.wanda_layer(sparsity, nm), nblocks)
    else:
        reference.prune_block_by_block(model, ids, "hessian", reference.sparsegpt_layer(sparsity, nm), nblocks)


# ----------------------------------------------------------------------------
# One measurement per process
# ----------------------------------------------------------------------------


def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec):
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["model"])
    model = build_model(args)
    ids = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(1))
    import fastprune.llm as llm  # imported (by both) before the memory baseline and the clock

    nblocks = spec["prune_blocks"] or args.layers
    base = rss_mb()
    load_before = os.getloadavg()[0]
    nm = tuple(spec["nm"]) if spec["nm"] else None
    pattern = f"{nm[0]}:{nm[1]}" if nm else "unstructured"
    t0 = time.perf_counter()
    if spec["impl"] == "fastprune":
        llm.prune(model, None if spec["method"] == "magnitude" else ids, method=spec["method"],
                  sparsity=spec["sparsity"], pattern=pattern, progress=False, measure_errors=False,
                  blocks=list(model.model.layers[:nblocks]))
    else:
        plain_prune(model, ids, spec["method"], spec["sparsity"], nm, nblocks)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The zero pattern, one bit per weight (a 1B model's as bools would be another 0.7 GB per process).
    zeros, count, total = [], 0, 0
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and ".layers." in n:
            z = m.weight.eq(0).reshape(-1)
            count += int(z.sum())
            total += z.numel()
            zeros.append(np.packbits(z.numpy()))
    np.save(spec["digest"], np.concatenate(zeros))
    print(json.dumps({"seconds": seconds, "peak_extra_mb": peak - base, "sparsity": count / total,
                      "load_before": load_before, "load_after": os.getloadavg()[0]}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prune-blocks", type=int, default=None,
                   help="prune only the first N blocks (both implementations), to time the slow methods per block")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        with open(args.worker) as fh:
            worker(json.load(fh))
        return
    model_args = {k: getattr(args, k) for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab",
                                                "nsamples", "seqlen")}
    nparams = build_model(argparse.Namespace(**model_args), device="meta").num_parameters()
    print(f"Llama-shaped model, {nparams / 1e6:.0f}M parameters, calibration {args.nsamples} x {args.seqlen}; "
          f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
          + (f"; first {args.prune_blocks} of {args.layers} blocks pruned" if args.prune_blocks else ""),
          flush=True)
    rows = []
    tmp = os.path.join(os.path.expanduser("~"), ".cache", "fastprune")
    os.makedirs(tmp, exist_ok=True)
    for pattern in args.patterns:
        nm = None if pattern == "unstructured" else [int(x) for x in pattern.split(":")]
        for method in args.methods:
            res = {}
            for impl in ("fastprune", "plain"):
                spec = {"impl": impl, "method": method, "sparsity": 0.5, "nm": nm, "threads": args.threads,
                        "model": model_args, "prune_blocks": args.prune_blocks,
                        "digest": os.path.join(tmp, f"bench_llm_{impl}.npy")}
                path = os.path.join(tmp, "bench_llm_spec.json")
                with open(path, "w") as fh:
                    json.dump(spec, fh)
                out = subprocess.run([sys.executable, __file__, "--worker", path], capture_output=True, text=True,
                                     env=dict(os.environ, PYTHONPATH=ROOT))
                if out.returncode:
                    raise SystemExit(out.stderr)
                res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"  {pattern} {method} {impl}: {res[impl]}", flush=True)
            a = np.load(os.path.join(tmp, "bench_llm_fastprune.npy"))
            b = np.load(os.path.join(tmp, "bench_llm_plain.npy"))
            differ = int(np.unpackbits(a ^ b).sum())
            weights = 8 * a.size  # (per-layer padding bits are zero in both)
            same = "yes" if differ == 0 else f"{differ / weights * 100:.3f}% differ"
            rows.append((pattern, method, res["fastprune"], res["plain"], same))
    print()
    print("| pattern | method | fastprune s | plain torch s | speed-up | fastprune peak extra MB | plain peak extra MB "
          "| same masks | load (fastprune; plain) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pattern, method, f, pl, same in rows:
        load = f"{f['load_before']:.1f}-{f['load_after']:.1f}; {pl['load_before']:.1f}-{pl['load_after']:.1f}"
        print(f"| {pattern} | {method} | {f['seconds']:.2f} | {pl['seconds']:.2f} | "
              f"{pl['seconds'] / f['seconds']:.2f}x | {f['peak_extra_mb']:.0f} | {pl['peak_extra_mb']:.0f} | {same} "
              f"| {load} |")


if __name__ == "__main__":
    main()
