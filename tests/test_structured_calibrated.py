"""Calibrated structured pruning: activation and Taylor importance against plain-torch
transcriptions of Wanda-sp / FLAP and LLM-Pruner, FLAP's bias compensation, per-kind amounts,
whole-block removal (layer indices, caching, configs) and the round trips through
save_pretrained / from_pretrained for every supported family."""
import pytest
import torch
from torch import nn

import fastprune
from fastprune.structured import (CalibrationStats, ConfigError, collect_statistics,
                                  prune_channels, remove_blocks)
from helpers import assert_snapshot_equal, module_snapshot

T = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

V = 96


def _quiet():
    T.logging.set_verbosity_error()


FAMILIES = {
    "llama": lambda n=3: T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=n,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32)),
    "mistral": lambda n=3: T.MistralForCausalLM(T.MistralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=n,
        num_attention_heads=8, num_key_value_heads=4, head_dim=4, max_position_embeddings=32)),
    "qwen2": lambda n=3: T.Qwen2ForCausalLM(T.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=n,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32)),
    "gemma": lambda n=3: T.GemmaForCausalLM(T.GemmaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=n,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32)),
    "opt": lambda n=3: T.OPTForCausalLM(T.OPTConfig(
        vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=n, num_attention_heads=4,
        max_position_embeddings=32, word_embed_proj_dim=32)),
    "gpt2": lambda n=3: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=n, n_head=4, n_positions=32, bos_token_id=0,
        eos_token_id=0)),
}
# families whose config states the number of heads independently of the hidden size
HEADS_OK = {"llama", "mistral", "qwen2", "gemma"}


def build(name, n=3, seed=0):
    _quiet()
    torch.manual_seed(seed)
    return FAMILIES[name](n).eval()


def ids(n=2, s=9, seed=1):
    return torch.randint(0, V, (n, s), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def reload(model, tmp_path):
    model.save_pretrained(tmp_path)
    return T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()


def generate(model, x):
    with torch.no_grad():
        return model.generate(x[:1, :4], max_new_tokens=4, do_sample=False, use_cache=True)


# ---------------------------------------------------------------------------
# Round trips: every supported family, each of mlp / heads / blocks
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("what", ["mlp", "heads", "blocks"])
def test_round_trip_identical_logits(family, what, tmp_path):
    model = build(family)
    x = ids()
    if what == "heads" and family not in HEADS_OK:
        snap = module_snapshot(model)
        cfg = model.config.to_dict()
        with pytest.raises(ConfigError, match=r"amount\['heads'\].*cannot"):
            prune_channels(model, (x,), {"heads": 0.5}, uniform=True, importance="activation")
        assert_snapshot_equal(snap, module_snapshot(model))
        assert model.config.to_dict() == cfg
        return
    before = sum(p.numel() for p in model.parameters())
    if what == "blocks":
        report = remove_blocks(model, [1], example_inputs=(x,))
        assert report.config_changes["num_hidden_layers"] == (3, 2)
        assert model.config.num_hidden_layers == 2
    else:
        report = prune_channels(model, (x,), {what: 0.5}, uniform=True, importance="activation")
        assert report.config_changes
        assert all(kind == what for _, kind, _, k in report.units if k)
    assert sum(p.numel() for p in model.parameters()) < before
    expected = logits(model, x)
    again = reload(model, tmp_path)
    assert type(again) is type(model)
    assert torch.equal(logits(again, x), expected)
    assert torch.equal(generate(again, x), generate(model, x))  # the KV cache works too


# ---------------------------------------------------------------------------
# OPT with uniform=True (issue 23, defect 2: it removed nothing and said nothing)
# ---------------------------------------------------------------------------

def test_opt_uniform_removes_mlp_channels_and_names_what_it_leaves(tmp_path):
    model = build("opt", n=2)
    x = ids()
    report = fastprune.prune_channels(model, (x,), 0.25, uniform=True)
    assert report.config_changes == {"ffn_dim": (64, 48)}
    assert model.config.ffn_dim == 48
    assert all(layer.fc1.out_features == 48 for layer in model.model.decoder.layers)
    assert report.params_after < report.params_before
    left = " ".join(report.left_unpruned)
    assert "self_attn" in left and "embed_tokens" in left  # heads and hidden size: not statable
    assert "left whole" in str(report)
    expected = logits(model, x)
    assert torch.equal(logits(reload(model, tmp_path), x), expected)


def test_uniform_on_an_unsupported_model_type_raises_instead_of_doing_nothing():
    _quiet()
    torch.manual_seed(0)
    model = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32)).eval()
    snap = module_snapshot(model)
    with pytest.raises(ConfigError, match="gpt_neox"):
        fastprune.prune_channels(model, (ids(),), 0.25, uniform=True)
    assert_snapshot_equal(snap, module_snapshot(model))


# ---------------------------------------------------------------------------
# Importance against plain-torch transcriptions
# ---------------------------------------------------------------------------

def _inputs_of(model, x, names):
    """Plain forward hooks: each named layer's input rows [tokens, features]."""
    got, handles = {}, []
    for n in names:
        m = model.get_submodule(n)
        handles.append(m.register_forward_hook(
            lambda mod, a, out, n=n: got.__setitem__(n, a[0].reshape(-1, a[0].shape[-1]).double())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return got


def _kept(before: torch.Tensor, after: torch.Tensor):
    """Indices of the rows of ``before`` that survive in ``after`` (rows are unique)."""
    out = []
    for row in after:
        hits = (before == row).all(dim=1).nonzero().flatten().tolist()
        assert len(hits) == 1
        out.append(hits[0])
    return out


def _llama(n=2, seed=0):
    return build("llama", n=n, seed=seed)


def _wanda_sp_mlp(model, x):
    """Wanda-sp / FLAP score of every MLP channel: ||X_j|| * ||W_down[:, j]||."""
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(len(model.model.layers))]
    X = _inputs_of(model, x, names)
    return [X[n].norm(dim=0) * model.get_submodule(n).weight.double().norm(dim=0) for n in names]


def _wanda_sp_heads(model, x):
    """Per key-value group: the o_proj columns of its query heads, ||X_j|| * ||W_o[:, j]|| summed."""
    cfg = model.config
    d, rep = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    names = [f"model.layers.{i}.self_attn.o_proj" for i in range(len(model.model.layers))]
    X = _inputs_of(model, x, names)
    out = []
    for n in names:
        per_col = X[n].norm(dim=0) * model.get_submodule(n).weight.double().norm(dim=0)
        out.append(per_col.reshape(cfg.num_key_value_heads, rep * d).sum(1))
    return out


def _taylor(model, x):
    """LLM-Pruner first order: |w * dL/dw| of the LM loss, summed over each unit's weights."""
    model.zero_grad()
    model(x, labels=x).loss.backward()
    cfg = model.config
    d, rep = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    mlp, heads = [], []
    for layer in model.model.layers:
        s = lambda lin: (lin.weight * lin.weight.grad).abs().double()  # noqa: E731
        m = layer.mlp
        mlp.append(s(m.gate_proj).sum(1) + s(m.up_proj).sum(1) + s(m.down_proj).sum(0))
        a = layer.self_attn
        q = s(a.q_proj).sum(1).reshape(cfg.num_key_value_heads, rep * d).sum(1)
        k = s(a.k_proj).sum(1).reshape(cfg.num_key_value_heads, d).sum(1)
        v = s(a.v_proj).sum(1).reshape(cfg.num_key_value_heads, d).sum(1)
        o = s(a.o_proj).sum(0).reshape(cfg.num_key_value_heads, rep * d).sum(1)
        heads.append(q + k + v + o)
    model.zero_grad()
    return mlp, heads


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_mlp_channels_removed_are_the_oracles_weakest(importance):
    model = _llama()
    x = ids(n=3, s=12)
    scores = _wanda_sp_mlp(model, x) if importance == "activation" else _taylor(model, x)[0]
    before = [l.mlp.gate_proj.weight.detach().clone() for l in model.model.layers]
    prune_channels(model, (x,), {"mlp": 0.25}, uniform=True, importance=importance)
    for i, layer in enumerate(model.model.layers):
        k = 96 - 24
        expected = sorted(torch.topk(scores[i], k).indices.tolist())
        assert _kept(before[i], layer.mlp.gate_proj.weight) == expected, i


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_kv_groups_removed_are_the_oracles_weakest(importance):
    model = _llama()
    x = ids(n=3, s=12)
    scores = _wanda_sp_heads(model, x) if importance == "activation" else _taylor(model, x)[1]
    before = [l.self_attn.k_proj.weight.detach().clone() for l in model.model.layers]
    prune_channels(model, (x,), {"heads": 0.5}, uniform=True, importance=importance)
    d = model.config.head_dim
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    for i, layer in enumerate(model.model.layers):
        kept_rows = _kept(before[i], layer.self_attn.k_proj.weight)
        kept_groups = sorted({r // d for r in kept_rows})
        assert kept_groups == sorted(torch.topk(scores[i], 2).indices.tolist()), i


def test_statistics_match_a_plain_forward_and_respect_padding():
    model = _llama()
    x = ids(n=2, s=10)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    stats = collect_statistics(model, {"input_ids": x, "attention_mask": mask})
    name = "model.layers.1.mlp.down_proj"
    got = {}
    h = model.get_submodule(name).register_forward_hook(
        lambda m, a, o: got.__setitem__("x", a[0].reshape(-1, a[0].shape[-1]).double()))
    with torch.no_grad():
        model(input_ids=x, attention_mask=mask)
    h.remove()
    real = got["x"][mask.reshape(-1) != 0]
    assert got["x"].shape[0] == 20 and real.shape[0] == 16
    st = stats.inputs[name]
    assert st.count == 16
    torch.testing.assert_close(st.norms(), real.norm(dim=0), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(st.mean(), real.mean(dim=0), rtol=1e-6, atol=1e-9)


def test_taylor_needs_a_loss_outside_causal_lms():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(5, 6)
    snap = module_snapshot(net)
    with pytest.raises(ValueError, match="loss_fn"):
        prune_channels(net, x, 0.25, importance="taylor")
    assert_snapshot_equal(snap, module_snapshot(net))

    def loss_fn(model, args, kwargs):
        return model(*args, **kwargs).pow(2).sum()

    w1, w2 = net[0].weight.detach().clone(), net[2].weight.detach().clone()
    loss_fn(net, (x,), {}).backward()
    score = ((net[0].weight * net[0].weight.grad).abs().sum(1) + (net[0].bias * net[0].bias.grad).abs()
             + (net[2].weight * net[2].weight.grad).abs().sum(0)).double()
    net.zero_grad()
    prune_channels(net, x, 3, importance="taylor", loss_fn=loss_fn)
    assert _kept(w1, net[0].weight) == sorted(torch.topk(score, 9).indices.tolist())
    assert torch.equal(net[2].weight, w2[:, _kept(w1, net[0].weight)])


def test_precomputed_statistics_are_used_as_given():
    model = _llama()
    x = ids()
    stats = collect_statistics(model, (x,))
    # make channel 5 of every block look dead to the activation score
    for i in range(2):
        stats.inputs[f"model.layers.{i}.mlp.down_proj"].sq[5] = 0.0
    before = [l.mlp.up_proj.weight.detach().clone() for l in model.model.layers]
    prune_channels(model, (x,), {"mlp": 0.02}, uniform=True, importance="activation",
                   statistics=stats)  # round(0.02 * 96) = 2 channels per block
    for i, layer in enumerate(model.model.layers):
        assert 5 not in _kept(before[i], layer.mlp.up_proj.weight)
    with pytest.raises(TypeError, match="statistics"):
        prune_channels(model, (x,), {"mlp": 0.1}, statistics={"inputs": {}})


# ---------------------------------------------------------------------------
# Bias compensation (FLAP)
# ---------------------------------------------------------------------------

def test_bias_compensation_adds_the_mean_contribution_of_removed_inputs(tmp_path):
    model = _llama()
    x = ids(n=3, s=12)
    name = "model.layers.0.mlp.down_proj"
    X = _inputs_of(model, x, [name])[name]
    mean = X.mean(0)
    w = model.get_submodule(name).weight.detach().double().clone()
    gate = model.model.layers[0].mlp.gate_proj.weight.detach().clone()
    out_mean = (X @ w.t()).mean(0)
    report = prune_channels(model, (x,), {"mlp": 0.5}, uniform=True, importance="activation",
                            bias_compensation=True)
    assert report.config_changes["mlp_bias"] == (False, True)
    kept = _kept(gate, model.model.layers[0].mlp.gate_proj.weight)
    removed = sorted(set(range(96)) - set(kept))
    expected = w[:, removed] @ mean[removed]
    down = model.get_submodule(name)
    torch.testing.assert_close(down.bias.double(), expected, rtol=1e-5, atol=1e-6)
    # block 0 sees the same inputs as before: its down_proj output keeps its calibration mean
    X2 = _inputs_of(model, x, [name])[name]
    torch.testing.assert_close((X2 @ down.weight.double().t() + down.bias.double()).mean(0),
                               out_mean, rtol=1e-4, atol=1e-5)
    # the other layers the flag covers got zero biases, and the model reloads
    layer = model.model.layers[1].mlp
    assert torch.equal(layer.gate_proj.bias, torch.zeros_like(layer.gate_proj.bias))
    assert report.compensated == [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    expected_logits = logits(model, x)
    assert torch.equal(logits(reload(model, tmp_path), x), expected_logits)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_bias_compensation_refused_where_the_config_has_no_flag(family):
    model = build(family)
    snap, cfg = module_snapshot(model), model.config.to_dict()
    with pytest.raises(ConfigError, match=r"down_proj\.bias.*no field"):
        prune_channels(model, (ids(),), {"mlp": 0.5}, uniform=True, bias_compensation=True)
    assert_snapshot_equal(snap, module_snapshot(model))
    assert model.config.to_dict() == cfg


def test_bias_compensation_on_a_plain_module_creates_the_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3, bias=False))
    x = torch.randn(40, 6)
    h = torch.relu(net[0](x)).detach().double()
    w = net[2].weight.detach().double().clone()
    w0 = net[0].weight.detach().clone()
    prune_channels(net, x, 4, importance="activation", bias_compensation=True)
    removed = sorted(set(range(12)) - set(_kept(w0, net[0].weight)))
    torch.testing.assert_close(net[2].bias.double(), w[:, removed] @ h.mean(0)[removed],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net(x).double().mean(0), (h @ w.t()).mean(0), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Per-kind amounts: refusals leave the model as it was
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("amount,error,match", [
    ({"mlp": 1.0}, ValueError, r"amount\['mlp'\]"),
    ({"mlp": -0.1}, ValueError, r"amount\['mlp'\]"),
    ({"heads": 0.9}, ValueError, r"amount\['heads'\].*all 4"),
    ({"mlp": 0.999}, ValueError, r"amount\['mlp'\].*all 96"),
    ({"mlps": 0.5}, ValueError, "unknown kind"),
    ({"mlp": True}, TypeError, r"amount\['mlp'\]"),
    ({}, ValueError, "empty"),
])
def test_bad_per_kind_amounts(amount, error, match):
    model = _llama()
    snap, cfg = module_snapshot(model), model.config.to_dict()
    with pytest.raises(error, match=match):
        prune_channels(model, (ids(),), amount, uniform=True)
    assert_snapshot_equal(snap, module_snapshot(model))
    assert model.config.to_dict() == cfg


def test_unknown_importance_and_meta_model():
    model = _llama()
    with pytest.raises(ValueError, match="importance"):
        prune_channels(model, (ids(),), 0.2, importance="fisher")
    with torch.device("meta"):
        meta = FAMILIES["llama"](2)
    with pytest.raises(ValueError, match="meta"):
        prune_channels(meta, (ids(),), 0.2, importance="activation")


# ---------------------------------------------------------------------------
# Whole blocks
# ---------------------------------------------------------------------------

def test_remove_blocks_renumbers_layer_indices_and_per_layer_config():
    _quiet()
    torch.manual_seed(0)
    model = T.Qwen2ForCausalLM(T.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
        use_sliding_window=True, sliding_window=4)).eval()
    x = ids(s=12)
    keep = [model.model.layers[i] for i in (0, 2, 3)]
    report = remove_blocks(model, [1], example_inputs=(x,))
    assert list(model.model.layers) == keep
    assert [l.self_attn.layer_idx for l in model.model.layers] == [0, 1, 2]
    assert model.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    assert ("model.layers.1.self_attn", "layer_idx", 2, 1) in report.renumbered
    assert report.removed == (1,) and report.blocks_after == 3


def test_remove_blocks_equals_skipping_them():
    """The model without block 1 computes what the dense model computes when block 1 is skipped."""
    model = _llama(n=3)
    x = ids()
    skip = model.model.layers[1]
    h = skip.register_forward_hook(lambda m, a, kw, out: a[0] if not isinstance(out, tuple)
                                   else (a[0],) + tuple(out[1:]), with_kwargs=True)
    expected = logits(model, x)
    h.remove()
    remove_blocks(model, 1)
    torch.testing.assert_close(logits(model, x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("indices,error,match", [
    ([3], ValueError, "out of range"),
    ([0, 1, 2], ValueError, "all 3 blocks"),
    ([], ValueError, "empty"),
    (["a"], TypeError, "ints"),
    (1.5, TypeError, "indices"),
])
def test_remove_blocks_bad_indices(indices, error, match):
    model = _llama(n=3)
    snap, cfg = module_snapshot(model), model.config.to_dict()
    with pytest.raises(error, match=match):
        remove_blocks(model, indices)
    assert_snapshot_equal(snap, module_snapshot(model))
    assert model.config.to_dict() == cfg


def test_remove_blocks_refuses_what_a_config_cannot_state():
    _quiet()
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4,
                                           n_positions=32, scale_attn_by_inverse_layer_idx=True))
    snap = module_snapshot(model)
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        remove_blocks(model, [0])
    assert_snapshot_equal(snap, module_snapshot(model))
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="blocks"):
        remove_blocks(net, [0])
    blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
    holder = nn.Module()
    holder.blocks = blocks
    report = remove_blocks(holder, [0], blocks="blocks")
    assert len(holder.blocks) == 2 and report.path == "blocks"


def test_remove_blocks_rolls_back_when_the_model_fails():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

        def forward(self, x):
            assert len(self.blocks) == 3, "this model needs its three blocks"
            for b in self.blocks:
                x = b(x)
            return x

    m = Fixed()
    snap = module_snapshot(m)
    with pytest.raises(RuntimeError, match="rolled back"):
        remove_blocks(m, [1], blocks="blocks", example_inputs=torch.randn(2, 4))
    assert_snapshot_equal(snap, module_snapshot(m))
    assert len(m.blocks) == 3


def test_calibration_stats_within_renames():
    stats = CalibrationStats()
    stats.inputs["model.layers.3.mlp.down_proj"] = object()
    stats.inputs["model.layers.30.mlp.down_proj"] = object()
    sub = stats.within("model.layers.3")
    assert list(sub.inputs) == ["mlp.down_proj"]


def test_dry_run_and_undo_lists_restore_the_model():
    model = _llama(n=3)
    x = ids()
    snap, cfg = module_snapshot(model), model.config.to_dict()
    report = remove_blocks(model, [0, 2], dry_run=True)
    assert report.blocks_after == 1 and report.params_after < report.params_before
    assert_snapshot_equal(snap, module_snapshot(model))
    undo = []
    remove_blocks(model, [1], undo=undo)
    prune_channels(model, (x,), {"mlp": 0.5, "heads": 0.5}, uniform=True, bias_compensation=True,
                   importance="activation", undo=undo)
    assert model.config.num_hidden_layers == 2 and model.config.mlp_bias
    for fn in reversed(undo):
        fn()
    assert_snapshot_equal(snap, module_snapshot(model))
    assert model.config.to_dict() == cfg
