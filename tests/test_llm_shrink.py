"""fastprune.llm.shrink against plain-torch transcriptions of FLAP / Wanda-sp (sequential,
block by block, with bias compensation), LLM-Pruner's first-order Taylor importance and
ShortGPT's block selection, on tiny random-init models; round trips through
save_pretrained / from_pretrained; bad inputs and rollback leave the model as it was."""
import copy
import math

import pytest
import torch
from torch import nn

import fastprune.llm as llm
from fastprune.structured import ConfigError

T = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

V = 96


def _quiet():
    T.logging.set_verbosity_error()


def llama(n=3, seed=0, **kw):
    _quiet()
    cfg = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=n,
               num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32)
    cfg.update(kw)
    torch.manual_seed(seed)
    return T.LlamaForCausalLM(T.LlamaConfig(**cfg)).eval()


FAMILIES = {
    "llama": lambda: llama(),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=4, head_dim=4, max_position_embeddings=32)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32)),
    "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32)),
    "opt": lambda: T.OPTForCausalLM(T.OPTConfig(
        vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=32, word_embed_proj_dim=32)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=32, bos_token_id=0,
        eos_token_id=0)),
}
HEADS_OK = {"llama", "mistral", "qwen2", "gemma"}
BIAS_OK = {"llama", "opt", "gpt2"}  # configs that can state the compensated biases


def build(family, seed=0):
    _quiet()
    torch.manual_seed(seed)
    return FAMILIES[family]().eval()


def calib(n=6, s=12, seed=1):
    return torch.randint(0, V, (n, s), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.config.to_dict()


def assert_same_state(a, b):
    (sa, ca), (sb, cb) = a, b
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k
    assert ca == cb


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("what", ["mlp", "heads", "blocks"])
def test_round_trip_identical_logits(family, what, tmp_path):
    model = build(family)
    x = calib()
    kw = {"mlp": dict(mlp=0.5, bias_compensation=family in BIAS_OK),
          "heads": dict(heads=0.5, bias_compensation=family in BIAS_OK), "blocks": dict(blocks=1)}[what]
    if what == "heads" and family not in HEADS_OK:
        before = state(model)
        with pytest.raises(ConfigError, match=r"heads=0\.5.*(n_head|num_attention_heads|num_heads)"):
            llm.shrink(model, x, progress=False, **kw)
        assert_same_state(before, state(model))
        return
    report = llm.shrink(model, x, progress=False, **kw)
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    assert report.config_changes
    if what == "blocks":
        assert len(report.removed_blocks) == 1
    expected = logits(model, x)
    model.save_pretrained(tmp_path)
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is type(model)
    assert torch.equal(logits(again, x), expected)
    with torch.no_grad():  # the KV cache addresses the renumbered blocks
        g1 = model.generate(x[:1, :4], max_new_tokens=4, do_sample=False)
        g2 = again.generate(x[:1, :4], max_new_tokens=4, do_sample=False)
    assert torch.equal(g1, g2)


# ---------------------------------------------------------------------------
# Plain-torch transcriptions
# ---------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _block_inputs(model, x):
    got = {}

    def pre(m, a, kw):
        got["a"] = (a, kw)
        raise _Stop

    h = model.model.layers[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        model(x, use_cache=False)
    except _Stop:
        pass
    h.remove()
    return got["a"]


def _input_rows(module, run):
    rows = []
    h = module.register_forward_hook(lambda m, a, o: rows.append(a[0].reshape(-1, a[0].shape[-1])))
    run()
    h.remove()
    return torch.cat(rows).double()


def _linear(w, b=None):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    lin.weight = nn.Parameter(w.clone())
    if b is not None:
        lin.bias = nn.Parameter(b.clone())
    return lin


def flap_transcription(model, x, mlp, heads, bias):
    """Block by block (FLAP / Wanda-sp): dense statistics of the block on its inputs, cut the
    MLP channels and key-value groups with the smallest sum ||X_j|| ||W[:, j]|| over the
    reading layer's columns, fold the removed columns' mean contribution into its bias,
    then run the shrunk block to get the next block's inputs."""
    cfg = model.config
    d, rep = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    (h, *rest), kw = _block_inputs(model, x)
    with torch.no_grad():
        for layer in model.model.layers:
            m, a = layer.mlp, layer.self_attn
            Xd = _input_rows(m.down_proj, lambda: layer(h, *rest, **kw))
            Xo = _input_rows(a.o_proj, lambda: layer(h, *rest, **kw))
            # MLP
            n = m.up_proj.out_features
            s = Xd.norm(dim=0) * m.down_proj.weight.double().norm(dim=0)
            keep = sorted(torch.topk(s, n - round(mlp * n)).indices.tolist())
            gone = sorted(set(range(n)) - set(keep))
            b = (m.down_proj.weight.double()[:, gone] @ Xd.mean(0)[gone]).float() if bias else None
            m.gate_proj = _linear(m.gate_proj.weight[keep])
            m.up_proj = _linear(m.up_proj.weight[keep])
            m.down_proj = _linear(m.down_proj.weight[:, keep], b)
            # key-value groups with their query heads
            g = cfg.num_key_value_heads
            cols = Xo.norm(dim=0) * a.o_proj.weight.double().norm(dim=0)
            kept = sorted(torch.topk(cols.reshape(g, rep * d).sum(1), g - round(heads * g)).indices.tolist())
            q = [r for k in kept for r in range(k * rep * d, (k + 1) * rep * d)]
            kv = [r for k in kept for r in range(k * d, (k + 1) * d)]
            qgone = sorted(set(range(g * rep * d)) - set(q))
            b = (a.o_proj.weight.double()[:, qgone] @ Xo.mean(0)[qgone]).float() if bias else None
            a.q_proj = _linear(a.q_proj.weight[q])
            a.k_proj = _linear(a.k_proj.weight[kv])
            a.v_proj = _linear(a.v_proj.weight[kv])
            a.o_proj = _linear(a.o_proj.weight[:, q], b)
            h = layer(h, *rest, **kw)
    return model


@pytest.mark.parametrize("bias", [False, True])
def test_activation_shrink_equals_the_sequential_transcription(bias):
    model = llama()
    ref = flap_transcription(copy.deepcopy(model), calib(), 0.25, 0.5, bias)
    report = llm.shrink(model, calib(), mlp=0.25, heads=0.5, importance="activation",
                        bias_compensation=bias, batch_size=2, progress=False)
    ours = dict(model.model.layers.named_parameters())
    theirs = dict(ref.model.layers.named_parameters())
    for name in set(ours) - set(theirs):  # mlp_bias / attention_bias: zero biases elsewhere
        assert bias and name.endswith("bias") and not ours[name].any(), name
    assert set(theirs) <= set(ours)
    for name, r in theirs.items():
        p = ours[name]
        assert p.shape == r.shape, (name, p.shape, r.shape)
        if name.endswith("bias"):
            torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(p, r), name
    torch.testing.assert_close(logits(model, calib()), logits(ref, calib()), rtol=1e-4, atol=1e-5)
    assert model.config.intermediate_size == 72 and model.config.num_key_value_heads == 2
    assert [b.mlp for b in report.blocks] == [(96, 72)] * 3
    assert [b.kv_groups for b in report.blocks] == [(4, 2)] * 3
    assert all(len(b.compensated) == (2 if bias else 0) for b in report.blocks)


def test_micro_batches_do_not_change_the_selection():
    a, b = llama(), llama()
    llm.shrink(a, calib(), mlp=0.5, heads=0.5, batch_size=1, progress=False)
    llm.shrink(b, calib(), mlp=0.5, heads=0.5, batch_size=6, progress=False)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_taylor_equals_llm_pruner_first_order():
    model = llama()
    ref = copy.deepcopy(model)
    x = calib()
    ref.zero_grad()
    ref(x, labels=x).loss.backward()  # one micro-batch = the whole calibration
    cfg = ref.config
    d, rep = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    mlp_keep, kv_keep = [], []
    for layer in ref.model.layers:
        s = lambda lin: (lin.weight * lin.weight.grad).abs().double()  # noqa: E731
        m, a = layer.mlp, layer.self_attn
        score = s(m.gate_proj).sum(1) + s(m.up_proj).sum(1) + s(m.down_proj).sum(0)
        mlp_keep.append(sorted(torch.topk(score, 48).indices.tolist()))
        kv = (s(a.q_proj).sum(1).reshape(4, rep * d).sum(1) + s(a.k_proj).sum(1).reshape(4, d).sum(1)
              + s(a.v_proj).sum(1).reshape(4, d).sum(1) + s(a.o_proj).sum(0).reshape(4, rep * d).sum(1))
        kv_keep.append(sorted(torch.topk(kv, 2).indices.tolist()))
    before = [(l.mlp.up_proj.weight.detach().clone(), l.self_attn.k_proj.weight.detach().clone())
              for l in model.model.layers]
    llm.shrink(model, x, mlp=0.5, heads=0.5, importance="taylor", batch_size=3, progress=False)
    for i, layer in enumerate(model.model.layers):
        up, k = before[i]
        assert torch.equal(layer.mlp.up_proj.weight, up[mlp_keep[i]])
        rows = [r for g in kv_keep[i] for r in range(g * d, (g + 1) * d)]
        assert torch.equal(layer.self_attn.k_proj.weight, k[rows])


def test_blocks_with_the_smallest_angular_distance_go():
    model = llama(n=4)
    x = calib()
    dist, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        def hook(m, a, out, i=i):
            xin, xout = a[0].reshape(-1, a[0].shape[-1]).double(), out.reshape(-1, out.shape[-1]).double()
            cos = torch.nn.functional.cosine_similarity(xin, xout, dim=-1).clamp(-1, 1)
            dist[i] = float((torch.arccos(cos) / math.pi).mean())
        handles.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        model(x, use_cache=False)
    for h in handles:
        h.remove()
    layers = list(model.model.layers)
    gone = sorted(sorted(dist, key=dist.get)[:2])
    report = llm.shrink(model, x, blocks=2, batch_size=4, progress=False)
    assert report.removed_blocks == gone
    for b in report.blocks:
        assert b.distance == pytest.approx(dist[b.index], rel=1e-9, abs=1e-12)
    assert list(model.model.layers) == [l for i, l in enumerate(layers) if i not in gone]
    assert [l.self_attn.layer_idx for l in model.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 2


def test_report_figures():
    model = llama()
    x = calib()
    report = llm.shrink(model, x, mlp=0.5, heads=0.25, blocks=1, progress=False)
    with torch.no_grad():
        loss = float(model(x, labels=x).loss)
    assert report.loss_after == pytest.approx(loss, rel=1e-6)
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.forward_s_before > 0 and report.forward_s_after > 0
    assert report.config_changes["num_hidden_layers"] == (3, 2)
    text = str(report)
    for word in ("removed", "params:", "MACs", "forward", "calibration loss", "96 -> 48"):
        assert word in text, word


# ---------------------------------------------------------------------------
# Bad input and rollback: the model is left exactly as it was
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw,error,match", [
    (dict(mlp=1.0), ValueError, r"mlp=1\.0"),
    (dict(mlp=-0.1), ValueError, "mlp"),
    (dict(heads=1.5), ValueError, "heads"),
    (dict(mlp="half"), TypeError, "mlp"),
    (dict(heads=0.9), ValueError, r"heads=0\.9 would remove all 4"),
    (dict(mlp=0.999), ValueError, r"mlp=0\.999 would remove all 96"),
    (dict(blocks=3), ValueError, r"blocks=3 must be smaller than the number of blocks \(3\)"),
    (dict(blocks=-1), ValueError, "blocks"),
    (dict(blocks=1.0), TypeError, "blocks"),
    (dict(importance="fisher"), ValueError, "importance"),
    (dict(mlp=0.5, round_to=0), ValueError, "round_to"),
    (dict(mlp=0.5, batch_size=0), ValueError, "batch_size"),
    (dict(bias_compensation=True), ValueError, "bias_compensation"),
    (dict(mlp=0.5, calibration=[]), ValueError, "calibration"),
    (dict(mlp=0.5, calibration="text"), TypeError, "calibration"),
])
def test_bad_input_changes_nothing(kw, error, match):
    model = llama()
    before = state(model)
    kw = dict(kw)
    x = kw.pop("calibration", calib())
    with pytest.raises(error, match=match):
        llm.shrink(model, x, progress=False, **kw)
    assert_same_state(before, state(model))


def test_no_blocks_and_meta_models_are_refused():
    with pytest.raises(ValueError, match="model: could not find the decoder blocks"):
        llm.shrink(nn.Sequential(nn.Linear(4, 4)), calib(), mlp=0.5)
    with torch.device("meta"):
        meta = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                num_hidden_layers=2, num_attention_heads=8,
                                                num_key_value_heads=4))
    with pytest.raises(ValueError, match="model: .*meta device"):
        llm.shrink(meta, calib(), mlp=0.5)


def test_configs_that_cannot_state_the_result_are_refused_up_front():
    model = build("mistral")
    before = state(model)
    with pytest.raises(ConfigError, match=r"bias_compensation=True.*down_proj\.bias.*no field"):
        llm.shrink(model, calib(), mlp=0.5, bias_compensation=True, progress=False)
    assert_same_state(before, state(model))
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4,
                                          n_positions=32, scale_attn_by_inverse_layer_idx=True))
    before = state(gpt2)
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        llm.shrink(gpt2, calib(), mlp=0.5, blocks=1, progress=False)
    assert_same_state(before, state(gpt2))


def test_an_unsupported_model_type_is_refused_naming_it():
    _quiet()
    torch.manual_seed(0)
    model = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=32)).eval()
    before = state(model)
    for kw in (dict(mlp=0.5), dict(blocks=1)):
        with pytest.raises(ConfigError, match="gpt_neox"):
            llm.shrink(model, calib(), progress=False, **kw)
        assert_same_state(before, state(model))


def test_a_failure_mid_walk_rolls_everything_back(monkeypatch):
    import fastprune.llm.shrinking as shrink_mod

    model = llama()
    before = state(model)
    real = shrink_mod.prune_channels
    calls = []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 3:  # 1: the meta twin's check, 2: the first block, 3: the second
            raise RuntimeError("simulated failure in the second block")
        return real(*a, **kw)

    monkeypatch.setattr(shrink_mod, "prune_channels", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        llm.shrink(model, calib(), mlp=0.5, heads=0.5, blocks=1, bias_compensation=True,
                   progress=False)
    assert len(calls) == 3  # the block removal and the first block's cut had happened
    assert_same_state(before, state(model))
    assert [l.self_attn.layer_idx for l in model.model.layers] == [0, 1, 2]
    assert all(l.mlp.down_proj.bias is None for l in model.model.layers)
    monkeypatch.undo()  # and the model still shrinks afterwards
    llm.shrink(model, calib(), mlp=0.5, progress=False)
    assert model.config.intermediate_size == 48
