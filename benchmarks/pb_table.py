"""Markdown table of a pytest-benchmark JSON file: torch, fastprune and the floor side by side per group.

    python benchmarks/pb_table.py benchmarks/logs/pytest_benchmark.json

The floor of a group (``lib="floor"`` in the suite: ``fastprune.bench.FLOORS``)
is the least memory work that produces what the case must produce, timed with
the same rounds; "/ floor" columns divide fastprune's minimum by the floor's.
"""
import json
import sys

LIBS = ("fastprune-bool", "fastprune", "torch", "floor")


def lib_of(bench):
    """The library of one benchmark: its ``extra_info["lib"]``, else read from the test's name."""
    lib = bench.get("extra_info", {}).get("lib")
    if lib in LIBS:
        return lib
    params = bench.get("params") or {}
    if params.get("lib") in LIBS:
        return params["lib"]
    return next(p for p in LIBS if p in bench["name"])


def ms(x):
    return "-" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")


def ratio(a, b, digits=1):
    return f"{a / b:.{digits}f}x" if a and b else "-"


def sort_key(group):
    name, _, label = group.partition(" ")
    head = label.rstrip("M").split("x")[0]
    try:
        return name, float(head)
    except ValueError:
        return name, float("inf")


def table(data):
    """The Markdown lines for the benchmarks of one pytest-benchmark JSON document."""
    groups = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"], {})[lib_of(b)] = b["stats"]["min"]
    lines = [
        "| case | torch (min) | fastprune (min) | speedup | floor (min) | fastprune / floor "
        "| fastprune, bool masks | speedup | bool / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group in sorted(groups, key=sort_key):
        g = groups[group]
        t, f, fb, fl = g.get("torch"), g.get("fastprune"), g.get("fastprune-bool"), g.get("floor")
        lines.append(f"| {group} | {ms(t)} | {ms(f)} | {ratio(t, f)} | {ms(fl)} | {ratio(f, fl, 2)} "
                     f"| {ms(fb)} | {ratio(t, fb)} | {ratio(fb, fl, 2)} |")
    return lines


def main(path):
    with open(path) as f:
        data = json.load(f)
    print("\n".join(table(data)))


if __name__ == "__main__":
    main(sys.argv[1])
