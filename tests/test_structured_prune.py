"""prune_channels (ranking, budgets, round_to, ignored layers) and remove_masked_channels."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastprune
from fastprune.structured import count_params

from test_structured_graph import (DenseLike, GroupNormNet, ResNetLike, SplitLike,
                                   TinyTransformer, assert_unchanged, image, snapshot)


pytestmark = pytest.mark.usefixtures("one_thread")


class ConvPair(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))


def test_dead_channels_are_ranked_first_and_removal_is_exact():
    m = ConvPair().eval()
    with torch.no_grad():
        m.conv1.weight[[1, 4]] = 0
        m.conv2.weight[:, [1, 4]] = 0  # channels 1 and 4 carry nothing anywhere
        m.conv2.weight[[0, 6]] = 0
        m.conv3.weight[:, [0, 6]] = 0
    x = image()
    ref = m(x)
    report = fastprune.prune_channels(m, x, 2)
    assert m.conv1.out_channels == 6 and m.conv2.out_channels == 6
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    assert report.layers == [("conv1", 8, 6), ("conv2", 8, 6)]


def test_local_fraction_per_group_and_report():
    m = ResNetLike().eval()
    x = image()
    before = count_params(m)
    report = fastprune.prune_channels(m, x, 0.25)
    assert report.params_before == before and report.params_after == count_params(m)
    assert report.params_after < before and report.macs_after < report.macs_before
    assert dict((n, (b, a)) for n, b, a in report.layers) == {
        "stem (+4 coupled)": (8, 6), "down (+1 coupled)": (12, 9)}
    assert m(x).shape == (2, 5)
    text = str(report)
    assert "params:" in text and "MACs:" in text and "stem (+4 coupled)" in text


def test_never_empties_a_layer():
    for model, x in ((ResNetLike(), image()), (DenseLike(), image()), (SplitLike(), image()),
                     (GroupNormNet(), image())):
        fastprune.prune_channels(model, x, 1.0)
        for mod in model.modules():
            for p in mod.parameters(recurse=False):
                assert p.numel() > 0
        model(x)
    m = DenseLike()
    fastprune.prune_channels(m, image(), 1.0, global_pruning=True)
    assert m.conv1.out_channels >= 1 and m.stem.out_channels >= 1


def test_global_pruning_prefers_weak_layers():
    m = ConvPair(c=16).eval()
    with torch.no_grad():
        m.conv1.weight.mul_(100.0)  # conv1's channels are much stronger than conv2's
    report = fastprune.prune_channels(m, image(), 0.25, global_pruning=True)
    layers = {n: (b, a) for n, b, a in report.layers}
    assert layers["conv1"][0] - layers["conv1"][1] + layers["conv2"][0] - layers["conv2"][1] == 8
    assert layers["conv1"] == (16, 16) and layers["conv2"] == (16, 8)


def test_round_to_keeps_multiples():
    m = ConvPair(c=16).eval()
    report = fastprune.prune_channels(m, image(), 0.3, round_to=4)
    # 0.3 * 16 rounds to 5 channels; keeping 11 is no multiple of 4, so 12 stay
    assert m.conv1.out_channels == 12 and m.conv2.out_channels == 12
    assert all(a % 4 == 0 for _, _, a in report.layers)


def test_attention_heads_are_the_unit():
    m = TinyTransformer(heads=4, kv_heads=4)
    ids = torch.randint(0, 20, (2, 5))
    fastprune.prune_channels(m, ids, 0.5, ignored_layers=[m.embed])
    assert m.attn1.num_heads == 2 and m.attn1.q_proj.out_features == 16
    assert m.attn2.q_proj.out_features == 16 and m.attn2.k_proj.out_features == 16
    assert m.embed.embedding_dim == 32  # ignored: the hidden size stays
    assert m(ids).shape == (2, 5, 20)


def test_ignored_layers_keep_outputs_but_inputs_follow():
    m = ConvPair().eval()
    fastprune.prune_channels(m, image(), 0.5, ignored_layers=["conv2"])
    assert m.conv2.out_channels == 8 and m.conv1.out_channels == 4
    assert m.conv2.in_channels == 4
    with pytest.raises(ValueError, match="ignored_layers"):
        fastprune.prune_channels(m, image(), 0.5, ignored_layers=["nope"])
    with pytest.raises(TypeError, match="ignored_layers"):
        fastprune.prune_channels(m, image(), 0.5, ignored_layers=[3])


@pytest.mark.parametrize("importance", ["l1", "l2", "linf", "random"])
def test_importances(importance):
    m = SplitLike()
    x = image()
    fastprune.prune_channels(m, x, 0.3, importance=importance, generator=torch.Generator().manual_seed(0))
    assert m(x).shape == (2, 2)
    assert m.expand.out_channels < 16


@pytest.mark.parametrize("kwargs, exc", [
    ({"amount": -0.1}, ValueError), ({"amount": 1.5}, ValueError), ({"amount": "a"}, TypeError),
    ({"amount": True}, TypeError), ({"amount": -1}, ValueError),
    ({"amount": 0.3, "importance": "l3"}, ValueError), ({"amount": 0.3, "importance": ["l2"]}, TypeError),
    ({"amount": 0.3, "round_to": 0}, ValueError), ({"amount": 0.3, "round_to": 2.0}, TypeError),
])
def test_bad_arguments_leave_model_untouched(kwargs, exc):
    m = ResNetLike()
    snap = snapshot(m)
    with pytest.raises(exc):
        fastprune.prune_channels(m, image(), **kwargs)
    assert_unchanged(m, snap)
    with pytest.raises(TypeError):
        fastprune.prune_channels("model", image(), 0.3)


def test_zero_amount_changes_nothing():
    m = ResNetLike()
    snap = snapshot(m)
    report = fastprune.prune_channels(m, image(), 0.0)
    assert report.params_after == report.params_before
    assert_unchanged(m, snap)


def test_works_on_reparametrised_modules():
    m = ConvPair().eval()
    fastprune.l1_unstructured(m.conv2, "weight", amount=0.5)
    x = image()
    fastprune.prune_channels(m, x, 0.25)
    assert m.conv2.weight_orig.shape == m.conv2.weight_mask.shape == m.conv2.weight.shape
    assert m.conv2.weight_orig.shape == (6, 6, 3, 3)
    torch.testing.assert_close(m.conv2.weight, m.conv2.weight_orig * m.conv2.weight_mask)
    out = m(x)
    fastprune.remove(m.conv2, "weight")
    torch.testing.assert_close(m(x), out)


def test_remove_masked_output_channels_exact():
    m = ConvPair().eval()
    fastprune.ln_structured(m.conv1, "weight", amount=0.5, n=2, dim=0)
    x = image()
    ref = m(x)
    dead = (m.conv1.weight_mask.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    assert len(dead) == 4
    report = fastprune.structured.remove_masked_channels(m, x)
    assert m.conv1.out_channels == 4 and m.conv2.in_channels == 4
    assert m.conv1.weight_mask.shape == (4, 3, 3, 3) and bool(m.conv1.weight_mask.all())
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    assert report.params_after < report.params_before
    fastprune.remove(m.conv1, "weight")
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_remove_masked_input_channels_exact():
    m = ConvPair().eval()
    fastprune.random_structured(m.conv2, "weight", amount=3, dim=1)
    x = image()
    ref = m(x)
    fastprune.remove_masked_channels(m, x)
    assert m.conv1.out_channels == 5 and m.conv2.in_channels == 5
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_remove_masked_keeps_channels_other_layers_still_use():
    m = ResNetLike().eval()
    # block1.conv1 reads the residual stream, but down/short/block2 read it too
    fastprune.ln_structured(m.block1.conv1, "weight", amount=2, n=1, dim=1)
    report = fastprune.remove_masked_channels(m, image())
    assert report.params_after == report.params_before
    assert m.stem.out_channels == 8


def test_masks_from_torch_prune_are_removed_too():
    import torch.nn.utils.prune as torch_prune

    m = ConvPair().eval()
    torch_prune.ln_structured(m.conv2, "weight", amount=3, n=2, dim=0)
    x = image()
    ref = m(x)
    fastprune.remove_masked_channels(m, x)
    assert m.conv2.out_channels == 5 and m.conv3.in_channels == 5
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    torch_prune.remove(m.conv2, "weight")
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_iterative_rounds_and_low_precision():
    m = TinyTransformer().to(torch.bfloat16)
    ids = torch.randint(0, 20, (2, 5))
    first = fastprune.prune_channels(m, ids, 0.25)
    second = fastprune.prune_channels(m, ids, 0.25)
    assert second.params_before == first.params_after > second.params_after
    assert m.up.weight.dtype == torch.bfloat16 and m(ids).shape == (2, 5, 20)


def test_quickstart_example_runs(capsys):
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "structured_quickstart.py"
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "Plan: remove 2 channel(s) of stem.weight" in out and "params:" in out
