"""Structured pruning in five steps: graph, plan, exec, prune_channels, masks -> removal.

    python examples/structured_quickstart.py
"""
import io

import torch
import torch.nn.functional as F
from torch import nn

import fastprune


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.dw(F.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8)
        self.head = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = self.block1(F.relu(self.bn(self.stem(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.head(x)), 2)
        return self.fc(torch.flatten(x, 1))


def main():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)

    # 1. The graph: which dimensions must lose the same channels.
    model = Net().eval()
    dg = fastprune.DependencyGraph(model, x)
    print(dg)
    for g in dg.groups():
        if g.n_prunable:
            print("  ", g)

    # 2. A plan: removing stem channels 1 and 6 touches the whole residual stream.
    plan = dg.plan(model.stem, [1, 6])
    print(plan)

    # 3. Execute it; the model keeps working and saves like any module.
    plan.exec()
    print(model.block1)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.equal(again(x), model(x))

    # 4. One call: rank every coupled group by L2 norm and remove 30% of each.
    model = Net().eval()
    report = fastprune.prune_channels(model, x, 0.3)
    print(report)

    # 5. Structured masks (fastprune.ln_structured) turned into real removal.
    model = Net().eval()
    fastprune.ln_structured(model.head, "weight", amount=0.5, n=2, dim=0)
    with torch.no_grad():
        before = model(x)
    report = fastprune.remove_masked_channels(model, x)
    print(f"head: {model.head}; params {report.params_before} -> {report.params_after}")
    # the masked filters only contributed their bias, which is dropped with them
    with torch.no_grad():
        print("max output change:", float((model(x) - before).abs().max()))


if __name__ == "__main__":
    main()
