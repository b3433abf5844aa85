"""Model builders and comparisons shared by the API tests."""
import copy
import importlib.util
import pathlib
import sys

import torch
from torch import nn


def load_example(name):
    """Import ``examples/<name>.py`` (the examples are scripts, not a package)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fastprune_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so that pickle finds the classes it defines
    spec.loader.exec_module(module)
    return module


tutorial = load_example("tutorial")
LeNet = tutorial.LeNet  # the LeNet of the pruning tutorial (seeds 000-002)


def lenet_input(batch=2):
    return torch.randn(batch, 1, 28, 28)


def module_snapshot(model: nn.Module):
    """Everything a failed pruning call must leave untouched, comparable with ==."""
    state = {}
    for mname, m in model.named_modules():
        state[mname] = (
            [(n, id(p), p.detach().clone()) for n, p in m._parameters.items() if p is not None],
            [(n, b.detach().clone()) for n, b in m._buffers.items() if b is not None],
            [(k, id(h)) for k, h in m._forward_pre_hooks.items()],
            [n for n in m.__dict__ if not n.startswith("_")],
        )
    return state, list(model.state_dict().keys()), [n for n, _ in model.named_parameters()]


def assert_snapshot_equal(before, after):
    (sa, ka, pa), (sb, kb, pb) = before, after
    assert ka == kb, "state_dict keys changed"
    assert pa == pb, "named_parameters changed"
    assert sa.keys() == sb.keys()
    for name in sa:
        params_a, bufs_a, hooks_a, attrs_a = sa[name]
        params_b, bufs_b, hooks_b, attrs_b = sb[name]
        assert [(n, i) for n, i, _ in params_a] == [(n, i) for n, i, _ in params_b], name
        for (_, _, ta), (_, _, tb) in zip(params_a, params_b):
            assert torch.equal(ta, tb)
        assert [n for n, _ in bufs_a] == [n for n, _ in bufs_b], name
        for (_, ta), (_, tb) in zip(bufs_a, bufs_b):
            assert torch.equal(ta, tb)
        assert hooks_a == hooks_b, name
        assert attrs_a == attrs_b, name


def assert_same_pruning(a: nn.Module, b: nn.Module, inputs=None):
    """Two models pruned by two libraries: same layout, masks, weights, outputs, gradients."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa.keys()) == list(sb.keys())
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    assert [n for n, _ in a.named_buffers()] == [n for n, _ in b.named_buffers()]
    if inputs is not None:
        a.zero_grad()
        b.zero_grad()
        out_a, out_b = a(inputs), b(inputs)
        if isinstance(out_a, tuple):
            out_a, out_b = out_a[0], out_b[0]
        assert torch.equal(out_a, out_b)
        out_a.sum().backward()
        out_b.sum().backward()
        for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert (pa.grad is None) == (pb.grad is None), na
            if pa.grad is not None:
                assert torch.equal(pa.grad, pb.grad), na


def twins(model):
    return model, copy.deepcopy(model)


def tie_free_(model: nn.Module):
    """Give every parameter distinct magnitudes so masks are unique."""
    params = [p for p in model.parameters()]
    total = sum(p.numel() for p in params)
    values = torch.randperm(total, dtype=torch.float64).add_(1).div_(total)
    signs = torch.where(torch.rand(total) < 0.5, -1.0, 1.0).double()
    values = values * signs
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(values[offset:offset + n].view_as(p).to(p.dtype))
            offset += n
    return model


# Python source for scripts run in a fresh process (``python -c``) that measure the peak resident
# memory of one call: ``reset_peak()`` sets the kernel's high-water mark (VmHWM) to the current
# resident size (Linux: ``/proc/self/clear_refs``), ``peak_mb()`` / ``rss_mb()`` read it back, so
# that what the imports touched before the call does not count.
PEAK_RSS = r'''
import re as _re

def rss_mb():
    with open("/proc/self/status") as f:
        return int(_re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024

def peak_mb():
    with open("/proc/self/status") as f:
        return int(_re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
'''
