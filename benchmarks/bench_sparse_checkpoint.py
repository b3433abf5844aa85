"""Compressed checkpoints: size on disk and save / load time against dense safetensors.

    python benchmarks/bench_sparse_checkpoint.py                               # ~250M bf16 parameters
    python benchmarks/bench_sparse_checkpoint.py --layers 20 --hidden 2048 --inter 5632   # ~1.03B

The model is the linear layers of a Llama-shaped stack (q, k, v, o, gate, up,
down per layer), bf16 by default, pruned globally by magnitude with
``fastprune.sparsify_`` at each sparsity. For each case it writes a dense
``safetensors`` file (``safetensors.torch.save_file``) and a
``fastprune.save_sparse`` checkpoint to a temporary directory, reads both back
(``load_file`` with every tensor copied into memory / ``load_sparse``, both
from the page cache), checks that the
sparse round trip is bit-exact, and prints a Markdown table with the sizes,
the expected ``(1 - s) x dense + N/8``, and the times with their ratio to the
dense peer measured in the same run.
"""
import argparse
import os
import platform
import shutil
import tempfile
import time

import torch
from torch import nn

import fastprune as fp
from fastprune.progress import progress_bar
from fastprune.shipping import load_sparse, save_sparse


def build(layers, hidden, inter, dtype):
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(hidden, hidden, bias=False) for _ in range(4)]
        blocks += [nn.Linear(hidden, inter, bias=False), nn.Linear(hidden, inter, bias=False),
                   nn.Linear(inter, hidden, bias=False)]
    model = nn.Sequential(*blocks).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dir_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=15)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=4096)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.9])
    ap.add_argument("--max-shard-size", default="2GB")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args(argv)
    import safetensors.torch as st

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = build(args.layers, args.hidden, args.inter, dtype)
    n = sum(p.numel() for p in model.parameters())
    item = torch.tensor([], dtype=dtype).element_size()
    print(f"{n / 1e6:.0f}M {args.dtype} parameters ({args.layers} layers, hidden {args.hidden}, "
          f"inter {args.inter}); {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"fastprune extension: {fp.build_info()['extension']}")
    root = tempfile.mkdtemp(dir=args.dir)
    rows = []
    try:
        dense_path = os.path.join(root, "dense.safetensors")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        pruned = 0
        for s in progress_bar(sorted(args.sparsity), desc="sparsity"):
            # int amounts count among the units still kept: this brings the model to s exactly
            ms = fp.sparsify_(model, round(s * n) - pruned)
            pruned = ms.num_pruned()
            _, dense_save = timed(lambda: st.save_file(state, dense_path))
            dense_size = os.path.getsize(dense_path)
            # load_file maps the file lazily; copying every tensor makes it read
            # the data, as load_sparse must.
            loaded, dense_load = timed(lambda: {k: v.clone() for k, v in st.load_file(dense_path).items()})
            del loaded
            sparse_dir = os.path.join(root, f"sparse-{s}")
            _, sparse_save = timed(lambda: save_sparse(model, sparse_dir, max_shard_size=args.max_shard_size))
            sparse_size = dir_size(sparse_dir)
            back, sparse_load = timed(lambda: load_sparse(sparse_dir))
            for k, v in state.items():
                if not torch.equal(back[k].view(torch.int16 if item == 2 else torch.int32),
                                   v.view(torch.int16 if item == 2 else torch.int32)):
                    raise AssertionError(f"round trip differs at {k}")
            del back
            expected = (1 - s) * n * item + n / 8
            rows.append((s, dense_size, sparse_size, expected, dense_save, sparse_save, dense_load, sparse_load))
            shutil.rmtree(sparse_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    mb = 1e6
    print(f"load average after the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print("| sparsity | dense file | sparse files | sparse / dense | expected (1-s)·dense + N/8 "
          "| save dense | save sparse (ratio) | load dense | load sparse (ratio) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s, ds, ss, ex, dsv, ssv, dl, sl in rows:
        print(f"| {s:.0%} | {ds / mb:.1f} MB | {ss / mb:.1f} MB | {ss / ds:.3f} | {ex / mb:.1f} MB "
              f"| {dsv:.2f} s | {ssv:.2f} s ({ssv / dsv:.1f}x) | {dl:.2f} s | {sl:.2f} s ({sl / dl:.1f}x) |")


if __name__ == "__main__":
    main()
