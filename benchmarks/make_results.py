"""Assemble the measured sections of RESULTS.md from one reproduce.sh log folder.

    python benchmarks/make_results.py benchmarks/logs/run-HHMM > /tmp/measured.md

Every section gets the date, machine, commit and command it came from, and the
load average and available memory at its start.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (title, command, log file, kind): "text" logs go in a code block, "markdown" ones as they are,
# "pytest" is the pytest-benchmark JSON turned into a table by pb_table.py.
SECTIONS = [
    ("Global L1 over 25 x Linear(2048, 2048) (105M fp32)",
     "python -m fastprune.bench --model square --width 2048 --params 105M --repeat 7", "bench_105M_square.txt",
     "text"),
    ("Default model: Llama-shaped stack, ~100M fp32", "python -m fastprune.bench --repeat 3",
     "bench_100M_llama.txt", "text"),
    ("In-place pruning at 1B: sparsify_ on 60 x Linear(4096, 4096) (1.007B fp32, 4.03 GB)",
     "python -m fastprune.bench --model square --width 4096 --params 1B --cases sparsify --skip-torch --repeat 2",
     "bench_1B_sparsify.txt", "text"),
    ("Size sweep, global L1 (Llama-shaped models, fp32)", "python benchmarks/size_sweep.py --repeat 3",
     "size_sweep.txt", "markdown"),
    ("pytest-benchmark suite (minimum of its rounds; torch: 1 round at 100M)",
     "python -m pytest benchmarks --benchmark-only", "pytest_benchmark.json", "pytest"),
    ("Where global_unstructured's time goes (in-process, 105M fp32)",
     "python benchmarks/profile_global.py --repeat 5", "profile_global.txt", "text"),
    ("First call of a fresh process", "python benchmarks/cold_first_call.py", "cold_first_call.txt", "text"),
    ("Per-call cost from 8 elements to 100M, and models of many small layers",
     "python benchmarks/small_sweep.py --rounds 5", "small_sweep.txt", "markdown"),
    ("Pruned forward, interleaved rounds", "python benchmarks/forward_interleaved.py --rounds 21",
     "forward_interleaved.txt", "markdown"),
    ("Iterated global pruning (masks present)", "python benchmarks/iterated_global.py --repeat 3",
     "iterated_global.txt", "text"),
    ("Past 2^31 elements: global_unstructured and l1_unstructured in bf16, torch's layout",
     "python benchmarks/beyond_int32.py", "beyond_int32.txt", "text"),
]


def read(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return "(missing)"
    with open(path) as f:
        return f.read().rstrip()


def body(folder, name, kind):
    if kind == "pytest":
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            return "(missing)"
        return subprocess.run([sys.executable, os.path.join(HERE, "pb_table.py"), path],
                              capture_output=True, text=True).stdout.rstrip()
    text = read(folder, name)
    return text if kind == "markdown" else f"```\n{text}\n```"


def main(folder):
    run = dict(line.split(": ", 1) for line in read(folder, "run.txt").splitlines() if ": " in line)
    loads = read(folder, "load.txt").splitlines()
    out = []
    for i, (title, cmd, name, kind) in enumerate(SECTIONS):
        start = loads[i].lstrip("= ") if i < len(loads) else "?"
        out += [
            f"## {i + 1}. {title}", "",
            f"{run.get('date', '?')}, {run.get('machine', '?')}, commit `{run.get('commit', '?')}`; "
            f"start: {start}", "",
            f"`{cmd}`", "",
            body(folder, name, kind), "",
        ]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
