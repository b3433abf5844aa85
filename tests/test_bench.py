"""The benchmark command's pieces, on tiny models (no timing is asserted)."""
import argparse
import os
import sys

import pytest
import torch

from fastprune import bench
from fastprune.ops import pack_mask

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
    assert "fastprune time / memcpy time = 2.00" in text
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
