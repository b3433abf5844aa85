"""A sparse checkpoint folder of a transformers model opens as that model: save_sparse writes its config
(and generation config) beside the sparse files, load_sparse_pretrained returns the model with every weight."""
import json
import os

import pytest
import torch
import torch.nn.utils.prune as tp

import fastprune as fp
from fastprune.shipping import load_sparse, save_sparse

safetensors = pytest.importorskip("safetensors.torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64
INT_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t):
    return t.contiguous().view(INT_OF[t.element_size()])


def llama(tied=False, dtype=torch.float32):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    model.generation_config.max_new_tokens = 7  # something a default generation config does not say
    return model


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=1, eos_token_id=2)
    return transformers.GPT2LMHeadModel(cfg).eval()


def prune_some(model):
    linears = [(m, "weight") for n, m in model.named_modules() if ".mlp." in n or ".self_attn." in n or ".attn." in n
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2]
    fp.global_unstructured(linears, fp.L1Unstructured, amount=0.6)  # torch-style: weight_orig / weight_mask
    first = next(m for m, _ in linears)
    tp.l1_unstructured(first, "weight", 0.3)  # pruned again, by torch


def assert_same_model(loaded, original, ids):
    ref = fp.shipping.permanent_state_dict(original)
    got = loaded.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(bits(got[k]), bits(ref[k])), k
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, original(ids).logits)


@pytest.mark.parametrize("make", [lambda: llama(), lambda: llama(tied=True), gpt2], ids=["llama", "llama-tied", "gpt2"])
def test_folder_opens_as_the_model(tmp_path, make):
    model = make()
    prune_some(model)
    ids = torch.randint(0, VOCAB, (2, 12))
    written = save_sparse(model, tmp_path / "ckpt")
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(os.path.basename(w) for w in written) == files
    config = json.load(open(tmp_path / "ckpt" / "config.json"))
    assert config["architectures"] == [type(model).__name__]
    assert fp.is_pruned(model)  # saving does not change the model
    loaded = fp.load_sparse_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model) and not loaded.training
    assert_same_model(loaded, model, ids)
    if model.config.tie_word_embeddings:
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


def test_generation_config_and_sharded_folder(tmp_path):
    model = llama()
    fp.sparsify_(model, 0.5)
    save_sparse(model, tmp_path / "sh", max_shard_size="20KB")
    assert "model.safetensors.index.json" in os.listdir(tmp_path / "sh")
    loaded = fp.load_sparse_pretrained(tmp_path / "sh")
    assert loaded.generation_config.max_new_tokens == 7
    ids = torch.randint(0, VOCAB, (1, 5))
    assert torch.equal(loaded.generate(ids, do_sample=False), model.generate(ids, do_sample=False))
    assert_same_model(loaded, model, torch.randint(0, VOCAB, (2, 9)))


def test_bfloat16_model_equals_transformers_own_round_trip(tmp_path):
    """In bf16 the rotary inv_freq of a model converted with .to() differs from a freshly loaded one, so the
    reference is transformers' own dense save_pretrained / from_pretrained of the same pruned model."""
    model = llama(dtype=torch.bfloat16)
    fp.sparsify_(model, 0.5)
    save_sparse(model, tmp_path / "sparse")
    model.save_pretrained(tmp_path / "dense")
    dense = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "dense").eval()
    loaded = fp.load_sparse_pretrained(tmp_path / "sparse")
    assert loaded.dtype == torch.bfloat16
    assert_same_model(loaded, dense, torch.randint(0, VOCAB, (2, 10)))
    assert os.path.getsize(tmp_path / "sparse" / "model.safetensors") < os.path.getsize(
        tmp_path / "dense" / "model.safetensors")


def test_saving_leaves_the_model_and_its_config_unchanged(tmp_path):
    model = llama()
    fp.sparsify_(model, 0.5)
    before = model.config.to_dict()
    save_sparse(model, tmp_path / "c")
    assert model.config.to_dict() == before
    save_sparse(model, tmp_path / "one.safetensors")  # one file: nowhere to put a config
    assert sorted(os.listdir(tmp_path)) == ["c", "one.safetensors"]


def test_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        fp.load_sparse_pretrained(tmp_path / "missing")
    plain = tmp_path / "plain"
    save_sparse({"w": torch.zeros(100)}, plain)
    with pytest.raises(FileNotFoundError, match="config.json"):
        fp.load_sparse_pretrained(plain)
    model = llama()
    save_sparse(model, tmp_path / "m")
    with pytest.raises(TypeError, match="model_class"):
        fp.load_sparse_pretrained(tmp_path / "m", model_class=torch.nn.Linear)
    # weights of another architecture: named, not randomly initialised
    with pytest.raises(ValueError, match="missing") as info:
        fp.load_sparse_pretrained(tmp_path / "m", model_class=transformers.LlamaForSequenceClassification)
    assert "score.weight" in str(info.value)
    # a damaged file is refused as load_sparse refuses it
    raw = bytearray((tmp_path / "m" / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        fp.load_sparse_pretrained(tmp_path / "m")


def test_the_state_dict_is_what_load_sparse_reads(tmp_path):
    model = gpt2()
    fp.sparsify_(model, 0.7)
    save_sparse(model, tmp_path / "g")
    sd = load_sparse(tmp_path / "g")
    loaded = fp.load_sparse_pretrained(tmp_path / "g")
    for k, v in loaded.state_dict().items():
        assert torch.equal(bits(v), bits(sd[k])), k
