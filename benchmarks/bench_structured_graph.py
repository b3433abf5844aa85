"""Dependency-graph build and planning time for a Llama-shaped model on the meta device.

    python benchmarks/bench_structured_graph.py                  # ~1B: 16 layers, hidden 2048, GQA 32/8
    python benchmarks/bench_structured_graph.py --layers 32 --hidden 4096 --inter 11008 --heads 32 --kv 8

The model is built under ``torch.device("meta")`` so no weight memory is
allocated; tracing, coupling analysis, group enumeration and plans are the
same as for real weights. Prints one line per phase and the peak RSS.
"""
import argparse
import resource
import time

import torch

from fastprune.structured import DependencyGraph


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args(argv)
    import transformers as T

    with torch.device("meta"):
        cfg = T.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                            intermediate_size=args.inter, num_hidden_layers=args.layers,
                            num_attention_heads=args.heads, num_key_value_heads=args.kv,
                            tie_word_embeddings=True)
        model = T.LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    print(f"Llama-shaped model on meta: {n / 1e9:.2f}B parameters, {args.layers} layers, "
          f"hidden {args.hidden}, heads {args.heads}/{args.kv}")
    ids = torch.zeros(1, args.seq, dtype=torch.long, device="meta")
    dg = DependencyGraph(model, (ids,))
    print(f"graph build      {dg.build_time:7.2f} s  (torch.export {dg.trace_time:.2f} s, "
          f"{dg.n_classes} dimension classes)")
    t0 = time.perf_counter()
    groups = dg.groups()
    print(f"channel groups   {time.perf_counter() - t0:7.2f} s  ({len(groups)} groups, "
          f"{sum(g.n_prunable for g in groups)} prunable units)")
    for what, module, idxs in (
            ("one kv group", model.model.layers[0].self_attn.k_proj, [0]),
            ("25% MLP channels", model.model.layers[0].mlp.gate_proj,
             list(range(0, args.inter, 4))),
            ("25% hidden size", model.model.embed_tokens, list(range(0, args.hidden, 4)))):
        t0 = time.perf_counter()
        plan = dg.plan(module, idxs)
        dt = time.perf_counter() - t0
        print(f"plan {what:<17} {dt * 1e3:7.1f} ms ({len(plan.cuts)} cuts, "
              f"{plan.n_params_removed / 1e6:.1f}M parameters)")
    print(f"peak RSS         {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:7.0f} MB")


if __name__ == "__main__":
    main()
