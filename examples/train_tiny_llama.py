"""Train a small Llama-shaped model on the Python standard library, then prune it.

The corpus is text nobody in this project wrote: the ``*.py`` files at the top
level of the running interpreter's standard library, split by file (every 8th
file, in sorted order, is held out). The vocabulary is the 256 byte values, so
no tokenizer is downloaded; the checkpoint is written with ``save_pretrained``
together with a byte-level tokenizer, so ``python -m fastprune.llm`` can read it.

Two steps::

    # 15 CPU-minutes (7.5 min on 2 idle cores); cached in ~/.cache/fastprune/tiny-llama-stdlib
    python examples/train_tiny_llama.py train --cpu-minutes 15
    # held-out perplexity, dense and pruned, mean of 3 calibration seeds
    python examples/train_tiny_llama.py evaluate --seeds 0 1 2

``evaluate`` prints a Markdown table (the one in docs/llm.md).

The same script makes the ~100M-parameter model of the llm-compressor comparison
(``benchmarks/bench_llmcompressor.py``), trained only briefly; ``--resume``
trains a saved model further::

    python examples/train_tiny_llama.py train --dir ~/.cache/fastprune/llama-100m-stdlib \
        --hidden 768 --intermediate 2048 --layers 16 --heads 12 --kv-heads 4 --seqlen 128 --batch 4 \
        --lr 3e-3 --threads 2 --cpu-minutes 4 --max-wall-minutes 16
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sysconfig
import time

import torch

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "fastprune", "tiny-llama-stdlib")


def stdlib_files():
    """Sorted top-level stdlib sources, split by file into (train, held_out)."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    held = files[::8]
    train = [f for i, f in enumerate(files) if i % 8]
    return train, held


def read_bytes(files):
    """One uint8 tensor per file (the byte values are the token ids)."""
    out = []
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        if len(data) > 0:
            out.append(torch.frombuffer(bytearray(data), dtype=torch.uint8).long())
    return out


def sample_windows(streams, n, seqlen, generator):
    """``n`` random windows of ``seqlen`` bytes, each from one file (files long enough)."""
    usable = [s for s in streams if s.numel() > seqlen]
    weights = torch.tensor([float(s.numel() - seqlen) for s in usable])
    which = torch.multinomial(weights, n, replacement=True, generator=generator)
    rows = []
    for i in which.tolist():
        s = usable[i]
        start = int(torch.randint(0, s.numel() - seqlen, (1,), generator=generator))
        rows.append(s[start:start + seqlen])
    return torch.stack(rows)


def heldout_windows(streams, seqlen, limit):
    """Consecutive non-overlapping windows of the held-out files (deterministic)."""
    rows = []
    for s in streams:
        for start in range(0, s.numel() - seqlen + 1, seqlen):
            rows.append(s[start:start + seqlen])
    rows = torch.stack(rows)
    if rows.shape[0] > limit:  # evenly spaced subset, same every run
        idx = torch.linspace(0, rows.shape[0] - 1, limit).round().long()
        rows = rows[idx]
    return rows


def byte_tokenizer():
    """A byte-level ``PreTrainedTokenizerFast`` whose id of each byte is its value."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # GPT-2's printable stand-ins for the 256 byte values (ByteLevel's alphabet),
    # so that the id of a byte is the byte itself.
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    vocab = {chars[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    # Byte 0 never occurs in source text; it doubles as the padding token.
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=chars[0], eos_token=chars[10])


def model_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=args.seqlen,
        rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0, eos_token_id=10,
    )


def train(args):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    train_files, held_files = stdlib_files()
    train_streams = read_bytes(train_files)
    held = heldout_windows(read_bytes(held_files), args.seqlen, 64)
    done = {"steps": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    if args.resume:  # continue a saved model (fresh optimiser state, warm-up again)
        with open(os.path.join(args.dir, "training.json")) as fh:
            done = json.load(fh)
        if done["seqlen"] != args.seqlen:
            raise SystemExit(f"--resume: {args.dir} was trained with --seqlen {done['seqlen']}")
        model = LlamaForCausalLM.from_pretrained(args.dir)
    else:
        model = LlamaForCausalLM(model_config(args))
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{nparams / 1e6:.2f}M parameters, {len(train_files)} train / {len(held_files)} held-out files")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(1234 + done["steps"])  # a resumed run sees other windows

    def save(step, ppl):
        """Model, tokenizer and training.json into --dir (also every --save-minutes while training)."""
        os.makedirs(args.dir, exist_ok=True)
        model.save_pretrained(args.dir)
        byte_tokenizer().save_pretrained(args.dir)
        with open(os.path.join(args.dir, "training.json"), "w") as fh:
            json.dump({"steps": done["steps"] + step, "seconds": done["seconds"] + time.time() - t0,
                       "cpu_seconds": done["cpu_seconds"] + time.process_time() - c0, "heldout_ppl": ppl,
                       "params": nparams, "seqlen": args.seqlen}, fh)
    # The budget is CPU time of this process (the machine may be shared, so wall
    # time says little), with a wall-clock cap.
    budget = 60 * args.cpu_minutes
    wall_deadline = time.time() + 60 * args.max_wall_minutes
    step, t0, c0 = 0, time.time(), time.process_time()
    last_save = t0
    # Cosine decay planned over the budget (steps estimated after warm-up).
    planned = None
    while time.process_time() - c0 < budget and time.time() < wall_deadline:
        if step == 20:
            per_step = (time.process_time() - c0) / 20
            planned = max(40, int(budget / per_step))
        warm = min(1.0, (step + 1) / 20)
        frac = step / planned if planned else 0.0
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = sample_windows(train_streams, args.batch, args.seqlen, gen)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - t0:.0f}s wall "
                  f"{time.process_time() - c0:.0f}s cpu", flush=True)
        if args.save_minutes and time.time() - last_save > 60 * args.save_minutes:
            model.eval()
            save(step, None)  # a killed run keeps what it has learnt
            model.train()
            last_save = time.time()
    model.eval()
    ppl = perplexity(model, held, args.batch)
    cpu = time.process_time() - c0
    print(f"trained {step} steps in {time.time() - t0:.0f}s wall, {cpu:.0f}s CPU; held-out perplexity {ppl:.3f}"
          + (f" ({done['steps'] + step} steps in all)" if args.resume else ""))
    save(step, ppl)


@torch.no_grad()
def perplexity(model, rows, batch):
    """exp(mean next-byte cross-entropy) over all held-out windows."""
    total, count = 0.0, 0
    for i in range(0, rows.shape[0], batch):
        x = rows[i:i + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


def evaluate(args):
    from transformers import LlamaForCausalLM

    import transformers

    import fastprune.llm as llm

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    with open(os.path.join(args.dir, "training.json")) as fh:
        seqlen = json.load(fh)["seqlen"]
    train_files, held_files = stdlib_files()
    train_streams = read_bytes(train_files)
    held = heldout_windows(read_bytes(held_files), seqlen, args.eval_windows)
    dense = LlamaForCausalLM.from_pretrained(args.dir).eval()
    base_ppl = perplexity(dense, held, 16)
    settings = [
        ("50% unstructured", dict(sparsity=0.5, pattern="unstructured")),
        ("4:8", dict(sparsity=0.5, pattern="4:8")),
        ("2:4", dict(sparsity=0.5, pattern="2:4")),
        ("70% unstructured", dict(sparsity=0.7, pattern="unstructured")),
        ("70% OWL", dict(sparsity=0.7, pattern="unstructured", layer_sparsity="owl")),
    ]
    methods = ["magnitude", "wanda", "sparsegpt"]
    results = {}
    for label, kw in settings:
        for method in methods:
            ppls = []
            for seed in args.seeds:
                gen = torch.Generator().manual_seed(seed)
                calib = sample_windows(train_streams, args.nsamples, seqlen, gen)
                model = LlamaForCausalLM.from_pretrained(args.dir).eval()
                llm.prune(model, calib, method=method, progress=False, **kw)
                ppls.append(perplexity(model, held, 16))
                if method == "magnitude" and "layer_sparsity" not in kw:
                    break  # calibration-free: one run is every run
            mean = sum(ppls) / len(ppls)
            spread = (max(ppls) - min(ppls)) / 2
            results[(label, method)] = (mean, spread)
            print(f"{label:18s} {method:10s} {mean:9.3f} ± {spread:.3f}", flush=True)
    print()
    print(f"| setting | magnitude | Wanda | SparseGPT |\n|---|---|---|---|\n| dense | {base_ppl:.3f} | | |")
    for label, _ in settings:
        cells = []
        for m in methods:
            mean, spread = results[(label, m)]
            cells.append(f"{mean:.3f}" if spread == 0 else f"{mean:.3f} ± {spread:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--cpu-minutes", type=float, default=15.0, help="CPU-time budget (all threads)")
    t.add_argument("--max-wall-minutes", type=float, default=35.0)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--intermediate", type=int, default=384)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--kv-heads", type=int, default=2)
    t.add_argument("--seqlen", type=int, default=128)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--save-minutes", type=float, default=0.0, help="also save every N wall-clock minutes")
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--resume", action="store_true",
                   help="continue training the model saved in --dir (its shape; the shape options are ignored)")
    e = sub.add_parser("evaluate")
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    e.add_argument("--nsamples", type=int, default=64)
    e.add_argument("--eval-windows", type=int, default=256)
    for q in (t, e):
        q.add_argument("--dir", default=DEFAULT_DIR)
        q.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    train(args) if args.cmd == "train" else evaluate(args)


if __name__ == "__main__":
    main()
