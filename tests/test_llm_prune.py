"""fastprune.llm.prune against plain-torch transcriptions of the papers, on tiny models."""
import math

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import fastprune
import fastprune.llm as llm
from fastprune.llm.reference import (
    keep_nm,
    keep_smallest_pruned_per_row,
    prune_block_by_block,
    sparsegpt_layer,
    wanda_layer,
)
from helpers import assert_snapshot_equal, module_snapshot

transformers = pytest.importorskip("transformers")

VOCAB = 64


def tiny_llama(seed=0, dtype=torch.float32, **overrides):
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).to(dtype).eval()


def clone(model):
    other = type(model)(model.config).to(next(model.parameters()).dtype).eval()
    other.load_state_dict(model.state_dict())
    return other


def calib(n=4, seqlen=16, seed=1):
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]


# ----------------------------------------------------------------------------
# Transcriptions of the papers (plain torch, no fastprune)
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# Against the transcriptions
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_magnitude_is_per_row_magnitude(one_thread, pattern):
    model = tiny_llama()
    ref = clone(model)
    report = llm.prune(model, None, method="magnitude", sparsity=0.5, pattern=pattern, progress=False)
    nm = llm.parse_pattern(pattern)
    for (name, m), (_, r), mask_name in zip(linears(model), linears(ref), report.masks.names):
        keep = keep_nm(r.weight.abs(), *nm) if nm else keep_smallest_pruned_per_row(r.weight.abs(), m.in_features // 2)
        assert mask_name == name + ".weight"
        assert torch.equal(report.masks.mask(mask_name).reshape(keep.shape), keep), name
        assert torch.equal(m.weight, r.weight * keep)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.3), ("2:4", 0.5), ("4:8", 0.5)])
def test_wanda_equals_transcription(one_thread, pattern, sparsity):
    model = tiny_llama()
    ref = clone(model)
    ids = calib()
    llm.prune(model, ids, method="wanda", sparsity=sparsity, pattern=pattern, progress=False)
    prune_block_by_block(ref, ids, "norms", wanda_layer(sparsity, llm.parse_pattern(pattern)))
    for (name, m), (_, r) in zip(linears(model), linears(ref)):
        assert torch.equal(m.weight == 0, r.weight == 0), name
        assert torch.equal(m.weight, r.weight), name


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_equals_transcription(one_thread, pattern):
    # blocksize 16 < in_features: several column blocks and the lazy updates between them.
    model = tiny_llama()
    ref = clone(model)
    ids = calib()
    nm = llm.parse_pattern(pattern)
    llm.prune(model, ids, method="sparsegpt", sparsity=0.5, pattern=pattern, blocksize=16, progress=False)
    prune_block_by_block(ref, ids, "hessian", sparsegpt_layer(0.5, nm, blocksize=16))
    for (name, m), (_, r) in zip(linears(model), linears(ref)):
        assert torch.equal(m.weight == 0, r.weight == 0), name
        torch.testing.assert_close(m.weight, r.weight, rtol=1e-4, atol=1e-5)


def test_sparsegpt_reconstructs_better_than_magnitude(one_thread):
    ids = calib(8)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        # Magnitude measures errors only when asked (otherwise it runs no forward pass).
        report = llm.prune(tiny_llama(), ids, method=method, sparsity=0.5, progress=False, measure_errors=True)
        errors[method] = {l.name: l.error for l in report.layers}
    first_block = [n for n in errors["magnitude"] if n.startswith("model.layers.0.")]
    # Layers whose inputs are the (identical) dense block inputs: a like-for-like comparison.
    for name in first_block:
        if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            assert errors["sparsegpt"][name] < errors["magnitude"][name], name
    mean = {k: sum(v.values()) / len(v) for k, v in errors.items()}
    assert mean["sparsegpt"] < mean["magnitude"]
    assert mean["wanda"] < mean["magnitude"]


# ----------------------------------------------------------------------------
# Patterns and counts
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_exact_counts(one_thread, method):
    ids = calib()
    model = tiny_llama()
    llm.prune(model, ids, method=method, sparsity=0.25, progress=False)
    for name, m in linears(model):
        zeros_per_row = (m.weight == 0).sum(dim=1)
        if method == "sparsegpt":  # exact per column block of 128 (one block here)
            assert int(zeros_per_row.sum()) == round(m.weight.numel() * 0.25), name
        else:
            assert bool((zeros_per_row == round(m.in_features * 0.25)).all()), name
    for pattern in ("2:4", "4:8", "1:4"):
        n, mm = llm.parse_pattern(pattern)
        model = tiny_llama()
        llm.prune(model, ids, method=method, sparsity=n / mm, pattern=pattern, progress=False)
        for name, m in linears(model):
            groups = (m.weight == 0).reshape(-1, mm).sum(dim=1)
            assert bool((groups == n).all()), (name, pattern)


def test_layer_sparsity_dict(one_thread):
    model = tiny_llama()
    report = llm.prune(model, calib(), method="wanda", sparsity=0.5, progress=False,
                       layer_sparsity={1: 0.25, "model.layers.0.mlp.down_proj": 0.75})
    got = {l.name: l.sparsity for l in report.layers}
    assert got["model.layers.0.mlp.down_proj"] == 0.75
    assert got["model.layers.0.self_attn.q_proj"] == 0.5
    assert all(v == 0.25 for k, v in got.items() if k.startswith("model.layers.1."))


def test_owl_targets_average_exactly(one_thread):
    model = tiny_llama(num_hidden_layers=4)
    report = llm.prune(model, calib(), method="wanda", sparsity=0.7, layer_sparsity="owl", progress=False,
                       owl_lambda=0.08, owl_m=5)
    targets = [b.target for b in report.blocks]
    assert abs(sum(targets) / len(targets) - 0.7) < 1e-12  # equal blocks: the plain mean
    assert max(targets) - min(targets) == pytest.approx(0.16)
    for l in report.layers:
        t = report.blocks[l.block].target
        assert l.sparsity == round(l.shape[1] * t) / l.shape[1]


def test_owl_formula_matches_paper():
    # The paper's formula (equal-size blocks): scale LOD to [0, 2*lambda], shift to mean 1 - s.
    ratios = [0.031, 0.012, 0.054, 0.02]
    lam, s = 0.08, 0.7
    r = torch.tensor(ratios, dtype=torch.float64)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    density = r - r.mean() + (1 - s)
    expected = (1 - density).tolist()
    got = llm.owl_sparsities(ratios, [100] * 4, s, lam)
    assert got == pytest.approx(expected, abs=1e-12)
    # Unequal blocks: the parameter-weighted mean is the target.
    params = [100, 300, 50, 50]
    got = llm.owl_sparsities(ratios, params, s, lam)
    assert sum(g * p for g, p in zip(got, params)) / sum(params) == pytest.approx(s, abs=1e-12)


def test_owl_outlier_ratio_definition():
    a = torch.tensor([[1.0, 1.0, 1.0, 10.0]])
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    # mean over both = 17/8; threshold 2 * mean = 4.25: one outlier in 8.
    assert llm.outlier_ratio([a, b], 2.0) == 1 / 8


# ----------------------------------------------------------------------------
# Calibration with padding
# ----------------------------------------------------------------------------


def test_padding_is_left_out(one_thread):
    model = tiny_llama(dtype=torch.float64)
    a, b = calib(1, 10, seed=3), calib(1, 16, seed=4)
    padded = torch.cat([torch.cat([a, calib(1, 6, seed=5)], dim=1), b])  # right padding with junk ids
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, 10:] = 0
    m1, m2, m3 = clone(model), clone(model), clone(model)
    llm.prune(m1, [{"input_ids": padded, "attention_mask": mask}], method="wanda", progress=False)
    llm.prune(m2, [a, b], method="wanda", progress=False)
    llm.prune(m3, [padded], method="wanda", progress=False)
    same = all(torch.equal(x.weight, y.weight) for (_, x), (_, y) in zip(linears(m1), linears(m2)))
    assert same, "padded calibration must equal the unpadded sequences"
    differs = any(not torch.equal(x.weight, y.weight) for (_, x), (_, y) in zip(linears(m1), linears(m3)))
    assert differs, "the junk padding tokens should matter when not masked"


# ----------------------------------------------------------------------------
# Reparametrisation and MaskSet
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_reparam_interop(one_thread, method):
    ids = calib()
    model = tiny_llama()
    inplace = clone(model)
    dense = clone(model)
    report = llm.prune(inplace, ids, method=method, progress=False)
    r2 = llm.prune(model, ids, method=method, mode="reparam", progress=False)
    assert r2.masks is None
    assert fastprune.is_pruned(model) and torch_prune.is_pruned(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, inplace(ids).logits)
    for (name, m), (_, mi), (_, md), mname in zip(linears(model), linears(inplace), linears(dense), report.masks.names):
        assert torch.equal(m.weight_mask.bool(), report.masks.mask(mname).reshape(m.weight.shape))
        if method == "wanda":
            assert torch.equal(m.weight_orig, md.weight)  # torch-style: the original stays
    for i, (name, m) in enumerate(linears(model)):
        (fastprune.remove if i % 2 else torch_prune.remove)(m, "weight")
    assert not fastprune.is_pruned(model)
    for (_, m), (_, mi) in zip(linears(model), linears(inplace)):
        assert torch.equal(m.weight, mi.weight)


def test_maskset_keeps_zeros(one_thread):
    model = tiny_llama()
    report = llm.prune(model, calib(), method="wanda", progress=False)
    assert report.masks.sparsity() == pytest.approx(0.5)
    with torch.no_grad():
        for _, m in linears(model):
            m.weight.add_(1.0)
    report.masks.apply_()
    assert report.masks.sparsity() == pytest.approx(0.5)
    for _, m in linears(model):
        assert float((m.weight == 0).float().mean()) == 0.5


def test_report_table(one_thread):
    report = llm.prune(tiny_llama(), calib(), method="wanda", progress=False)
    text = str(report)
    assert "model.layers.1.mlp.down_proj" in text and "rel. error" in text
    assert len(report.blocks) == 2 and all(b.seconds >= 0 for b in report.blocks)
    assert all(0 <= l.error < 1 for l in report.layers)


# ----------------------------------------------------------------------------
# Other architectures
# ----------------------------------------------------------------------------


def _arch(name):
    t = transformers
    if name == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    if name == "opt":
        return t.OPTForCausalLM(t.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64,
                                            word_embed_proj_dim=32))
    if name == "mistral":
        return t.MistralForCausalLM(t.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=2, num_attention_heads=4,
                                                    num_key_value_heads=2, max_position_embeddings=64))
    return t.Qwen2ForCausalLM(t.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, max_position_embeddings=64))


@pytest.mark.parametrize("arch", ["gpt2", "opt", "mistral", "qwen2"])
def test_other_architectures(one_thread, arch):
    model = _arch(arch).eval()
    ids = calib()
    with torch.no_grad():
        before = model(ids).logits
    emb_before = model.get_input_embeddings().weight.detach().clone()
    report = llm.prune(model, ids, method="wanda", sparsity=0.5, pattern="2:4", progress=False)
    assert len(report.blocks) == 2 and len(report.layers) >= 8
    for l in report.layers:
        assert l.sparsity == 0.5
    assert torch.equal(model.get_input_embeddings().weight, emb_before)  # embeddings stay dense
    with torch.no_grad():
        after = model(ids).logits
    assert torch.isfinite(after).all() and not torch.equal(before, after)


def test_blocks_argument(one_thread):
    model = tiny_llama()
    report = llm.prune(model, calib(), method="wanda", blocks=[model.model.layers[1]], progress=False)
    assert [l.name.split(".")[2] for l in report.layers] == ["1"] * 7
    assert bool((model.model.layers[0].mlp.up_proj.weight != 0).all())
    report = llm.prune(clone(model), calib(), method="magnitude", blocks="model.layers", progress=False)
    assert len(report.blocks) == 2


# ----------------------------------------------------------------------------
# Bad input: a clear error naming the argument, the model unchanged
# ----------------------------------------------------------------------------


class NoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.lin = nn.Linear(8, 8)

    def forward(self, ids):
        return self.lin(self.emb(ids))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(calibration=torch.empty(0, 16, dtype=torch.long)), ValueError, "calibration"),
        (dict(calibration=[]), ValueError, "calibration is empty"),
        (dict(calibration=None), ValueError, "calibration"),
        (dict(calibration=torch.randn(2, 4)), TypeError, "calibration"),
        (dict(sparsity=1.0), ValueError, "sparsity"),
        (dict(sparsity=-0.1), ValueError, "sparsity"),
        (dict(sparsity="half"), TypeError, "sparsity"),
        (dict(pattern="3:6", sparsity=0.5, method="magnitude"), ValueError, "does not divide"),
        (dict(pattern="4:4", sparsity=1 - 1e-9), ValueError, "pattern"),
        (dict(pattern="5:4"), ValueError, "pattern"),
        (dict(pattern="2-4"), ValueError, "pattern"),
        (dict(pattern="2:4", sparsity=0.6), ValueError, "sparsity"),
        (dict(method="obs"), ValueError, "method"),
        (dict(mode="lean"), ValueError, "mode"),
        (dict(blocks="model.blocks"), ValueError, "blocks"),
        (dict(layer_sparsity="owl", pattern="2:4"), ValueError, "layer_sparsity"),
        (dict(layer_sparsity={7: 0.5}), IndexError, "layer_sparsity"),
        (dict(layer_sparsity={"nope": 0.5}), ValueError, "layer_sparsity"),
        (dict(layer_sparsity={0: 1.5}), ValueError, "layer_sparsity"),
        (dict(calibration=[(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4))]), ValueError, "attention mask"),
    ],
)
def test_bad_input_leaves_model_unchanged(kwargs, exc, match):
    model = tiny_llama()
    kwargs = dict(kwargs)
    ids = kwargs.pop("calibration", calib())
    before = module_snapshot(model)
    with pytest.raises(exc, match=match):
        llm.prune(model, ids, progress=False, **kwargs)
    assert_snapshot_equal(before, module_snapshot(model))
    assert not fastprune.is_pruned(model)


def test_blocks_not_found():
    model = NoBlocks()
    before = module_snapshot(model)
    with pytest.raises(ValueError, match="blocks"):
        llm.prune(model, calib(), progress=False)
    assert_snapshot_equal(before, module_snapshot(model))


def test_offload_and_device_arguments(one_thread):
    ids = calib()
    a, b = tiny_llama(), tiny_llama()
    llm.prune(a, ids, method="sparsegpt", device="cpu", offload=True, progress=False)
    llm.prune(b, ids, method="sparsegpt", device=torch.device("cpu"), offload=False, progress=False)
    for (_, x), (_, y) in zip(linears(a), linears(b)):
        assert torch.equal(x.weight, y.weight)
    with pytest.raises(ValueError, match="device"):
        llm.prune(tiny_llama(), ids, device="not-a-device", progress=False)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bfloat16_model(one_thread, method):
    model = tiny_llama(dtype=torch.bfloat16)
    report = llm.prune(model, calib(), method=method, sparsity=0.5, pattern="2:4", progress=False)
    for name, m in linears(model):
        assert m.weight.dtype == torch.bfloat16
        assert bool(((m.weight == 0).reshape(-1, 4).sum(dim=1) >= 2).all()), name
    assert all(math.isfinite(l.error) for l in report.layers)


def test_packing_matches_the_ops_format():
    from fastprune.llm.api import _pack

    for n in (1, 7, 8, 9, 64, 1001):
        keep = torch.rand(n) < 0.5
        assert torch.equal(_pack(keep), fastprune.ops.pack_mask(keep))
    keep = (torch.rand(5, 12) < 0.5).t()  # non-contiguous
    assert torch.equal(_pack(keep), fastprune.ops.pack_mask(keep))


# ----------------------------------------------------------------------------
# Embeddings and LM head: dense unless asked
# ----------------------------------------------------------------------------


def _outside(model):
    return {"model.embed_tokens": model.model.embed_tokens, "lm_head": model.lm_head}


def test_embeddings_and_head_dense_by_default(one_thread):
    model = tiny_llama()
    before = {k: m.weight.detach().clone() for k, m in _outside(model).items()}
    report = llm.prune(model, calib(), method="wanda", progress=False)
    for k, m in _outside(model).items():
        assert torch.equal(m.weight, before[k]), k
    assert all(l.block is not None for l in report.layers)
    assert not any(n.startswith(("model.embed_tokens", "lm_head")) for n in report.masks.names)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_embeddings_and_head_when_asked(one_thread, pattern):
    model = tiny_llama()
    ref = clone(model)
    ids = calib()
    report = llm.prune(model, ids, method="wanda", sparsity=0.5, pattern=pattern, progress=False,
                       prune_embeddings=True, prune_lm_head=True)
    nm = llm.parse_pattern(pattern)

    def magnitude(w):
        return keep_nm(w.abs(), *nm) if nm else keep_smallest_pruned_per_row(w.abs(), w.shape[1] // 2)

    # The transcription: embeddings by magnitude per row first, then the blocks on
    # the pruned embeddings, then the head.
    with torch.no_grad():
        ref.model.embed_tokens.weight.mul_(magnitude(ref.model.embed_tokens.weight))
        prune_block_by_block(ref, ids, "norms", wanda_layer(0.5, nm))
        keep_head = magnitude(ref.lm_head.weight)
        ref.lm_head.weight.mul_(keep_head)
    for (name, m), (_, r) in zip(linears(model), linears(ref)):
        assert torch.equal(m.weight, r.weight), name
    for name, m in _outside(model).items():
        r = _outside(ref)[name]
        assert torch.equal(m.weight, r.weight), name
        per_row = (m.weight == 0).sum(dim=1)
        assert bool((per_row == m.weight.shape[1] // 2).all()), name
        if nm:
            assert bool(((m.weight == 0).reshape(-1, 4).sum(dim=1) == 2).all()), name
        assert torch.equal(report.masks.mask(name + ".weight").reshape(m.weight.shape), m.weight != 0)
    names = report.masks.names
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    outside = [l for l in report.layers if l.block is None]
    assert [l.name for l in outside] == ["model.embed_tokens", "lm_head"]
    assert all(l.sparsity == 0.5 for l in outside)
    assert "lm_head" in report.table()


def test_embeddings_and_head_reparam(one_thread):
    model = tiny_llama()
    dense = clone(model)
    inplace = clone(model)
    ids = calib()
    report = llm.prune(inplace, ids, method="magnitude", sparsity=0.25, progress=False,
                       prune_embeddings=True, prune_lm_head=True)
    llm.prune(model, ids, method="magnitude", sparsity=0.25, mode="reparam", progress=False,
              prune_embeddings=True, prune_lm_head=True,
              layer_sparsity={"lm_head": 0.25})
    for name, m in _outside(model).items():
        assert torch_prune.is_pruned(m) and hasattr(m, "weight_mask"), name
        assert torch.equal(m.weight_orig, _outside(dense)[name].weight), name
        assert torch.equal(m.weight_mask.bool(), report.masks.mask(name + ".weight").reshape(m.weight.shape))
        fastprune.remove(m, "weight")
        assert torch.equal(m.weight, _outside(inplace)[name].weight), name


def test_embeddings_sparsity_by_name(one_thread):
    model = tiny_llama()
    report = llm.prune(model, None, method="magnitude", sparsity=0.5, progress=False, prune_embeddings=True,
                       layer_sparsity={"model.embed_tokens": 0.75})
    got = {l.name: l.sparsity for l in report.layers}
    assert got["model.embed_tokens"] == 0.75 and got["model.layers.0.mlp.up_proj"] == 0.5
    assert torch.equal(model.lm_head.weight != 0, torch.ones_like(model.lm_head.weight, dtype=torch.bool))


def test_tied_embeddings(one_thread):
    model = tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for flag in ("prune_lm_head", "prune_embeddings"):
        before = module_snapshot(model)
        with pytest.raises(ValueError, match=f"{flag}: .*tied"):
            llm.prune(model, None, method="magnitude", progress=False, **{flag: True})
        assert_snapshot_equal(before, module_snapshot(model))
    report = llm.prune(model, None, method="magnitude", progress=False, prune_embeddings=True, prune_lm_head=True)
    assert [l.name for l in report.layers if l.block is None] == ["model.embed_tokens"]
    assert float((model.lm_head.weight == 0).float().mean()) == 0.5


class BlocksOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

    def forward(self, ids):
        x = self.emb(ids)
        for layer in self.layers:
            x = layer(x)
        return x


class WideEmbeddings(BlocksOnly):
    """Embeddings of width 12 projected to the blocks' 8: 8:8-friendly blocks, not the embeddings."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 12)
        self.proj = nn.Linear(12, 8)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, ids):
        return self.layers[1](self.layers[0](self.proj(self.emb(ids))))


@pytest.mark.parametrize(
    "make,kwargs,exc,match",
    [
        (tiny_llama, dict(prune_embeddings=1), TypeError, "prune_embeddings"),
        (tiny_llama, dict(prune_lm_head="yes"), TypeError, "prune_lm_head"),
        (WideEmbeddings, dict(prune_embeddings=True, pattern="4:8", sparsity=0.5), ValueError,
         "does not divide the input dimension 12 of emb"),
        (BlocksOnly, dict(prune_embeddings=True), ValueError, "prune_embeddings"),
        (BlocksOnly, dict(prune_lm_head=True), ValueError, "prune_lm_head"),
    ],
)
def test_embeddings_bad_input(make, kwargs, exc, match):
    model = make()
    before = module_snapshot(model)
    with pytest.raises(exc, match=match):
        llm.prune(model, calib(), method="magnitude", progress=False, **kwargs)
    assert_snapshot_equal(before, module_snapshot(model))


def test_owl_equals_transcription(one_thread):
    """OWL end to end against the paper's procedure written out in plain torch: a
    pass over the dense model (each block fed the dense outputs of the one
    before) scoring every weight with Wanda's metric; per block the fraction of
    the block's scores above M times their mean; those ratios scaled to
    [0, 2 lambda] and shifted so that the densities average 1 - s; then Wanda,
    block by block, at each block's sparsity."""
    lam, m_out, s = 0.08, 5.0, 0.7
    model = tiny_llama(num_hidden_layers=4)
    ref = clone(model)
    ids = calib(8)

    # The dense pass: the "pruning" step only records each layer's Wanda metric,
    # so every block is fed the dense outputs of the one before.
    owner = {id(mm): i for i, b in enumerate(ref.model.layers) for mm in b.modules()}
    metrics = {}

    def record(m, sumsq):
        metrics.setdefault(owner[id(m)], []).append((m.weight.abs().float() * sumsq.sqrt().reshape(1, -1)).flatten())

    prune_block_by_block(ref, ids, "norms", record)
    ratios = []
    for i in range(len(ref.model.layers)):
        metric = torch.cat(metrics[i])
        ratios.append(float((metric > m_out * metric.mean()).sum()) / metric.numel())
    assert len(set(ratios)) == len(ratios) and min(ratios) > 0  # a real spread to scale
    r = torch.tensor(ratios, dtype=torch.float64)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    expected = (1 - (r - r.mean() + (1 - s))).tolist()

    report = llm.prune(model, ids, method="wanda", sparsity=s, layer_sparsity="owl", owl_lambda=lam, owl_m=m_out,
                       progress=False)
    got = [b.target for b in report.blocks]
    assert got == pytest.approx(expected, abs=1e-12)
    assert sum(got) / len(got) == pytest.approx(s, abs=1e-12)

    # And the pruning that follows is Wanda at those per-block sparsities.
    prune_block_by_block(ref, ids, "norms", lambda m, sumsq: wanda_layer(expected[owner[id(m)]])(m, sumsq))
    for (name, a), (_, b) in zip(linears(model), linears(ref)):
        assert torch.equal(a.weight, b.weight), name
