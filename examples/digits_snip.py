"""Pruning at initialisation on scikit-learn's digits: LeNet-300-100.

Reproduces the SNIP paper's LeNet-300-100 experiment (Lee et al. 2019) on the
8x8 digits set that ships with scikit-learn, so it runs offline in about a
minute on two CPU cores. For every method and sparsity the network is built
(xavier-normal weights, zero biases), pruned before any training, trained with
SGD, and its test accuracy is recorded; the table gives the mean (and the
standard deviation) over the seeds.

    python examples/digits_snip.py            # the table in docs/pruning_at_init.md
    python examples/digits_snip.py --epochs 5 --seeds 1   # a quick smoke run

Requires scikit-learn (``pip install scikit-learn``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import fastprune

try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from exc

METHODS = ["dense", "random", "magnitude", "snip", "iterative_snip", "force", "synflow"]
LABELS = {
    "dense": "dense",
    "random": "random",
    "magnitude": "magnitude at init",
    "snip": "SNIP",
    "iterative_snip": "iterative SNIP",
    "force": "FORCE",
    "synflow": "SynFlow",
}


def load_data(split_seed: int = 0):
    """Standardised digits features, a fixed stratified 80/20 train/test split."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, random_state=split_seed, stratify=digits.target
    )
    x_train, x_test = x[idx_train], x[idx_test]
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0  # pixels that are always blank stay 0
    return (x_train - mean) / std, y[idx_train], (x_test - mean) / std, y[idx_test]


def lenet_300_100() -> nn.Sequential:
    model = nn.Sequential(
        nn.Linear(64, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def batches(x, y, batch_size, generator=None):
    order = torch.randperm(len(y), generator=generator) if generator is not None else torch.arange(len(y))
    return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, len(y), batch_size)]


def prune(model, method, sparsity, x_train, y_train, batch_size):
    if method == "dense":
        return
    weights = [(m, "weight") for m in model if isinstance(m, nn.Linear)]
    loss = nn.functional.cross_entropy
    data = batches(x_train, y_train, batch_size)
    if method == "random":
        fastprune.global_unstructured(weights, pruning_method=fastprune.RandomUnstructured, amount=sparsity)
    elif method == "magnitude":
        fastprune.global_unstructured(weights, pruning_method=fastprune.L1Unstructured, amount=sparsity)
    elif method == "snip":
        fastprune.snip(model, loss, data, sparsity)
    elif method == "iterative_snip":
        fastprune.iterative_snip(model, loss, data, sparsity, steps=10, progress=False)
    elif method == "force":
        fastprune.force(model, loss, data, sparsity, steps=10, progress=False)
    elif method == "synflow":
        fastprune.synflow(model, x_train[:1], sparsity, steps=100, progress=False)
    else:
        raise ValueError(f"unknown method {method!r}")


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def run(method, sparsity, seed, data, epochs, lr, batch_size):
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = lenet_300_100()
    prune(model, method, sparsity, x_train, y_train, batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for xb, yb in batches(x_train, y_train, batch_size, gen):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return accuracy(model, x_test, y_test)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98, 0.99])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; the model is so small that more threads only add overhead")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)

    torch.use_deterministic_algorithms(True)
    data = load_data()
    seeds = list(range(args.seeds))
    start = time.time()
    results = {}
    for method in args.methods:
        for s in (args.sparsities if method != "dense" else [0.0]):
            accs = [run(method, s, seed, data, args.epochs, args.lr, args.batch_size) for seed in seeds]
            results[(method, s)] = accs
    elapsed = time.time() - start

    n_train, n_test = len(data[1]), len(data[3])
    print(f"LeNet-300-100 on sklearn digits ({n_train} train / {n_test} test), "
          f"test accuracy % (mean ± std over seeds {seeds}), {args.epochs} epochs SGD lr={args.lr}, "
          f"fastprune {fastprune.__version__}, extension={fastprune.build_info()['extension']}, "
          f"{args.threads} thread(s), {elapsed:.0f} s\n")
    header = "| method | " + " | ".join(f"{s:.0%} sparse" for s in args.sparsities) + " |"
    print(header)
    print("|" + "---|" * (len(args.sparsities) + 1))
    for method in args.methods:
        cells = []
        for s in args.sparsities:
            accs = results[(method, 0.0 if method == "dense" else s)]
            mean = 100 * statistics.fmean(accs)
            std = 100 * statistics.pstdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{mean:.1f} ± {std:.1f}")
        print(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    main()
