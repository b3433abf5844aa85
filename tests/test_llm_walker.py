"""The block walker's micro-batches, magnitude without forward passes, and the walker's seams."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastprune.llm as llm
from fastprune.llm import walker as W
from helpers import PEAK_RSS
from test_llm_prune import _arch, calib, clone, tiny_llama

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(arch):
    if arch == "llama":
        return tiny_llama(num_hidden_layers=3)
    torch.manual_seed(0)
    return _arch(arch).eval()


def copy_of(model):
    other = type(model)(model.config).eval()
    other.load_state_dict(model.state_dict())
    return other


def pruned_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------
# Micro-batches
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "qwen2"])
def test_micro_batches_equal_one_batch(one_thread, arch):
    base = make(arch)
    ids = calib(12, 24, seed=7)
    out = {}
    for method in ("wanda", "sparsegpt"):
        for bs in (12, 5, 1):
            m = copy_of(base)
            report = llm.prune(m, ids, method=method, batch_size=bs, blocksize=16, progress=False)
            out[method, bs] = (pruned_weights(m), [l.error for l in report.layers])
    for bs in (5, 1):
        # Wanda: the float64 sums of squares make the result independent of the cut, bit for bit.
        ref, got = out["wanda", 12][0], out["wanda", bs][0]
        for k in ref:
            assert torch.equal(ref[k], got[k]), (arch, bs, k)
        # SparseGPT: each call's X^T X is a float32 product, summed in float64: the same masks
        # on these models, weights within float32 summation.
        ref, got = out["sparsegpt", 12][0], out["sparsegpt", bs][0]
        for k in ref:
            assert torch.equal(ref[k] == 0, got[k] == 0), (arch, bs, k)
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)
        assert out["wanda", bs][1] == pytest.approx(out["wanda", 12][1], rel=1e-5)


def test_micro_batches_keep_padding_out(one_thread):
    model = tiny_llama(dtype=torch.float64)
    a, b, c = calib(1, 10, seed=3), calib(1, 16, seed=4), calib(1, 7, seed=8)
    padded = torch.cat([torch.cat([a, calib(1, 6, seed=5)], dim=1), b, torch.cat([c, calib(1, 9, seed=6)], dim=1)])
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[0, 10:] = 0
    mask[2, 7:] = 0
    m1, m2 = clone(model), clone(model)
    llm.prune(m1, [{"input_ids": padded, "attention_mask": mask}], method="wanda", batch_size=2, progress=False)
    llm.prune(m2, [a, b, c], method="wanda", progress=False)
    for (n, x), (_, y) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(x, y), n


def count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].shape[0] if args else
                                                                                 kwargs["hidden_states"].shape[0]),
                                              with_kwargs=True)
    return calls, handle


def test_batch_size_cuts_the_forward_calls(one_thread):
    model = tiny_llama()
    calls, handle = count_calls(model.model.layers[1])  # block 0 also sees the capture
    llm.prune(model, [calib(7, 8), calib(2, 8, seed=2)], method="wanda", batch_size=3, progress=False)
    handle.remove()
    # Statistics pass, then the recomputation with the pruned weights: the batch of 7 cut
    # into 3 + 3 + 1, the batch of 2 kept (batches are never merged).
    assert calls == [3, 3, 1, 2] * 2


def test_default_batch_size_formula():
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=2,
                                   num_attention_heads=16, num_key_value_heads=4)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    blocks = llm.find_blocks(model)
    plan = W.plan_layers(model, blocks)
    outs = 1024 + 256 + 256 + 1024 + 2816 + 2816 + 1024  # q, k, v, o, gate, up, down

    def bytes_per_sequence(seq):
        return seq * (4 * (4 * 1024 + 2 * outs) + 12 * 2816 + 4 * 16 * seq)

    seq = 256
    per_seq = bytes_per_sequence(seq)
    assert W.default_batch_size(model, plan, seq) == max(1, W.ACTIVATION_BUDGET // per_seq)
    assert W.default_batch_size(model, plan, 64) == W.ACTIVATION_BUDGET // bytes_per_sequence(64) > 1
    assert W.default_batch_size(model, plan, seq, budget=per_seq * 5 + 1) == 5
    assert W.default_batch_size(model, plan, 1 << 16) == 1  # never below one sequence


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_batch_size(bad):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="batch_size"):
        llm.prune(model, calib(), batch_size=bad, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


MEMORY_SCRIPT = PEAK_RSS + r"""
import json, torch, transformers
import fastprune.llm as llm
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
ids = torch.randint(0, 128, (16, 512), generator=torch.Generator().manual_seed(0))
peaks = {}
for bs in (1, 16):  # the small one first: memory freed by the big one may stay resident
    model = transformers.LlamaForCausalLM(cfg).eval()
    reset_peak()
    base = rss_mb()
    llm.prune(model, ids, method="wanda", batch_size=bs, progress=False)
    peaks[bs] = peak_mb() - base
print(json.dumps(peaks))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_micro_batches_bound_the_peak_memory():
    """One call over 16 x 512 tokens against 16 calls of one sequence, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    peaks = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    # One block's activations for 16 sequences (attention scores 4 x 512 x 512 x 4 B = 4 MiB and
    # MLP intermediates 512 x 512 x 4 B x 3 per sequence) are over 80 MB; one sequence's a few MB.
    assert peaks[16] - peaks[1] > 60, peaks


# ----------------------------------------------------------------------------
# Magnitude: no calibration forward
# ----------------------------------------------------------------------------


def test_magnitude_runs_no_forward(one_thread):
    model = tiny_llama()
    other = clone(model)
    fired = []
    handles = [m.register_forward_pre_hook(lambda m, a: fired.append(type(m).__name__)) for m in model.modules()]
    r1 = llm.prune(model, calib(), method="magnitude", progress=False)
    for h in handles:
        h.remove()
    assert fired == []
    r2 = llm.prune(other, None, method="magnitude", progress=False)
    for (n, x), (_, y) in zip(model.named_parameters(), other.named_parameters()):
        assert torch.equal(x, y), n
    assert [torch.equal(r1.masks.mask(n), r2.masks.mask(n)) for n in r1.masks.names] == [True] * len(r1.masks.names)


def test_magnitude_measures_errors_when_asked(one_thread):
    model = tiny_llama()
    calls, handle = count_calls(model.model.layers[1])
    report = llm.prune(model, calib(), method="magnitude", measure_errors=True, progress=False)
    handle.remove()
    assert calls == [4]  # one recomputation pass (no statistics pass for magnitude)
    assert all(0 < l.error < 1 for l in report.layers)
    with pytest.raises(ValueError, match="measure_errors"):
        llm.prune(tiny_llama(), None, method="magnitude", measure_errors=True, progress=False)


def test_magnitude_with_owl_runs_only_the_owl_pass(one_thread):
    model = tiny_llama(num_hidden_layers=4)
    calls, handle = count_calls(model.model.layers[2])
    report = llm.prune(model, calib(), method="magnitude", sparsity=0.6, layer_sparsity="owl", progress=False)
    handle.remove()
    assert calls == [4]  # OWL's dense pass only
    assert len({b.target for b in report.blocks}) > 1


# ----------------------------------------------------------------------------
# The seams: a stage that only reads, a reducer and a scheduler that see every call
# ----------------------------------------------------------------------------


class Recording(W.StatsReducer):
    def __init__(self):
        self.reduced = []
        self.agreed = 0

    def reduce(self, stats):
        self.reduced.append([type(s).__name__ for s in stats])

    def agree(self, error):
        self.agreed += 1
        super().agree(error)


class Reversed(W.SolveScheduler):
    """Solves the layers in reverse order (as another process might): the results must not change."""

    def __init__(self):
        self.jobs = []

    def run(self, jobs):
        self.jobs.append([j.layer.name for j in jobs])
        keeps = {id(j): j.solve() for j in reversed(jobs)}
        return [keeps[id(j)] for j in jobs]


def test_walker_seams_are_called_and_do_not_change_results(one_thread):
    model = tiny_llama()
    ref = clone(model)
    ids = calib()
    llm.prune(ref, ids, method="sparsegpt", progress=False)
    from fastprune.llm.api import _Job
    from fastprune.llm.report import PruneReport

    job = _Job.check(method="sparsegpt", sparsity=0.5, pattern="unstructured", layer_sparsity=None, owl_lambda=0.08,
                     owl_m=5.0, blocksize=128, percdamp=0.01, measure_errors=None)
    blocks = llm.find_blocks(model)
    job.plan_model(model, blocks, False, False)
    calls = job.calibration_calls(ids, None, model)
    reducer, scheduler = Recording(), Reversed()
    walker = W.Walker(W.ModelSource(model, blocks), job.plan, calls, device="cpu", reducer=reducer,
                      scheduler=scheduler, progress=False)
    report = PruneReport("sparsegpt", "unstructured", 0.5, "inplace")
    with torch.no_grad():
        job.walk(walker, report, keep_dense=False)
    # q, k and v see the same input tensor, as do gate and up: one Hessian each (reduced once),
    # then o and down: 4 Hessians for 7 layers.
    assert reducer.reduced == [["Hessian"] * 4, ["ErrorSums"] * 7] * 2
    assert scheduler.jobs[0][0] == "model.layers.0.self_attn.q_proj" and len(scheduler.jobs) == 2
    for (n, x), (_, y) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(x, y), n


class ChannelNorms(W.Stage):
    """The kind of stage structured shrinking plugs in: read the dense blocks' input norms."""

    recompute = False

    def __init__(self):
        self.norms = {}

    def statistics(self, turn):
        return {l.module: llm.wanda.InputNorms(l.shape[1], turn.device) for l in turn.layers}

    def update(self, turn, stats):
        for l in turn.layers:
            self.norms[l.name] = stats[l.module].norms()


def test_a_reading_stage_sees_the_dense_activations(one_thread):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = calib()
    blocks = llm.find_blocks(model)
    walker = W.Walker(W.ModelSource(model, blocks), W.plan_layers(model, blocks),
                      W.micro_batches(llm.normalize_calibration(ids), 3), device="cpu", progress=False)
    stage = ChannelNorms()
    walker.walk(stage, walker.capture())  # the walker runs under no_grad itself
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed
    # The second block's down_proj input, recomputed by hand from the dense model.
    seen = []
    h = model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        model(ids, use_cache=False)
    h.remove()
    x = seen[0].reshape(-1, seen[0].shape[-1]).double()
    torch.testing.assert_close(stage.norms["model.layers.1.mlp.down_proj"], (x * x).sum(0).sqrt().float())


def test_layers_with_the_same_input_share_one_statistic(one_thread):
    model = tiny_llama()
    blocks = llm.find_blocks(model)
    plan = W.plan_layers(model, blocks)
    walker = W.Walker(W.ModelSource(model, blocks), plan, W.micro_batches(llm.normalize_calibration(calib()), 2),
                      device="cpu", progress=False)
    seen = {}

    class Hessians(W.Stage):
        recompute = False

        def statistics(self, turn):
            return {l.module: llm.sparsegpt.Hessian(l.shape[1], "cpu") for l in turn.layers}

        def update(self, turn, stats):
            seen[turn.index] = {l.name.split(".")[-1]: stats[l.module] for l in turn.layers}

    walker.walk(Hessians(), walker.capture())
    for i, s in seen.items():
        assert s["q_proj"] is s["k_proj"] is s["v_proj"] and s["gate_proj"] is s["up_proj"]
        assert len({id(v) for v in s.values()}) == 4
        assert int(s["q_proj"].tokens) == 4 * 16  # counted once, not three times
