"""Write OUT/summary.md and OUT/summary.json from what scripts/gpu_check.sh left in OUT.

    python scripts/gpu_check_summary.py OUT TOTAL_SECONDS

Collects the machine (device, driver, torch, CUDA), every stage's status and
time, every figure (bench_7b.json, figures.json) and every failure. Prints the
Markdown summary; exit status 1 when a CUDA device was present and a stage failed.
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Dict, List, Optional


def read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_json(path: str) -> Optional[Any]:
    text = read(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def fmt_s(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def fmt_bytes(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / 2**30:.2f} GiB"


def stages_of(out: str) -> List[Dict[str, Any]]:
    stages = []
    for line in (read(os.path.join(out, "stages.tsv")) or "").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            stages.append({"name": parts[0], "status": parts[1], "seconds": int(parts[2]),
                           "note": parts[3] if len(parts) > 3 else ""})
    return stages


def machine(out: str) -> Dict[str, Any]:
    info: Dict[str, Any] = dict(read_json(os.path.join(out, "env.json")) or {})
    gpus = (read(os.path.join(out, "gpus.csv")) or "").strip().splitlines()
    if gpus:
        fields = [f.strip() for f in gpus[0].split(",")]
        info.update(zip(("device", "driver", "compute_capability", "memory"), fields))
        info["gpus"] = len(gpus)
    info["cuda_device_present"] = bool(info.get("cuda_available")) and bool(gpus)
    return info


def main(argv: List[str]) -> int:
    out = argv[0]
    total = float(argv[1]) if len(argv) > 1 else None
    env = machine(out)
    stages = stages_of(out)
    failures: List[str] = []
    figures: Dict[str, Any] = {}

    build_log = read(os.path.join(out, "build.log")) or ""
    # (pip runs setup.py twice, for the metadata and for the wheel: each line once)
    setup_lines = list(dict.fromkeys(ln.strip() for ln in build_log.splitlines() if "fastprune setup:" in ln))
    build_info = read_json(os.path.join(out, "build_info.json"))

    kernels_log = read(os.path.join(out, "kernels.log")) or ""
    kernel_lines = [ln.strip() for ln in kernels_log.splitlines()
                    if re.search(r"\d+ cases, \d+ failed|SANITIZER|did not compile|compile finished", ln)]

    pytest_log = read(os.path.join(out, "pytest.log")) or ""
    pytest_tail = [ln for ln in pytest_log.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    pytest_header = [ln for ln in pytest_log.splitlines() if ln.startswith("fastprune ")]
    pytest_failed = [ln[len("FAILED "):] for ln in pytest_log.splitlines() if ln.startswith("FAILED ")]

    bench = read_json(os.path.join(out, "bench_7b.json"))
    if bench is not None:
        figures["bench_7b"] = bench
    fig = read_json(os.path.join(out, "figures.json"))
    if fig is not None:
        figures["gpu_figures"] = fig
    llm = read_json(os.path.join(out, "llm.json"))
    if llm is not None:
        figures["llm"] = llm
    pb_table = read(os.path.join(out, "pb_table.md"))

    for st in stages:
        if st["name"] == "bench_7b" and st["status"] == "failed" and bench is not None:
            # fastprune.bench exits 1 when any side raised; torch's errors past 2^31 elements
            # or out of memory are figures here, fastprune's are failures.
            fp_errors = [r for r in bench.get("rows", []) if "fastprune:" in str(r.get("error") or "")]
            floor_errors = [f for f in (bench.get("info", {}).get("floors") or {}).values() if "error" in f]
            if not fp_errors and not floor_errors:
                st["status"], st["note"] = "ok", "torch's errors are recorded as figures"
        if st["status"] in ("failed", "timeout"):
            failures.append(f"stage {st['name']}: {st['status']} ({st['note']}), see {st['name']}.log")
    failures += [f"pytest: {t}" for t in pytest_failed]
    for ln in kernel_lines:
        if "FAILED" in ln or ("failed" in ln and not re.search(r" 0 failed", ln)) or "did not compile" in ln:
            failures.append(f"kernels: {ln}")
    if bench is not None:
        for r in bench.get("rows", []):
            if "fastprune:" in str(r.get("error") or ""):
                failures.append(f"bench_7b {r.get('case')}: {r['error']}")
            if r.get("exact") is False:
                failures.append(f"bench_7b {r.get('case')}: fastprune did not prune exactly k")
        for name, f in (bench.get("info", {}).get("floors") or {}).items():
            if "error" in f:
                failures.append(f"bench_7b floor {name}: {f['error']}")
    if fig is not None:
        for r in fig.get("ln_structured", []):
            if not r.get("masks_equal"):
                failures.append(f"ln_structured {r['shape']} dim={r['dim']}: masks differ from torch's")

    summary = {
        "machine": env,
        "cuda_device_present": env["cuda_device_present"],
        "build_info": build_info,
        "build_log": setup_lines,
        "stages": stages,
        "kernels": kernel_lines,
        "pytest": {"header": pytest_header, "result": pytest_tail, "failed": pytest_failed},
        "figures": figures,
        "failures": failures,
        "total_s": total,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)

    md: List[str] = ["# fastprune GPU check", ""]
    dev = env.get("device") or "no CUDA device"
    md.append(f"- device: {dev}" + (f" (sm {env.get('compute_capability')}, {env.get('memory')}, driver "
                                     f"{env.get('driver')})" if env.get("driver") else ""))
    md.append(f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), python {env.get('python')}, "
              f"{env.get('cores')} cores, {env.get('platform')}")
    if build_info:
        md.append(f"- fastprune {build_info.get('version')}: extension {build_info.get('extension')}, "
                  f"cuda {build_info.get('cuda')}"
                  + (f" (why not: {build_info.get('cuda_fallback_reason')})" if not build_info.get("cuda") else ""))
    if total is not None:
        md.append(f"- total time: {total:.0f} s")
    if not env["cuda_device_present"]:
        md += ["", "**No CUDA device is present on this machine**: only the build stage ran; the GPU stages "
               "were skipped. This is not a failure."]
    md += ["", "## Stages", "", "| stage | status | time | note |", "|---|---|---|---|"]
    md += [f"| {s['name']} | {s['status']} | {s['seconds']} s | {s['note']} |" for s in stages]
    if setup_lines:
        md += ["", "Build log (setup lines):", "", "```", *setup_lines, "```"]
    if kernel_lines:
        md += ["", "Kernel tests:", "", "```", *kernel_lines, "```"]
    if pytest_tail or pytest_header:
        md += ["", "pytest:", "", "```", *pytest_header, *pytest_tail[-1:], "```"]
    if bench is not None:
        info = bench.get("info", {})
        md += ["", f"## Global magnitude pruning, {info.get('model', '7B model')} ({info.get('dtype')}, "
               f"amount {info.get('amount')})", "",
               "| case | fastprune | floor | fastprune / floor | peak | exact k | torch | torch peak | masks | error |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for r in bench.get("rows", []):
            skipped = info.get("skipped", {}).get(r.get("case"))
            torch_time = fmt_s(r.get("torch_s")) if r.get("torch_s") is not None else (
                f"skipped: {skipped}" if skipped else "-")
            ratio = f"{r['floor_ratio']:.2f}x" if r.get("floor_ratio") else "-"  # absent in older JSON
            md.append(f"| {r.get('case')} | {fmt_s(r.get('fastprune_s'))} | {fmt_s(r.get('floor_s'))} | {ratio} "
                      f"| {fmt_bytes(r.get('fastprune_peak'))} "
                      f"| {r.get('exact')} | {torch_time} | {fmt_bytes(r.get('torch_peak'))} "
                      f"| {r.get('identical', '-')} | {r.get('error') or ''} |")
        for name, f in (info.get("floors") or {}).items():
            state = fmt_s(f["s"]) if "s" in f else f"skipped: {f['skipped']}" if "skipped" in f else \
                f"error: {f.get('error')}"
            md.append(f"\nFloor of {', '.join(f.get('cases', []))} ({name}): {f.get('what')}: {state}.")
        if info.get("memcpy") is not None:
            md.append(f"\nBandwidth reference (warm device copy of the whole model, layer by layer into one reused "
                      f"buffer; not a floor): {fmt_s(info['memcpy'])}.")
    if fig is not None:
        md += ["", "## Mask multiply against a device copy of the same bytes", "",
               "| op | dtype | elements | op GB/s | copy GB/s | fraction of copy |", "|---|---|---|---|---|---|"]
        for r in fig.get("mask_multiply", []):
            md.append(f"| {r['op']} | {r['dtype']} | {r['numel']:,} | {r['op_GBps']:.1f} | {r['copy_GBps']:.1f} "
                      f"| {r['fraction']:.2f} |")
        md += ["", "## ln_structured (n=2, amount 0.5) against torch", "",
               "| weight | dtype | dim | fastprune | torch | speedup | masks equal |", "|---|---|---|---|---|---|---|"]
        for r in fig.get("ln_structured", []):
            md.append(f"| {r['shape']} | {r['dtype']} | {r['dim']} | {fmt_s(r['fastprune_s'])} | {fmt_s(r['torch_s'])} "
                      f"| {r['speedup']:.1f}x | {r['masks_equal']} |")
        if fig.get("row_nm"):
            md += ["", "## row_kselect / nm_select over a 7B model's linear layers", "",
                   "| op | dtype | layers | elements | fastprune | GB/s | fraction of copy | torch topk | speedup |",
                   "|---|---|---|---|---|---|---|---|---|"]
            for r in fig["row_nm"]:
                plain = fmt_s(r["torch_topk_s"]) if r.get("torch_topk_s") is not None else (
                    r.get("torch_topk_error") or "-")
                speed = f"{r['speedup']:.1f}x" if r.get("speedup") else "-"
                md.append(f"| {r['op']} | {r['dtype']} | {r['layers']} | {r['numel']:,} | {fmt_s(r['op_s'])} "
                          f"| {r['op_GBps']:.1f} | {r['fraction_of_copy']:.2f} | {plain} | {speed} |")
    if llm is not None:
        info = llm.get("info", {})
        md += ["", f"## fastprune.llm.prune on {info.get('device')} and on the CPU ({info.get('cpu')})", "",
               f"Llama-shaped, {info.get('params', 0) / 1e6:.0f}M parameters, {info.get('layers')} blocks, "
               f"{info.get('dtype')}, calibration {info.get('calibration')}, sparsity {info.get('sparsity')}.", "",
               f"| method | device, all blocks | peak device memory | device, first {info.get('compared_blocks')} "
               "| CPU, same blocks | speed-up | masks agree |", "|---|---|---|---|---|---|---|"]
        for r in llm.get("rows", []):
            md.append(f"| {r['method']} | {fmt_s(r['device_all_s'])} | {fmt_bytes(r.get('device_peak_bytes'))} "
                      f"| {fmt_s(r['device_first_s'])} | {fmt_s(r['cpu_first_s'])} | {r['speedup']:.1f}x "
                      f"| {r['mask_agreement'] * 100:.3f}% |")
    if pb_table:
        md += ["", "## pytest-benchmark suite on the GPU (min of the rounds)", "", pb_table.strip()]
    md += ["", "## Failures", ""]
    md += [f"- {f}" for f in failures] or ["none"]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 1 if env["cuda_device_present"] and failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
