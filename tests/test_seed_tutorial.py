"""The seed tutorial (shared/seeds 000-002) runs on fastprune and prints torch's figures."""
import torch
import torch.nn.utils.prune as tp

import fastprune as fp

from helpers import tutorial


def test_tutorial_gives_torchs_results():
    ours = tutorial.run(fp, seed=0)
    theirs = tutorial.run(tp, seed=0)
    assert ours.keys() == theirs.keys()
    for key in ours:
        a, b = ours[key], theirs[key]
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), key
        else:
            assert a == b, key
    assert ours["global sparsity"] == "20.00%"
    assert ours["history"] == ["RandomUnstructured", "LnStructured"]
    assert ours["state_dict_keys"] == [
        "conv1.weight_orig", "conv1.bias_orig", "conv1.weight_mask", "conv1.bias_mask",
        "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
        "fc3.weight", "fc3.bias",
    ]


def test_tutorial_script_runs(capsys):
    tutorial.run(fp, seed=1, verbose=True)
    printed = capsys.readouterr().out
    assert "Global sparsity: 20.00%" in printed
