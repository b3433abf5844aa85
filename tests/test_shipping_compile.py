"""torch.compile of pruned models: no graph break from fastprune, never stale masks.

Marked ``compile``. Dynamo's tracing (where graph breaks and guards live) is
tested with the ``aot_eager`` backend, which needs no C++ compiler and runs in
seconds; a single test goes through the default inductor backend, which on a
CPU compiles C++ and takes a minute.
"""
import pytest
import torch
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp
from fastprune.shipping import make_permanent

torch_dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

pytestmark = [pytest.mark.compile, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def torch_style(model):
    fp.l1_unstructured(model[0], "weight", 0.5)
    tp.random_unstructured(model[2], "weight", 0.3)  # torch's own hook
    return model


def bool_mask(model):
    # a bool mask takes the fused mask_mul op instead of a plain multiply
    fp.custom_from_mask(model[0], "weight", torch.rand(16, 8) > 0.5)
    model[0]._buffers["weight_mask"] = model[0].weight_mask.bool()
    return model


def maskset(model):
    fp.sparsify_(model, 0.5)
    return model


PRUNERS = {"torch_style": torch_style, "bool_mask": bool_mask, "sparsify_": maskset}


@pytest.mark.parametrize("how", list(PRUNERS))
def test_no_graph_break_and_equal_outputs_and_gradients(how):
    model = PRUNERS[how](mlp())
    x = torch.randn(3, 8)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    y = compiled(x)
    assert torch.equal(y, model(x))
    y.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    assert counter.frame_count == 1


def test_pruning_again_after_compiling_takes_effect():
    model = mlp()
    x = torch.randn(3, 8)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    steps = [  # (change, whether it changes the output)
        (lambda: None, False),
        (lambda: fp.l1_unstructured(model[0], "weight", 0.5), True),  # first hook: recompiles
        (lambda: fp.l1_unstructured(model[0], "weight", 0.5), True),  # container, new mask buffer
        (lambda: fp.global_unstructured([(model[0], "weight"), (model[2], "weight")], fp.L1Unstructured, amount=0.3), True),
        (lambda: model[0].weight_mask[:4].zero_(), True),  # mask edited in place
        (lambda: make_permanent(model), False),  # hooks gone
        (lambda: fp.sparsify_(model, 0.8), True),  # weights zeroed in place
    ]
    previous = model(x)
    for step, changes in steps:
        step()
        eager = model(x)
        assert torch.equal(compiled(x), eager)
        assert torch.equal(eager, previous) != changes
        previous = eager
    assert counter.frame_count >= 3  # new hooks recompiled; in-place edits needed no recompilation


def test_inductor_fullgraph():
    """The default backend: torch.compile(model, fullgraph=True) on a torch-style pruned model."""
    model = torch_style(mlp()).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
        fp.l1_unstructured(model[0], "weight", 0.5)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
