"""``python -m fastprune.llm``: prune a local transformers checkpoint and save it.

Example::

    python -m fastprune.llm --model ./llama --method wanda --sparsity 0.5 \\
        --calibration corpus.txt --nsamples 128 --seqlen 2048 --output ./llama-wanda50

The checkpoint folder is what ``save_pretrained`` writes (config, safetensors
weights and the tokenizer); ``--calibration`` is a text file or a folder of
text files, cut into ``--nsamples`` windows of ``--seqlen`` tokens (default:
the model's ``max_position_embeddings``, at most 4096; a longer ``--seqlen`` is
refused for models with a table of learned positions such as GPT-2 and OPT). The model is never loaded whole: :func:`fastprune.llm.prune_checkpoint`
reads it block by block and writes the pruned shards to ``--output`` (with the
config and tokenizer files), so the peak memory is about one block. A run that
was killed continues with ``--resume``. The report table is printed. A bad
path or setting ends with one line on stderr and exit status 2, not a traceback.

Launched by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) the
command initialises the process group itself (NCCL for ``--device cuda``, each
process on GPU ``LOCAL_RANK``; gloo otherwise; ``--timeout`` minutes) and
calibrates data-parallel (:mod:`fastprune.distributed.llm`): every process
reads the checkpoint and the same calibration windows, process 0 writes
``--output`` and prints the table::

    torchrun --nproc_per_node 2 -m fastprune.llm --model ./llama --calibration corpus.txt --output ./pruned
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional

from .api import METHODS
from .calibration import load_text_calibration
from .checkpoint import prune_checkpoint
from .checks import config_position_limit
from .patterns import parse_pattern


class _UsageError(Exception):
    pass


# Default --seqlen: the model's own limit, as the Wanda and SparseGPT reference code
# take it, but no more than this (a long-context model's 128k positions would make
# the calibration activations of 128 sequences hundreds of GB).
_SEQLEN_CAP = 4096
_SEQLEN_UNSTATED = 2048


# The keywords of llm.prune this command sets, and the flag that sets each: an
# error raised by prune is shown with the flag the user typed, not the keyword.
_FLAG_OF = {
    "prune_embeddings": "--prune-embeddings",
    "prune_lm_head": "--prune-lm-head",
    "layer_sparsity": "--layer-sparsity",
    "calibration": "--calibration",
    "sparsity": "--sparsity",
    "pattern": "--pattern",
    "method": "--method",
    "device": "--device",
}
# A keyword with an underscore is named wherever it stands; a plain word only
# where a message names an argument (``word=`` or ``word:``). ``flag=True``
# becomes the bare flag.
_KEYWORD = re.compile(
    r"(?<![\w.-])(?:(?P<bool>prune_embeddings|prune_lm_head)=True\b"
    r"|(?P<named>prune_embeddings|prune_lm_head|layer_sparsity)\b"
    r"|(?P<plain>calibration|sparsity|pattern|method|device)(?=[=:]))"
)


def _as_flags(message: str) -> str:
    """``message`` with the Python keywords of :func:`prune` replaced by this command's flags."""
    return _KEYWORD.sub(lambda m: _FLAG_OF[m.group(m.lastgroup)], message)


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
    p.add_argument("--seqlen", type=int, default=None,
                   help="tokens per calibration sequence (default: the model's max_position_embeddings, "
                        f"at most {_SEQLEN_CAP}; {_SEQLEN_UNSTATED} when the model states none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--output", required=True, help="folder for the pruned model")
    p.add_argument("--device", default=None, help="device each block is pruned on (default: cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="cast the weights to this dtype (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="calibration sequences per forward call (default: from a 32 MiB activation budget)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --output (the same arguments are required)")
    p.add_argument("--prune-embeddings", action="store_true",
                   help="prune the input embeddings too (by magnitude per row; dense by default)")
    p.add_argument("--prune-lm-head", action="store_true",
                   help="prune the LM head too (by magnitude per row; dense by default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="under torchrun: minutes a process waits for the others in a collective")
    return p


def _under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


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
        return load_text_calibration(args.calibration, tokenizer, args.nsamples, _seqlen(args.seqlen, args.model),
                                     args.seed)
    except ValueError as e:
        raise _UsageError(str(e))


def _seqlen(asked: Optional[int], folder: str) -> int:
    """``--seqlen``, or the checkpoint's position limit when not given (read from its config alone,
    the weights are not needed); refused above a table of learned positions."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise _UsageError(f"--model: cannot read the config of {folder!r}: {str(e).splitlines()[0]}")
    limit, learned = config_position_limit(config)
    if asked is None:
        return min(limit, _SEQLEN_CAP) if limit else _SEQLEN_UNSTATED
    if learned and asked > limit:
        raise _UsageError(
            f"--seqlen {asked} > max_position_embeddings {limit}: {config.model_type} models look positions up "
            f"in a table of {limit} learned positions; give --seqlen {limit} or less (or leave it out: it "
            "defaults to the model's limit)"
        )
    return asked


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m fastprune.llm``; returns the exit status."""
    args = _parser().parse_args(argv)
    group, created = None, False
    try:
        if not 0.0 <= args.sparsity < 1.0:
            raise _UsageError(f"--sparsity={args.sparsity} must be in [0, 1)")
        try:
            parse_pattern(args.pattern)
        except ValueError as e:
            raise _UsageError(f"--pattern: {e}")
        if args.nsamples < 1 or (args.seqlen is not None and args.seqlen < 1):
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
        if args.timeout <= 0:
            raise _UsageError(f"--timeout={args.timeout} must be positive")
        if _under_torchrun():
            from ..distributed.llm import DataParallel, init_from_env

            try:
                created, args.device = init_from_env(args.device, args.timeout)
            except (RuntimeError, ValueError) as e:
                raise _UsageError(f"cannot join the torchrun process group: {e}")
            group = DataParallel()
        try:
            calibration = _load(args)
        except _UsageError as e:
            if group is not None:  # the others are on their way into prune_checkpoint()'s first exchange
                _agree(lambda: group.agree_inputs(None, None, None, error=ValueError(str(e))))
            raise
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
            raise _UsageError(_as_flags(str(e)))
        if group is not None:
            group.check(None)  # every process is done before any tears the group down
    except _UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    if group is None or group.rank == 0:  # every process has the same report
        print(report.table())
        print(f"saved to {args.output}")
    return 0


def _agree(step) -> None:
    """Runs an agreement step of the data-parallel command; the error agreed on becomes a usage error."""
    try:
        step()
    except Exception as e:  # noqa: BLE001 - the agreed error, one line on stderr
        raise _UsageError(str(e)) from e


if __name__ == "__main__":
    sys.exit(main())
