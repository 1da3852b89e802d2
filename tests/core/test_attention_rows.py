"""Recomputed attention rows (``attention_at_layer``) against the unmodified model's eager attention.

Attention-ranked token reduction (PyramidDrop, FastV, MustDrop) ranks image tokens by attention rows it
recomputes for a few query tokens from a decoder layer's input. For every attention class in
``SCORED_ATTENTION`` a tiny random model with the real classes runs a real, unmodified forward with
``output_attentions=True`` on a left-padded batch with images; the recomputed rows must equal the
model's own head-averaged rows and rank the same image tokens first. Backbones outside the list (and
sliding-window layers) must be refused by attention-ranked methods.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

import mmeff
from mmeff.adapters.vlm import SCORED_ATTENTION
from mmeff.errors import UnsupportedModelError
from mmeff.testing import tiny_gemma3, tiny_llava, tiny_qwen2_vl, word_tokenizer
from mmeff.testing.plugin_tests import layer_inputs_and_attentions, sample_images
from mmeff.token_drop.scoring import attention_at_layer

LAYERS = 4
TOP_K = 5
# different lengths, so the two rows are left padded by different amounts
PROMPTS = ["what color is the big circle on the left ?", "describe this image"]


def _text_kwargs(config_cls: type[PretrainedConfig], **overrides) -> dict:
    """Tiny decoder sizes shared by the LLaVA variants (as in ``mmeff.testing.factories``): GQA 4 heads / 2 kv."""
    return dict(
        vocab_size=len(word_tokenizer()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **overrides,
    )


def llava_with_text(text_config: PretrainedConfig, *, attn_implementation: str = "eager", seed: int = 0):
    """A LLaVA (CLIP ViT + projector) over ``text_config``'s decoder, with ``tiny_llava``'s processor."""
    reference_model, processor = tiny_llava(layers=1)
    reference = reference_model.config
    config = LlavaConfig(
        vision_config=reference.vision_config,
        text_config=text_config,
        image_token_id=reference.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model, processor


def _llama():
    return tiny_llava(layers=LAYERS, attn_implementation="eager")


def _mistral():
    return llava_with_text(MistralConfig(**_text_kwargs(MistralConfig, sliding_window=None)))


def _qwen2():
    return llava_with_text(Qwen2Config(**_text_kwargs(Qwen2Config)))


def _qwen2_vl():
    return tiny_qwen2_vl(variant="qwen2_vl", layers=LAYERS, attn_implementation="eager")


def _qwen2_5_vl():
    return tiny_qwen2_vl(variant="qwen2_5_vl", layers=LAYERS, attn_implementation="eager")


def _qwen3_vl():  # q/k norms on the head dim, interleaved M-RoPE, deepstack features after layers 0 and 1
    return tiny_qwen2_vl(variant="qwen3_vl", layers=LAYERS, attn_implementation="eager")


def _gemma3():  # q/k norms, query_pre_attn_scalar, local/global rotary, a 20-token window shorter than the prompts
    return tiny_gemma3(layers=LAYERS, attn_implementation="eager")


BACKBONES: dict[str, Callable] = {
    "LlamaAttention": _llama,
    "MistralAttention": _mistral,
    "Qwen2Attention": _qwen2,
    "Qwen2VLAttention": _qwen2_vl,
    "Qwen2_5_VLAttention": _qwen2_5_vl,
    "Qwen3VLTextAttention": _qwen3_vl,
    "Gemma3Attention": _gemma3,
}


def test_every_scored_attention_class_has_a_reference_check():
    """Adding a class to SCORED_ATTENTION without a backbone here fails."""
    assert set(SCORED_ATTENTION) == set(BACKBONES), (
        f"SCORED_ATTENTION {sorted(SCORED_ATTENTION)} vs backbones checked here {sorted(BACKBONES)}"
    )


def _query_slots(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """Per row: the last prompt token, the first token after the last image token and a mid-text token."""
    length = input_ids.shape[1]
    slots = []
    for b in range(input_ids.shape[0]):
        last_image = int(image_mask[b].nonzero().max())
        after = last_image + 1
        middle = (after + length - 1) // 2
        assert attention_mask[b, after:].all()
        slots.append([length - 1, after, middle])
    slots_t = torch.tensor(slots)
    assert (slots_t[:, 1] < slots_t[:, 2]).all() and (slots_t[:, 2] < slots_t[:, 0]).all()
    return slots_t


@pytest.mark.parametrize("attention_class", sorted(BACKBONES))
def test_recomputed_rows_match_eager_output_attentions(attention_class):
    model, processor = BACKBONES[attention_class]()
    pipe = mmeff.wrap(model, processor)
    adapter = pipe.adapter
    assert {type(layer.self_attn).__name__ for layer in adapter.layers} == {attention_class}
    assert adapter.attn_implementation == "eager"

    inputs = adapter.build_inputs(sample_images(), PROMPTS)
    mask = inputs["attention_mask"].bool()
    pads = (~mask).sum(1)
    assert pads.min() == 0 and pads.max() > 0 and len(set(pads.tolist())) == 2, "rows must be padded differently"
    image_mask = adapter.image_token_mask(inputs["input_ids"])
    assert (image_mask.sum(1) > TOP_K).all()
    slots = _query_slots(inputs["input_ids"], mask, image_mask)

    out, captured = layer_inputs_and_attentions(model, adapter.layers, inputs)
    attentions = out.attentions
    assert len(attentions) == LAYERS and sorted(captured) == list(range(LAYERS))

    batch_idx = torch.arange(slots.shape[0])[:, None]
    for layer_idx in range(LAYERS):
        hidden, cos_sin = captured[layer_idx]
        with torch.no_grad():
            got = attention_at_layer(adapter, layer_idx, hidden, cos_sin, slots, mask)
        # (B, H, L, L) -> rows of the query slots, head-averaged: (B, Q, L)
        want = attentions[layer_idx].permute(0, 2, 1, 3)[batch_idx, slots].mean(2)
        assert got.shape == want.shape
        where = f"{attention_class} layer {layer_idx}"
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=lambda m, w=where: f"{w}: {m}")
        candidates = image_mask[:, None, :].expand_as(got)
        top_got = got.masked_fill(~candidates, float("-inf")).topk(TOP_K, dim=-1).indices
        top_want = want.masked_fill(~candidates, float("-inf")).topk(TOP_K, dim=-1).indices
        assert torch.equal(top_got, top_want), f"{where}: top-{TOP_K} image tokens {top_got} vs {top_want}"
        assert image_mask.gather(1, top_got.flatten(1)).all()


def _has_hooks(model: torch.nn.Module) -> bool:
    return any("_mmeff_hooks" in m.__dict__ for m in model.modules())


def test_unlisted_attention_is_refused_by_attention_ranked_methods():
    text = Qwen3Config(**_text_kwargs(Qwen3Config, head_dim=8))
    model, processor = llava_with_text(text, attn_implementation="sdpa")
    name = type(model.get_decoder().layers[0].self_attn).__name__
    assert name == "Qwen3Attention" and name not in SCORED_ATTENTION
    pipe = mmeff.wrap(model, processor)
    with pytest.raises(UnsupportedModelError, match=name):
        pipe.add_plugin("pyramid_drop")
    assert not _has_hooks(model)
    assert "pyramid_drop" not in pipe.plugins
    pipe.add_plugin("random_drop")
    assert len(pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)) == 2


def test_sliding_window_layers_are_refused():
    text = MistralConfig(**_text_kwargs(MistralConfig, sliding_window=4))
    model, processor = llava_with_text(text, attn_implementation="sdpa")
    assert type(model.get_decoder().layers[0].self_attn).__name__ == "MistralAttention"
    pipe = mmeff.wrap(model, processor)
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        pipe.add_plugin("pyramid_drop")
    assert not _has_hooks(model)
