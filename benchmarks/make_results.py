"""Assemble the measured part of RESULTS.md from one reproduce.sh log folder.

    python benchmarks/make_results.py benchmarks/logs/run-HHMM > /tmp/measured.md
"""
import os
import subprocess
import sys


def read(folder, name):
    path = os.path.join(folder, name)
    return open(path).read().rstrip() if os.path.exists(path) else "(missing)"


def main(folder):
    loads = read(folder, "load.txt").splitlines()
    load = lambda i: loads[i].lstrip("= ") if i < len(loads) else "?"  # noqa: E731
    sections = [
        ("1. Issue target model: global L1 over 25 x Linear(2048, 2048) (105M fp32)",
         "python -m fastprune.bench --model square --width 2048 --params 105M --repeat 7", "bench_105M_square.txt", 0),
        ("2. Default model: Llama-shaped stack, ~100M fp32",
         "python -m fastprune.bench --repeat 3", "bench_100M_llama.txt", 1),
        ("3. Lean mode at 1B: sparsify_ on 60 x Linear(4096, 4096) (1.007B fp32, 4.03 GB)",
         "python -m fastprune.bench --model square --width 4096 --params 1B --cases sparsify --skip-torch --repeat 2",
         "bench_1B_sparsify.txt", 2),
    ]
    out = []
    for title, cmd, name, i in sections:
        out += [f"### {title}", "", f"`{cmd}` (start: {load(i)})", "", "```", read(folder, name), "```", ""]
    out += ["### 4. Size sweep, global L1 (Llama-shaped models, fp32)", "",
            f"`python benchmarks/size_sweep.py --repeat 3` (start: {load(3)})", "", read(folder, "size_sweep.txt"), ""]
    js = os.path.join(folder, "pytest_benchmark.json")
    table = "(missing)"
    if os.path.exists(js):
        table = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "pb_table.py"), js],
                               capture_output=True, text=True).stdout.rstrip()
    out += ["### 5. pytest-benchmark suite (minimum of its rounds; torch: 1 round at 100M)", "",
            f"`pytest benchmarks --benchmark-only` (start: {load(4)})", "", table, ""]
    out += ["### 6. Where global_unstructured's time goes (in-process, 105M fp32)", "",
            f"`python benchmarks/profile_global.py --repeat 5` (start: {load(5)})", "", "```",
            read(folder, "profile_global.txt"), "```", ""]
    out += ["### 7. Per-call cost from 8 elements to 100M, and models of many small layers", "",
            f"`python benchmarks/small_sweep.py --rounds 5` (start: {load(6)})", "", read(folder, "small_sweep.txt"), ""]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
