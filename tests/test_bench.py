"""The benchmark command's pieces, on tiny models (no timing is asserted)."""
import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fastprune import bench
from fastprune.ops import pack_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

proc_ok = os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)
needs_proc = pytest.mark.skipif(not proc_ok, reason="peak RSS needs a writable /proc/self/clear_refs (Linux)")


@pytest.mark.parametrize(
    "text, value",
    [("100M", 100_000_000), ("1.5B", 1_500_000_000), ("7B", 7_000_000_000), ("500K", 500_000), ("12345", 12345)],
)
def test_parse_count(text, value):
    assert bench.parse_count(text) == value


def test_parse_count_rejects_garbage():
    with pytest.raises(argparse.ArgumentTypeError, match="--params"):
        bench.parse_count("lots")


@pytest.mark.parametrize("params", [1_000_000, 100_000_000, 1_000_000_000, 7_000_000_000])
def test_llama_shapes_match_the_size(params):
    shapes = bench.model_shapes(params)
    n = sum(o * i for o, i in shapes)
    assert 0.75 * params <= n <= 1.3 * params
    assert len(shapes) % 7 == 0 and len(shapes) >= 28 or params < 2_000_000


def test_square_shapes():
    assert bench.model_shapes(105_000_000, "square", 2048) == [(2048, 2048)] * 25
    assert bench.model_shapes(1_000_000_000, "square", 4096) == [(4096, 4096)] * 60


def test_layers_regenerate_identically():
    model = bench.build_model([(8, 4), (3, 8)], torch.float32, torch.device("cpu"), seed=5)
    again = bench.layer_weight((3, 8), torch.float32, torch.device("cpu"), 5, 1)
    assert torch.equal(model[1].weight.detach(), again)
    assert not torch.equal(model[0].weight.detach()[:3, :4], again[:, :4])


def _job(tmp_path, case, lib, shapes=((16, 32), (32, 16), (8, 8))):
    return {
        "lib": lib, "case": case, "dtype": "float32", "device": "cpu", "seed": 1, "amount": 0.5,
        "repeat": 1, "shapes": [list(s) for s in shapes], "bits": str(tmp_path / f"{case}-{lib}.bits"),
    }


@needs_proc
@pytest.mark.parametrize("case", ["global_l1", "local_l1", "ln_structured", "forward_bool", "sparsify"])
def test_worker_masks_equal_torch(tmp_path, case):
    fp = bench.worker(_job(tmp_path, case, "fastprune"))
    tc = bench.worker(_job(tmp_path, case, "torch"))
    assert fp["check"]["exact"], fp["check"]
    assert fp["times"] and tc["times"] and fp["peaks"][0] >= 0
    assert bench.compare_bits(str(tmp_path / f"{case}-fastprune.bits"), str(tmp_path / f"{case}-torch.bits")) == 0
    if case == "forward_bool":
        assert fp["outputs"] == tc["outputs"]


@needs_proc
def test_worker_flags_a_wrong_mask(tmp_path):
    job = _job(tmp_path, "global_l1", "fastprune")
    bench.worker(job)
    data = bytearray(open(job["bits"], "rb").read())
    data[0] ^= 1
    other = tmp_path / "flipped.bits"
    other.write_bytes(bytes(data))
    assert bench.compare_bits(job["bits"], str(other)) == 1
    shapes = [tuple(s) for s in job["shapes"]]
    assert not bench.differences_are_ties(job["bits"], str(other), shapes, torch.float32, torch.device("cpu"), 1, None)


@needs_proc
def test_run_job_in_a_fresh_process(tmp_path):
    result = bench.run_job(_job(tmp_path, "sparsify", "fastprune"), timeout=300)
    assert "error" not in result, result
    assert result["check"]["exact"]


def test_format_table_names_skips_and_targets():
    rows = [
        {"case": "global_l1", "fastprune_s": 0.2, "torch_s": 10.0, "fastprune_peak": 2**20, "torch_peak": 2**30,
         "error": "", "exact": True, "identical": "yes"},
        {"case": "sparsify", "fastprune_s": 0.1, "torch_s": None, "fastprune_peak": 2**20, "torch_peak": None,
         "error": "", "exact": True, "identical": "exact"},
    ]
    info = {"model": "m", "numel": 10**8, "model_bytes": 4 * 10**8, "dtype": "float32", "device": "cpu",
            "amount": 0.5, "repeat": 1, "skipped": {"sparsify": "needs ~99 GiB"}, "machine": "x", "torch": "t",
            "load": (0.0, 0.0, 0.0), "memcpy": 0.1}
    text = bench.format_table(rows, info)
    assert "50.0x" in text and "skipped" in text and "needs ~99 GiB" in text
    assert "bandwidth reference (warm, not a floor)" in text and "fastprune time / memcpy" not in text
    assert "within" in text


def _packed(*masks):
    return [pack_mask(torch.tensor(m)) for m in masks]


def test_compare_masks_tells_ties_from_differences():
    w = torch.tensor([0.1, -0.2, 0.2, 0.3, 0.05])
    scores = lambda i: bench.unit_scores(w)  # noqa: E731
    same = bench.compare_masks(_packed([0, 0, 1, 1, 0]), _packed([0, 0, 1, 1, 0]))
    assert same.identical and same.verdict == "yes"
    tie = bench.compare_masks(_packed([0, 0, 1, 1, 0]), _packed([0, 1, 0, 1, 0]), scores)
    assert tie.differing == 2 and tie.ties_only and tie.verdict == "ties (2 bits)"
    wrong = bench.compare_masks(_packed([0, 0, 1, 1, 0]), _packed([1, 0, 1, 1, 0]), scores)
    assert wrong.differing == 1 and not wrong.ties_only and wrong.verdict == "NO (1 bits)"
    # without scores no difference can be explained
    assert not bench.compare_masks(_packed([0, 0, 1, 1, 0]), _packed([0, 1, 0, 1, 0])).ties_only
    # a global threshold that is not the differing units' score
    assert not bench.compare_masks(_packed([0, 0, 1, 1, 0]), _packed([0, 1, 0, 1, 0]), scores, 0.3).ties_only
    assert bench.compare_masks(_packed([0] * 9), _packed([0, 0, 1])).differing == -1


def test_compare_masks_rows_tie_on_their_norm():
    w = torch.tensor([[3.0, 4.0], [0.0, 5.0], [1.0, 1.0]])  # row norms 5, 5, sqrt(2)
    scores = lambda i: bench.unit_scores(w, rows=True)  # noqa: E731
    mine, theirs = [[0, 0], [1, 1], [0, 0]], [[1, 1], [0, 0], [0, 0]]
    assert bench.compare_masks(_packed(mine), _packed(theirs), scores).ties_only
    assert not bench.compare_masks(_packed(mine), _packed([[0, 0], [1, 1], [1, 1]]), scores).ties_only


@pytest.mark.parametrize("case", ["local_l1", "ln_structured", "global_l1"])
def test_check_exact_accepts_torch_and_rejects_a_swap(case):
    shapes = [(6, 5), (4, 7)]
    model = bench.build_model(shapes, torch.float32, torch.device("cpu"), seed=3)
    bench.prune_call("torch", case, model, 0.5)
    masks = [m.weight_mask != 0 for m in model]
    assert bench.check_exact(case, model, masks, 0.5, 3, torch.float32, torch.device("cpu"))["exact"]
    bad = [m.clone() for m in masks]
    bad[0] = ~bad[0]
    assert not bench.check_exact(case, model, bad, 0.5, 3, torch.float32, torch.device("cpu"))["exact"]


def test_unprune_restores_the_dense_weights():
    import torch.nn.utils.prune as tp

    model = bench.build_model([(8, 4), (3, 8)], torch.float32, torch.device("cpu"), seed=2)
    tp.global_unstructured(bench.pairs(model), pruning_method=tp.L1Unstructured, amount=0.5)
    bench.unprune_(model)
    for i, m in enumerate(model):
        assert not hasattr(m, "weight_orig") and not hasattr(m, "weight_mask") and not m._forward_pre_hooks
        assert isinstance(m.weight, torch.nn.Parameter)
        assert torch.equal(m.weight.detach(), bench.layer_weight(tuple(m.weight.shape), torch.float32, "cpu", 2, i))
    with torch.no_grad():
        model[0].weight.zero_()
    bench.regenerate_(model, 2)
    assert torch.equal(model[0].weight.detach(), bench.layer_weight((8, 4), torch.float32, "cpu", 2, 0))


def test_torch_fits_names_its_need():
    shapes = [(1000, 1000)]
    fits, why = bench.torch_fits("global_l1", shapes, torch.float32, 0.5, torch.device("cpu"), available=10**12)
    assert fits and why == ""
    fits, why = bench.torch_fits("global_l1", shapes, torch.float32, 0.5, torch.device("cpu"), available=10**6)
    assert not fits and "GiB available" in why and "model +" in why


@needs_proc
def test_main_prints_the_table_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm is optional: the bar falls back to a silent one
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    status = bench.main(["--params", "100K", "--repeat", "1", "--cases", "global_l1", "--skip-torch"])
    out = capsys.readouterr().out
    assert status == 0
    assert "global L1 (global_unstructured)" in out and "torch skipped for global_l1: --skip-torch" in out
    assert "| exact" in out


# ---- floors: what each case is judged against


def test_every_case_has_a_floor():
    assert set(bench.CASE_FLOORS) == set(bench.CASES)
    assert set(bench.CASE_FLOORS.values()) == set(bench.FLOORS)
    assert bench.case_floor("global_l1") is bench.FLOORS["two_copies"]
    assert bench.case_floor("local_l1").name == bench.case_floor("ln_structured").name == "two_copies"
    assert bench.case_floor("forward").forward and not bench.case_floor("sparsify").forward
    with pytest.raises(ValueError, match="unknown case"):
        bench.case_floor("nope")


def test_floor_operations_do_their_work():
    model = bench.build_model([(16, 32), (5, 7)], torch.float32, torch.device("cpu"), seed=4)
    ws = [m.weight.detach() for m in model]
    before = [w.clone() for w in ws]
    copies = bench.FLOORS["two_copies"].run(model, None)
    assert len(copies) == 4
    for i, c in enumerate(copies):  # new memory, the weights' values
        assert torch.equal(c, ws[i // 2]) and c.data_ptr() != ws[i // 2].data_ptr()
    assert copies[0].data_ptr() != copies[1].data_ptr()
    assert bench.first_touch_copies(ws, 1)[1].shape == (5, 7)
    with pytest.raises(ValueError, match="copies"):
        bench.first_touch_copies(ws, -1)
    # the in-place pass keeps the values and allocates ceil(n / 8) fresh bytes per weight
    ptrs = [w.data_ptr() for w in ws]
    bits = bench.FLOORS["in_place_bits"].run(model, None)
    assert [b.numel() for b in bits] == [64, 5] and all(bool((b == 255).all()) for b in bits)
    assert all(torch.equal(w, b) for w, b in zip(ws, before)) and [w.data_ptr() for w in ws] == ptrs
    # the dense forward: the plain matmul, pruned layers read through weight_orig
    xs = bench.forward_inputs(model, torch.float32, "cpu")
    dense = bench.FLOORS["dense_forward"].run(model, xs)
    assert all(torch.equal(o, xs[w.shape[1]] @ w.t()) for o, w in zip(dense, ws))
    bench.prune_call("torch", "forward", model, 0.5)
    assert list(bench.forward_inputs(model, torch.float32, "cpu")) == list(xs)
    pruned = bench.forward_all(model, xs)
    assert all(torch.equal(o, xs[m.weight_orig.shape[1]] @ m.weight.t()) for o, m in zip(pruned, model))


@needs_proc
@pytest.mark.parametrize("case, floor, runs", [("global_l1", "two_copies", 2), ("sparsify", "in_place_bits", 2),
                                               ("forward", "dense_forward", 15)])
def test_worker_times_a_floor_like_its_case(tmp_path, case, floor, runs):
    job = dict(_job(tmp_path, case, "floor"), repeat=2)
    result = bench.worker(job)
    assert result["floor"] == floor
    assert len(result["times"]) == runs == len(bench.worker(dict(job, lib="fastprune"))["times"])
    assert all(t > 0 for t in result["times"]) and min(result["peaks"]) >= 0
    assert result["bytes"] == 4 * (16 * 32 + 32 * 16 + 8 * 8)


@pytest.fixture(scope="module")
def floor_run(tmp_path_factory):
    """One run of the command with a case of every floor (torch too), its JSON in OUT/bench_7b.json.

    The JSON's name is the one scripts/gpu_check.sh gives it, so the folder also serves
    scripts/gpu_check_summary.py.
    """
    if not proc_ok:
        pytest.skip("peak RSS needs a writable /proc/self/clear_refs (Linux)")
    out = tmp_path_factory.mktemp("floor_run")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = bench.main(["--params", "100K", "--repeat", "2", "--cases", "global_l1,local_l1,forward,sparsify",
                             "--quiet", "--json", str(out / "bench_7b.json")])
    return status, buf.getvalue(), out


def test_json_has_floor_ratios(floor_run):
    """Every row carries its floor's time, and the ratios are case time / floor time of the same run."""
    status, text, out = floor_run
    assert status == 0, text
    data = json.loads((out / "bench_7b.json").read_text())
    rows, info = data["rows"], data["info"]
    assert set(info["floors"]) == {"two_copies", "dense_forward", "in_place_bits"}
    assert info["floors"]["two_copies"]["cases"] == ["global_l1", "local_l1"]
    for r in rows:
        fl = info["floors"][r["floor"]]
        assert r["floor"] == bench.CASE_FLOORS[r["case"]] and r["floor_s"] == fl["s"] == min(fl["times"]) > 0
        assert math.isclose(r["floor_ratio"], r["fastprune_s"] / r["floor_s"])
        assert math.isclose(r["torch_floor_ratio"], r["torch_s"] / r["floor_s"])
        assert len(fl["times"]) == (15 if r["case"] == "forward" else 2)
        # the table prints the same ratio on the case's line
        line = next(ln for ln in text.splitlines() if ln.startswith(bench.CASE_TITLES[r["case"]] + " "))
        assert f"| {r['floor_ratio']:.2f}x " in line and f"| {bench.format_time(r['floor_s'])} " in line
        # what scripts/gpu_check_summary.py and older readers use is still there
        assert {"case", "fastprune_s", "torch_s", "fastprune_peak", "torch_peak", "error", "exact",
                "identical"} <= set(r)
    assert rows[0]["floor_s"] == rows[1]["floor_s"]  # one floor measurement serves both cases
    assert info["memcpy"] > 0 and "fastprune / floor" in text.splitlines()[0]
    assert "floor of global_l1, local_l1 (two_copies): two first-touch copies" in text
    assert "bandwidth reference (warm, not a floor)" in text


def test_gpu_check_summary_reads_the_json(floor_run):
    """scripts/gpu_check_summary.py reads the command's JSON (what scripts/gpu_check.sh leaves) with its floors."""
    status, _, out = floor_run
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check_summary.py"), str(out), "1"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "bench_7b.json").read_text())
    for r in data["rows"]:
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"| {r['case']} |"))
        assert f"| {r['floor_ratio']:.2f}x |" in line
    assert "two first-touch copies" in proc.stdout
    assert json.loads((out / "summary.json").read_text())["failures"] == []


@needs_proc
def test_a_floor_that_does_not_fit_is_skipped_and_said(monkeypatch, capsys):
    def no_room(floor, *args, **kwargs):
        return (False, "needs ~99.0 GiB (model + ~98.0 GiB), 1.0 GiB available") if floor.name == "two_copies" \
            else (True, "")

    monkeypatch.setattr(bench.runner, "floor_fits", no_room)
    rows, info = bench.run_benchmark(params=100_000, repeat=1, cases=["global_l1", "sparsify"], skip_torch=True,
                                     quiet=True)
    assert info["floors"]["two_copies"]["skipped"].startswith("needs ~99.0 GiB") and "s" not in info["floors"]["two_copies"]
    assert rows[0]["floor_s"] is None and rows[0]["floor_ratio"] is None and rows[0]["fastprune_s"] > 0
    assert rows[1]["floor_s"] > 0 and rows[1]["floor_ratio"] > 0
    text = bench.format_table(rows, info)
    assert "floor of global_l1 (two_copies): two first-touch copies" in text and "skipped: needs ~99.0 GiB" in text


def test_a_floor_that_failed_is_an_error():
    row = {"case": "global_l1", "fastprune_s": 0.2, "torch_s": None, "fastprune_peak": 1, "torch_peak": None,
           "error": "", "exact": True, "identical": "exact", "floor": "two_copies", "floor_s": None,
           "floor_ratio": None, "torch_floor_ratio": None}
    info = {"model": "m", "numel": 10, "model_bytes": 40, "dtype": "float32", "device": "cpu", "amount": 0.5,
            "repeat": 1, "skipped": {}, "machine": "x", "torch": "t", "load": (0.0, 0.0, 0.0), "memcpy": None,
            "floors": {"two_copies": {"what": "w", "cases": ["global_l1"], "error": "killed (out of memory?)"}}}
    text = bench.format_table([row], info)
    assert "floor two_copies: killed (out of memory?)" in text
    assert next(ln for ln in text.splitlines() if ln.startswith("global L1")).count("| error ") == 1


def test_floor_fits_names_its_need():
    shapes = [(1024, 1024)]
    assert bench.floor_fits(bench.FLOORS["two_copies"], shapes, torch.float32, "cpu", available=10**9) == (True, "")
    fits, why = bench.floor_fits(bench.FLOORS["two_copies"], shapes, torch.float32, "cpu", available=10**6)
    assert not fits and "GiB available" in why
    # the 1-bit floor needs N/8 bytes above the model: it fits where two copies do not
    avail = int(4 * 2**20 * 1.5)
    assert bench.floor_fits(bench.FLOORS["in_place_bits"], shapes, torch.float32, "cpu", available=avail)[0]
    assert not bench.floor_fits(bench.FLOORS["two_copies"], shapes, torch.float32, "cpu", available=avail)[0]


_FAULTS_CHILD = r"""
import json, resource, torch
from fastprune import bench

def faults_of_a_run():  # what a case's run allocates: layer-sized tensors (16 MB), written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones(4 * 2**20) for _ in range(8)]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del xs
    return after - before

runs = [faults_of_a_run() for _ in range(6)]
bench.fresh_allocations(torch.device("cpu"))
print(json.dumps({"runs": runs, "after": faults_of_a_run(), "trim": bench.memory._MALLOC_TRIM is not None}))
"""


def test_fresh_allocations_hands_freed_cpu_memory_back():
    """In a fresh process (as the worker's), memory a run freed is new pages again after it: first touch."""
    import resource

    proc = subprocess.run([sys.executable, "-c", _FAULTS_CHILD], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["trim"]:
        pytest.skip("the C library has no malloc_trim")
    pages = 8 * 16 * 2**20 // resource.getpagesize()
    if min(out["runs"]) > pages // 10:
        pytest.skip(f"this C library hands freed memory back by itself (faults per run: {out['runs']})")
    assert out["after"] >= 0.9 * pages, out


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_fresh_allocations_empties_the_caching_allocator():
    dev = torch.device("cuda")
    x = torch.empty(64 * 2**20, dtype=torch.uint8, device=dev)
    del x  # its block stays in the cache
    reserved = torch.cuda.memory_reserved(dev)
    assert reserved >= 64 * 2**20
    bench.fresh_allocations(dev)
    assert torch.cuda.memory_reserved(dev) <= reserved - 64 * 2**20


@needs_cuda
def test_cuda_floors_on_the_device(tmp_path):
    """--device cuda: the floors run on the device and their ratios are in the JSON."""
    out = tmp_path / "cuda.json"
    status = bench.main(["--device", "cuda", "--dtype", "bfloat16", "--params", "1M", "--cases",
                         "global_l1,sparsify,forward", "--amount", "0.5", "--repeat", "2", "--quiet",
                         "--json", str(out)])
    data = json.loads(out.read_text())
    assert status == 0, data
    assert data["info"]["device"].startswith("cuda")
    for r in data["rows"]:
        assert r["floor_s"] > 0 and math.isclose(r["floor_ratio"], r["fastprune_s"] / r["floor_s"])
    # the floor's work on the device: copies are new device tensors, the bits fresh device bytes
    model = bench.build_model([(64, 64)], torch.bfloat16, torch.device("cuda"), seed=0)
    copies = bench.FLOORS["two_copies"].run(model, None)
    assert all(c.is_cuda and torch.equal(c, model[0].weight.detach()) for c in copies)
    bits = bench.FLOORS["in_place_bits"].run(model, None)
    assert bits[0].is_cuda and bits[0].numel() == 512
