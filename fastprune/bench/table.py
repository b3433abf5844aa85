"""The benchmark's table: formatting of times, sizes and rows, and the lines that explain them."""
from __future__ import annotations

import os
import platform
from typing import Dict, List, Optional, Sequence

import torch

from ..ops import build_info
from .cases import CASE_TITLES

__all__ = ["format_time", "format_mb", "machine_description", "format_rows", "format_table"]

# A peak may exceed its budget by this much (allocator and interpreter noise).
_SLACK = 64 * 2**20


def format_time(t: Optional[float]) -> str:
    """``"12.3 ms"`` below a second, ``"1.23 s"`` above, ``"-"`` for ``None``."""
    if t is None:
        return "-"
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def format_mb(b: Optional[float]) -> str:
    """Bytes as ``"1,234 MB"`` (MiB), ``"-"`` for ``None``."""
    return "-" if b is None else f"{b / 2**20:,.0f} MB"


def machine_description(device: torch.device) -> str:
    """One line naming the machine: the GPU's name, or the CPU model, core count and RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
    except OSError:  # not Linux
        return f"{model}, {os.cpu_count()} cores"
    return f"{model}, {os.cpu_count()} cores, {total_kb / 2**20:.0f} GiB RAM"


def format_rows(header: Sequence[str], body: Sequence[Sequence[object]]) -> List[str]:
    """Lines of a plain-text table with columns padded to their widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = " | ".join("{:<%d}" % w for w in widths)
    return [fmt.format(*header), "-+-".join("-" * w for w in widths)] + [fmt.format(*map(str, b)) for b in body]


def _budget_lines(rows, info) -> List[str]:
    """The memory budgets fastprune is held to, and whether the measured peaks stay within them."""
    lines = []
    for r in rows:
        peak = r["fastprune_peak"]
        if peak is None:
            continue
        if r["case"] == "global_l1":
            state = 2 * info["model_bytes"]  # the masks and pruned weights torch's layout needs
            verdict = "within" if peak <= state + _SLACK else "ABOVE"
            lines.append(
                f"global L1 peak {format_mb(peak)} vs masks + pruned weights ({format_mb(state)}) + 64 MB: {verdict}"
            )
        elif r["case"] == "sparsify":
            budget = info["numel"] / 8
            verdict = "within" if peak <= budget + _SLACK else "ABOVE"
            lines.append(f"sparsify_ peak {format_mb(peak)} vs N/8 ({format_mb(budget)}) + 64 MB: {verdict}")
    return lines


def format_table(rows: List[Dict[str, object]], info: Dict[str, object]) -> str:
    """The benchmark's table and the notes below it.

    Args:
        rows: one dict per case, as :func:`~fastprune.bench.run_benchmark`
            returns them (``case``, ``torch_s``, ``fastprune_s``, ``floor``,
            ``floor_s``, ``floor_ratio``, ``torch_peak``, ``fastprune_peak``,
            ``identical``, ``error``).
        info: the run's information from the same call (model, machine,
            ``skipped`` cases with their reason, ``floors``, ``memcpy`` time...).

    Returns:
        the text to print.
    """
    header = ["case", "torch", "fastprune", "speedup", "floor", "fastprune / floor", "torch peak", "fastprune peak",
              "fastprune GB/s", "masks identical"]
    floors = info.get("floors", {})
    body = []
    for r in rows:
        fp, tc = r["fastprune_s"], r["torch_s"]
        tc_text = format_time(tc) if tc is not None else ("skipped" if r["case"] in info["skipped"] else "-")
        fl = floors.get(r.get("floor"), {})
        fl_text = format_time(r.get("floor_s")) if r.get("floor_s") else (
            "skipped" if "skipped" in fl else ("error" if "error" in fl else "-"))
        body.append([
            CASE_TITLES[r["case"]],
            tc_text,
            format_time(fp),
            f"{tc / fp:,.1f}x" if fp and tc else "-",
            fl_text,
            f"{r['floor_ratio']:.2f}x" if r.get("floor_ratio") else "-",
            format_mb(r["torch_peak"]),
            format_mb(r["fastprune_peak"]),
            f"{info['model_bytes'] / fp / 1e9:.2f}" if fp else "-",
            r["identical"] if not r["error"] else "error",
        ])
    lines = format_rows(header, body)
    for name, fl in floors.items():
        state = format_time(fl["s"]) if "s" in fl else ("skipped: " + fl["skipped"] if "skipped" in fl
                                                         else "error: " + str(fl.get("error")))
        lines.append(f"floor of {', '.join(fl['cases'])} ({name}): {fl['what']}: {state}")
    if info.get("memcpy"):
        mc = info["memcpy"]
        lines.append(
            f"bandwidth reference (warm, not a floor): memcpy of the same {info['model_bytes'] / 1e9:.2f} GB layer by "
            f"layer into one reused layer-sized buffer: {format_time(mc)}, {info['model_bytes'] / mc / 1e9:.2f} GB/s"
        )
    lines.extend(_budget_lines(rows, info))
    lines.append("")
    bi = build_info()
    kernel = "compiled extension" if bi["extension"] else f"pure-torch fallback ({bi['fallback_reason']})"
    lines += [
        f"model: {info['model']}, {info['dtype']} on {info['device']} ({info['model_bytes'] / 1e9:.2f} GB); "
        f"amount={info['amount']}",
        f"machine: {info['machine']}; torch {info['torch']}; fastprune kernels: {kernel}",
        "load average at the end: " + ", ".join(f"{x:.2f}" for x in info["load"]),
        "times: best of --repeat runs (forward cases: at least 15; torch: one run when it takes over 3 s); "
        "each case and library in a fresh process.",
        "floor: what the case must do at least, with nothing selected, measured in this run like the case (a fresh "
        "process, as many runs, the best reported); fastprune / floor = fastprune time / floor time. Every timed "
        "run of a case or a floor allocates new memory, as a process's first call does: "
        + ("the CUDA caching allocator is emptied before it (torch.cuda.empty_cache), so its new tensors are fresh "
           "device allocations." if str(info["device"]).startswith("cuda") else
           "the C library's free heap pages go back to the kernel before it (malloc_trim(0)), so its new tensors "
           "are pages the kernel zero-fills on first touch."),
        "peak: peak RSS during the call minus RSS just before it (VmHWM reset through /proc/self/clear_refs); "
        "for the forward cases, the bytes of the masks and recomputed weights the pruned model holds "
        "above the dense one plus the forward call's own peak; on CUDA, torch.cuda.max_memory_allocated above "
        "the start.",
        "GB/s: model bytes (every weight read once) / fastprune time.",
        "forward: both libraries with masks in the weight's dtype; forward_bool: fastprune with 1-byte bool masks "
        "(torch's side is the same float-mask run).",
        "masks identical: bit-for-bit comparison with torch's masks; 'ties (n bits)' = they differ only among units "
        "whose score (|w|, or the row's norm for ln_structured) equals the threshold (torch's topk breaks ties "
        "arbitrarily, fastprune by lower index); where torch did not run, 'exact' = exactly k pruned and every "
        "pruned score <= every kept score on the regenerated weights.",
    ]
    lines += [f"torch skipped for {case}: {why}" for case, why in info["skipped"].items()]
    lines += [f"{r['case']}: {r['error']}" for r in rows if r["error"]]
    lines += [f"floor {name}: {fl['error']}" for name, fl in floors.items() if "error" in fl]
    return "\n".join(lines)
