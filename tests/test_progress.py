"""tqdm is optional: progress bars appear when it is installed, and nothing breaks without it."""
import sys

import torch
import torch.nn.functional as F
from torch import nn

import fastprune as fp
from fastprune.progress import progress_bar


def test_without_tqdm_bars_are_silent_and_work_goes_on(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    bar = progress_bar(range(3), enabled=True, desc="x")
    assert list(bar) == [0, 1, 2]
    bar.update(1)
    bar.set_postfix(a=1)
    bar.close()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,)))]
    fp.iterative_snip(model, F.cross_entropy, data, 0.5, steps=2, progress=True)
    kept = sum(int(m.weight_mask.sum()) for m in (model[0], model[2]))
    assert kept == 44  # 88 weights, half pruned


def test_with_tqdm_a_real_bar_is_returned():
    tqdm = __import__("tqdm.auto", fromlist=["tqdm"]).tqdm
    bar = progress_bar(range(2), enabled=True, disable=True)
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1]
    assert type(progress_bar(range(2), enabled=False)).__name__ == "_Silent"
