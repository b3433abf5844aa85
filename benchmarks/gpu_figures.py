"""Bandwidth and structured-pruning figures for one device, with their peers measured in the same run.

    python benchmarks/gpu_figures.py --device cuda --json out.json
    python benchmarks/gpu_figures.py --device cpu --size 2M      # small smoke run anywhere

Two tables:

* **mask multiply vs copy**: ``fastprune.ops.mask_mul`` (out of place),
  ``mask_mul_`` (in place) and ``apply_packed_mask_`` (1-bit masks) on one
  tensor of ``--size`` elements, each against a device-to-device copy that moves
  the same number of bytes (read + write). ``fraction`` = copy time / op time:
  1.0 means the op runs at copy bandwidth.
* **ln_structured on large tensors**: ``fastprune.ln_structured`` against
  ``torch.nn.utils.prune.ln_structured`` (n=2, amount 0.5) on square
  ``Linear`` weights, both pruning dims, with a check that the masks are equal.
* **row_kselect / nm_select on a 7B model's linear layers**: the per-row
  selection behind Wanda / SparseGPT's row-wise masks (half of every row) and
  the 2:4 selection, over the 224 linear weights of a Llama-2-7B-shaped model
  (``--blocks`` blocks of q, k, v, o 4096x4096, gate / up 11008x4096, down
  4096x11008; bf16), against the plain-torch way (``torch.topk`` of ``|w|``
  per row or per group of 4, then a scatter into a mask) and against a device
  copy of the bytes the op must move (read the weights, write a bool mask).
  One layer of each shape is checked against ``fastprune.ops.reference`` first.

Times are the best of ``--repeat`` runs after one warm-up, synchronised on CUDA.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.utils.prune as torch_prune

import fastprune
from fastprune import ops


def parse_count(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def best_time(fn: Callable[[], object], device: torch.device, repeat: int,
              setup: Optional[Callable[[], object]] = None) -> float:
    """Best wall time of ``fn`` over ``repeat`` runs after a warm-up; ``setup`` runs untimed before each."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best = float("inf")
    for i in range(repeat + 1):  # run 0 is the warm-up: first-call costs are not the op's
        if setup is not None:
            setup()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def mask_multiply_rows(device: torch.device, numel: int, dtype: torch.dtype, repeat: int) -> List[Dict[str, object]]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(numel, device=device, dtype=dtype, generator=gen)
    mask = torch.rand(numel, device=device, generator=gen) < 0.5
    packed = ops.pack_mask(mask)
    elem = x.element_size()
    work = x.clone()
    # (name, op, bytes the op must move at the least)
    cases = [
        ("mask_mul (bool mask)", lambda: ops.mask_mul(x, mask), numel * (2 * elem + 1)),
        ("mask_mul_ (bool mask, in place)", lambda: ops.mask_mul_([work], [mask]), numel * (2 * elem + 1)),
        ("apply_packed_mask_ (1-bit mask)", lambda: ops.apply_packed_mask_([work], [packed]),
         2 * numel * elem + packed.numel()),
    ]
    rows = []
    for name, fn, nbytes in cases:
        src = torch.empty(nbytes // 2, device=device, dtype=torch.uint8)
        dst = torch.empty_like(src)
        t_copy = best_time(lambda: dst.copy_(src), device, repeat)
        t_op = best_time(fn, device, repeat)
        del src, dst
        rows.append({
            "op": name,
            "dtype": str(dtype).replace("torch.", ""),
            "numel": numel,
            "bytes": nbytes,
            "op_s": t_op,
            "copy_s": t_copy,
            "op_GBps": nbytes / t_op / 1e9,
            "copy_GBps": nbytes / t_copy / 1e9,
            "fraction": t_copy / t_op,
        })
    # the masked result is right (a figure of a wrong kernel is no figure)
    if not torch.equal(ops.mask_mul(x, mask), x * mask.to(dtype)):
        raise AssertionError("mask_mul result differs from x * mask")
    return rows


def ln_structured_rows(device: torch.device, width: int, dtype: torch.dtype, repeat: int) -> List[Dict[str, object]]:
    rows = []
    for dim in (0, 1):
        lin = torch.nn.Linear(width, width, bias=False, device=device, dtype=dtype)
        weight = lin.weight.detach().clone()
        pruned_by = []

        def reset():
            # Each run prunes a fresh reparametrisation of the same weights.
            if pruned_by:
                pruned_by.pop().remove(lin, "weight")
            with torch.no_grad():
                lin.weight.copy_(weight)

        def prune_with(lib):
            def run():
                lib.ln_structured(lin, "weight", amount=0.5, n=2, dim=dim)
                pruned_by.append(lib)
            return run

        t_fp = best_time(prune_with(fastprune), device, repeat, setup=reset)
        mask_fp = lin.weight_mask.clone()
        t_torch = best_time(prune_with(torch_prune), device, repeat, setup=reset)
        mask_torch = lin.weight_mask.clone()
        reset()
        rows.append({
            "shape": f"{width}x{width}",
            "dtype": str(dtype).replace("torch.", ""),
            "dim": dim,
            "fastprune_s": t_fp,
            "torch_s": t_torch,
            "speedup": t_torch / t_fp,
            "masks_equal": bool(torch.equal(mask_fp, mask_torch)),
        })
        del lin, weight, mask_fp, mask_torch
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


LLAMA7B_BLOCK = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]


def _topk_rows_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """The plain-torch row selection: the k smallest |w| of every row pruned."""
    keep = torch.ones(w.shape, dtype=torch.bool, device=w.device)
    if k:
        idx = torch.topk(w.abs(), k, dim=-1, largest=False, sorted=False).indices
        keep.scatter_(-1, idx, False)
    return keep


def _topk_nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The plain-torch N:M selection: the n smallest |w| of every group of m pruned."""
    groups = w.reshape(-1, m)
    return _topk_rows_mask(groups, n).reshape(w.shape)


def row_nm_rows(device: torch.device, blocks: int, dtype: torch.dtype, repeat: int) -> List[Dict[str, object]]:
    """row_kselect (half of every row) and nm_select (2:4) over a 7B model's linear layers."""
    from fastprune.ops import reference as ref

    gen = torch.Generator(device=device).manual_seed(0)
    weights = [torch.randn(shape, device=device, dtype=dtype, generator=gen)
               for _ in range(blocks) for shape in LLAMA7B_BLOCK]
    numel = sum(w.numel() for w in weights)
    # Correctness first: one layer of each shape against the reference (ties included: bf16);
    # selection is per row (per group), so the first rows of the whole layer's result are
    # compared with the reference of those rows (the reference is slow on a whole layer).
    for shape in sorted(set(LLAMA7B_BLOCK)):
        w = next(x for x in weights if tuple(x.shape) == shape)
        k = shape[1] // 2
        head = w[:256].cpu()
        if not torch.equal(ops.row_kselect(w, k)[:256].cpu(), ref.row_kselect(head, k)):
            raise AssertionError(f"row_kselect differs from the reference on {shape} {dtype}")
        if not torch.equal(ops.nm_select(w, 2, 4)[:256].cpu(), ref.nm_select(head, 2, 4)):
            raise AssertionError(f"nm_select differs from the reference on {shape} {dtype}")
    # the bytes the op must move: read every weight once, write one bool per weight
    nbytes = numel * (weights[0].element_size() + 1)
    src = torch.empty(nbytes // 2, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    t_copy = best_time(lambda: dst.copy_(src), device, repeat)
    del src, dst
    cases = [
        ("row_kselect (half of each row)", lambda: [ops.row_kselect(w, w.shape[1] // 2) for w in weights],
         lambda: [_topk_rows_mask(w, w.shape[1] // 2) for w in weights]),
        ("nm_select (2:4)", lambda: [ops.nm_select(w, 2, 4) for w in weights],
         lambda: [_topk_nm_mask(w, 2, 4) for w in weights]),
    ]
    rows = []
    for name, fast, plain in cases:
        t_fast = best_time(fast, device, repeat)
        try:
            t_plain: Optional[float] = best_time(plain, device, max(1, repeat // 2))
            plain_error = None
        except RuntimeError as exc:  # out of memory: a figure too
            t_plain, plain_error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append({
            "op": name,
            "dtype": str(dtype).replace("torch.", ""),
            "layers": len(weights),
            "numel": numel,
            "bytes": nbytes,
            "op_s": t_fast,
            "op_GBps": nbytes / t_fast / 1e9,
            "fraction_of_copy": t_copy / t_fast,
            "torch_topk_s": t_plain,
            "torch_topk_error": plain_error,
            "speedup": (t_plain / t_fast) if t_plain else None,
        })
    del weights
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def format_tables(result: Dict[str, object]) -> str:
    lines = [f"device: {result['machine']} | torch {result['torch']} | fastprune {result['fastprune']}", ""]
    lines.append("| op | dtype | elements | op GB/s | copy GB/s | fraction of copy |")
    lines.append("|---|---|---|---|---|---|")
    for r in result["mask_multiply"]:
        lines.append(f"| {r['op']} | {r['dtype']} | {r['numel']:,} | {r['op_GBps']:.1f} | {r['copy_GBps']:.1f} "
                     f"| {r['fraction']:.2f} |")
    lines += ["", "| ln_structured | dtype | dim | fastprune | torch | speedup | masks equal |",
              "|---|---|---|---|---|---|---|"]
    for r in result["ln_structured"]:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['dim']} | {r['fastprune_s'] * 1e3:.2f} ms "
                     f"| {r['torch_s'] * 1e3:.2f} ms | {r['speedup']:.1f}x | {r['masks_equal']} |")
    if result.get("row_nm"):
        lines += ["", "| 7B linear layers | dtype | layers | elements | fastprune | GB/s | fraction of copy "
                  "| torch topk | speedup |", "|---|---|---|---|---|---|---|---|---|"]
        for r in result["row_nm"]:
            plain = (f"{r['torch_topk_s'] * 1e3:.2f} ms" if r["torch_topk_s"] is not None
                     else (r["torch_topk_error"] or "-"))
            speed = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
            lines.append(f"| {r['op']} | {r['dtype']} | {r['layers']} | {r['numel']:,} | {r['op_s'] * 1e3:.2f} ms "
                         f"| {r['op_GBps']:.1f} | {r['fraction_of_copy']:.2f} | {plain} | {speed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=parse_count, default=parse_count("1G"),
                   help="elements of the mask-multiply tensor (default 1G; e.g. 2M for a smoke run)")
    p.add_argument("--width", type=int, default=None,
                   help="ln_structured weight is width x width (default 16384 on CUDA, 1024 on CPU)")
    p.add_argument("--blocks", type=int, default=None,
                   help="Llama-7B blocks for row_kselect / nm_select (default 32 on CUDA, 1 on CPU; 0 skips them)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this torch sees no CUDA device")
    width = args.width or (16384 if device.type == "cuda" else 1024)
    result: Dict[str, object] = {
        "machine": machine(device),
        "device": str(device),
        "torch": torch.__version__,
        "fastprune": fastprune.__version__,
        "build_info": fastprune.build_info(),
        "mask_multiply": [],
        "ln_structured": [],
        "row_nm": [],
    }
    for dtype in (torch.bfloat16, torch.float32):
        result["mask_multiply"] += mask_multiply_rows(device, args.size, dtype, args.repeat)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["ln_structured"] = ln_structured_rows(device, width, torch.float32, args.repeat)
    blocks = args.blocks if args.blocks is not None else (32 if device.type == "cuda" else 1)
    if blocks:
        result["row_nm"] = row_nm_rows(device, blocks, torch.bfloat16, args.repeat)
    print(format_tables(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0 if all(r["masks_equal"] for r in result["ln_structured"]) else 1


if __name__ == "__main__":
    sys.exit(main())
