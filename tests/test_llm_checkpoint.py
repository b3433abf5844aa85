"""fastprune.llm.prune_checkpoint: streaming a checkpoint folder block by block, against prune() in memory."""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import fastprune.llm as llm
from fastprune.llm.__main__ import main
from fastprune.llm.checkpoint import PROGRESS, WORK_DIR
from fastprune.llm.shards import ShardReader, write_tensors
from helpers import PEAK_RSS, load_example

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402  (a dependency of transformers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 64


def config(arch, layers=3, tied=None, **over):
    t = transformers
    if arch == "llama":
        cfg = t.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    elif arch == "qwen2":
        cfg = t.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    elif arch == "gpt2":
        cfg = t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                           bos_token_id=0, eos_token_id=0)
    else:
        cfg = t.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=layers,
                          num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32)
    if tied is not None:
        cfg.tie_word_embeddings = tied
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def save(cfg, folder, shard=None, seed=0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    return folder


def calib(n=4, seqlen=16, seed=1):
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def tensors(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as h:
                for k in h.keys():
                    out[k] = h.get_tensor(k)
    return out


def digest(folder):
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return out


CASES = [
    # arch, tied, shard, method, options
    ("llama", False, "20KB", "wanda", {}),
    ("llama", True, None, "sparsegpt", dict(pattern="2:4", sparsity=0.5, blocksize=16)),
    ("llama", False, "20KB", "magnitude", dict(prune_embeddings=True, prune_lm_head=True, sparsity=0.25)),
    ("llama", True, "30KB", "wanda", dict(prune_embeddings=True, prune_lm_head=True, batch_size=3)),
    ("llama", False, None, "sparsegpt", dict(layer_sparsity="owl", sparsity=0.6, owl_lambda=0.1)),
    ("qwen2", False, "20KB", "sparsegpt", {}),
    ("gpt2", None, None, "wanda", dict(pattern="4:8", sparsity=0.5)),
    ("gpt2", None, "20KB", "sparsegpt", dict(prune_embeddings=True, prune_lm_head=True)),
    ("opt", None, "20KB", "wanda", {}),
    ("opt", False, None, "magnitude", dict(prune_lm_head=True)),
]


@pytest.mark.parametrize("arch,tied,shard,method,options", CASES,
                         ids=[f"{a}-{'tied' if t or t is None else 'untied'}-{s or 'one-file'}-{m}"
                              + ("-" + "-".join(sorted(o)) if o else "") for a, t, s, m, o in CASES])
def test_streaming_equals_prune_in_memory(one_thread, tmp_path, arch, tied, shard, method, options):
    src = save(config(arch, tied=tied), tmp_path / "src", shard)
    ids = calib(6, 16)
    before = digest(src)

    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    expected = llm.prune(model, ids, method=method, progress=False, **options)
    model.save_pretrained(tmp_path / "ref", **({"max_shard_size": shard} if shard else {}))

    report = llm.prune_checkpoint(src, tmp_path / "dst", ids, method=method, progress=False, **options)

    assert digest(src) == before  # src is only read: same bytes, not even touched
    ref, got = tensors(tmp_path / "ref"), tensors(tmp_path / "dst")
    assert ref.keys() == got.keys()
    for k in ref:
        assert ref[k].dtype == got[k].dtype and torch.equal(ref[k], got[k]), k
    # The destination has the source's layout: same files, same index, and no work folder left.
    files = sorted(os.listdir(tmp_path / "dst"))
    assert files == sorted(os.listdir(src)) and WORK_DIR not in files
    if shard:
        with open(src / "model.safetensors.index.json") as f, open(tmp_path / "dst" / "model.safetensors.index.json") as g:
            assert json.load(f)["weight_map"] == json.load(g)["weight_map"]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst")
    for (n, a), (_, b) in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n
    # The same report, masks aside (they are the zeros written to dst).
    assert report.masks is None
    assert [(l.name, l.block, tuple(l.shape), l.sparsity) for l in report.layers] == \
        [(l.name, l.block, tuple(l.shape), l.sparsity) for l in expected.layers]
    assert [l.error for l in report.layers] == pytest.approx([l.error for l in expected.layers], nan_ok=True)
    assert [b.target for b in report.blocks] == [b.target for b in expected.blocks]


def test_dtype_cast_and_bfloat16(one_thread, tmp_path):
    src = save(config("llama"), tmp_path / "src", "20KB")
    ids = calib()
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    llm.prune(model, ids, method="wanda", progress=False)
    llm.prune_checkpoint(src, tmp_path / "dst", ids, method="wanda", dtype=torch.bfloat16, progress=False)
    got = tensors(tmp_path / "dst")
    for k, v in model.state_dict().items():
        if k in got:
            assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], v), k
    with open(tmp_path / "dst" / "config.json") as f:
        assert json.load(f)["dtype"] == "bfloat16"
    with open(tmp_path / "dst" / "model.safetensors.index.json") as f:
        total = json.load(f)["metadata"]["total_size"]
    assert total == sum(v.numel() * 2 for v in got.values())


# ----------------------------------------------------------------------------
# The safetensors reader and writer
# ----------------------------------------------------------------------------


def test_shards_round_trip_with_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = [("f32", torch.randn(3, 5)), ("bf16", torch.randn(7).bfloat16()), ("f16", torch.randn(2, 2).half()),
               ("f64", torch.randn(4).double()), ("i64", torch.arange(5)), ("u8", torch.arange(6, dtype=torch.uint8)),
               ("bool", torch.tensor([True, False, True])), ("empty", torch.empty(0, 4)),
               ("scalar", torch.tensor(3.5))]
    write_tensors(str(tmp_path / "ours.safetensors"), tensors, {"format": "pt"})
    theirs = load_file(tmp_path / "ours.safetensors")
    save_file(dict(tensors), tmp_path / "theirs.safetensors")
    ours = ShardReader(str(tmp_path / "theirs.safetensors"))
    for name, t in tensors:
        assert torch.equal(theirs[name], t) and theirs[name].dtype == t.dtype, name
        assert torch.equal(ours.read(name), t) and ours.read(name).dtype == t.dtype, name
    assert ShardReader(str(tmp_path / "ours.safetensors")).metadata == {"format": "pt"}


def test_shard_reader_refuses_broken_files(tmp_path):
    good = tmp_path / "good.safetensors"
    write_tensors(str(good), [("a", torch.randn(4, 4)), ("b", torch.randn(8))])
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])

    def broken(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    def with_header(h, tail=raw[8 + n:]):
        text = json.dumps(h).encode()
        return len(text).to_bytes(8, "little") + text + tail

    gap = dict(header, b=dict(header["b"], data_offsets=[header["b"]["data_offsets"][0] + 4,
                                                         header["b"]["data_offsets"][1] + 4]))
    shape = dict(header, a=dict(header["a"], shape=[4, 5]))
    dtype = dict(header, a=dict(header["a"], dtype="C64"))
    cases = [(raw[:5], "shorter than 8 bytes"), (raw[:-3], "the tensors end at byte"),
             ((10 ** 9).to_bytes(8, "little") + raw[8:], "not a safetensors file"),
             (raw[:8] + b"{" * n + raw[8 + n:], "unreadable safetensors header"),
             (with_header(gap, raw[8 + n:] + b"\0" * 4), "gap or overlap"),
             (with_header(shape), "do not hold shape"), (with_header(dtype), "torch cannot hold")]
    for i, (data, match) in enumerate(cases):
        with pytest.raises(ValueError, match=match):
            ShardReader(broken(f"b{i}.safetensors", data))


# ----------------------------------------------------------------------------
# Bad input: a clear error before anything is written
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_src(tmp_path_factory):
    return save(config("llama", layers=2), tmp_path_factory.mktemp("small") / "src", "20KB")


def test_bad_paths(tmp_path, small_src):
    before = digest(small_src)
    ids = calib()
    cases = [
        (tmp_path / "missing", tmp_path / "d1", ValueError, "src: .* is not a folder"),
        (small_src, small_src, ValueError, "src itself"),
        (small_src, small_src / "inside", ValueError, "inside src"),
        (small_src, small_src.parent, ValueError, "contains src"),
        (small_src, small_src / "config.json", ValueError, "inside src"),
        (123, tmp_path / "d2", TypeError, "src must be a path"),
        (small_src, None, TypeError, "dst must be a path"),
    ]
    for src, dst, exc, match in cases:
        with pytest.raises(exc, match=match):
            llm.prune_checkpoint(src, dst, ids, progress=False)
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        llm.prune_checkpoint(tmp_path / "noconfig", tmp_path / "d3", ids, progress=False)
    (tmp_path / "binonly").mkdir()
    (tmp_path / "binonly" / "config.json").write_text((small_src / "config.json").read_text())
    (tmp_path / "binonly" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="only safetensors"):
        llm.prune_checkpoint(tmp_path / "binonly", tmp_path / "d4", ids, progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        llm.prune_checkpoint(small_src, tmp_path / "afile", ids, progress=False)
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    with pytest.raises(ValueError, match="not empty; pass resume=True"):
        llm.prune_checkpoint(small_src, full, ids, progress=False)
    with pytest.raises(ValueError, match="no interrupted run to resume"):
        llm.prune_checkpoint(small_src, full, ids, resume=True, progress=False)
    assert os.listdir(full) == ["something"]
    for name in ("d1", "d2", "d3", "d4"):
        assert not (tmp_path / name).exists()
    assert digest(small_src) == before


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(method="obs"), ValueError, "method"),
        (dict(sparsity=1.5), ValueError, "sparsity"),
        (dict(pattern="3:6", sparsity=0.5), ValueError, "does not divide"),
        (dict(calibration=None), ValueError, "calibration"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(resume="yes"), TypeError, "resume"),
        (dict(dtype=torch.int8), TypeError, "dtype"),
        (dict(device="nowhere"), ValueError, "device"),
        (dict(layer_sparsity={9: 0.5}), IndexError, "layer_sparsity"),
        (dict(blocks="model.nothing"), ValueError, "blocks"),
        (dict(prune_lm_head=True, method="magnitude"), None, None),  # fine: checks the fixture works
    ],
)
def test_bad_options_write_nothing(tmp_path, small_src, kwargs, exc, match):
    kwargs = dict(kwargs)
    ids = kwargs.pop("calibration", calib())
    dst = tmp_path / "dst"
    if exc is None:
        llm.prune_checkpoint(small_src, dst, ids, progress=False, **kwargs)
        assert (dst / "config.json").exists()
        return
    with pytest.raises(exc, match=match):
        llm.prune_checkpoint(small_src, dst, ids, progress=False, **kwargs)
    assert not dst.exists()


def test_a_failure_before_the_first_block_leaves_no_folder(tmp_path, small_src):
    ids = torch.full((2, 8), VOCAB + 5)  # ids outside the vocabulary: refused before anything is read or written
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.prune_checkpoint(small_src, tmp_path / "dst", ids, progress=False)
    assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------
# Peak memory: one block, not the checkpoint
# ----------------------------------------------------------------------------


MEMORY_SCRIPT = PEAK_RSS + r"""
import json, sys, torch
torch.set_num_threads(1)
import transformers
import transformers.models.llama.modeling_llama  # the model's code, imported before the measurement
import fastprune.llm as llm
ids = torch.randint(0, 4096, (4, 64), generator=torch.Generator().manual_seed(0))
reset_peak()
base = rss_mb()
llm.prune_checkpoint(sys.argv[1], sys.argv[2], ids, method="wanda", progress=False)
print(json.dumps({"base": base, "peak": peak_mb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_is_one_block_not_the_checkpoint(tmp_path):
    """12 blocks of about 24 MiB (hidden 768, MLP 2048, fp32) and 24 MiB of embeddings and head: a 312 MiB
    checkpoint, streamed in a fresh process; a 3-block checkpoint of the same width in another
    (the two processes run side by side). Wide enough that what a streaming run holds besides its
    block (the interpreter's first-call costs, the pure-torch fallback's sort buffers: 35-80 MB on
    the 145 MB checkpoint of hidden 512 this test used before) stays well under half the checkpoint."""
    srcs = []
    for layers in (12, 3):
        cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=768, intermediate_size=2048,
                                       num_hidden_layers=layers, num_attention_heads=12, num_key_value_heads=4,
                                       max_position_embeddings=128)
        srcs.append(save(cfg, tmp_path / f"src{layers}", "80MB"))
    size12, size3 = (sum(os.path.getsize(src / f) for f in os.listdir(src) if f.endswith(".safetensors")) / 2 ** 20
                     for src in srcs)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", MEMORY_SCRIPT, str(src), str(tmp_path / f"dst-{src.name}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for src in srcs]
    peaks = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        m = json.loads(out.strip().splitlines()[-1])
        peaks.append(m["peak"] - m["base"])
    peak12, peak3 = peaks
    block = (size12 - size3) / 9  # one block's tensors, MiB
    assert peak12 < 0.5 * size12, (peak12, peak3, size12)
    # Nine more blocks cost at most one block's worth (and the allocator's noise), not nine.
    assert peak12 - peak3 < block + 10, (peak12, peak3, size12)
    print(f"checkpoint {size12:.1f} MB, peak above the imports: 12 blocks {peak12:.1f} MB, 3 blocks {peak3:.1f} MB")


# ----------------------------------------------------------------------------
# Killed runs resume to the same bytes
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory):
    """A 12-block byte-level Llama with its tokenizer, a text corpus, and an uninterrupted run."""
    folder = tmp_path_factory.mktemp("kill")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=12,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    save(cfg, folder / "model", "100KB")
    load_example("train_tiny_llama").byte_tokenizer().save_pretrained(folder / "model")
    with open(os.path.join(ROOT, "fastprune", "llm", "checkpoint.py"), encoding="utf-8") as fh:
        (folder / "corpus.txt").write_text(fh.read(), encoding="utf-8")
    args = ["--model", str(folder / "model"), "--method", "sparsegpt", "--sparsity", "0.5",
            "--calibration", str(folder / "corpus.txt"), "--nsamples", "8", "--seqlen", "32",
            "--batch-size", "3", "--no-progress"]
    # Same bytes need the same arithmetic: every run here, in this process or a subprocess
    # (OMP_NUM_THREADS=1), uses one thread (the thread count can change float rounding).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        assert main(args + ["--output", str(folder / "whole")]) == 0
        yield folder, args, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def run_killed(args, out, when):
    """Runs the command in a subprocess and SIGKILLs it when ``when(out)`` says so; returns the
    progress record's blocks_done at the kill (None: not started, 'done': finished first)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fastprune.llm", *args, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        while proc.poll() is None and not when(out):
            time.sleep(0.002)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
            return "done"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return blocks_done(out)


def blocks_done(out):
    try:
        with open(out / WORK_DIR / PROGRESS) as f:
            return json.load(f)["blocks_done"]
    except (OSError, ValueError):
        return None


def assert_same_folder(a, b):
    da, db = digest(a), digest(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert da[k][0] == db[k][0], k


def test_kill_after_a_block_and_resume(kill_setup, capsys):
    folder, args, _ = kill_setup
    out = folder / "killed-after-3"
    got = run_killed(args, out, lambda o: (blocks_done(o) or 0) >= 3)
    assert isinstance(got, int) and 3 <= got < 12, got  # killed mid-run, after block 3 was recorded
    # Different options are refused, and the refused call changes nothing.
    before = digest(out)
    assert main(args[:5] + ["0.6"] + args[6:] + ["--output", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "resume: " in err and "sparsity: 0.5 there, 0.6 here" in err
    assert digest(out) == before
    # Without --resume the folder is not touched either.
    assert main(args + ["--output", str(out)]) == 2
    assert "pass resume=True" in capsys.readouterr().err
    # A byte changed on disk in a tensor written before the kill is caught when the shards are read back.
    corrupt = folder / "corrupt"
    shutil.copytree(out, corrupt)
    name = "model.layers.0.mlp.down_proj.weight"
    with open(folder / "model" / "model.safetensors.index.json") as f:
        shard = corrupt / WORK_DIR / json.load(f)["weight_map"][name]
    reader = ShardReader(str(shard))
    with open(shard, "r+b") as f:
        f.seek(reader.data_start + reader.entries[name].begin + 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(RuntimeError, match=f"{name} reads back different bytes"):
        main(args + ["--output", str(corrupt), "--resume"])
    # Resumed with two threads: the run goes on with the one thread it was started with (recorded),
    # since SparseGPT's solves round differently with another count.
    torch.set_num_threads(2)
    try:
        with pytest.warns(UserWarning, match="running with 1 threads"):
            assert main(args + ["--output", str(out), "--resume"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert_same_folder(folder / "whole", out)


def test_kill_at_random_moments_and_resume(kill_setup):
    """Three kills at random moments of the work (each resumed by a new process, killed in turn),
    then a final resume: the result is the uninterrupted run's, byte for byte."""
    folder, args, seconds = kill_setup
    out = folder / "killed-random"
    rng = random.Random(1234)
    seen = []
    # Random moments spread over the run: once block k (random, increasing) is recorded, a random
    # delay of up to about a block's time: within a block, a progress write or the final checks.
    for k in sorted(rng.sample(range(12), 3)):
        delay = rng.uniform(0.0, 1.5 * seconds / 12)
        state = {}

        def when(o, k=k, delay=delay):
            done = blocks_done(o)
            if "t" not in state and done is not None and done >= k:
                state["t"] = time.monotonic()
            return "t" in state and time.monotonic() - state["t"] >= delay

        seen.append(run_killed(args + (["--resume"] if seen else []), out, when))
    assert any(isinstance(s, int) and s < 12 for s in seen), seen  # the work was interrupted
    assert main(args + ["--output", str(out), "--resume"]) == 0
    assert_same_folder(folder / "whole", out)
    print("blocks done at the kills:", seen)
