"""GradualPruningCallback: gradual magnitude pruning inside transformers.Trainer (CPU, tiny random model)."""
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install 'fastprune[transformers]')")

from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import fastprune as fp  # noqa: E402
from fastprune.core.validation import _compute_nparams_toprune  # noqa: E402
from fastprune.transformers_callback import GradualPruningCallback, default_parameters  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, length=12):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Recorder(TrainerCallback):
    """After every step: pruned units are zero, and the masks only grow."""

    def __init__(self, cb):
        self.cb = cb
        self.pruned = []
        self.previous = None

    def on_step_end(self, args, state, control, **kwargs):
        ms = self.cb.masks
        self.pruned.append(0 if ms is None else ms.num_pruned())
        if ms is None:
            return
        masks = [ms.mask(i) for i in range(len(ms))]
        for (module, name), keep in zip(ms.parameters, masks):
            assert bool((getattr(module, name)[~keep] == 0).all())
        if self.previous is not None:
            assert all(bool((k <= p).all()) for k, p in zip(masks, self.previous))
        self.previous = masks


def train(tmp_path, cb, max_steps=6):
    model = tiny_llama()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=max_steps, per_device_train_batch_size=4,
        learning_rate=1e-2, weight_decay=0.1, report_to="none", save_strategy="no",
        logging_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )
    recorder = Recorder(cb)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[cb, recorder])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    return model, recorder, before


def test_global_schedule_exact_sparsity_and_save_pretrained(tmp_path):
    cb = GradualPruningCallback(0.75, start_step=1, end_step=5, frequency=2, schedule="exponential")
    model, recorder, before = train(tmp_path, cb)
    pairs = default_parameters(model)
    assert (model.lm_head, "weight") not in pairs and len(pairs) == 2 * 7
    total = sum(getattr(m, n).numel() for m, n in pairs)
    assert cb.round_steps == [1, 3, 5]
    counts = fp.pruning_schedule(total, 0.75, 3, "exponential")
    # rounds at steps 1, 3, 5: the count after each step follows the schedule
    assert recorder.pruned == [counts[0], counts[0], counts[1], counts[1], counts[2], counts[2]]
    assert cb.masks.num_pruned() == _compute_nparams_toprune(0.75, total)
    # the kept weights did train
    w = model.model.layers[0].mlp.up_proj.weight
    keep = cb.masks.mask((model.model.layers[0].mlp.up_proj, "weight"))
    assert not torch.equal(w[keep], before["model.layers.0.mlp.up_proj.weight"][keep])
    # plain weights with zeros: save_pretrained / from_pretrained keep them
    model.save_pretrained(tmp_path / "out")
    again = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in default_parameters(again))
    assert zeros >= cb.masks.num_pruned()


def test_local_linear_schedule_from_step_zero(tmp_path):
    cb = GradualPruningCallback(0.5, frequency=3, schedule="linear", scope="local")
    model, recorder, _ = train(tmp_path, cb, max_steps=6)
    assert cb.round_steps == [0, 3, 6]
    for (m, n), kept in zip(cb.masks.parameters, cb.masks.kept_counts()):
        numel = getattr(m, n).numel()
        assert numel - kept == _compute_nparams_toprune(0.5, numel)


def test_end_step_beyond_max_steps_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="end_step"):
        train(tmp_path, GradualPruningCallback(0.5, end_step=100), max_steps=2)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"amount": 1.5}, ValueError),
        ({"amount": 0.5, "frequency": 0}, ValueError),
        ({"amount": 0.5, "start_step": 1.5}, TypeError),
        ({"amount": 0.5, "scope": "everywhere"}, ValueError),
        ({"amount": 0.5, "method": "snip"}, ValueError),
        ({"amount": 0.5, "schedule": "cubic"}, ValueError),
        ({"amount": 0.5, "start_step": 4, "end_step": 2}, ValueError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        GradualPruningCallback(**kwargs)


def test_resume_recreates_the_masks_from_zeros():
    model = tiny_llama()
    state = types.SimpleNamespace(global_step=0, max_steps=4)
    cb = GradualPruningCallback(0.6, frequency=2, parameters=lambda m: default_parameters(m)[:4])
    cb.on_train_begin(None, state, None, model=model)
    for step in (1, 2):
        state.global_step = step
        cb.on_step_end(None, state, None)
    expected = [cb.masks.mask(i).clone() for i in range(len(cb.masks))]
    cb.masks.remove()  # a new process: nothing remembered
    resumed = GradualPruningCallback(0.6, frequency=2, parameters=lambda m: default_parameters(m)[:4])
    resumed.on_train_begin(None, types.SimpleNamespace(global_step=2, max_steps=4), None, model=model)
    assert all(torch.equal(resumed.masks.mask(i), e) for i, e in enumerate(expected))
    state.global_step = 4
    resumed.on_step_end(None, state, None)
    total = sum(getattr(m, n).numel() for m, n in default_parameters(model)[:4])
    assert resumed.masks.num_pruned() == _compute_nparams_toprune(0.6, total)
