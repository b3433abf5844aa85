"""fastprune.lightning.ModelPruning: Lightning's callback, every pruning call on fastprune."""
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as tp
from torch import nn

import fastprune as fp

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.utilities.exceptions import MisconfigurationException  # noqa: E402

from fastprune.lightning import ModelPruning  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(4, 8)
        self.layer2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.layer2(F.relu(self.layer1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 4, generator=g)
        y = torch.randint(0, 2, (16,), generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def fit(model, callback, epochs=3, tmp_path=None, **kwargs):
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=str(tmp_path) if tmp_path else None,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "few workers", "small dataset" advice from Lightning
        trainer.fit(model)
    return trainer


@pytest.fixture
def no_torch_pruning(monkeypatch):
    """Make every torch.nn.utils.prune entry point fail: the callback must not need them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.nn.utils.prune was called")

    for name in ("global_unstructured", "l1_unstructured", "random_unstructured", "ln_structured",
                 "random_structured", "remove"):
        monkeypatch.setattr(tp, name, forbidden)


def test_fit_with_lottery_ticket_ends_at_expected_sparsity(no_torch_pruning, tmp_path):
    torch.manual_seed(0)
    model = TinyModule()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [(model.layer1, "weight"), (model.layer2, "weight")]
    callback = ModelPruning("l1_unstructured", parameters_to_prune=params, amount=0.5,
                            use_lottery_ticket_hypothesis=True, make_pruning_permanent=False)
    fit(model, callback, epochs=3, tmp_path=tmp_path)

    total = 32 + 16
    expected = 24 + 12 + 6  # half of what is left, each of the 3 epochs
    masks = [model.layer1.weight_mask, model.layer2.weight_mask]
    assert sum(int((m == 0).sum()) for m in masks) == expected
    for module, _ in params:
        hooks = list(module._forward_pre_hooks.values())
        assert len(hooks) == 1 and isinstance(hooks[0], fp.BasePruningMethod)
    # The lottery ticket: survivors rewound to their values at setup, masks kept.
    assert torch.equal(model.layer1.weight_orig, init["layer1.weight"])
    assert torch.equal(model.layer2.weight_orig, init["layer2.weight"])
    assert not torch.equal(model.layer1.bias, init["layer1.bias"])  # not in parameters_to_prune: trained
    assert total - expected == sum(int(m.sum()) for m in masks)


def test_default_parameters_permanent_pruning_and_checkpoint(no_torch_pruning, tmp_path):
    torch.manual_seed(1)
    model = TinyModule()
    callback = ModelPruning("l1_unstructured", amount=10, use_lottery_ticket_hypothesis=False)
    trainer = fit(model, callback, epochs=2, tmp_path=tmp_path)
    # weights and biases of both layers, 10 units per epoch, then made permanent
    assert not fp.is_pruned(model)
    assert sorted(n for n, _ in model.named_parameters()) == ["layer1.bias", "layer1.weight",
                                                              "layer2.bias", "layer2.weight"]
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    assert zeros == 20
    path = tmp_path / "ckpt.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert sorted(state) == ["layer1.bias", "layer1.weight", "layer2.bias", "layer2.weight"]


def test_checkpoint_state_dict_is_permanent_while_training_keeps_masks(tmp_path):
    model = TinyModule()
    callback = ModelPruning("l1_unstructured", amount=0.5, make_pruning_permanent=True)
    callback.setup(None, model, "fit")
    callback.apply_pruning(0.5)
    state = callback._make_pruning_permanent_on_state_dict(model)
    assert list(state) == ["layer1.weight", "layer1.bias", "layer2.weight", "layer2.bias"]
    assert torch.equal(state["layer1.weight"], model.layer1.weight_orig.detach() * model.layer1.weight_mask)
    assert fp.is_pruned(model)  # the module itself keeps its reparametrisation


def test_local_structured_pruning_with_callable_amount_and_resampling(no_torch_pruning, tmp_path):
    torch.manual_seed(2)
    model = TinyModule()
    amounts = {0: 0.25, 1: 0.0, 2: 2}
    callback = ModelPruning(
        "ln_structured", parameters_to_prune=[(model.layer1, "weight")], parameter_names=["weight"],
        use_global_unstructured=False, amount=lambda epoch: amounts[epoch], pruning_dim=0, pruning_norm=2,
        use_lottery_ticket_hypothesis=lambda epoch: epoch == 0, resample_parameters=True,
        make_pruning_permanent=False,
    )
    fit(model, callback, epochs=3, tmp_path=tmp_path)
    rows_pruned = int((model.layer1.weight_mask.sum(1) == 0).sum())
    assert rows_pruned == 2 + 2  # 25% of 8 rows, nothing, then 2 more
    assert isinstance(next(iter(model.layer1._forward_pre_hooks.values())), fp.PruningContainer)


@pytest.mark.parametrize("resample", [False, True])
def test_lottery_rewind_or_resample_keeps_masks(resample):
    torch.manual_seed(3)
    model = TinyModule()
    init = model.layer1.weight.detach().clone()
    callback = ModelPruning("l1_unstructured", parameters_to_prune=[(model.layer1, "weight")], amount=0.5,
                            resample_parameters=resample)
    callback.setup(None, model, "fit")
    with torch.no_grad():
        model.layer1.weight.add_(1.0)  # "training"
    callback._run_pruning(0)
    mask = model.layer1.weight_mask
    assert int((mask == 0).sum()) == 16
    if resample:
        assert not torch.equal(model.layer1.weight_orig, init)
        assert not torch.equal(model.layer1.weight_orig, init + 1.0)
        assert model.layer1.weight_orig.abs().max() <= 0.5 + 1e-6  # Linear(4, .) reset bound 1/sqrt(4)
    else:
        assert torch.equal(model.layer1.weight_orig, init)
    assert torch.equal(model.layer1.weight, model.layer1.weight_orig * mask)


def test_torch_method_class_is_swapped_for_fastprune(no_torch_pruning, tmp_path):
    model = TinyModule()
    callback = ModelPruning(tp.L1Unstructured, amount=0.5, parameter_names=["weight"],
                            make_pruning_permanent=False, use_lottery_ticket_hypothesis=False)
    assert callback.pruning_fn is fp.L1Unstructured
    callback.setup(None, model, "fit")
    callback.apply_pruning(0.5)
    hooks = list(model.layer1._forward_pre_hooks.values())
    assert isinstance(hooks[0], fp.BasePruningMethod)
    assert int((model.layer1.weight_mask == 0).sum() + (model.layer2.weight_mask == 0).sum()) == 24


def test_verbose_logs_sparsity(caplog):
    model = TinyModule()
    callback = ModelPruning("random_unstructured", amount=0.5, verbose=2)
    callback.setup(None, model, "fit")
    with caplog.at_level(logging.INFO, logger="fastprune.lightning"):
        callback.apply_pruning(0.5)
    text = caplog.text
    assert "Applied `RandomUnstructured`. Pruned: 0/58 (0.00%) -> 29/58 (50.00%)" in text
    assert text.count("with amount=0.5. Pruned:") == 4  # one line per (module, name)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pruning_fn": "nope"}, "isn't available"),
        ({"pruning_fn": "l1_unstructured", "parameter_names": ["gamma"]}, "parameter_names"),
        ({"pruning_fn": "ln_structured", "use_global_unstructured": False}, "pruning_dim"),
        ({"pruning_fn": "ln_structured", "use_global_unstructured": False, "pruning_dim": 0}, "pruning_norm"),
        ({"pruning_fn": "ln_structured", "pruning_dim": 0, "pruning_norm": 2}, "unstructured"),
        ({"pruning_fn": fp.L1Unstructured, "use_global_unstructured": False}, "use_global_unstructured"),
        ({"pruning_fn": fp.L1Unstructured(0.5)}, "pass the class"),
        ({"pruning_fn": "l1_unstructured", "amount": "half"}, "amount"),
        ({"pruning_fn": "l1_unstructured", "verbose": 3}, "verbose"),
    ],
)
def test_misconfiguration_like_lightning(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        ModelPruning(**kwargs)


def test_parameters_to_prune_must_belong_to_the_model():
    model = TinyModule()
    callback = ModelPruning("l1_unstructured", parameters_to_prune=[(nn.Linear(2, 2), "weight")])
    with pytest.raises(MisconfigurationException, match="don't exist"):
        callback.setup(None, model, "fit")


def test_fastprune_imports_without_lightning():
    code = (
        "import sys\n"
        "sys.modules['lightning'] = None\n"
        "sys.modules['pytorch_lightning'] = None\n"
        "import fastprune\n"
        "assert 'fastprune.lightning' not in sys.modules\n"
        "fastprune.snip\n"
        "try:\n"
        "    import fastprune.lightning\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'fastprune[lightning]'" in out.stdout
