"""prune_channels(..., uniform=True) on transformers models: the config is rewritten so that
save_pretrained / from_pretrained (a local directory, random init, no downloads) rebuild the
pruned architecture with identical outputs."""
import re

import pytest
import torch
from torch import nn

import fastprune
from fastprune.structured import ConfigError, rewrite_config

T = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


def _tokens():
    return (torch.randint(0, 96, (2, 7)),)


def _images():
    return (torch.randn(2, 3, 32, 32),)


# name -> (build, inputs, Auto class, config fields the uniform cut must rewrite)
CASES = {
    # causal LMs: lm_head reads the residual stream, so hidden_size is cut too
    "llama_gqa": (lambda: T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32)),
        _tokens, "AutoModelForCausalLM",
        {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"}),
    "mistral": (lambda: T.MistralForCausalLM(T.MistralConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, head_dim=4, max_position_embeddings=32)),
        _tokens, "AutoModelForCausalLM",
        {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"}),
    # base model: its output is the residual stream, which therefore keeps its width;
    # head_dim is derived from hidden_size / heads unless written, so it is written
    "qwen2": (lambda: T.Qwen2Model(T.Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32)),
        _tokens, "AutoModel",
        {"intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"}),
    # head width = hidden_size / heads in these configs: only the MLP width can change
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
        eos_token_id=0)), _tokens, "AutoModelForCausalLM", {"n_inner"}),
    "bert": (lambda: T.BertModel(T.BertConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32)), _tokens, "AutoModel",
        {"intermediate_size"}),
    "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_labels=5)), _images, "AutoModelForImageClassification",
        {"intermediate_size"}),
}


def _out(model, inputs):
    with torch.no_grad():
        o = model(*inputs)
    logits = getattr(o, "logits", None)
    return logits if logits is not None else o.last_hidden_state


def _layer_sizes(model):
    """name pattern with the layer index replaced -> set of shapes over the layers."""
    sizes = {}
    for name, p in model.named_parameters():
        if re.search(r"\.\d+\.", name):
            sizes.setdefault(re.sub(r"\.\d+\.", ".#.", name), set()).add(tuple(p.shape))
    return sizes


@pytest.mark.parametrize("name", list(CASES))
def test_uniform_prune_reloads_with_from_pretrained(name, tmp_path):
    build, inputs, auto, fields = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    x = inputs()
    before = model.config.to_dict()
    report = fastprune.prune_channels(model, x, 0.25, uniform=True)
    assert set(report.config_changes) == fields, report.config_changes
    for f, (old, new) in report.config_changes.items():
        assert before.get(f) == old and getattr(model.config, f) == new
    assert report.params_after < report.params_before
    # every repeated block has the same shapes
    assert all(len(s) == 1 for s in _layer_sizes(model).values()), _layer_sizes(model)
    expected = _out(model, x)

    model.save_pretrained(tmp_path)
    reloaded = getattr(T, auto).from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert torch.equal(_out(reloaded, x), expected)


def test_uniform_removes_the_same_heads_count_everywhere():
    build, inputs, _, _ = CASES["llama_gqa"]
    torch.manual_seed(1)
    model = build().eval()
    fastprune.prune_channels(model, inputs(), 0.5, uniform=True, global_pruning=True)
    cfg = model.config
    for layer in model.model.layers:
        a = layer.self_attn
        assert a.q_proj.out_features == cfg.num_attention_heads * cfg.head_dim
        assert a.k_proj.out_features == cfg.num_key_value_heads * cfg.head_dim
        assert a.o_proj.in_features == cfg.num_attention_heads * cfg.head_dim
        assert layer.mlp.up_proj.out_features == cfg.intermediate_size
    assert cfg.num_attention_heads // cfg.num_key_value_heads == 2  # query groups kept whole
    assert cfg.head_dim == 8


def test_non_uniform_transformers_pruning_refuses_the_config(tmp_path):
    build, inputs, _, _ = CASES["llama_gqa"]
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():  # make layer 1's MLP clearly weaker so global ranking cuts it more
        model.model.layers[1].mlp.up_proj.weight.mul_(0.01)
    with pytest.warns(UserWarning, match="torch.save"):
        fastprune.prune_channels(model, inputs(), 0.3, global_pruning=True)
    assert len(_layer_sizes(model)["model.layers.#.mlp.up_proj.weight"]) == 2
    saved = model.config.to_dict()
    with pytest.raises(ConfigError, match=r"non-uniformly.*torch\.save"):
        rewrite_config(model)
    assert model.config.to_dict() == saved


def test_rewrite_config_errors():
    with pytest.raises(TypeError, match="transformers config"):
        rewrite_config(nn.Linear(2, 2))
    cfg = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    with pytest.raises(ConfigError, match=r"'resnet'.*torch\.save"):
        rewrite_config(T.ResNetModel(cfg))
    model = CASES["bert"][0]()
    assert rewrite_config(model) == {}  # nothing pruned: nothing to write


def test_rewrite_config_refuses_sizes_the_config_cannot_state():
    # removing a GPT-2 head by hand: the config derives the head width from n_embd / n_head
    torch.manual_seed(0)
    model = CASES["gpt2"][0]().eval()
    x = _tokens()
    dg = fastprune.DependencyGraph(model, x)
    dg.plan(model.transformer.h[0].attn.c_attn, list(range(8)), dim=1).exec()
    dg = fastprune.DependencyGraph(model, x)
    dg.plan(model.transformer.h[1].attn.c_attn, list(range(8)), dim=1).exec()
    with pytest.raises(ConfigError, match="torch.save"):
        rewrite_config(model)


class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
                                    for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def test_uniform_on_a_plain_module_matches_counts_across_blocks():
    torch.manual_seed(0)
    model = _Blocks()
    with torch.no_grad():
        model.blocks[2][0].weight.mul_(0.01)  # the global ranking alone would cut block 2 most
    fastprune.prune_channels(model, torch.randn(4, 8), 0.25, global_pruning=True, uniform=True,
                             ignored_layers=[model.head])
    widths = {b[0].out_features for b in model.blocks}
    assert len(widths) == 1 and widths.pop() < 16


def test_uniform_must_be_bool():
    with pytest.raises(TypeError, match="uniform"):
        fastprune.prune_channels(_Blocks(), torch.randn(2, 8), 0.2, uniform=1)


def test_uniform_with_round_to_keeps_blocks_equal_and_rounded():
    torch.manual_seed(0)
    model = _Blocks()
    with torch.no_grad():
        model.blocks[1][0].weight.mul_(0.01)
    fastprune.prune_channels(model, torch.randn(4, 8), 0.3, global_pruning=True, uniform=True,
                             round_to=4, ignored_layers=[model.head])
    widths = {b[0].out_features for b in model.blocks}
    assert len(widths) == 1
    w = widths.pop()
    assert w % 4 == 0 and w < 16


def test_uniform_reload_with_tied_embeddings_and_a_masked_layer(tmp_path):
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32,
        tie_word_embeddings=True)).eval()
    x = _tokens()
    # one block pruned torch-style (weight_orig / weight_mask) still joins its family
    fastprune.ln_structured(model.model.layers[0].mlp.up_proj, "weight", amount=0.25, n=2, dim=0)
    report = fastprune.prune_channels(model, x, 0.25, uniform=True)
    assert set(report.config_changes) == {"hidden_size", "intermediate_size",
                                          "num_attention_heads", "num_key_value_heads"}
    assert model.lm_head.weight is model.model.embed_tokens.weight
    fastprune.remove(model.model.layers[0].mlp.up_proj, "weight")
    expected = _out(model, x)
    model.save_pretrained(tmp_path)
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_out(reloaded, x), expected)
