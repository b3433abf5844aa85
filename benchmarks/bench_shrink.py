"""Structured shrinking (``fastprune.llm.shrink``): quality on a trained model, and speed.

Two commands::

    # held-out perplexity of the small Llama trained on the stdlib sources by
    # examples/train_tiny_llama.py (train it first; about 10 CPU-minutes)
    python benchmarks/bench_shrink.py quality --seeds 0 1 2 --plot docs/shrink_quality.png

    # forward speed of a Llama-shaped model (hidden 1024, MLP 4096, 16 query / 4
    # key-value heads, 4 blocks) before and after shrinking, timed in turns
    python benchmarks/bench_shrink.py speed --threads 1
    python benchmarks/bench_shrink.py speed --device cuda --dtype bfloat16 --batch 16 --seqlen 512

``quality`` prints Markdown tables: (1) 50% of the MLP channels removed with
each importance, and with activation + bias compensation; (2) one block
removed as chosen from calibration (smallest angular distance) against
removing each block in turn; (3) held-out perplexity against the fraction of
parameters removed, for every importance (width: MLP channels) and for depth
(whole blocks), with width at the parameter counts of depth; it draws (3) to
a PNG with matplotlib (a benchmark-time tool only: ``pip install matplotlib``).
``speed`` prints the forward speed-up of every setting, dense and shrunk
models timed alternately in one process (medians), with ``uptime``'s load.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_example(name):
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fastprune_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load():
    return os.getloadavg()[0]


def _quiet():
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


# ----------------------------------------------------------------------------
# Quality
# ----------------------------------------------------------------------------

IMPORTANCES = [("magnitude", False), ("activation", False), ("taylor", False), ("activation", True)]


def _label(importance, bias):
    return f"{importance} + bias comp." if bias else importance


def quality(args):
    from transformers import LlamaForCausalLM

    import fastprune.llm as llm
    from fastprune.structured import remove_blocks

    _quiet()
    torch.set_num_threads(args.threads)
    ex = _load_example("train_tiny_llama")
    with open(os.path.join(args.dir, "training.json")) as fh:
        info = json.load(fh)
    seqlen = info["seqlen"]
    train_files, held_files = ex.stdlib_files()
    train_streams = ex.read_bytes(train_files)
    held = ex.heldout_windows(ex.read_bytes(held_files), seqlen, args.eval_windows)

    def fresh():
        return LlamaForCausalLM.from_pretrained(args.dir).eval()

    def calib(seed):
        return ex.sample_windows(train_streams, args.nsamples, seqlen, torch.Generator().manual_seed(seed))

    def ppl(model):
        return ex.perplexity(model, held, 16)

    dense = fresh()
    cfg = dense.config
    total = sum(p.numel() for p in dense.parameters())
    mlp_params = cfg.num_hidden_layers * 3 * cfg.hidden_size * cfg.intermediate_size
    block_params = sum(p.numel() for p in dense.model.layers[0].parameters())
    base = ppl(dense)
    t0 = time.time()
    print(f"# {total:,} parameters, {cfg.num_hidden_layers} blocks ({block_params:,} each), "
          f"MLP {mlp_params:,}; dense held-out perplexity {base:.3f}; load {_load():.1f}", flush=True)

    def shrink_runs(importance, bias, **kw):
        """Mean and half-range of held-out perplexity over the seeds, fraction of params removed."""
        ppls, red = [], None
        seeds = args.seeds if (importance != "magnitude" or kw.get("blocks")) else args.seeds[:1]
        for seed in seeds:
            model = fresh()
            rep = llm.shrink(model, calib(seed), importance=importance, bias_compensation=bias,
                             batch_size=args.batch_size, progress=False, **kw)
            ppls.append(ppl(model))
            red = rep.param_reduction
        mean = sum(ppls) / len(ppls)
        return mean, (max(ppls) - min(ppls)) / 2, red

    def cell(mean, spread):
        return f"{mean:.3f}" if spread == 0 else f"{mean:.3f} ± {spread:.3f}"

    results = {"dense": base, "params": total}
    # (1) 50% of the MLP channels
    rows = []
    for importance, bias in IMPORTANCES:
        mean, spread, red = shrink_runs(importance, bias, mlp=0.5)
        rows.append((_label(importance, bias), mean, spread, red))
        print(f"50% MLP {_label(importance, bias):28s} {cell(mean, spread)}  (-{100 * red:.1f}% params)",
              flush=True)
    results["mlp50"] = rows

    # (2) one block: chosen from calibration vs each block in turn
    each = []
    for i in range(cfg.num_hidden_layers):
        model = fresh()
        remove_blocks(model, [i])
        each.append(ppl(model))
    chosen, chosen_idx = [], []
    for seed in args.seeds:
        model = fresh()
        rep = llm.shrink(model, calib(seed), blocks=1, batch_size=args.batch_size, progress=False)
        chosen.append(ppl(model))
        chosen_idx.append(rep.removed_blocks[0])
    results["blocks1"] = {"each": each, "chosen": chosen, "chosen_idx": chosen_idx}
    print(f"one block: chosen {chosen_idx} -> {chosen}; each in turn {each}; median "
          f"{statistics.median(each):.3f}", flush=True)

    # (3) perplexity against the fraction of parameters removed
    sweep = {}
    fractions = [0.1, 0.2, 0.3, 0.4, 0.5]
    depth = {}
    for nb in range(1, args.max_blocks + 1):
        mean, spread, red = shrink_runs("activation", False, blocks=nb)
        depth[nb] = (mean, spread, red)
        print(f"depth: {nb} block(s) {cell(mean, spread)}  (-{100 * red:.1f}% params)", flush=True)
    targets = sorted(set(fractions) | {round(d[2], 4) for d in depth.values()})
    for importance, bias in IMPORTANCES:
        for frac in targets:
            mlp = frac * total / mlp_params
            if mlp >= 1.0:
                continue
            mean, spread, red = shrink_runs(importance, bias, mlp=mlp)
            sweep[(_label(importance, bias), frac)] = (mean, spread, red)
            print(f"width {_label(importance, bias):28s} target -{100 * frac:.1f}%: {cell(mean, spread)} "
                  f"(-{100 * red:.1f}% params)", flush=True)
    results["sweep"] = {f"{k[0]}|{k[1]}": v for k, v in sweep.items()}
    results["depth"] = depth
    minutes = (time.time() - t0) / 60

    # tables
    print()
    print(f"Dense held-out perplexity: {base:.3f}. {len(args.seeds)} calibration seeds "
          f"({args.nsamples} x {seqlen} bytes); mean ± half the range. {minutes:.1f} minutes, "
          f"load at the end {_load():.1f}.")
    print()
    print("| 50% of the MLP channels removed | held-out perplexity | parameters removed |")
    print("|---|---|---|")
    for label, mean, spread, red in rows:
        print(f"| {label} | {cell(mean, spread)} | {100 * red:.1f}% |")
    print()
    print("| one block removed | held-out perplexity |")
    print("|---|---|")
    for i, p in enumerate(each):
        print(f"| block {i} | {p:.3f} |")
    print(f"| median of the four | {statistics.median(each):.3f} |")
    print(f"| chosen from calibration (seeds {' '.join(map(str, args.seeds))}: block "
          f"{', '.join(map(str, chosen_idx))}) | {cell(sum(chosen) / len(chosen), (max(chosen) - min(chosen)) / 2)} |")
    print()
    labels = [_label(i, b) for i, b in IMPORTANCES]
    print("| parameters removed | " + " | ".join(f"width: {l}" for l in labels) + " | depth (blocks) |")
    print("|---" * (len(labels) + 2) + "|")
    for frac in targets:
        cells = []
        for l in labels:
            v = sweep.get((l, frac))
            cells.append("" if v is None else f"{cell(v[0], v[1])} ({100 * v[2]:.1f}%)")
        d = next((f"{cell(m, s)} ({nb} block{'s' if nb > 1 else ''}, {100 * r:.1f}%)"
                  for nb, (m, s, r) in depth.items() if abs(round(r, 4) - frac) < 1e-9), "")
        print(f"| {100 * frac:.1f}% | " + " | ".join(cells) + f" | {d} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    if args.plot:
        _plot(args.plot, base, labels, targets, sweep, depth, total)


def _plot(path, base, labels, targets, sweep, depth, total):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for l in labels:
        pts = sorted((sweep[(l, f)][2], sweep[(l, f)][0]) for f in targets if (l, f) in sweep)
        ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o", label=f"width (MLP): {l}")
    pts = sorted((r, m) for m, s, r in depth.values())
    ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="s", linestyle="--", color="black",
            label="depth: whole blocks (angular distance)")
    ax.axhline(base, color="grey", linewidth=0.8, linestyle=":", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel("held-out perplexity per byte (log scale)")
    ax.set_title(f"fastprune.llm.shrink on a {total / 1e6:.2f}M-parameter Llama (stdlib bytes)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------

SPEED_SETTINGS = [
    ("MLP 25%", dict(mlp=0.25)),
    ("MLP 50%", dict(mlp=0.5)),
    ("MLP 75%", dict(mlp=0.75)),
    ("KV groups 50%", dict(heads=0.5)),
    ("KV groups 75%", dict(heads=0.75)),
    ("MLP 50% + KV groups 50%", dict(mlp=0.5, heads=0.5)),
    ("1 block", dict(blocks=1)),
    ("2 blocks", dict(blocks=2)),
    ("MLP 50% + KV groups 50% + 1 block", dict(mlp=0.5, heads=0.5, blocks=1)),
]


def _timer(model, ids, device):
    def run():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(ids, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return run


def _block_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)


def speed(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    import fastprune.llm as llm

    _quiet()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=1024, intermediate_size=4096,
                      num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4,
                      max_position_embeddings=max(args.seqlen, 128))
    dense = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    total = sum(p.numel() for p in dense.parameters())
    ids = torch.randint(0, args.vocab, (args.batch, args.seqlen), device=device)
    # what is removed does not change the speed: a small random calibration keeps shrink quick
    calib = torch.randint(0, args.vocab, (2, 64), generator=torch.Generator().manual_seed(1))
    print(f"# Llama-shaped: hidden 1024, MLP 4096, 16/4 heads, 4 blocks, vocab {args.vocab}: "
          f"{total / 1e6:.1f}M parameters; {args.device} {args.dtype}, {args.threads} thread(s); "
          f"forward on {args.batch} x {args.seqlen} tokens; load {_load():.1f}", flush=True)
    rows = []
    for label, kw in SPEED_SETTINGS:
        small = copy.deepcopy(dense)
        rep = llm.shrink(small, calib, progress=False, **kw)
        a, b = _timer(dense, ids, device), _timer(small, ids, device)
        for _ in range(2):
            a(), b()
        ta, tb = [], []
        for _ in range(args.repeats):
            ta.append(a())
            tb.append(b())
        da, db = statistics.median(ta), statistics.median(tb)
        fast = min(ta) / min(tb)
        macs = rep.macs_before / rep.macs_after if rep.macs_after else math.nan
        rows.append((label, rep.param_reduction, 1 - _block_params(small) / _block_params(dense),
                     macs, da, db, da / db, fast, _load()))
        print(f"{label:36s} params -{100 * rep.param_reduction:.1f}%  dense {1e3 * da:.1f} ms  "
              f"shrunk {1e3 * db:.1f} ms  {da / db:.2f}x (fastest runs {fast:.2f}x)  "
              f"(load {_load():.1f})", flush=True)
        del small
    print()
    print("| setting | parameters removed | of the blocks' matrices | MACs ratio | dense ms | shrunk ms | "
          "speed-up (medians) | speed-up (fastest runs) | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, red, red_blocks, macs, da, db, s, fast, load in rows:
        print(f"| {label} | {100 * red:.1f}% | {100 * red_blocks:.1f}% | {macs:.2f}x | {1e3 * da:.1f} | "
              f"{1e3 * db:.1f} | {s:.2f}x | {fast:.2f}x | {load:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--dir", default=os.path.join(os.path.expanduser("~"), ".cache", "fastprune",
                                                 "tiny-llama-stdlib"))
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--nsamples", type=int, default=64)
    q.add_argument("--eval-windows", type=int, default=256)
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--max-blocks", type=int, default=2)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--plot", default=None, help="PNG to draw the sweep to (needs matplotlib)")
    q.add_argument("--json", default=None)
    s = sub.add_parser("speed")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float32")
    s.add_argument("--threads", type=int, default=1,
                   help="1 by default: on a shared machine a second thread's preemptions stall the first")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--seqlen", type=int, default=256)
    s.add_argument("--vocab", type=int, default=32000)
    s.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    quality(args) if args.cmd == "quality" else speed(args)


if __name__ == "__main__":
    main()
