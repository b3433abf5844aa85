"""fastprune.llm.prune on a GPU against the same call on the CPU, on one Llama-shaped model.

    python benchmarks/gpu_llm.py --device cuda --json out.json        # ~1B parameters (the default)
    python benchmarks/gpu_llm.py --device cpu --hidden 256 --intermediate 688 --layers 2 \\
        --heads 8 --kv-heads 2 --nsamples 2 --seqlen 64 --cpu-blocks 1   # smoke run anywhere

For each method (Wanda, SparseGPT; 50% unstructured) the same random-init fp32
model (``benchmarks/bench_llm.py``'s builder, same seed) and the same
calibration ids are pruned:

* on ``--device`` over every block (the GPU figure: seconds, peak device memory);
* on ``--device`` over the first ``--cpu-blocks`` blocks, and on the CPU (all of
  its cores) over the same blocks: the per-block speed-up of the device over the
  CPU, and how many mask entries the two agree on (block-by-block pruning makes
  the first blocks of a full run equal to a run over those blocks alone; the
  two devices' float sums differ, so SparseGPT's masks may differ a little).

Prints a Markdown table; ``--json`` writes every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llm import build_model  # noqa: E402  (the builder every LLM benchmark shares)

import fastprune  # noqa: E402
import fastprune.llm as llm  # noqa: E402


def zero_patterns(model: nn.Module, nblocks: int) -> List[torch.Tensor]:
    """The pruned (zero) pattern of every linear weight in the first ``nblocks`` blocks, on the CPU."""
    out = []
    for block in model.model.layers[:nblocks]:
        for m in block.modules():
            if isinstance(m, nn.Linear):
                out.append(m.weight.detach().eq(0).cpu())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(pristine: Dict[str, torch.Tensor], args, device: torch.device, ids: torch.Tensor, method: str,
        nblocks: int):
    model = build_model(args, device="meta").to_empty(device="cpu")
    model.load_state_dict(pristine)
    model.model.rotary_emb.__init__(model.config)  # buffers (inv_freq) are not in the state dict
    model = model.to(device).eval()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    sync(device)
    t0 = time.perf_counter()
    llm.prune(model, ids, method=method, sparsity=0.5, device=device, progress=False, measure_errors=False,
              blocks=list(model.model.layers[:nblocks]))
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else None
    zeros = zero_patterns(model, nblocks)
    del model
    return seconds, peak, zeros


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--cpu-blocks", type=int, default=2, help="blocks pruned on both the device and the CPU")
    p.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this torch sees no CUDA device")
    torch.set_num_threads(os.cpu_count() or 1)
    model = build_model(args)  # fp32, seeded
    nparams = model.num_parameters()
    pristine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    del model
    ids = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(1))
    nblocks = min(args.cpu_blocks, args.layers)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info = {"params": nparams, "calibration": f"{args.nsamples} x {args.seqlen}", "device": where,
            "cpu": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "fastprune": fastprune.__version__, "layers": args.layers,
            "compared_blocks": nblocks, "dtype": "float32", "sparsity": 0.5}
    print(f"Llama-shaped model, {nparams / 1e6:.0f}M parameters, {args.layers} blocks, calibration "
          f"{args.nsamples} x {args.seqlen}; device {where}; CPU {info['cpu']}", flush=True)
    rows = []
    for method in args.methods:
        t_all, peak_all, _ = run(pristine, args, device, ids, method, args.layers)
        print(f"  {method} on {device}, all {args.layers} blocks: {t_all:.2f} s", flush=True)
        t_dev, _, z_dev = run(pristine, args, device, ids, method, nblocks)
        t_cpu, _, z_cpu = run(pristine, args, torch.device("cpu"), ids, method, nblocks)
        total = sum(z.numel() for z in z_dev)
        equal = sum(int((a == b).sum()) for a, b in zip(z_dev, z_cpu))
        row = {"method": method, "device_all_s": t_all, "device_peak_bytes": peak_all,
               "device_first_s": t_dev, "cpu_first_s": t_cpu, "speedup": t_cpu / t_dev,
               "mask_agreement": equal / total,
               "sparsity": sum(int(z.sum()) for z in z_dev) / total}
        print(f"  {method}: first {nblocks} blocks on {device} {t_dev:.2f} s, on cpu {t_cpu:.2f} s, "
              f"masks agree {row['mask_agreement'] * 100:.3f}%", flush=True)
        rows.append(row)
    print()
    print(f"| method | {device} all {args.layers} blocks | peak device memory | first {nblocks} blocks: {device} "
          f"| cpu | speed-up | masks agree |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['device_peak_bytes'] / 2**30:.2f} GiB" if r["device_peak_bytes"] is not None else "-"
        print(f"| {r['method']} | {r['device_all_s']:.2f} s | {peak} | {r['device_first_s']:.2f} s "
              f"| {r['cpu_first_s']:.2f} s | {r['speedup']:.1f}x | {r['mask_agreement'] * 100:.3f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
