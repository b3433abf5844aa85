"""``python -m fastprune.bench``: the command line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import torch

from .cases import CASES
from .models import DTYPES, parse_count
from .runner import run_benchmark
from .table import format_table
from .worker import worker_main

__all__ = ["build_parser", "main"]

DESCRIPTION = "fastprune against torch.nn.utils.prune, side by side: time, peak memory and masks."


def _case_list(text: str):
    return [c.strip() for c in text.split(",") if c.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fastprune.bench`` (``--help`` lists every flag)."""
    p = argparse.ArgumentParser(prog="python -m fastprune.bench", description=DESCRIPTION)
    p.add_argument("--params", type=parse_count, default=parse_count("100M"),
                   help="model size: 100M, 1B, 7B... (default 100M)")
    p.add_argument("--model", choices=("llama", "square"), default="llama",
                   help="llama: Llama-shaped blocks; square: N x Linear(width, width)")
    p.add_argument("--width", type=int, default=None, help="hidden size (llama) or layer width (square, default 2048)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amount", type=float, default=0.5, help="fraction to prune (default 0.5)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per case (best is reported)")
    p.add_argument("--cases", type=_case_list, default=list(CASES), help="comma-separated subset of " + ",".join(CASES))
    p.add_argument("--skip-torch", action="store_true", help="time fastprune only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows and run information to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # the child process of run_job
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); prints the table.

    Returns:
        the exit status: 0, or 1 when a case or a floor failed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {','.join(CASES)}")
    if not 0.0 <= args.amount <= 1.0:
        parser.error("--amount must be a fraction in [0, 1]")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: this torch has no CUDA device")
    try:
        rows, info = run_benchmark(
            params=args.params, model=args.model, width=args.width, dtype=args.dtype, device=args.device,
            amount=args.amount, repeat=args.repeat, cases=args.cases, skip_torch=args.skip_torch, seed=args.seed,
            quiet=args.quiet,
        )
    except MemoryError as e:
        parser.exit(1, f"{parser.prog}: {e}\n")
    print(format_table(rows, info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "info": info}, f, indent=1, default=str)
    floor_failed = any("error" in fl for fl in info["floors"].values())
    return 1 if floor_failed or any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
