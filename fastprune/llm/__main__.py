"""``python -m fastprune.llm``: prune a local transformers checkpoint and save it.

Example::

    python -m fastprune.llm --model ./llama --method wanda --sparsity 0.5 \\
        --calibration corpus.txt --nsamples 128 --seqlen 2048 --output ./llama-wanda50

The checkpoint folder is what ``save_pretrained`` writes (config, safetensors
weights and the tokenizer); ``--calibration`` is a text file or a folder of
text files. The model is never loaded whole: :func:`fastprune.llm.prune_checkpoint`
reads it block by block and writes the pruned shards to ``--output`` (with the
config and tokenizer files), so the peak memory is about one block. A run that
was killed continues with ``--resume``. The report table is printed. A bad
path or setting ends with one line on stderr and exit status 2, not a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .api import METHODS
from .calibration import load_text_calibration
from .checkpoint import prune_checkpoint
from .patterns import parse_pattern


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastprune.llm",
        description="One-shot pruning (Wanda, SparseGPT, magnitude; unstructured or N:M; OWL) of a local "
        "transformers checkpoint, block by block on calibration text.",
    )
    p.add_argument("--model", required=True, help="checkpoint folder (save_pretrained layout, with its tokenizer)")
    p.add_argument("--method", default="wanda", choices=METHODS)
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned, in [0, 1) (N/M for --pattern N:M)")
    p.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M, e.g. 2:4")
    p.add_argument("--layer-sparsity", default=None, choices=["owl"], help="per-block sparsities (OWL)")
    p.add_argument("--calibration", help="a text file or a folder of text files (not needed for magnitude)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration sequences")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration sequence")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--output", required=True, help="folder for the pruned model")
    p.add_argument("--device", default=None, help="device each block is pruned on (default: cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="cast the weights to this dtype (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="calibration sequences per forward call (default: from a 256 MiB activation budget)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --output (the same arguments are required)")
    p.add_argument("--prune-embeddings", action="store_true",
                   help="prune the input embeddings too (by magnitude per row; dense by default)")
    p.add_argument("--prune-lm-head", action="store_true",
                   help="prune the LM head too (by magnitude per row; dense by default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _load(args):
    if not os.path.isdir(args.model):
        raise _UsageError(f"--model: {args.model!r} is not a folder")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise _UsageError(f"--model: {args.model!r} has no config.json (expected a save_pretrained folder)")
    if not args.calibration:
        return None
    try:
        import transformers
        from transformers import AutoTokenizer
    except ImportError as e:  # transformers is an optional dependency
        raise _UsageError(f"transformers is needed to read checkpoints ({e}); pip install transformers")
    transformers.utils.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    except Exception as e:  # noqa: BLE001 (one line for whatever transformers raises)
        raise _UsageError(f"--model: cannot load the tokenizer from {args.model!r}: {str(e).splitlines()[0]}")
    try:
        return load_text_calibration(args.calibration, tokenizer, args.nsamples, args.seqlen, args.seed)
    except ValueError as e:
        raise _UsageError(str(e))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m fastprune.llm``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if not 0.0 <= args.sparsity < 1.0:
            raise _UsageError(f"--sparsity={args.sparsity} must be in [0, 1)")
        try:
            parse_pattern(args.pattern)
        except ValueError as e:
            raise _UsageError(f"--pattern: {e}")
        if args.nsamples < 1 or args.seqlen < 1:
            raise _UsageError("--nsamples and --seqlen must be at least 1")
        needs_data = args.method != "magnitude" or args.layer_sparsity == "owl"
        if needs_data and not args.calibration:
            raise _UsageError(f"--calibration is required for --method {args.method}"
                              + (" with --layer-sparsity owl" if args.method == "magnitude" else ""))
        if args.calibration and not os.path.exists(args.calibration):
            raise _UsageError(f"--calibration: {args.calibration!r} does not exist")
        if os.path.isfile(args.output):
            raise _UsageError(f"--output: {args.output!r} is a file, not a folder")
        if args.batch_size is not None and args.batch_size < 1:
            raise _UsageError(f"--batch-size={args.batch_size} must be at least 1")
        calibration = _load(args)
        import torch

        try:
            report = prune_checkpoint(args.model, args.output, calibration, method=args.method,
                                      sparsity=args.sparsity, pattern=args.pattern,
                                      layer_sparsity=args.layer_sparsity, batch_size=args.batch_size,
                                      resume=args.resume, device=args.device,
                                      dtype=getattr(torch, args.dtype) if args.dtype else None,
                                      progress=not args.no_progress, prune_embeddings=args.prune_embeddings,
                                      prune_lm_head=args.prune_lm_head)
        except (TypeError, ValueError, IndexError) as e:
            raise _UsageError(str(e))
    except _UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    print(f"saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
