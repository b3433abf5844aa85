"""Check what an installed fastprune was built with, without needing a GPU.

    python tests/cuda/check_build.py [--cuda]

Checks that the compiled extension loads and that every fastprune op has a
compiled kernel (a C++ registration from csrc/, not the pure-torch reference)
for the CPU dispatch key, and with ``--cuda`` also that ``build_info()["cuda"]``
is true and every op has a compiled kernel for the CUDA key. Prints one line
per op and key; exit status 1 on any failure. Run it from outside the source
tree so that the installed package is imported.
"""
from __future__ import annotations

import sys


def main(argv) -> int:
    want_cuda = "--cuda" in argv
    import torch

    import fastprune
    from fastprune import ops
    from fastprune.ops._load import kernel_registrations

    info = fastprune.build_info()
    print(f"fastprune {info['version']} from {fastprune.__file__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); build_info: {info}")
    failures = []
    if not info["extension"]:
        failures.append(f"the compiled extension is not loaded: {info['fallback_reason']}")
    if want_cuda and not info["cuda"]:
        failures.append(f"build_info()['cuda'] is {info['cuda']}: {info.get('cuda_fallback_reason')}")
    keys = ("CPU", "CUDA") if want_cuda else ("CPU",)
    for op, where in kernel_registrations(ops.SCHEMAS, keys).items():
        for key, location in where.items():
            compiled = location is not None and "csrc" in location and not location.split(":")[0].endswith(".py")
            print(f"{'ok  ' if compiled else 'FAIL'} fastprune::{op:<20} {key:<5} {location}")
            if not compiled:
                failures.append(f"fastprune::{op} has no compiled {key} kernel (registered at {location})")
    for failure in failures:
        print("FAIL:", failure)
    print("build check:", "FAILED" if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
