"""The PyTorch pruning tutorial (shared/seeds 000-002), run on fastprune.

Every step of the tutorial - LeNet, local random / L1 / structured pruning,
iterative pruning and its PruningContainer, serialisation, ``remove``, pruning
many tensors, global pruning and a custom method - with ``import fastprune as
prune``. ``run(prune)`` returns the figures the tutorial prints, so the tests
can run it once with fastprune and once with torch.nn.utils.prune and compare.

    python examples/tutorial.py          # fastprune
    python examples/tutorial.py --torch  # the original, for comparison
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        # 1 input image channel, 6 output channels, 3x3 square conv kernel
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)  # 5x5 image dimension
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, int(x.nelement() / x.shape[0]))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _sparsity(t):
    return "{:.2f}%".format(100.0 * float(torch.sum(t == 0)) / float(t.nelement()))


def run(prune, seed=0, verbose=False):
    say = print if verbose else (lambda *a, **k: None)
    out = {}
    torch.manual_seed(seed)
    model = LeNet()
    module = model.conv1

    # Local pruning: 30% of conv1.weight at random, the 3 smallest biases by L1.
    prune.random_unstructured(module, name="weight", amount=0.3)
    prune.l1_unstructured(module, name="bias", amount=3)
    out["params_after_local"] = [n for n, _ in module.named_parameters()]
    out["buffers_after_local"] = [n for n, _ in module.named_buffers()]
    out["weight_mask"] = module.weight_mask.clone()
    out["bias_mask"] = module.bias_mask.clone()
    say("named_parameters:", out["params_after_local"])
    say("bias_mask:", out["bias_mask"])

    # Iterative pruning: structured on top of random, history in a PruningContainer.
    prune.ln_structured(module, name="weight", amount=0.5, n=2, dim=0)
    out["weight_after_iterative"] = module.weight.detach().clone()
    hook = [h for h in module._forward_pre_hooks.values() if h._tensor_name == "weight"][0]
    out["history"] = [type(h).__name__ for h in hook]
    say("pruning history:", out["history"])

    # Serialisation: masks and originals live in the state_dict.
    out["state_dict_keys"] = list(model.state_dict().keys())
    say("state_dict keys:", out["state_dict_keys"])

    # Remove re-parametrisation: the pruning becomes permanent.
    prune.remove(module, "weight")
    out["params_after_remove"] = [n for n, _ in module.named_parameters()]
    out["weight_after_remove"] = module.weight.detach().clone()

    # Pruning many parameters by type.
    new_model = LeNet()
    for name, m in new_model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            prune.l1_unstructured(m, name="weight", amount=0.2)
        elif isinstance(m, torch.nn.Linear):
            prune.l1_unstructured(m, name="weight", amount=0.4)
    out["masks_by_type"] = sorted(dict(new_model.named_buffers()).keys())

    # Global pruning: 20% of all weights; per-layer sparsity differs, the total is exactly 20%.
    model = LeNet()
    parameters_to_prune = (
        (model.conv1, "weight"),
        (model.conv2, "weight"),
        (model.fc1, "weight"),
        (model.fc2, "weight"),
        (model.fc3, "weight"),
    )
    prune.global_unstructured(parameters_to_prune, pruning_method=prune.L1Unstructured, amount=0.2)
    for m, name in parameters_to_prune:
        layer = [k for k, v in model.named_modules() if v is m][0]
        out[f"sparsity {layer}.weight"] = _sparsity(getattr(m, name))
        say(f"Sparsity in {layer}.weight: {out[f'sparsity {layer}.weight']}")
    zeros = sum(float(torch.sum(getattr(m, n) == 0)) for m, n in parameters_to_prune)
    total = sum(float(getattr(m, n).nelement()) for m, n in parameters_to_prune)
    out["global sparsity"] = "{:.2f}%".format(100.0 * zeros / total)
    say("Global sparsity:", out["global sparsity"])

    # A custom method: prune every other entry.
    class FooBarPruningMethod(prune.BasePruningMethod):
        """Prune every other entry in a tensor"""

        PRUNING_TYPE = "unstructured"

        def compute_mask(self, t, default_mask):
            mask = default_mask.clone()
            mask.view(-1)[::2] = 0
            return mask

    def foobar_unstructured(module, name):
        FooBarPruningMethod.apply(module, name)
        return module

    model = LeNet()
    foobar_unstructured(model.fc3, name="bias")
    out["foobar_bias_mask"] = model.fc3.bias_mask.clone()
    say("fc3.bias_mask:", out["foobar_bias_mask"])
    out["forward"] = model(torch.randn(1, 1, 28, 28)).detach()
    return out


if __name__ == "__main__":
    if "--torch" in sys.argv:
        import torch.nn.utils.prune as prune
    else:
        import fastprune as prune
    run(prune, verbose=True)
