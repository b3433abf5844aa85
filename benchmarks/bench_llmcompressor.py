"""fastprune.llm.prune against llm-compressor on the same trained Llama and the same calibration.

llm-compressor is a benchmark-only tool, never a dependency of fastprune: it
lives in its own virtual environment, and each implementation runs in its own
fresh process with its own interpreter, on the same ``save_pretrained``
checkpoint and the same calibration token ids (written to a ``.npy`` file by
this script). Setup and run::

    python3 -m venv /work/llmc-venv && /work/llmc-venv/bin/pip install 'llmcompressor==0.14.*'
    # a >= 100M byte-level Llama trained on the stdlib sources (a few CPU-minutes)
    python examples/train_tiny_llama.py train --dir ~/.cache/fastprune/llama-100m-stdlib \\
        --hidden 768 --intermediate 2048 --layers 16 --heads 12 --kv-heads 4 --seqlen 128 --batch 4 --lr 3e-3
    python benchmarks/bench_llmcompressor.py --model ~/.cache/fastprune/llama-100m-stdlib \\
        --llmc-python /work/llmc-venv/bin/python --nsamples 16 --threads 2 --rounds 2

For every (method, pattern) and round, fastprune then llm-compressor (so a
round's two runs see about the same machine load), each process:

1. loads the checkpoint with ``from_pretrained`` and copies every tensor into
   ordinary memory (``from_pretrained`` leaves them memory-mapped from the
   file, which would count the load in the call's peak), then resets the
   kernel's peak-RSS counter (``/proc/self/clear_refs``);
2. times the one pruning call (``fastprune.llm.prune``, by default with
   ``measure_errors=False``: llm-compressor measures no reconstruction error,
   and fastprune's measurement is one more matrix product per layer; pass
   ``--measure-errors`` for fastprune's own default / llm-compressor's
   ``oneshot`` with ``SparseGPTModifier`` or ``WandaPruningModifier``; both
   with their defaults otherwise: SparseGPT block 128, dampening 0.01) and
   reads its peak RSS above the loaded model (``VmHWM`` minus the RSS before);
3. checks the sparsity of every pruned linear weight (a run that prunes
   nothing is an error, not a row), writes the zero pattern (one bit per
   weight) and measures held-out perplexity (held-out stdlib files, as
   ``examples/train_tiny_llama.py evaluate`` does).

Mask agreement is the fraction of weights of the decoder blocks' linear layers
whose zero / non-zero state is the same in both. Prints a Markdown table with
the machine, threads and the load (``os.getloadavg``) before and after each run.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "fastprune", "llama-100m-stdlib")


# ----------------------------------------------------------------------------
# Measuring (used in the workers; no fastprune import here: the llm-compressor
# worker runs in an environment without it)
# ----------------------------------------------------------------------------


def _status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that it measures from now on."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def load_resident(path):
    """``from_pretrained`` and every parameter / buffer copied out of the file mapping."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        for mod in model.modules():
            for name, t in list(mod._parameters.items()) + list(mod._buffers.items()):
                if t is not None:
                    t.data = t.data.clone()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return model


def block_linears(model):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n]


@torch.no_grad()
def perplexity(model, rows, batch=16):
    """exp(mean next-byte cross-entropy) over the held-out windows."""
    total, count = 0.0, 0
    for i in range(0, rows.shape[0], batch):
        x = rows[i:i + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


def run_fastprune(model, ids, spec):
    import fastprune.llm as llm

    llm.prune(model, ids, method=spec["method"], sparsity=0.5, pattern=spec["pattern"], progress=False,
              batch_size=spec.get("batch_size"), measure_errors=spec.get("measure_errors", False))


def run_llmcompressor(model, ids, spec):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    structure = "0:0" if spec["pattern"] == "unstructured" else spec["pattern"]
    cls = SparseGPTModifier if spec["method"] == "sparsegpt" else WandaPruningModifier
    modifier = cls(sparsity=0.5, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"])
    n, seq = ids.shape
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * seq for _ in range(n)]})
    oneshot(model=model, dataset=ds, recipe=modifier, num_calibration_samples=n, max_seq_length=seq,
            shuffle_calibration_samples=False, **spec.get("llmc_kwargs", {}))


IMPLS = {"fastprune": run_fastprune, "llm-compressor": run_llmcompressor, "dense": None}


def worker(spec):
    torch.set_num_threads(spec["threads"])
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if spec["impl"] == "fastprune":  # imports before the baseline and the clock, for both
        import fastprune.llm  # noqa: F401
    elif spec["impl"] == "llm-compressor":
        import datasets  # noqa: F401
        import llmcompressor  # noqa: F401
        from llmcompressor.modifiers.pruning import SparseGPTModifier  # noqa: F401

        datasets.disable_progress_bars()
    ids = torch.from_numpy(np.load(spec["calibration"])).long()
    held = torch.from_numpy(np.load(spec["heldout"])).long()
    model = load_resident(spec["model"])
    reset_peak()
    base = _status("VmRSS")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if IMPLS[spec["impl"]] is not None:
        IMPLS[spec["impl"]](model, ids, spec)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") - base
    load_after = os.getloadavg()[0]
    zeros, count, total = [], 0, 0
    for _, m in block_linears(model):
        z = m.weight.detach().eq(0).reshape(-1)
        count += int(z.sum())
        total += z.numel()
        zeros.append(np.packbits(z.numpy()))
    sparsity = count / total
    if spec["impl"] != "dense" and abs(sparsity - 0.5) > 0.01:
        raise SystemExit(f"{spec['impl']} {spec['method']} {spec['pattern']}: the block linear weights are "
                         f"{sparsity:.4f} sparse, not 0.5: it did not prune as asked")
    np.save(spec["zeros"], np.concatenate(zeros))
    t1 = time.perf_counter()
    ppl = perplexity(model.eval(), held)
    print(json.dumps({"seconds": seconds, "peak_extra_mb": peak, "base_mb": base, "sparsity": sparsity,
                      "ppl": ppl, "eval_seconds": time.perf_counter() - t1, "load_before": load_before,
                      "load_after": load_after, "torch": torch.__version__, "version": _version(spec["impl"])}))


def _version(impl):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version({"fastprune": "fastprune", "llm-compressor": "llmcompressor"}.get(impl, "transformers"))
    except PackageNotFoundError:
        return "?"


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------


def _train_helpers():
    spec = importlib.util.spec_from_file_location("train_tiny_llama",
                                                  os.path.join(ROOT, "examples", "train_tiny_llama.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="save_pretrained folder (train_tiny_llama.py train)")
    p.add_argument("--llmc-python", default=os.environ.get("LLMC_PYTHON", "/work/llmc-venv/bin/python"),
                   help="interpreter of the environment where llm-compressor is installed")
    p.add_argument("--fastprune-python", default=sys.executable)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=None, help="default: the training sequence length")
    p.add_argument("--seed", type=int, default=0, help="calibration sample seed")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=["sparsegpt", "wanda"])
    p.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    p.add_argument("--batch-size", type=int, default=None, help="fastprune's batch_size (default: its own)")
    p.add_argument("--measure-errors", action="store_true",
                   help="fastprune also measures each layer's reconstruction error (its default; off here by "
                        "default because llm-compressor measures none, so the two do the same work)")
    p.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "fastprune", "bench_llmc"))
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        with open(args.worker) as fh:
            worker(json.load(fh))
        return

    os.makedirs(args.workdir, exist_ok=True)
    tt = _train_helpers()
    with open(os.path.join(args.model, "training.json")) as fh:
        trained = json.load(fh)
    seqlen = args.seqlen or trained["seqlen"]
    train_files, held_files = tt.stdlib_files()
    calib = tt.sample_windows(tt.read_bytes(train_files), args.nsamples, seqlen,
                              torch.Generator().manual_seed(args.seed))
    held = tt.heldout_windows(tt.read_bytes(held_files), trained["seqlen"], args.eval_windows)
    calib_path = os.path.join(args.workdir, "calibration.npy")
    held_path = os.path.join(args.workdir, "heldout.npy")
    np.save(calib_path, calib.numpy().astype(np.int64))
    np.save(held_path, held.numpy().astype(np.int64))
    pythons = {"fastprune": args.fastprune_python, "llm-compressor": args.llmc_python, "dense": args.fastprune_python}

    def run(impl, method, pattern, tag):
        spec = {"impl": impl, "method": method, "pattern": pattern, "threads": args.threads, "model": args.model,
                "calibration": calib_path, "heldout": held_path, "batch_size": args.batch_size,
                "measure_errors": args.measure_errors,
                "zeros": os.path.join(args.workdir, f"zeros_{tag}.npy")}
        path = os.path.join(args.workdir, f"spec_{tag}.json")
        with open(path, "w") as fh:
            json.dump(spec, fh)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
        if impl != "llm-compressor":
            env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        out = subprocess.run([pythons[impl], os.path.abspath(__file__), "--worker", path], capture_output=True,
                             text=True, env=env, cwd=args.workdir)
        if out.returncode:
            raise SystemExit(f"{impl} {method} {pattern} failed:\n{out.stderr[-5000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["zeros"] = spec["zeros"]
        print(f"  {method} {pattern} {impl}: {json.dumps({k: v for k, v in res.items() if k != 'zeros'})}",
              flush=True)
        return res

    nparams = trained.get("params", 0)
    header = (f"Llama {nparams / 1e6:.1f}M parameters (byte-level, trained {trained['steps']} steps; "
              f"`{args.model}`), calibration {args.nsamples} x {seqlen} tokens (seed {args.seed}), held-out "
              f"{held.shape[0]} x {held.shape[1]}; {platform.machine()} {os.cpu_count()} cores, {args.threads} "
              f"threads per process; fastprune commit {_git('rev-parse', '--short', 'HEAD')}, "
              f"measure_errors={args.measure_errors}")
    print(header, flush=True)
    print("uptime:", _git_free_uptime(), flush=True)
    dense = run("dense", "-", "-", "dense")
    rows, allres = [], {"dense": dense, "runs": []}
    for r in range(args.rounds):
        for method in args.methods:
            for pattern in args.patterns:
                tag = f"{method}_{pattern.replace(':', '-')}"
                f = run("fastprune", method, pattern, f"fp_{tag}")
                c = run("llm-compressor", method, pattern, f"llmc_{tag}")
                a, b = np.load(f["zeros"]), np.load(c["zeros"])
                agree = 1.0 - int(np.unpackbits(a ^ b).sum()) / (8 * a.size)  # padding bits are 0 in both
                rows.append((r + 1, method, pattern, f, c, agree))
                allres["runs"].append({"round": r + 1, "method": method, "pattern": pattern, "fastprune": f,
                                       "llm-compressor": c, "mask_agreement": agree})
    print()
    print(header)
    print(f"fastprune {dense['version'] if False else ''}torch {dense['torch']}; llm-compressor "
          f"{rows[0][4]['version'] if rows else '?'} on torch {rows[0][4]['torch'] if rows else '?'}; "
          f"dense held-out perplexity {dense['ppl']:.4f}")
    print()
    print("| method | pattern | round | fastprune s | llm-compressor s | speed-up | fastprune peak MB "
          "| llm-compressor peak MB | fastprune ppl | llm-compressor ppl | mask agreement | sparsity (fp / llmc) "
          "| load (fp; llmc) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r, method, pattern, f, c, agree in rows:
        name = {"sparsegpt": "SparseGPT", "wanda": "Wanda"}[method]
        print(f"| {name} | {pattern} | {r} | {f['seconds']:.1f} | {c['seconds']:.1f} | "
              f"{c['seconds'] / f['seconds']:.2f}x | +{f['peak_extra_mb']:.0f} | +{c['peak_extra_mb']:.0f} | "
              f"{f['ppl']:.4f} | {c['ppl']:.4f} | {agree * 100:.2f}% | {f['sparsity']:.4f} / {c['sparsity']:.4f} | "
              f"{f['load_before']:.1f}-{f['load_after']:.1f}; {c['load_before']:.1f}-{c['load_after']:.1f} |")
    print("\nuptime:", _git_free_uptime())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(allres, fh, indent=1)


def _git_free_uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
