"""Smoke-run prune_channels on more transformers architectures (tiny random configs).

    python examples/structured_more_models.py            # all
    python examples/structured_more_models.py swin t5    # some

For each model: prune 30% of every channel group, check the output shape is
unchanged and that torch.save/torch.load reproduces the pruned outputs, and
print the parameter reduction and the first groups that shrank. Models whose
outputs expose hidden states (T5's encoder_last_hidden_state, CLIP's
last_hidden_state) keep their hidden size, since it is part of the output.
"""
import io
import sys

import torch

import fastprune
from fastprune.structured.trace import split_example_inputs


def cases():
    import transformers as T

    img = (torch.randn(2, 3, 32, 32),)
    ids = (torch.randint(0, 96, (2, 9)),)
    lm = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4)
    return {
        "mistral": lambda: (T.MistralForCausalLM(T.MistralConfig(**lm, num_key_value_heads=2)), ids),
        "qwen2": lambda: (T.Qwen2ForCausalLM(T.Qwen2Config(**lm, num_key_value_heads=2)), ids),
        "gemma": lambda: (T.GemmaForCausalLM(T.GemmaConfig(**lm, num_key_value_heads=2, head_dim=16)), ids),
        "phi3": lambda: (T.Phi3ForCausalLM(T.Phi3Config(**lm, num_key_value_heads=2, pad_token_id=0)), ids),
        "gpt_neox": lambda: (T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**lm)), ids),
        "falcon": lambda: (T.FalconForCausalLM(T.FalconConfig(
            vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            new_decoder_architecture=True, num_kv_heads=2)), ids),
        "distilbert": lambda: (T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=96, dim=32, hidden_dim=64, n_layers=2, n_heads=4)), ids),
        "roberta": lambda: (T.RobertaForSequenceClassification(T.RobertaConfig(
            vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=40)), ids),
        "t5": lambda: (T.T5ForConditionalGeneration(T.T5Config(
            vocab_size=96, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
            decoder_start_token_id=0)), ((), {"input_ids": ids[0], "decoder_input_ids": ids[0]})),
        "efficientnet": lambda: (T.EfficientNetForImageClassification(T.EfficientNetConfig(
            image_size=32, depth_coefficient=0.2)), img),
        "regnet": lambda: (T.RegNetForImageClassification(T.RegNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8)), img),
        "convnextv2": lambda: (T.ConvNextV2ForImageClassification(T.ConvNextV2Config(
            num_stages=2, hidden_sizes=[16, 32], depths=[1, 1])), img),
        "swin": lambda: (T.SwinForImageClassification(T.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
            window_size=4)), img),
        "deit": lambda: (T.DeiTForImageClassification(T.DeiTConfig(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4)), img),
        "clip_vision": lambda: (T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4)), img),
    }


def main_output(model, inputs):
    args, kwargs = split_example_inputs(inputs)
    with torch.no_grad():
        out = model(*args, **kwargs)
    for key in ("logits", "image_embeds", "last_hidden_state"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    return out[0]


def main(names):
    torch.manual_seed(0)
    failures = 0
    for name, build in cases().items():
        if names and name not in names:
            continue
        model, inputs = build()
        model.eval()
        before = main_output(model, inputs)
        try:
            report = fastprune.prune_channels(model, inputs, 0.3)
        except Exception as exc:  # noqa: BLE001 - reported, the model is unchanged
            failures += 1
            print(f"{name:<13} FAILED {type(exc).__name__}: {str(exc)[:200]}")
            continue
        after = main_output(model, inputs)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        same = torch.equal(main_output(torch.load(buf, weights_only=False), inputs), after)
        shrunk = [f"{n} {b}->{a}" for n, b, a in report.layers if a != b][:2]
        ok = after.shape == before.shape and same
        failures += not ok
        print(f"{name:<13} {'ok' if ok else 'MISMATCH'}  params -{100 * report.param_reduction:.0f}%  "
              f"{'; '.join(shrunk)}")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
