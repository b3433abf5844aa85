"""Regenerate the model table of docs/structured.md.

    python examples/structured_zoo_table.py            # print the table
    python examples/structured_zoo_table.py --write    # also rewrite it in docs/structured.md

Every model is a randomly initialised ``transformers`` model built from a
config (nothing is downloaded) at a realistic, CPU-friendly size. Each is
pruned with ``fastprune.prune_channels(model, inputs, 0.3, round_to=8)`` (L2
importance, per-group amount, channel counts kept multiples of 8 for the GEMM
kernels); latency is the median of ``--runs`` forward passes at batch 1 under
``torch.no_grad()``, timing the unpruned copy and the pruned model in turns so
that load from other processes hits both alike. The last row is a
~1B-parameter Llama-shaped config on the meta device: graph build time and
the time to plan one key/value group and 25% of the hidden size.
"""
import argparse
import copy
import os
import platform
import re
import statistics
import sys
import time

import torch

import fastprune
from fastprune.structured import DependencyGraph

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "docs", "structured.md")


def models():
    import transformers as T

    img = (torch.randn(1, 3, 224, 224),)
    txt = (torch.randint(0, 1000, (1, 128)),)
    yield "ResNet-18", lambda: T.ResNetForImageClassification(T.ResNetConfig(
        layer_type="basic", embedding_size=64, hidden_sizes=[64, 128, 256, 512],
        depths=[2, 2, 2, 2])), img
    yield "ConvNeXt-T", lambda: T.ConvNextForImageClassification(T.ConvNextConfig()), img
    yield "MobileNetV2-1.0", lambda: T.MobileNetV2ForImageClassification(
        T.MobileNetV2Config(image_size=224)), img
    yield "ViT-S/16", lambda: T.ViTForImageClassification(T.ViTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)), img
    yield "BERT-base", lambda: T.BertForSequenceClassification(T.BertConfig()), txt
    yield "Llama-GQA 124M", lambda: T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512)), txt


def latencies(models, inputs, runs):
    times = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            m(*inputs)
        for _ in range(runs):
            for m, ts in zip(models, times):
                t0 = time.perf_counter()
                m(*inputs)
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) * 1e3 for ts in times]


def fmt_m(n):
    return f"{n / 1e6:.1f}M"


def fmt_g(n):
    return "n/a" if n is None else f"{n / 1e9:.2f}G"


def zoo_rows(runs, only=None):
    rows = []
    for name, build, inputs in models():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        model = build().eval()
        original = copy.deepcopy(model)
        t0 = time.perf_counter()
        report = fastprune.prune_channels(model, inputs, 0.3, round_to=8)
        total = time.perf_counter() - t0
        model.eval()
        lat0, lat1 = latencies([original, model], inputs, runs)
        row = (name, fmt_m(report.params_before), fmt_m(report.params_after),
               f"-{100 * report.param_reduction:.0f}%", fmt_g(report.macs_before),
               fmt_g(report.macs_after), f"{lat0:.1f}", f"{lat1:.1f}",
               f"{report.build_time:.1f}", f"{total:.1f}")
        print(" | ".join(row), file=sys.stderr, flush=True)
        rows.append(row)
        del model, original
    return rows


def llama_1b_row():
    import transformers as T

    with torch.device("meta"):
        cfg = T.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192,
                            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                            tie_word_embeddings=True)
        model = T.LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    ids = torch.zeros(1, 128, dtype=torch.long, device="meta")
    dg = DependencyGraph(model, (ids,))
    t0 = time.perf_counter()
    groups = dg.groups()
    t_groups = time.perf_counter() - t0
    t0 = time.perf_counter()
    dg.plan(model.model.layers[0].self_attn.k_proj, [0])
    hidden = dg.plan(model.model.embed_tokens, list(range(0, 2048, 4)))
    t_plan = time.perf_counter() - t0
    row = ("Llama 1.0B (meta)", fmt_m(n), fmt_m(n - hidden.n_params_removed) + "*", "-25%*",
           "", "", "", "", f"{dg.build_time:.1f}",
           f"groups {t_groups:.1f} + plans {t_plan * 1e3:.0f} ms")
    print(" | ".join(row), file=sys.stderr, flush=True)
    print(f"  ({len(groups)} groups, {sum(g.n_prunable for g in groups)} prunable units, "
          f"{dg.n_classes} dimension classes, export {dg.trace_time:.1f}s)", file=sys.stderr)
    return row


HEADER = ("| model | params | after | change | MACs | after | CPU latency ms | after "
          "| graph build s | prune_channels s |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def render(rows, runs):
    lines = [HEADER]
    for r in rows:
        lines.append("| " + " | ".join(r) + " |")
    cpu = platform.processor() or platform.machine()
    lines.append("")
    cmd = " ".join(["python", "examples/structured_zoo_table.py", *sys.argv[1:]])
    threads = torch.get_num_threads()
    lines.append(f"Measured with `{cmd}` on {os.cpu_count()} CPU cores ({cpu}), "
                 f"torch {torch.__version__}, {threads} thread{'s' if threads > 1 else ''}, "
                 f"batch 1, median of {runs} runs, unpruned and pruned timed in turns; "
                 "images 224x224, text 128 tokens. `prune_channels s` includes the graph "
                 "build, ranking, the validation forward pass and both MAC counts. "
                 "`*`: plan only (25% of the hidden size), not executed.")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--write", action="store_true", help="rewrite the table in docs/structured.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only.split(",")) if args.only else None
    rows = zoo_rows(args.runs, only)
    if not only or "Llama 1.0B (meta)" in only:
        rows.append(llama_1b_row())
    table = render(rows, args.runs)
    print(table)
    if args.write:
        doc = open(DOC).read()
        new = re.sub(r"(<!-- zoo-table:start -->\n).*?(\n<!-- zoo-table:end -->)",
                     lambda m: m.group(1) + table + m.group(2), doc, flags=re.S)
        open(DOC, "w").write(new)
        print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
