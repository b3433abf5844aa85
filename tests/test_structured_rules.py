"""The coupling-rule registry and the typed edges of the dependency graph."""
import pytest
import torch
from torch import nn

from fastprune.structured import DependencyGraph
from fastprune.structured.edges import BlockEdge, CatEdge, ChunkEdge
from fastprune.structured.rules import RULES, apply_rule, rule


@torch.library.custom_op("fastprune_test::scale", mutates_args=())
def _scale(x: torch.Tensor, s: float) -> torch.Tensor:
    return x * s


@_scale.register_fake
def _(x, s):
    return torch.empty_like(x)


class _CustomOpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.ops.fastprune_test.scale(self.a(x), 2.0))


def test_registry_covers_the_common_ops():
    for op in ("aten.linear", "aten.conv2d", "aten.view", "aten.cat", "aten.split",
               "aten.scaled_dot_product_attention", "aten.layer_norm", "fastprune.mask_mul"):
        assert op in RULES, op


def test_a_second_rule_for_an_op_is_refused():
    with pytest.raises(ValueError, match="aten.linear already has a coupling rule"):
        rule("linear")(lambda b, node, tensors: None)
    assert RULES["aten.linear"].__name__ != "<lambda>"


def test_unknown_op_blocks_and_a_registered_rule_unblocks():
    torch.manual_seed(0)
    model = _CustomOpNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"fastprune_test\.scale"):
        DependencyGraph(model, x).plan(model.a, [1])

    @rule("scale", namespace="fastprune_test")
    def _scale_rule(b, node, tensors):
        x_node = node.args[0]
        for i, o in zip(b.spaces(x_node), b.spaces(node)):
            b.union(i, o)
    try:
        with torch.no_grad():
            model.b.weight[:, 1] = 0  # channel 1 is dead: removing it keeps the output
            expected = model(x)
        DependencyGraph(model, x).plan(model.a, [1]).exec()
        assert model.a.out_channels == 7 and model.b.in_channels == 7
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected)
    finally:
        del RULES["fastprune_test.scale"]


class _EdgesNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=4)  # 4 groups of 2 channels
        self.c = nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(14, 4, 1)

    def forward(self, x):
        y = self.g(self.a(x))
        u, v = y.chunk(2, dim=1)
        return self.out(torch.cat([u * v + u, self.c(x), u], dim=1))


def test_edges_are_typed_and_propagate():
    dg = DependencyGraph(_EdgesNet(), torch.randn(1, 3, 6, 6))
    kinds = {type(e) for e in dg.edges}
    assert kinds == {BlockEdge, CatEdge, ChunkEdge}
    for e in dg.edges:
        for c in e.classes():
            assert dg.edges.index(e) in dg.class_edges[c]
    block = next(e for e in dg.edges if isinstance(e, BlockEdge))
    assert block.propagate(block.coarse, {1}) == [(block.fine, [2, 3])]
    assert block.propagate(block.fine, {5}) == [(block.coarse, {2})]
    cat = next(e for e in dg.edges if isinstance(e, CatEdge))
    assert [p.offset for p in cat.pieces] == [0, 4, 10]
    assert (cat.pieces[1].cls, [0]) in cat.propagate(cat.out, {4})
    chunk = next(e for e in dg.edges if isinstance(e, ChunkEdge))
    assert chunk.size == 4 and len(chunk.outs) == 2
    assert (chunk.x, [1, 5]) in chunk.propagate(chunk.outs[0], {1})


def test_apply_rule_names_ops_without_rules():
    class _B:
        covered = set()
    node = type("N", (), {"target": torch.ops.fastprune_test.scale.default, "args": (),
                          "kwargs": {}})()
    assert apply_rule(_B(), node) == "fastprune_test.scale"
