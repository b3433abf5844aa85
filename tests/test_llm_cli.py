"""python -m fastprune.llm end to end on a tiny checkpoint written with save_pretrained."""
import os
import subprocess
import sys

import pytest
import torch

from fastprune.llm.__main__ import main
from helpers import load_example

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny byte-level Llama (no download: the tokenizer is built here) and a text corpus."""
    folder = tmp_path_factory.mktemp("ckpt")
    example = load_example("train_tiny_llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder / "model")
    example.byte_tokenizer().save_pretrained(folder / "model")
    texts = folder / "texts"
    texts.mkdir()
    with open(os.path.join(ROOT, "fastprune", "llm", "api.py"), encoding="utf-8") as fh:
        source = fh.read()
    (texts / "a.txt").write_text(source[: len(source) // 2], encoding="utf-8")
    (texts / "b.txt").write_text(source[len(source) // 2:], encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    """A tiny GPT-2 (learned positions: 32 of them; input embeddings tied to the LM head) with the byte tokenizer."""
    folder = tmp_path_factory.mktemp("gpt2") / "model"
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                 bos_token_id=10, eos_token_id=10, pad_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    load_example("train_tiny_llama").byte_tokenizer().save_pretrained(folder)
    return folder


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fastprune.llm", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_cli_end_to_end(checkpoint):
    out = checkpoint / "pruned"
    r = run_cli("--model", str(checkpoint / "model"), "--method", "wanda", "--sparsity", "0.5", "--pattern", "2:4",
                "--calibration", str(checkpoint / "texts"), "--nsamples", "4", "--seqlen", "32",
                "--output", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "model.layers.1.mlp.down_proj" in r.stdout and "sparsity 0.5000" in r.stdout
    model = transformers.LlamaForCausalLM.from_pretrained(out)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ".layers." in name:
            groups = (m.weight == 0).reshape(-1, 4).sum(dim=1)
            assert bool((groups == 2).all()), name
    assert bool((model.lm_head.weight != 0).all())
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("abc")["input_ids"] == [97, 98, 99]


def test_cli_owl_and_sparsegpt(checkpoint, capsys):
    # In-process (the subprocess run above covers the module entry point).
    out = checkpoint / "owl"
    code = main(["--model", str(checkpoint / "model"), "--method", "sparsegpt", "--sparsity", "0.7",
                 "--layer-sparsity", "owl", "--calibration", str(checkpoint / "texts" / "a.txt"),
                 "--nsamples", "4", "--seqlen", "32", "--output", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "sparsegpt, unstructured" in capsys.readouterr().out
    model = transformers.LlamaForCausalLM.from_pretrained(out)
    w = torch.cat([m.weight.reshape(-1) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and ".layers." in n])
    assert float((w == 0).float().mean()) == pytest.approx(0.7, abs=0.01)


def test_cli_prune_embeddings_and_head(checkpoint, capsys):
    out = checkpoint / "outside"
    code = main(["--model", str(checkpoint / "model"), "--method", "magnitude", "--sparsity", "0.5",
                 "--prune-embeddings", "--prune-lm-head", "--output", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "model.embed_tokens" in text and "lm_head" in text
    model = transformers.LlamaForCausalLM.from_pretrained(out)
    for w in (model.model.embed_tokens.weight, model.lm_head.weight):
        assert bool(((w == 0).sum(dim=1) == w.shape[1] // 2).all())


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "/nonexistent/model"], "--model"),
        (["--calibration", "/nonexistent/text.txt"], "--calibration"),
        (["--calibration", "EMPTY"], "no readable text"),
        (["--sparsity", "1.5"], "--sparsity"),
        (["--pattern", "4:4"], "--pattern"),
        (["--pattern", "3:6"], "does not divide"),
        (["--method", "wanda", "--no-calibration"], "--calibration is required"),
        (["--seqlen", "100000"], "fewer than seqlen"),
    ],
)
def test_cli_bad_input_is_one_line(checkpoint, args, needle, capfd):
    base = {"--model": str(checkpoint / "model"), "--calibration": str(checkpoint / "texts"),
            "--nsamples": "2", "--seqlen": "16", "--output": str(checkpoint / "bad")}
    args = list(args)
    if "--no-calibration" in args:
        args.remove("--no-calibration")
        del base["--calibration"]
    for i in range(0, len(args) - 1):
        if args[i] in base:
            base[args[i]] = args[i + 1].replace("EMPTY", str(checkpoint / "empty.txt"))
    rest = [a for i, a in enumerate(args) if a not in base and (i == 0 or args[i - 1] not in base)]
    argv = [x for kv in base.items() for x in kv] + rest
    if "--sparsity" not in argv and "3:6" in argv:
        argv += ["--sparsity", "0.5", "--method", "magnitude"]
    # In-process (a subprocess per case would mostly time imports); capfd sees C-level output too.
    assert main(argv) == 2
    err = capfd.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not os.path.exists(checkpoint / "bad")


def test_cli_tied_head_error_names_the_flags(gpt2_checkpoint, tmp_path, capfd):
    """The error of a refused call names the command's flags, not the Python keywords of llm.prune."""
    out = tmp_path / "tied"
    code = main(["--model", str(gpt2_checkpoint), "--method", "magnitude", "--prune-lm-head",
                 "--output", str(out), "--no-progress"])
    assert code == 2
    lines = [l for l in capfd.readouterr().err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --prune-lm-head:"), lines
    assert "--prune-embeddings" in lines[0] and "prune_embeddings" not in lines[0], lines
    assert not out.exists()


def test_cli_seqlen_defaults_to_the_model_positions(gpt2_checkpoint, checkpoint, tmp_path, capfd):
    """GPT-2 with 32 learned positions: no --seqlen takes 32 (the old default 2048 hit torch's IndexError);
    a longer --seqlen is refused naming the flag and the limit, before anything is written."""
    out = tmp_path / "fits"
    code = main(["--model", str(gpt2_checkpoint), "--method", "wanda", "--calibration", str(checkpoint / "texts"),
                 "--nsamples", "2", "--output", str(out), "--no-progress"])
    assert code == 0, capfd.readouterr().err
    assert (out / "config.json").exists()
    capfd.readouterr()
    code = main(["--model", str(gpt2_checkpoint), "--method", "wanda", "--calibration", str(checkpoint / "texts"),
                 "--nsamples", "2", "--seqlen", "48", "--output", str(tmp_path / "long"), "--no-progress"])
    assert code == 2
    lines = [l for l in capfd.readouterr().err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --seqlen 48 > max_position_embeddings 32"), lines
    assert not (tmp_path / "long").exists()


def test_cli_seqlen_default_is_recorded_from_the_model(gpt2_checkpoint, checkpoint, monkeypatch):
    """The calibration windows have the model's length when --seqlen is not given."""
    import fastprune.llm.__main__ as cli

    seen = []
    real = cli.load_text_calibration

    def spy(path, tokenizer, nsamples, seqlen, seed=0):
        seen.append(seqlen)
        return real(path, tokenizer, nsamples, seqlen, seed)

    monkeypatch.setattr(cli, "load_text_calibration", spy)
    argv = ["--method", "wanda", "--calibration", str(checkpoint / "texts"), "--nsamples", "2", "--no-progress"]
    assert main(["--model", str(gpt2_checkpoint), "--output", str(checkpoint / "g"), *argv]) == 0
    assert main(["--model", str(checkpoint / "model"), "--output", str(checkpoint / "l"), *argv]) == 0
    assert seen == [32, 64]  # GPT-2's n_positions, Llama's max_position_embeddings
