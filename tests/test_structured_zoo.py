"""prune_channels on randomly initialised transformers models (no downloads).

Each model is pruned by 30% of its channel groups; it must still run with the
same output shape, train (backward reaches every weight with matching
shapes), lose at least 15% of its parameters and survive torch.save/load.
A ~1B-parameter Llama-shaped model on the meta device checks that graphs of
that size build and plan (timings are recorded by the benchmark, not here).
"""
import io

import pytest
import torch

import fastprune

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_thread")


def _images():
    return (torch.randn(2, 3, 32, 32),)


def _tokens(vocab=96):
    return (torch.randint(0, vocab, (2, 9)),)


def make(name):
    T = transformers
    if name == "resnet":
        cfg = T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)
        return T.ResNetForImageClassification(cfg), _images()
    if name == "convnext":
        cfg = T.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)
        return T.ConvNextForImageClassification(cfg), _images()
    if name == "mobilenet_v2":
        cfg = T.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=5)
        return T.MobileNetV2ForImageClassification(cfg), _images()
    if name == "vit":
        cfg = T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_labels=5)
        return T.ViTForImageClassification(cfg), _images()
    if name == "bert":
        cfg = T.BertConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=32, num_labels=3)
        return T.BertForSequenceClassification(cfg), _tokens()
    if name == "llama_gqa":
        cfg = T.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32)
        return T.LlamaForCausalLM(cfg), _tokens()
    if name == "gpt2":  # fused q/k/v in one Conv1D, split into three
        cfg = T.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                           bos_token_id=0, eos_token_id=0)
        return T.GPT2LMHeadModel(cfg), _tokens()
    raise KeyError(name)


def logits(model, inputs):
    return model(*inputs).logits


@pytest.mark.parametrize("name", ["resnet", "convnext", "mobilenet_v2", "vit", "bert", "llama_gqa",
                                  "gpt2"])
def test_zoo_prune_train_save_load(name):
    torch.manual_seed(0)
    model, inputs = make(name)
    model.eval()
    with torch.no_grad():
        before = logits(model, inputs)
    report = fastprune.prune_channels(model, inputs, 0.3)
    assert report.param_reduction >= 0.15, str(report)
    assert report.macs_after < report.macs_before
    assert sum(p.numel() for p in model.parameters()) == report.params_after
    with torch.no_grad():
        after = logits(model, inputs)
    assert after.shape == before.shape
    assert torch.isfinite(after).all()

    model.train()
    logits(model, inputs).float().pow(2).mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            assert p.grad.shape == p.shape, pname
    assert sum(p.grad is not None for p in model.parameters()) > 0
    model.zero_grad()

    model.eval()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), rtol=0, atol=0)


def test_llama_gqa_keeps_query_groups_consistent():
    torch.manual_seed(0)
    model, inputs = make("llama_gqa")
    fastprune.prune_channels(model, inputs, 0.5)
    for layer in model.model.layers:
        attn = layer.self_attn
        q_heads = attn.q_proj.out_features // attn.head_dim
        kv_heads = attn.k_proj.out_features // attn.head_dim
        assert kv_heads == 1 and q_heads == 4  # one of two key/value groups, with its 4 query heads
        assert q_heads // kv_heads == attn.num_key_value_groups
        assert attn.v_proj.out_features == attn.k_proj.out_features
        assert attn.o_proj.in_features == attn.q_proj.out_features


def test_bert_head_attributes_follow():
    torch.manual_seed(0)
    model, inputs = make("bert")
    fastprune.prune_channels(model, inputs, 0.5)
    sa = model.bert.encoder.layer[0].attention.self
    assert sa.num_attention_heads == 2
    assert sa.all_head_size == sa.query.out_features == 2 * sa.attention_head_size


def test_llama_1b_on_meta_device_builds_and_plans():
    T = transformers
    with torch.device("meta"):
        cfg = T.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192,
                            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                            tie_word_embeddings=True)
        model = T.LlamaForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) > 1.0e9
    ids = torch.zeros(1, 16, dtype=torch.long, device="meta")
    dg = fastprune.DependencyGraph(model, (ids,))
    groups = dg.groups()
    assert sum(g.n_prunable for g in groups) == 2048 + 16 * (8192 + 8)
    plan = dg.plan(model.model.layers[5].self_attn.k_proj, [0])
    assert plan.n_params_removed == 4 * 64 * 2048 * 2 + 2 * 64 * 2048  # q+o rows/cols, k+v rows
    plan.exec()
    assert model.model.layers[5].self_attn.q_proj.weight.shape == (2048 - 256, 2048)
    assert model.lm_head.weight is model.model.embed_tokens.weight


EXACT_TARGETS = {
    "resnet": ("resnet.encoder.stages.0.layers.0.layer.0.convolution", [1, 2]),
    "convnext": ("convnext.encoder.stages.1.layers.0.pwconv1", [0, 7, 50]),
    "mobilenet_v2": ("mobilenet_v2.layer.1.expand_1x1.convolution", [3]),
    "vit": ("vit.layers.1.attention.q_proj", [9]),
    "bert": ("bert.encoder.layer.0.attention.self.query", [0]),
    "llama_gqa": ("model.layers.1.self_attn.q_proj", [17]),
    "gpt2": ("transformer.h.1.attn.c_attn", [40]),  # key channel 8: head 1 of q, k and v
}


@pytest.mark.parametrize("name", sorted(EXACT_TARGETS))
def test_zoo_dead_channels_removed_exactly(name):
    """Dead channels / heads inside real architectures go without changing the output."""
    from test_structured_graph import kill_readers

    torch.manual_seed(0)
    model, inputs = make(name)
    model.eval()
    path, idxs = EXACT_TARGETS[name]
    dg = fastprune.DependencyGraph(model, inputs)
    plan = dg.plan(model.get_submodule(path), idxs)
    kill_readers(plan)
    with torch.no_grad():
        ref = logits(model, inputs)
    plan.exec()
    with torch.no_grad():
        out = logits(model, inputs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert plan.n_params_removed > 0
