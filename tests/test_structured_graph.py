"""Dependency graph and cut plans on hand-built models.

The central check is output exactness: when the channels a plan removes are
dead (every weight that reads them is zero), the pruned model must compute
exactly what the unpruned one did. A missing coupling shows up either as a
shape error or as a different output.
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastprune
from fastprune.structured import DependencyGraph, Plan, TraceError


pytestmark = pytest.mark.usefixtures("one_thread")


# --- models -------------------------------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.dw(F.relu(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    """Residual stream (add), depthwise conv, BatchNorm, projection shortcut, flatten -> Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = ResBlock(8)
        self.block2 = ResBlock(8)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.short = nn.Conv2d(8, 12, 1, stride=2)
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        x = F.relu(self.down(x)) + self.short(x)
        x = F.adaptive_avg_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))


class DenseLike(nn.Module):
    """DenseNet-style concatenation: every layer reads all earlier feature maps."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(10, 4, 3, padding=1)
        self.trans = nn.Conv2d(14, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x0 = F.relu(self.stem(x))
        x1 = torch.cat([x0, F.relu(self.conv1(x0))], dim=1)
        x2 = torch.cat([x1, F.relu(self.conv2(x1))], dim=1)
        y = F.relu(self.trans(x2)).mean(dim=(2, 3))
        return self.fc(y)


class SplitLike(nn.Module):
    """chunk (gated unit) and an equal split whose halves go to different convs."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 1)
        self.proj = nn.Conv2d(8, 10, 3, padding=1)
        self.left = nn.Conv2d(5, 6, 1)
        self.right = nn.Conv2d(5, 6, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        a, b = self.expand(x).chunk(2, dim=1)
        y = self.proj(a * torch.sigmoid(b))
        p, q = y.split(y.shape[1] // 2, dim=1)
        z = self.left(p) + self.right(q)
        return self.head(z.mean(dim=(2, 3)))


class Attention(nn.Module):
    """Eager attention with head counts read from attributes; GQA via expand + reshape."""

    def __init__(self, dim, num_heads, num_key_value_heads):
        super().__init__()
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim)
        self.k_proj = nn.Linear(dim, num_key_value_heads * self.head_dim)
        self.v_proj = nn.Linear(dim, num_key_value_heads * self.head_dim)
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(b, t, self.num_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_key_value_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_key_value_heads, hd).transpose(1, 2)
        rep = self.num_heads // self.num_key_value_heads
        k = k[:, :, None].expand(b, self.num_key_value_heads, rep, t, hd).reshape(b, self.num_heads, t, hd)
        v = v[:, :, None].expand(b, self.num_key_value_heads, rep, t, hd).reshape(b, self.num_heads, t, hd)
        att = torch.softmax((q @ k.transpose(-1, -2)) * hd ** -0.5, dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, t, self.num_heads * hd)
        return self.o_proj(out)


class SdpaAttention(nn.Module):
    """Fused attention with ``enable_gqa`` and a head count inferred by ``-1`` views."""

    def __init__(self, dim, num_heads, num_key_value_heads):
        super().__init__()
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        shape = (b, t, -1, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class TinyTransformer(nn.Module):
    """Embedding, pre-norm residual blocks (both attention kinds), MLP, tied-free head."""

    def __init__(self, vocab=20, dim=32, heads=4, kv_heads=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, kv_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = SdpaAttention(dim, heads, kv_heads)
        self.norm3 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x))
        x = x + self.down(F.gelu(self.up(self.norm3(x))))
        return self.lm_head(x)


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.grouped(F.relu(self.gn(self.conv1(x))))
        return self.conv2(F.relu(y)).mean(dim=(2, 3))


# --- helpers --------------------------------------------------------------------

def kill_readers(plan: Plan):
    """Zero every weight slice that reads a removed channel, making it dead."""
    with torch.no_grad():
        for cut in plan.cuts:
            if cut.role == "in":
                getattr(cut.module, cut.tensor).index_fill_(cut.dim, torch.tensor(cut.indices), 0.0)


def assert_exact_after(model, example, target, idxs, **kw):
    model.eval()
    dg = DependencyGraph(model, example)
    plan = dg.plan(target, idxs, **kw)
    kill_readers(plan)
    args = example if isinstance(example, tuple) else (example,)
    with torch.no_grad():
        ref = model(*args)
    n_before = sum(p.numel() for p in model.parameters())
    plan.exec()
    with torch.no_grad():
        out = model(*args)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == n_before - plan.n_params_removed
    return plan


def cut_map(plan):
    return {(c.fqn, c.dim): list(c.indices) for c in plan.cuts}


def image(n=2, size=8):
    return torch.randn(n, 3, size, size)


# --- exactness on every coupling kind ----------------------------------------------

def test_residual_stream_and_flatten_linear_exact():
    m = ResNetLike()
    plan = assert_exact_after(m, image(), m.stem, [1, 6])
    cuts = cut_map(plan)
    # the residual stream couples the stem with both blocks (conv1 in and out,
    # depthwise, both BNs) and the two stride-2 readers
    for fqn in ("stem.weight", "bn.weight", "bn.running_mean", "block1.conv1.weight",
                "block1.dw.weight", "block2.bn2.running_var"):
        assert cuts[(fqn, 0)] == [1, 6]
    assert cuts[("down.weight", 1)] == [1, 6] and cuts[("short.weight", 1)] == [1, 6]
    assert m.block1.dw.groups == 6 and m.block1.dw.in_channels == 6
    assert m.bn.num_features == 6 and m.stem.out_channels == 6


def test_projection_output_maps_to_blocks_of_linear_features():
    m = ResNetLike()
    plan = assert_exact_after(m, image(), m.down, [2])
    cuts = cut_map(plan)
    assert cuts[("short.weight", 0)] == [2]  # added to down's output
    assert cuts[("fc.weight", 1)] == [8, 9, 10, 11]  # channel 2 of a 2x2 map
    assert m.fc.in_features == 44


def test_dense_concat_offsets_exact():
    m = DenseLike()
    plan = assert_exact_after(m, image(), m.conv1, [1, 3])
    cuts = cut_map(plan)
    assert cuts[("conv2.weight", 1)] == [7, 9]  # after the 6 stem channels
    assert cuts[("trans.weight", 1)] == [7, 9]
    m2 = DenseLike()
    plan = assert_exact_after(m2, image(), m2.stem, [0, 5])
    cuts = cut_map(plan)
    assert cuts[("conv1.weight", 1)] == [0, 5]
    assert cuts[("conv2.weight", 1)] == [0, 5]
    assert cuts[("trans.weight", 1)] == [0, 5]
    m3 = DenseLike()
    plan = assert_exact_after(m3, image(), m3.conv2, [0])
    assert cut_map(plan)[("trans.weight", 1)] == [10]


def test_chunk_and_split_ranges_exact():
    m = SplitLike()
    plan = assert_exact_after(m, image(), m.proj, [1])
    cuts = cut_map(plan)
    # an equal split stays equal: channel 1 of each half goes
    assert cuts[("proj.weight", 0)] == [1, 6]
    assert cuts[("left.weight", 1)] == [1] and cuts[("right.weight", 1)] == [1]
    m2 = SplitLike()
    plan = assert_exact_after(m2, image(), m2.expand, [2])
    cuts = cut_map(plan)
    assert cuts[("expand.weight", 0)] == [2, 10]  # gate and value of the same channel
    assert cuts[("proj.weight", 1)] == [2]


def test_attention_heads_and_gqa_groups_exact():
    ids = torch.randint(0, 20, (2, 7))
    m = TinyTransformer()
    plan = assert_exact_after(m, (ids,), m.attn1.q_proj, [9])
    cuts = cut_map(plan)
    # q channel 9 is in head 1, which shares key/value head 0 with head 0:
    # the whole query group and its key/value head go
    assert cuts[("attn1.q_proj.weight", 0)] == list(range(16))
    assert cuts[("attn1.k_proj.weight", 0)] == list(range(8))
    assert cuts[("attn1.v_proj.bias", 0)] == list(range(8))
    assert cuts[("attn1.o_proj.weight", 1)] == list(range(16))
    assert m.attn1.num_heads == 2 and m.attn1.num_key_value_heads == 1
    m2 = TinyTransformer()
    plan = assert_exact_after(m2, (ids,), m2.attn2.v_proj, [8])
    cuts = cut_map(plan)
    assert cuts[("attn2.q_proj.weight", 0)] == list(range(16, 32))
    assert cuts[("attn2.k_proj.weight", 0)] == list(range(8, 16))


def test_hidden_size_through_embedding_norms_and_residuals():
    ids = torch.randint(0, 20, (2, 5))
    m = TinyTransformer()
    dg = DependencyGraph(m, (ids,))
    plan = dg.plan(m.embed, [3, 4])
    cuts = cut_map(plan)
    for fqn, d in (("embed.weight", 1), ("norm1.weight", 0), ("norm3.bias", 0),
                   ("attn1.q_proj.weight", 1), ("attn2.o_proj.weight", 0),
                   ("down.bias", 0), ("lm_head.weight", 1)):
        assert cuts[(fqn, d)] == [3, 4]
    plan.exec()
    assert m.norm1.normalized_shape == (30,) and m.embed.embedding_dim == 30
    assert m(ids).shape == (2, 5, 20)


def test_groupnorm_and_grouped_conv_lose_whole_groups_exact():
    m = GroupNormNet()
    plan = assert_exact_after(m, image(), m.conv1, [3])
    cuts = cut_map(plan)
    assert cuts[("conv1.weight", 0)] == [2, 3]
    assert cuts[("grouped.weight", 0)] == [2, 3]
    assert ("grouped.weight", 1) not in cuts  # per-group width stays
    assert m.gn.num_groups == 3 and m.gn.num_channels == 6
    assert m.grouped.groups == 3 and m.grouped.in_channels == 6


def test_plan_is_printable_and_lists_every_cut():
    m = ResNetLike()
    dg = DependencyGraph(m.eval(), image())
    plan = dg.plan(m.block1.conv1, [0])
    text = str(plan)
    assert "block1.conv1.weight" in text and "running_mean" in text and "(buffer)" in text
    assert "set stem.out_channels: 8 -> 7" in text
    assert f"{plan.n_params_removed} parameters removed" in text
    assert all(isinstance(c.module, nn.Module) and isinstance(c.dim, int) for c in plan.cuts)


def test_save_load_after_exec_and_backward():
    m = TinyTransformer()
    ids = torch.randint(0, 20, (2, 6))
    dg = DependencyGraph(m, (ids,))
    dg.plan(m.up, [0, 5, 9]).exec()
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m2 = torch.load(buf, weights_only=False)
    torch.testing.assert_close(m2(ids), m(ids), rtol=0, atol=0)
    m2(ids).sum().backward()
    assert m2.up.weight.grad.shape == (61, 32)


# --- graph queries ---------------------------------------------------------------

def test_groups_expose_units_and_blocked_dims():
    m = TinyTransformer()
    dg = DependencyGraph(m, (torch.randint(0, 20, (2, 5)),))
    groups = {g.name: g for g in dg.groups()}
    attn = [g for n, g in groups.items() if n.startswith("attn1.q_proj")][0]
    assert attn.n_prunable == 2  # two key/value groups
    mlp = [g for n, g in groups.items() if n.startswith("up")][0]
    assert mlp.n_prunable == 64
    assert "prunable" in repr(dg)
    # the vocabulary dimension ends at the model output and is blocked
    with pytest.raises(ValueError, match="model output"):
        dg.plan(m.lm_head, [0])
    with pytest.raises(ValueError, match="aten.embedding"):
        dg.plan(m.embed, [0], dim=0)


def test_plan_never_empties_a_layer_and_checks_indices():
    m = ResNetLike().eval()
    dg = DependencyGraph(m, image())
    with pytest.raises(ValueError, match="empty"):
        dg.plan(m.stem, list(range(8)))
    with pytest.raises(IndexError):
        dg.plan(m.stem, [8])
    with pytest.raises(ValueError, match="empty"):
        dg.plan(m.stem, [])
    with pytest.raises(TypeError):
        dg.plan(m.stem, ["a"])
    with pytest.raises(TypeError):
        dg.plan("stem", [0])
    with pytest.raises(ValueError, match="not part"):
        dg.plan(nn.Linear(2, 2), [0])
    with pytest.raises(ValueError, match="has no tensor 'weight'"):
        dg.plan(m.block1, [0])
    with pytest.raises(IndexError, match="out of range"):
        dg.plan(m.stem, [0], dim=4)
    plan = dg.plan(m.stem, [-1])
    assert cut_map(plan)[("stem.weight", 0)] == [7]
    plan = dg.plan(m.block1.conv1.weight, [2], dim=1)  # a parameter and an input dim
    assert cut_map(plan)[("stem.weight", 0)] == [2]


def test_negative_and_tensor_indices_and_stale_graph():
    m = ResNetLike().eval()
    dg = DependencyGraph(m, image())
    plan = dg.plan(m.stem, torch.tensor([0, 2]))
    plan.exec()
    with pytest.raises(RuntimeError, match="already been executed"):
        plan.exec()
    with pytest.raises(RuntimeError, match="stale"):
        dg.plan(m.stem, [0])


def test_example_inputs_forms():
    m = TinyTransformer()
    ids = torch.randint(0, 20, (1, 4))
    for ex in (ids, (ids,), {"ids": ids}, ((), {"ids": ids})):
        dg = DependencyGraph(m, ex)
        assert dg.groups()
    with pytest.raises(TypeError, match="example_inputs"):
        DependencyGraph(m, 3)
    with pytest.raises(TypeError, match="nn.Module"):
        DependencyGraph(lambda x: x, ids)


# --- unsupported patterns: clear errors, nothing modified ---------------------------

class Permuted(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1)
        self.conv2 = nn.Conv2d(6, 4, 1)
        self.register_buffer("perm", torch.tensor([5, 4, 3, 2, 1, 0]))

    def forward(self, x):
        return self.conv2(self.conv1(x).index_select(1, self.perm))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class HardCodedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 32)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x).view(x.shape[0], 4, 8).sum(1))


def snapshot(model):
    return copy.deepcopy(model.state_dict()), {n: (type(m), repr(m)) for n, m in model.named_modules()}


def assert_unchanged(model, snap):
    sd, reprs = snap
    now = model.state_dict()
    assert sd.keys() == now.keys()
    for k in sd:
        assert torch.equal(sd[k], now[k]), k
    assert reprs == {n: (type(m), repr(m)) for n, m in model.named_modules()}


def test_unknown_op_blocks_coupled_channels_with_named_error():
    m = Permuted()
    snap = snapshot(m)
    dg = DependencyGraph(m, image())
    with pytest.raises(ValueError, match="aten.index_select"):
        dg.plan(m.conv1, [0])
    assert_unchanged(m, snap)
    report = fastprune.prune_channels(m, image(), 0.5)
    assert report.params_after == report.params_before  # nothing prunable
    assert_unchanged(m, snap)


def test_untraceable_model_raises_trace_error_and_is_untouched():
    m = DataDependent()
    snap = snapshot(m)
    with pytest.raises(TraceError, match="DataDependent") as info:
        DependencyGraph(m, torch.randn(2, 4))
    assert "if x.sum() > 0" in str(info.value)  # points at the offending line
    with pytest.raises(TraceError):
        fastprune.prune_channels(m, torch.randn(2, 4), 0.3)
    assert_unchanged(m, snap)
    assert m.training


def test_failed_exec_rolls_everything_back():
    m = HardCodedView()
    snap = snapshot(m)
    x = torch.randn(2, 4)
    dg = DependencyGraph(m, x)
    plan = dg.plan(m.fc1, [3])  # grows to the whole row of 8 the view hard-codes as 4 rows
    assert cut_map(plan)[("fc1.weight", 0)] == list(range(8))
    with pytest.raises(RuntimeError, match="rolled back"):
        plan.exec()
    assert_unchanged(m, snap)
    assert m.fc1.out_features == 32
    m(x).sum().backward()
    with pytest.raises(RuntimeError, match="rolled back"):
        fastprune.prune_channels(m, x, 0.5)
    assert_unchanged(m, snap)


def test_training_mode_and_cache_flags_restored():
    m = ResNetLike()
    m.train()
    m.block1.eval()
    DependencyGraph(m, image())
    assert m.training and not m.block1.training and m.block2.training


class UNetLike(nn.Module):
    """Transposed convolution and a skip connection concatenated after upsampling."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 6, 3, padding=1)
        self.down = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 5, 2, stride=2)
        self.dec = nn.Conv2d(11, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        e = F.relu(self.enc(x))
        u = F.relu(self.up(F.relu(self.down(e))))
        return self.out(F.relu(self.dec(torch.cat([e, u], dim=1))))


def test_transposed_conv_and_skip_concat_exact():
    m = UNetLike()
    plan = assert_exact_after(m, image(), m.up, [0, 3])
    cuts = cut_map(plan)
    assert cuts[("up.weight", 1)] == [0, 3] and cuts[("up.bias", 0)] == [0, 3]
    assert cuts[("dec.weight", 1)] == [6, 9]
    assert m.up.out_channels == 3 and m.dec.in_channels == 9
    m2 = UNetLike()
    plan = assert_exact_after(m2, image(), m2.down, [7])
    assert cut_map(plan)[("up.weight", 0)] == [7]
    assert m2.up.in_channels == 7
    m3 = UNetLike()
    plan = assert_exact_after(m3, image(), m3.enc, [2])
    cuts = cut_map(plan)
    assert cuts[("down.weight", 1)] == [2] and cuts[("dec.weight", 1)] == [2]


class EinsumGQA(nn.Module):
    """Attention written with einsum; key/value heads shared via repeat_interleave."""

    def __init__(self, dim=24, heads=6, kv=3):
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv, dim // heads
        self.qkv = nn.ModuleList([nn.Linear(dim, heads * self.hd), nn.Linear(dim, kv * self.hd),
                                  nn.Linear(dim, kv * self.hd)])
        self.out = nn.Linear(heads * self.hd, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (lin(x).unflatten(-1, (-1, self.hd)) for lin in self.qkv)  # b t h d
        rep = q.shape[2] // k.shape[2]
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(self.hd ** -0.5).softmax(-1)
        y = torch.einsum("bhqk,bkhd->bqhd", att, v)
        return self.out(y.flatten(2))


def test_einsum_attention_with_repeat_interleave_gqa_exact():
    x = torch.randn(2, 5, 24)
    m = EinsumGQA()
    plan = assert_exact_after(m, (x,), m.qkv[0], [9])  # head 2, key/value head 1
    cuts = cut_map(plan)
    assert cuts[("qkv.0.weight", 0)] == list(range(8, 16))
    assert cuts[("qkv.1.weight", 0)] == list(range(4, 8))
    assert cuts[("out.weight", 1)] == list(range(8, 16))


class TiledShuffled(nn.Module):
    """repeat (tiling), pixel_shuffle, flip and indexing that leaves channels alone."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        y = F.relu(self.conv1(x)).repeat(1, 2, 1, 1)
        y = F.pixel_shuffle(self.conv2(y), 2).flip(-1)  # 8 channels -> 2 at twice the size
        z = self.conv3(y)                                # b 3 h w
        rows = torch.arange(z.shape[0])
        return self.fc(z.permute(0, 2, 3, 1)[rows, 1])  # pick spatial row 1: channels stay


def test_tiling_pixel_shuffle_and_indexing_exact():
    m = TiledShuffled()
    plan = assert_exact_after(m, image(), m.conv1, [3])
    assert cut_map(plan)[("conv2.weight", 1)] == [3, 7]
    m2 = TiledShuffled()
    plan = assert_exact_after(m2, image(), m2.conv2, [5])
    cuts = cut_map(plan)
    assert cuts[("conv2.weight", 0)] == [4, 5, 6, 7] and cuts[("conv3.weight", 1)] == [1]
    m3 = TiledShuffled()
    plan = assert_exact_after(m3, image(), m3.conv3, [0])
    assert cut_map(plan)[("fc.weight", 1)] == [0]


class SqueezeExcite(nn.Module):
    """Channel gating: the excitation conv's outputs multiply the feature map's channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(y, 1)))))
        return self.head(y * gate).mean(dim=(2, 3))


def test_squeeze_excite_gate_is_coupled_exact():
    m = SqueezeExcite()
    plan = assert_exact_after(m, image(), m.conv, [4])
    cuts = cut_map(plan)
    assert cuts[("expand.weight", 0)] == [4] and cuts[("expand.bias", 0)] == [4]
    assert cuts[("reduce.weight", 1)] == [4] and cuts[("head.weight", 1)] == [4]


def test_norm_shapes_follow_without_affine_weights():
    class Norms(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 16)
            self.rms = nn.RMSNorm(16)
            self.ln = nn.LayerNorm(16, elementwise_affine=False)
            self.b = nn.Linear(16, 3)

        def forward(self, x):
            return self.b(self.ln(self.rms(self.a(x))))

    m = Norms()
    x = torch.randn(2, 4)
    DependencyGraph(m, x).plan(m.a, [1, 2]).exec()
    assert m.rms.normalized_shape == (14,) and m.ln.normalized_shape == (14,)
    assert m(x).shape == (2, 3)
