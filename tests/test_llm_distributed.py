"""Data-parallel calibration of fastprune.llm.prune on real process groups (gloo over loopback).

Each world size (1 in this process, 2 and 3 in spawned processes) runs every
case below in one process group; the test functions compare what each process
returned with the same call made here in one process without a group, and the
processes with each other. Errors made on one process must be raised on every
process, and the group must stay usable afterwards (the cases after an error
case run normally). A run that does not finish within its deadline is killed
and fails (no hang).
"""
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import timedelta

import pytest
import torch

import fastprune.llm as llm
from fastprune.llm import walker as W
from fastprune.llm.walker import Statistic
from test_llm_prune import VOCAB, calib, tiny_llama

transformers = pytest.importorskip("transformers")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
from test_llm_checkpoint import tensors as folder_tensors  # noqa: E402  (after the skips above)
# Before any group exists, in this process and in the ones it spawns (they import this module): see
# fastprune.distributed.llm.init_from_env.
import torch.distributed.nn  # noqa: E402,F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD_SIZES = [1, 2, 3]
# Seconds a world size's whole run may take (the processes are killed after that) and
# the process group's timeout (a collective left waiting raises after it).
DEADLINE = int(os.environ.get("FASTPRUNE_TEST_TIMEOUT", "300"))
GROUP_TIMEOUT = 60


# ----------------------------------------------------------------------------
# Models and calibration (built the same way in every process)
# ----------------------------------------------------------------------------


def llama(dtype=torch.float32):
    return tiny_llama(num_hidden_layers=3, dtype=dtype)  # grouped-query attention: 4 heads, 2 KV heads


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


def padded_calibration():
    """Two batches of different lengths, one padded: micro-batches of 2 are 2, 2, 1 and 2 sequences."""
    a = calib(5, 16, seed=11)
    mask = torch.ones(5, 16, dtype=torch.long)
    mask[1, 10:] = 0
    mask[4, 5:] = 0
    return [{"input_ids": a, "attention_mask": mask}, calib(2, 12, seed=12)]


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def report_lines(report):
    """Everything in the report but the times (NaN-safe through repr)."""
    return repr([(l.name, l.block, tuple(l.shape), l.sparsity, l.error) for l in report.layers]
                + [(b.index, b.target) for b in report.blocks])


def outcome(report, model):
    return {"state": state(model), "lines": report_lines(report),
            "times": ([b.seconds for b in report.blocks], report.seconds)}


# ----------------------------------------------------------------------------
# The cases: each runs the same call in every process (and in one process for the reference)
# ----------------------------------------------------------------------------


def case_llama_wanda(**kw):
    m = llama()
    return outcome(llm.prune(m, padded_calibration(), method="wanda", batch_size=2, progress=False, **kw), m)


def case_llama_wanda_owl(**kw):
    m = llama()
    r = llm.prune(m, calib(6, 16, seed=13), method="wanda", sparsity=0.6, layer_sparsity="owl", owl_lambda=0.1,
                  batch_size=1, progress=False, **kw)
    return outcome(r, m)


def case_gpt2_wanda_24(**kw):
    m = gpt2()
    r = llm.prune(m, calib(5, 16, seed=14), method="wanda", sparsity=0.5, pattern="2:4", batch_size=1,
                  progress=False, **kw)
    return outcome(r, m)


def case_llama_sparsegpt(**kw):
    m = llama()
    r = llm.prune(m, padded_calibration(), method="sparsegpt", batch_size=2, blocksize=16, progress=False, **kw)
    out = outcome(r, m)
    held_out = calib(4, 16, seed=99)
    with torch.no_grad():
        out["loss"] = float(m(held_out, labels=held_out).loss)
    return out


def case_gpt2_sparsegpt_24(**kw):
    m = gpt2()  # Conv1D: the solved weights travel in the module's transposed layout
    r = llm.prune(m, calib(5, 16, seed=15), method="sparsegpt", pattern="2:4", batch_size=1, blocksize=16,
                  progress=False, **kw)
    return outcome(r, m)


def case_llama_reparam(**kw):
    m = llama()
    r = llm.prune(m, calib(4, 16, seed=16), method="wanda", mode="reparam", batch_size=1, progress=False, **kw)
    return outcome(r, m)


def case_fewer_micro_batches_than_processes(**kw):
    """Two micro-batches (a third process has none of its own); float64 model."""
    m = llama(torch.float64)
    r = llm.prune(m, calib(2, 16, seed=17), method="wanda", batch_size=1, progress=False, **kw)
    return outcome(r, m)


def case_magnitude_embeddings(**kw):
    m = llama()
    r = llm.prune(m, None, method="magnitude", prune_embeddings=True, prune_lm_head=True, progress=False, **kw)
    return outcome(r, m)


class Probe(Statistic):
    """Float64 contributions of very different magnitudes per micro-batch, whose sum depends on the
    order of the additions (the float32 rounding of Wanda's norms hides most such differences)."""

    def __init__(self):
        self.acc = torch.zeros(3, dtype=torch.float64)
        self.parts = []

    def add(self, x, y=None):
        v = x.double().sum()
        c = torch.stack([v * 1e16 + 1.0, v * 3.3e15 - 0.7, (v * 7.7) ** 3])
        self.parts.append(c)
        self.acc += c

    def buffers(self):
        return [self.acc]


class ProbeStage(W.Stage):
    """Reads each block: the probe's sum on its first layer's input."""

    recompute = False

    def __init__(self):
        self.sums, self.parts = [], []

    def statistics(self, turn):
        self.probe = Probe()
        return {turn.layers[0].module: self.probe}

    def update(self, turn, stats):
        self.sums.append(self.probe.acc.clone())
        self.parts.append(list(self.probe.parts))


def probe_walk(reducer=None, scheduler=None):
    m = llama()
    blocks = llm.find_blocks(m)
    walker = W.Walker(W.ModelSource(m, blocks), W.plan_layers(m, blocks),
                      W.micro_batches(llm.normalize_calibration(calib(7, 16, seed=31)), 1), device="cpu",
                      reducer=reducer, scheduler=scheduler, progress=False)
    stage = ProbeStage()
    walker.walk(stage, walker.capture())
    return stage


def case_order_probe(**kw):
    """The probe's sums through the data-parallel reducer, with several micro-batches per exchange
    and with one (the two exchange paths)."""
    import fastprune.distributed.llm as dpllm

    out = {}
    saved = dpllm.ROUND_BYTES
    for label, round_bytes in (("several", saved), ("one", 1)):
        dpllm.ROUND_BYTES = round_bytes
        try:
            dp = dpllm.DataParallel()
            out[label] = [t.tolist() for t in probe_walk(dp.reducer(), dp.scheduler()).sums]
        finally:
            dpllm.ROUND_BYTES = saved
    return out


CASES = [case_llama_wanda, case_llama_wanda_owl, case_gpt2_wanda_24, case_llama_sparsegpt, case_gpt2_sparsegpt_24,
         case_llama_reparam, case_fewer_micro_batches_than_processes, case_magnitude_embeddings]


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - what every process raised is compared by the tests
        return (type(e).__name__, str(e))
    return ("no error", "")


def error_cases(rank, ws):
    """Calls that go wrong on the last process only; each must raise on every process."""
    last = rank == ws - 1
    out = {}
    out["bad_option"] = _raised(lambda: llm.prune(llama(), calib(4, 16), method="wanda",
                                                  sparsity=1.5 if last else 0.5, progress=False))
    ids = calib(4, 16)
    if last:
        ids[3, 7] = (ids[3, 7] + 1) % VOCAB
    out["other_calibration"] = _raised(lambda: llm.prune(llama(), ids, method="wanda", progress=False))
    m = llama()
    if last:
        with torch.no_grad():
            m.model.layers[2].mlp.up_proj.weight[0, 0] += 1e-3
    out["other_model"] = _raised(lambda: llm.prune(m, calib(4, 16), method="wanda", progress=False))
    out["other_options"] = _raised(lambda: llm.prune(llama(), calib(4, 16), method="wanda",
                                                     batch_size=2 if last else 1, progress=False))
    # an exception in one process's forward of the second block
    m = llama()
    if last:
        def fail(module, args):
            raise RuntimeError("injected forward failure")
        m.model.layers[1].register_forward_pre_hook(fail)
    out["forward_failure"] = _raised(lambda: llm.prune(m, calib(4, 16), method="wanda", batch_size=1,
                                                       progress=False))
    # a solve failing in its owner (torch.linalg.LinAlgError is not portable: RuntimeError everywhere)
    import fastprune.llm.stages as stages

    saved = stages.sparsegpt_prune

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("injected solve failure")

    if last:
        stages.sparsegpt_prune = broken
    try:
        out["solve_failure"] = _raised(lambda: llm.prune(llama(), calib(4, 16), method="sparsegpt", batch_size=1,
                                                         progress=False))
    finally:
        stages.sparsegpt_prune = saved
    return out


# -- prune_checkpoint: a sharded checkpoint on disk, process 0 writes dst ----------------------------


CKPT_OPTIONS = {"wanda": dict(method="wanda", batch_size=1),
                "sparsegpt": dict(method="sparsegpt", batch_size=2, blocksize=16, prune_embeddings=True,
                                  prune_lm_head=True)}


def checkpoint_calibration():
    return calib(5, 16, seed=21)


def write_checkpoint(folder):
    """A 3-block Llama in 20 KB shards (several files and an index)."""
    m = llama()
    m.save_pretrained(folder, max_shard_size="20KB")
    return folder


class Interrupt:
    """Makes the last process fail in block 2 of prune_checkpoint (after blocks 0 and 1 are recorded)."""

    def __init__(self, last):
        import fastprune.llm.stages as stages

        self.stages, self.last = stages, last

    def __enter__(self):
        update = self.saved = self.stages.PruneStage.update

        def failing(stage, turn, stats):
            if self.last and turn.index == 2:
                raise OSError("injected interruption")
            return update(stage, turn, stats)

        self.stages.PruneStage.update = failing

    def __exit__(self, *exc):
        self.stages.PruneStage.update = self.saved


def checkpoint_cases(rank, ws, ckpt):
    """prune_checkpoint in the group: both methods; a run interrupted on the last process and resumed
    here; the run another world size interrupted resumed here, and one left for the next to resume."""
    src = os.path.join(ckpt, "src")
    out = {}
    for method, options in CKPT_OPTIONS.items():
        r = llm.prune_checkpoint(src, os.path.join(ckpt, f"{method}-{ws}"), checkpoint_calibration(),
                                 progress=False, **options)
        out[method] = {"lines": report_lines(r), "times": ([b.seconds for b in r.blocks], r.seconds)}
    dst = os.path.join(ckpt, f"interrupted-{ws}")
    with Interrupt(rank == ws - 1):
        out["interrupted"] = _raised(lambda: llm.prune_checkpoint(src, dst, checkpoint_calibration(), progress=False,
                                                                  **CKPT_OPTIONS["wanda"]))
    r = llm.prune_checkpoint(src, dst, checkpoint_calibration(), resume=True, progress=False, **CKPT_OPTIONS["wanda"])
    out["resumed"] = report_lines(r)
    left = os.path.join(ckpt, f"left-by-{ws - 1}")  # interrupted by the previous world size
    if os.path.isdir(left):
        r = llm.prune_checkpoint(src, left, checkpoint_calibration(), resume=True, progress=False,
                                 **CKPT_OPTIONS["wanda"])
        out["resumed_other"] = report_lines(r)
    with Interrupt(rank == ws - 1):
        out["left"] = _raised(lambda: llm.prune_checkpoint(src, os.path.join(ckpt, f"left-by-{ws}"),
                                                           checkpoint_calibration(), progress=False,
                                                           **CKPT_OPTIONS["wanda"]))
    return out


def run_cases(rank, ws, ckpt):
    results = {}
    try:
        results["order_probe"] = ("ok", case_order_probe())
    except Exception:  # noqa: BLE001 - reported by the tests
        results["order_probe"] = ("fail", traceback.format_exc())
    for case in CASES:
        started = time.perf_counter()
        try:
            results[case.__name__] = ("ok", case())
        except Exception:  # noqa: BLE001 - reported by the tests
            results[case.__name__] = ("fail", traceback.format_exc())
        results[case.__name__ + ":seconds"] = time.perf_counter() - started
    try:
        results["checkpoint"] = ("ok", checkpoint_cases(rank, ws, ckpt))
    except Exception:  # noqa: BLE001 - reported by the tests
        results["checkpoint"] = ("fail", traceback.format_exc())
    results["errors"] = error_cases(rank, ws)
    # the group still works after all of that
    results["after_errors"] = ("ok", case_llama_wanda())
    return results


def _worker(rank, ws, store, out_dir, ckpt):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ws,
                            timeout=timedelta(seconds=GROUP_TIMEOUT))
    # Rounds of a few micro-batches on these tiny models, so that every exchange path runs: Wanda's
    # norms (~2 KB a micro-batch) two micro-batches per process and round, the errors (112 B) a whole
    # pass per round, SparseGPT's Hessians (~80 KB) one micro-batch per round, sent buffer by buffer.
    import fastprune.distributed.llm as dpllm

    saved = dpllm.ROUND_BYTES
    dpllm.ROUND_BYTES = 5000
    try:
        results = run_cases(rank, ws, ckpt)
    finally:
        dpllm.ROUND_BYTES = saved
        dist.destroy_process_group()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _run_world(ws, tmp, ckpt):
    """Every process's results; a world that does not finish by the deadline is killed (a hang fails)."""
    store = os.path.join(tmp, f"store{ws}")
    if ws == 1:  # in this process: a group of one
        saved = torch.get_num_threads()
        try:
            _worker(0, 1, store, tmp, ckpt)
        finally:
            torch.set_num_threads(saved)
    else:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(r, ws, store, tmp, ckpt)) for r in range(ws)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + DEADLINE
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        assert not hung, f"{ws} processes: processes {hung} still running after {DEADLINE} s (a hang)"
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(ws)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The folder of the prune_checkpoint cases: the source checkpoint and every destination."""
    folder = tmp_path_factory.mktemp("dp_ckpt")
    write_checkpoint(folder / "src")
    return str(folder)


@pytest.fixture(scope="module")
def runs(ckpt):
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ws in WORLD_SIZES:
            d = os.path.join(tmp, f"ws{ws}")
            os.makedirs(d)
            out[ws] = _run_world(ws, d, ckpt)
    return out


@pytest.fixture(scope="module")
def references(ckpt):
    """The same calls in this process, no process group (prune_checkpoint's into ckpt/<method>-ref)."""
    assert not dist.is_initialized()
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {case.__name__: case() for case in CASES}
        for method, options in CKPT_OPTIONS.items():
            r = llm.prune_checkpoint(os.path.join(ckpt, "src"), os.path.join(ckpt, f"{method}-ref"),
                                     checkpoint_calibration(), progress=False, **options)
            out["checkpoint:" + method] = report_lines(r)
        return out
    finally:
        torch.set_num_threads(saved)


# ----------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------


def _check_same(got, ref, label):
    assert got["state"].keys() == ref["state"].keys(), label
    for k in ref["state"]:
        assert torch.equal(got["state"][k], ref["state"][k]), f"{label}: {k} differs from one process"
    assert got["lines"] == ref["lines"], f"{label}: report differs from one process"


@pytest.mark.parametrize("ws", WORLD_SIZES)
@pytest.mark.parametrize("case", [c.__name__ for c in CASES if "sparsegpt" not in c.__name__])
def test_bit_identical_to_one_process(runs, references, ws, case):
    """Wanda (plain, OWL, 2:4, reparam, an idle process) and magnitude: the weights, masks and
    report of one process, bit for bit, on every process of 1, 2 and 3."""
    for rank, results in enumerate(runs[ws]):
        status, got = results[case]
        assert status == "ok", f"{ws} processes, process {rank}:\n{got}"
        _check_same(got, references[case], f"{case}, {ws} processes, process {rank}")


@pytest.mark.parametrize("ws", WORLD_SIZES)
@pytest.mark.parametrize("case", ["case_llama_sparsegpt", "case_gpt2_sparsegpt_24"])
def test_sparsegpt_matches_one_process(runs, references, ws, case):
    """SparseGPT: masks at least 99.9% equal to one process (here: identical, since the Hessians are
    summed in the one-process order and each layer's owner runs the one-process solve), same loss."""
    ref = references[case]
    for rank, results in enumerate(runs[ws]):
        status, got = results[case]
        assert status == "ok", f"{ws} processes, process {rank}:\n{got}"
        for k, w in ref["state"].items():
            if w.dim() == 2 and (".h." in k or ".layers." in k):
                agree = float(((got["state"][k] == 0) == (w == 0)).float().mean())
                assert agree >= 0.999, (ws, rank, k, agree)
        _check_same(got, ref, f"{case}, {ws} processes, process {rank}")
        if "loss" in ref:
            assert got["loss"] == ref["loss"]


@pytest.mark.parametrize("ws", WORLD_SIZES)
def test_every_process_returns_the_same_report(runs, ws):
    for case in [c.__name__ for c in CASES] + ["after_errors"]:
        first = runs[ws][0][case][1]
        for rank in range(1, ws):
            got = runs[ws][rank][case][1]
            assert got["lines"] == first["lines"], (case, rank)
            assert got["times"] == first["times"], (case, rank)  # the slowest process's times, everywhere


EXPECTED_ERRORS = {
    "bad_option": ("ValueError", ["sparsity=1.5 must be in [0, 1)", "(on process {last} of {ws})"]),
    "other_calibration": ("ShardedInputError", ["calibration", "process {last} differs"]),
    "other_model": ("ShardedInputError", ["model", "process {last} differs"]),
    "other_options": ("ShardedInputError", ["options", "batch_size=2 vs 1"]),
    "forward_failure": ("RuntimeError", ["injected forward failure (on process {last} of {ws})"]),
    "solve_failure": ("RuntimeError", ["injected solve failure (on process {last} of {ws})"]),
}


@pytest.mark.parametrize("ws", WORLD_SIZES)
@pytest.mark.parametrize("what", sorted(EXPECTED_ERRORS))
def test_an_error_on_one_process_is_raised_on_every_process(runs, ws, what):
    exc_type, parts = EXPECTED_ERRORS[what]
    if ws == 1 and what.startswith("other_"):
        return  # one process cannot disagree with itself
    seen = set()
    for rank in range(ws):
        name, message = runs[ws][rank]["errors"][what]
        assert name == exc_type, (ws, rank, name, message)
        for part in parts:
            assert part.format(last=ws - 1, ws=ws) in message, (ws, rank, message)
        seen.add(message)
    assert len(seen) == 1, seen  # the same message on every process


@pytest.mark.parametrize("ws", WORLD_SIZES)
def test_the_group_still_works_after_the_errors(runs, references, ws):
    for rank in range(ws):
        status, got = runs[ws][rank]["after_errors"]
        assert status == "ok", got
        _check_same(got, references["case_llama_wanda"], f"after the errors, {ws} processes, process {rank}")


def test_distributed_argument():
    m = llama()
    with pytest.raises(ValueError, match="distributed=True: no torch.distributed process group"):
        llm.prune(m, calib(), distributed=True, progress=False)
    with pytest.raises(TypeError, match="distributed must be None, True or False"):
        llm.prune(m, calib(), distributed="yes", progress=False)
    with pytest.raises(ValueError, match="group is given but no"):
        llm.prune(m, calib(), group=object(), progress=False)
    assert torch.equal(m.model.layers[0].mlp.up_proj.weight, llama().model.layers[0].mlp.up_proj.weight)


def test_distributed_false_inside_a_group_runs_alone(tmp_path, references):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from fastprune.distributed.llm import DataParallel

        assert llm.api.data_parallel(False, None) is None
        assert isinstance(llm.api.data_parallel(None, None), DataParallel)
        got = case_llama_wanda(distributed=False)
    finally:
        torch.set_num_threads(saved)
        dist.destroy_process_group()
    _check_same(got, references["case_llama_wanda"], "distributed=False")


def test_owners_balance_the_solves():
    """Layers dealt out by cost, longest first: the same on every process, every process busy."""
    from fastprune.distributed.llm import WeightParallel
    from fastprune.llm.walker import Layer, SolveJob

    class FakeDP:
        world, rank = 3, 0

    lin = [torch.nn.Linear(i, o) for o, i in [(32, 32), (16, 32), (16, 32), (32, 32), (64, 32), (64, 32), (32, 64)]]
    jobs = [SolveJob(Layer(f"l{k}", m, 0), m.weight, None) for k, m in enumerate(lin)]
    owners = WeightParallel(FakeDP()).owners(jobs)
    assert owners[6] == 0  # down_proj (in 64): the costliest solve goes first to process 0
    assert sorted(set(owners)) == [0, 1, 2]
    assert owners == WeightParallel(FakeDP()).owners(jobs)


def test_import_loads_no_torch_distributed_module():
    """``import fastprune, fastprune.llm`` imports no torch.distributed module that ``import torch`` did not."""
    code = ("import sys, torch; before = {m for m in sys.modules if m.startswith('torch.distributed')}; "
            "import fastprune, fastprune.llm; "
            "print(sorted({m for m in sys.modules if m.startswith('torch.distributed')} - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_command_group_is_torn_down_after_transformers_loads(tmp_path):
    """The command's group is really gone after ``destroy_process_group``: its gloo threads are joined.

    ``torch.distributed.nn.functional`` takes the default group as a default argument value when it is
    first imported after the group exists (transformers imports it while loading a config), and a
    group kept alive past ``destroy_process_group`` lets its worker threads release the last
    collective's tensors during interpreter shutdown, which aborts the process now and then
    (``terminate called without an active exception``). ``init_from_env`` imports it first."""
    LlamaConfig = transformers.LlamaConfig
    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path / "model")
    code = (
        "import os, sys, torch, fastprune, transformers, torch.distributed as dist\n"
        "from fastprune.distributed.llm import init_from_env\n"
        "created, _ = init_from_env(None, 1)\n"
        "transformers.AutoConfig.from_pretrained(sys.argv[1])\n"
        "dist.all_reduce(torch.ones(3))\n"
        "dist.destroy_process_group()\n"
        "names = [open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')]\n"
        "print(created, sorted(n for n in names if 'gloo' in n))\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
               LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True []", r.stdout


def test_command_under_torchrun(tmp_path):
    """``torchrun -m fastprune.llm``: the command joins the group itself; process 0 writes the same
    checkpoint as the command in one process, and prints the table once."""
    from safetensors.torch import load_file

    from fastprune.llm.__main__ import main
    from helpers import load_example

    pytest.importorskip("tokenizers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "model")
    load_example("train_tiny_llama").byte_tokenizer().save_pretrained(tmp_path / "model")
    with open(os.path.join(ROOT, "fastprune", "llm", "api.py"), encoding="utf-8") as fh:
        (tmp_path / "corpus.txt").write_text(fh.read(), encoding="utf-8")
    common = ["--model", str(tmp_path / "model"), "--method", "wanda", "--calibration", str(tmp_path / "corpus.txt"),
              "--nsamples", "5", "--seqlen", "32", "--batch-size", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "fastprune.llm", *common, "--output", str(tmp_path / "two"), "--timeout", "2"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=DEADLINE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("saved to") == 1 and "model.layers.1.mlp.down_proj" in r.stdout
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*common, "--output", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(saved)
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        assert torch.equal(one[k], two[k]), k


# ----------------------------------------------------------------------------
# prune_checkpoint in a group
# ----------------------------------------------------------------------------


def assert_same_checkpoint(got, ref):
    assert sorted(os.listdir(got)) == sorted(os.listdir(ref)), (got, ref)  # no work folder, no per-process files
    a, b = folder_tensors(got), folder_tensors(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (got, k)


@pytest.mark.parametrize("ws", WORLD_SIZES)
@pytest.mark.parametrize("method", sorted(CKPT_OPTIONS))
def test_prune_checkpoint_in_a_group_writes_the_one_process_checkpoint(runs, references, ckpt, ws, method):
    """Process 0 writes dst; its tensors are bit for bit those of the one-process call (Wanda, and SparseGPT
    with the embeddings and head); every process returns the one-process report."""
    for rank in range(ws):
        status, got = runs[ws][rank]["checkpoint"]
        assert status == "ok", f"{ws} processes, process {rank}:\n{got}"
        assert got[method]["lines"] == references["checkpoint:" + method]
        assert got[method]["times"] == runs[ws][0]["checkpoint"][1][method]["times"]
    assert_same_checkpoint(os.path.join(ckpt, f"{method}-{ws}"), os.path.join(ckpt, f"{method}-ref"))


@pytest.mark.parametrize("ws", WORLD_SIZES)
def test_prune_checkpoint_interrupted_in_a_group_resumes(runs, references, ckpt, ws):
    """A failure in one process stops every process with the run recorded; resume=True with the same
    number of processes, or with the next number (and the last one's with no group), gives the
    one-process checkpoint."""
    for rank in range(ws):
        got = runs[ws][rank]["checkpoint"][1]
        assert got["interrupted"] == ("OSError", f"injected interruption (on process {ws - 1} of {ws})")
        assert got["resumed"] == references["checkpoint:wanda"]
        if ws > WORLD_SIZES[0]:
            assert got["resumed_other"] == references["checkpoint:wanda"]
    assert_same_checkpoint(os.path.join(ckpt, f"interrupted-{ws}"), os.path.join(ckpt, "wanda-ref"))
    if ws > WORLD_SIZES[0]:
        assert_same_checkpoint(os.path.join(ckpt, f"left-by-{ws - 1}"), os.path.join(ckpt, "wanda-ref"))
    if ws == WORLD_SIZES[-1]:  # the run the last group left, resumed by one process without a group
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            r = llm.prune_checkpoint(os.path.join(ckpt, "src"), os.path.join(ckpt, f"left-by-{ws}"),
                                     checkpoint_calibration(), resume=True, progress=False, **CKPT_OPTIONS["wanda"])
        finally:
            torch.set_num_threads(saved)
        assert report_lines(r) == references["checkpoint:wanda"]
        assert_same_checkpoint(os.path.join(ckpt, f"left-by-{ws}"), os.path.join(ckpt, "wanda-ref"))


def _dying_worker(rank, ws, store, out_dir):
    """The last process dies (os._exit) in the forward of block 1; the others must raise, not wait."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ws,
                            timeout=timedelta(seconds=GROUP_TIMEOUT))
    m = llama()
    if rank == ws - 1:
        m.model.layers[1].register_forward_pre_hook(lambda module, args: os._exit(3))
    started = time.monotonic()
    got = _raised(lambda: llm.prune(m, calib(4, 16), method="wanda", batch_size=1, progress=False))
    torch.save({"raised": got, "seconds": time.monotonic() - started}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_a_process_that_dies_does_not_hang_the_others(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_dying_worker, args=(r, 2, str(tmp_path / "store"), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + DEADLINE
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a process still waits for the dead one"
    assert procs[1].exitcode == 3
    got = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert got["raised"][0] != "no error"
    assert got["seconds"] < GROUP_TIMEOUT + 30, got  # the connection's end, or at worst the group's timeout


@pytest.mark.parametrize("ws", WORLD_SIZES)
def test_statistics_are_added_in_micro_batch_order(runs, ws):
    """Sums whose float64 value depends on the order of the additions (checked here: adding the same
    contributions in reverse gives other bits) come out of 1, 2 and 3 processes as one process
    adds them, micro-batch after micro-batch, with either exchange path."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = probe_walk()
    finally:
        torch.set_num_threads(saved)
    for parts, total in zip(one.parts, one.sums):
        forward = torch.zeros(3, dtype=torch.float64)
        for c in parts:
            forward += c
        assert torch.equal(forward, total)
    reversed_sums = []
    for parts in one.parts:
        acc = torch.zeros(3, dtype=torch.float64)
        for c in reversed(parts):
            acc += c
        reversed_sums.append(acc)
    assert any(not torch.equal(a, b) for a, b in zip(reversed_sums, one.sums))  # the probe sees the order
    expected = [t.tolist() for t in one.sums]
    for rank in range(ws):
        status, got = runs[ws][rank]["order_probe"]
        assert status == "ok", got
        assert got["several"] == expected, (ws, rank)
        assert got["one"] == expected, (ws, rank)
