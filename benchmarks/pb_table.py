"""Markdown table of a pytest-benchmark JSON file: torch and fastprune side by side per group.

    python benchmarks/pb_table.py benchmarks/logs/pytest_benchmark.json
"""
import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    groups = {}
    for b in data["benchmarks"]:
        lib = next(p for p in ("fastprune-bool", "fastprune", "torch") if p in b["name"])
        groups.setdefault(b["group"], {})[lib] = b["stats"]["min"]
    print("| case | torch (min) | fastprune (min) | speedup | fastprune, bool masks | speedup |")
    print("|---|---:|---:|---:|---:|---:|")
    for group in sorted(groups, key=lambda g: (g.split()[0], float(g.split()[1].rstrip("M").split("x")[0]))):
        g = groups[group]
        t, f, fb = g.get("torch"), g.get("fastprune"), g.get("fastprune-bool")

        def ms(x):
            return "-" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")

        def ratio(a, b):
            return f"{a / b:.1f}x" if a and b else "-"

        print(f"| {group} | {ms(t)} | {ms(f)} | {ratio(t, f)} | {ms(fb)} | {ratio(t, fb)} |")


if __name__ == "__main__":
    main(sys.argv[1])
