"""LLaVA-OneVision: the tiny factory's real processor, the adapter's token counts, batched rows of
differently sized images and videos under token dropping, refusals, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmeff
from mmeff.adapters.llava_onevision import LlavaOnevisionAdapter
from mmeff.errors import InputError, UnsupportedModelError
from mmeff.testing import tiny_llava_onevision
from mmeff.testing.plugin_tests import (
    FACTORY_ADAPTERS,
    forward_modules,
    layer_inputs_and_attentions,
    supported_factories,
)
from mmeff.token_drop.scoring import attention_at_layer

QUESTION = "what color is the cat?"
# (height, width) -> image tokens when the image is alone in its prompt (anyres tiles, unpadded, newlines)
TOKENS = {(24, 24): 88, (16, 40): 118, (40, 16): 128, (64, 64): 172, (16, 16): 36}


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def clip(n: int = 4, seed: int = 3) -> list[np.ndarray]:
    return [image(24, 24, seed + i) for i in range(n)]


@pytest.fixture(scope="module")
def onevision() -> tuple:
    return tiny_llava_onevision(layers=8)


@pytest.fixture(scope="module")
def adapter(onevision) -> LlavaOnevisionAdapter:
    return mmeff.wrap(*onevision).adapter


def fresh_pipe(attn: str = "sdpa") -> mmeff.MMPipeline:
    return mmeff.wrap(*tiny_llava_onevision(layers=8, attn_implementation=attn))


def new_tokens(pipe, images, prompts, videos=None, n: int = 6) -> torch.Tensor:
    return pipe.generate(images, prompts, videos=videos, max_new_tokens=n, return_ids=True).new_tokens


# -- the factory ----------------------------------------------------------------------------
def test_factory_ties_token_ids_and_renders_the_released_template(onevision) -> None:
    model, processor = onevision
    tok, cfg = processor.tokenizer, model.config
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(processor).__name__ == "LlavaOnevisionProcessor"
    assert type(processor.video_processor).__name__ == "LlavaOnevisionVideoProcessor"
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<image>") == processor.image_token_id
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<video>") == processor.video_token_id
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.vision_feature_select_strategy == "full" and cfg.vision_feature_layer == -1
    assert type(model.model.vision_tower).__name__ == "SiglipVisionModel"
    assert not model.training
    conv = [
        {"role": "system", "content": [{"type": "text", "text": "describe"}]},
        {"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "video"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "and this?"}]},
    ]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    assert text == (  # images first, then videos, then text, as the released template orders them
        "<|im_start|>system\ndescribe<|im_end|>\n"
        "<|im_start|>user\n<image>\n<video>\nwhat color is the cat?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
        "<|im_start|>user\nand this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert ids.count(cfg.image_token_id) == 1 and ids.count(cfg.video_token_id) == 1


def test_image_token_counts_follow_image_size(onevision, adapter) -> None:
    model, processor = onevision
    prompt = adapter.chat_prompt(QUESTION)
    for (h, w), expected in TOKENS.items():
        batch = processor(images=[image(h, w)], text=[prompt], return_tensors="pt")
        assert int((batch["input_ids"] == model.config.image_token_id).sum()) == expected, (h, w)
        assert adapter.image_tokens((h, w)) == expected
        adapter.check_token_counts(batch["input_ids"], batch)
    # the 4x4 tile grid (64x64) exceeds anyres_max_9 and is shrunk to 12x12 (+12 newlines + 16 base)
    assert adapter.image_tokens((64, 64)) == 16 + 12 * 12 + 12


def test_adapter_counts_match_the_model_for_many_sizes(onevision, adapter) -> None:
    model, processor = onevision
    prompt = adapter.chat_prompt(QUESTION)
    sides = (5, 17, 40, 65, 130)
    for h in sides:
        for w in sides:
            batch = processor(images=[image(h, w)], text=[prompt], return_tensors="pt")
            with torch.no_grad():
                features = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output
            n = int((batch["input_ids"] == adapter.image_token_id).sum())
            assert adapter.image_tokens((h, w)) == n == features[0].shape[0], (h, w)


def test_several_images_per_prompt_nested_are_not_tiled(onevision, adapter) -> None:
    """Given nested per prompt (batch_num_images 2), each image is one base tile + newline: 17 tokens."""
    model, processor = onevision
    prompt = adapter.chat_prompt(QUESTION, images=2)
    batch = processor(images=[[image(24, 24), image(16, 40, 1)]], text=[prompt], return_tensors="pt")
    assert batch["batch_num_images"].tolist() == [2]
    assert int((batch["input_ids"] == adapter.image_token_id).sum()) == 2 * 17
    adapter.check_token_counts(batch["input_ids"], batch)
    with torch.no_grad():
        model(**batch)
    # mmeff's build_inputs hands the processor a flat list (the model card's batched form): each image tiled
    flat = adapter.build_inputs([[image(24, 24), image(16, 40, 1)]], [QUESTION])
    assert int((flat["input_ids"] == adapter.image_token_id).sum()) == 88 + 118
    adapter.check_token_counts(flat["input_ids"], flat)


def test_video_of_four_frames(onevision, adapter) -> None:
    model, processor = onevision
    assert adapter.supports_video
    inputs = adapter.build_inputs(None, [QUESTION], videos=[clip()])
    assert tuple(inputs["pixel_values_videos"].shape) == (1, 4, 3, 16, 16)
    # 4 frames x (4x4 patches pooled 2x2 -> 4) + 1 newline
    assert int((inputs["input_ids"] == adapter.video_token_id).sum()) == adapter.video_tokens(4) == 17
    assert int(adapter.image_token_mask(inputs["input_ids"]).sum()) == 17
    adapter.check_token_counts(inputs["input_ids"], inputs)
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_image_token_mask_covers_images_and_videos(adapter) -> None:
    inputs = adapter.build_inputs([image(24, 24), None], [QUESTION, "describe"], videos=[None, clip()])
    mask = adapter.image_token_mask(inputs["input_ids"])
    assert mask.sum(-1).tolist() == [88, 17]
    assert inputs["attention_mask"][:, 0].tolist() == [1, 0]  # the video row is the shorter: left padded


def test_registry_and_factory_tables() -> None:
    assert FACTORY_ADAPTERS["llava_onevision-sdpa"] == FACTORY_ADAPTERS["llava_onevision-eager"] == "llava_onevision"
    for plugin in ("pyramid_drop", "fastv", "random_drop", "vcd", "icd", "lqcd", "m3id", "vdgd", "damro"):
        assert {"llava_onevision-sdpa", "llava_onevision-eager"} <= set(supported_factories(plugin)), plugin
    assert mmeff.supported("mustdrop", "llava_onevision")  # its decoder and cache stages
    for plugin in ("visionzip", "tome"):
        assert not mmeff.supported(plugin, "llava_onevision")
        assert "no CLS token" in mmeff.registry.refusal(plugin, "llava_onevision")


def test_system_instruction_is_a_system_turn(adapter) -> None:
    text = adapter.chat_prompt(QUESTION, system="be brief")
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n<image>\n")


# -- batches: every row is its solo run -----------------------------------------------------
@pytest.mark.parametrize("plugin", [None, "pyramid_drop", "fastv"])
def test_rows_of_differently_sized_images_match_solo_runs(plugin) -> None:
    pipe = fresh_pipe()
    if plugin:
        pipe.add_plugin(plugin)
    images = [image(24, 24), image(16, 40, 1), image(64, 64, 2)]
    prompts = [QUESTION, "how many?", "describe the image"]
    inputs = pipe.to_model(pipe.adapter.build_inputs(images, prompts))
    assert pipe.adapter.image_token_mask(inputs["input_ids"]).sum(-1).tolist() == [88, 118, 172]
    assert inputs["attention_mask"].sum(-1).tolist()[2] == inputs["input_ids"].shape[1]  # the longest row
    batched = new_tokens(pipe, images, prompts)
    if plugin:
        kept = pipe.last_stats[plugin]["image_tokens_per_layer_by_row"]
        assert [row[0] for row in kept] == [88, 118, 172] and all(row[-1] < row[0] for row in kept)
    for row, (im, prompt) in enumerate(zip(images, prompts)):
        single = new_tokens(pipe, [im], [prompt])[0]
        assert torch.equal(single, batched[row, : single.shape[0]]), f"row {row} differs when batched"
    # and the prefill logits themselves, row by row
    pipe.reset_state()
    with torch.no_grad():
        batch_logits = pipe.model(**inputs).logits[:, -1]
    for row, (im, prompt) in enumerate(zip(images, prompts)):
        solo = pipe.to_model(pipe.adapter.build_inputs([im], [prompt]))
        pipe.reset_state()
        with torch.no_grad():
            torch.testing.assert_close(pipe.model(**solo).logits[0, -1], batch_logits[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_video_row_next_to_image_row_under_pyramid_drop(attn: str) -> None:
    pipe = fresh_pipe(attn)
    pipe.add_plugin("pyramid_drop")
    prompts = [QUESTION, "describe the image"]
    batched = new_tokens(pipe, [image(16, 40), None], prompts, videos=[None, clip()], n=8)
    stats = pipe.last_stats["pyramid_drop"]
    # 8 layers -> stages before layers 2, 4, 6, each halving a row's vision tokens (video tokens included)
    assert stats["image_tokens_per_layer_by_row"] == [[118, 118, 59, 59, 29, 29, 14, 14], [17, 17, 8, 8, 4, 4, 2, 2]]
    image_only = new_tokens(pipe, [image(16, 40)], [prompts[0]], n=8)[0]
    video_only = new_tokens(pipe, None, [prompts[1]], videos=[clip()], n=8)[0]
    assert torch.equal(image_only, batched[0, : image_only.shape[0]])
    assert torch.equal(video_only, batched[1, : video_only.shape[0]])
    uncached = pipe.generate([image(16, 40), None], prompts, videos=[None, clip()], max_new_tokens=8,
                             return_ids=True, use_cache=False).new_tokens
    assert torch.equal(uncached, batched)


def test_recomputed_attention_rows_match_eager_output_attentions() -> None:
    """Attention-ranked methods (FastV, PyramidDrop) recompute the last prompt token's row over image and video
    tokens; on a left-padded image + video batch it equals the model's own eager attentions."""
    model, processor = tiny_llava_onevision(layers=4, attn_implementation="eager")
    adapter = mmeff.wrap(model, processor).adapter
    inputs = adapter.build_inputs([image(16, 40), None], [QUESTION, "describe"], videos=[None, clip()])
    mask = inputs["attention_mask"].bool()
    out, captured = layer_inputs_and_attentions(model, adapter.layers, inputs)
    slots = torch.full((2, 1), inputs["input_ids"].shape[1] - 1)
    vision = adapter.image_token_mask(inputs["input_ids"])
    for layer_idx, (hidden, cos_sin) in captured.items():
        with torch.no_grad():
            got = attention_at_layer(adapter, layer_idx, hidden, cos_sin, slots, mask)
        want = out.attentions[layer_idx][:, :, -1:].mean(1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        top_got, top_want = (a.masked_fill(~vision[:, None], float("-inf")).topk(5, -1).indices for a in (got, want))
        assert torch.equal(top_got, top_want)


# -- refusals and bad input -----------------------------------------------------------------
@pytest.mark.parametrize("plugin", ["visionzip", "tome", "mustdrop:merge", "mustdrop:key_fraction"])
def test_vision_side_plugins_are_refused_with_the_reason(plugin: str) -> None:
    """MustDrop's decoder and cache stages run here; its vision-side parts, asked for explicitly, are refused."""
    plugin, _, stage = plugin.partition(":")
    options = {"merge": {"merge": True}, "key_fraction": {"key_fraction": 0.1}}.get(stage, {})
    pipe = fresh_pipe()
    forwards = forward_modules(pipe.model)
    with pytest.raises(UnsupportedModelError, match="no CLS token"):
        pipe.add_plugin(plugin, **options)
    assert forward_modules(pipe.model) == forwards and not pipe.plugins


def test_feature_layer_index_names_the_reason(adapter) -> None:
    with pytest.raises(UnsupportedModelError, match="SigLIP"):
        adapter.feature_layer_index()


def test_contrastive_plugin_refuses_video_by_name() -> None:
    pipe = fresh_pipe()
    pipe.add_plugin("vcd")
    with pytest.raises(InputError, match="video"):
        pipe.generate(None, [QUESTION], videos=[clip()], max_new_tokens=2)


def test_bad_inputs_raise_input_error(adapter) -> None:
    inputs = adapter.build_inputs([image(24, 24), image(16, 40, 1)], [QUESTION, "how many?"])
    ids, image_id, video_id = inputs["input_ids"], adapter.image_token_id, adapter.video_token_id
    adapter.check_token_counts(ids, inputs)

    short = ids.clone()
    short[0, (short[0] == image_id).nonzero()[0]] = 0  # one placeholder of row 0 lost
    with pytest.raises(InputError, match=r"2 image\(s\) need 206 image tokens .* hold 205"):
        adapter.check_token_counts(short, inputs)

    with pytest.raises(InputError, match="no pixel_values"):
        adapter.check_token_counts(ids, {k: v for k, v in inputs.items() if k != "pixel_values"})
    with pytest.raises(InputError, match="image_sizes"):
        adapter.check_token_counts(ids, {k: v for k, v in inputs.items() if k != "image_sizes"})
    with pytest.raises(InputError, match="batch_num_images"):
        adapter.check_token_counts(ids, {**inputs, "batch_num_images": torch.tensor([1, 2])})

    # the right total, split across the rows so that row 0 does not hold a whole image
    moved = ids.clone()
    moved[0, (moved[0] == image_id).nonzero()[0]] = 0
    pad = (moved[1] != image_id).nonzero()[0]
    moved[1, pad] = image_id
    with pytest.raises(InputError, match="row 0 holds 87 image tokens"):
        adapter.check_token_counts(moved, inputs)

    with_video = ids.clone()
    with_video[1, 0] = video_id  # a text token of the unpadded row becomes a video placeholder
    with pytest.raises(InputError, match="video tokens but no pixel_values_videos"):
        adapter.check_token_counts(with_video, inputs)

    video = adapter.build_inputs(None, [QUESTION], videos=[clip()])
    two_frames = {**video, "pixel_values_videos": video["pixel_values_videos"][:, :2]}
    with pytest.raises(InputError, match=r"1 video\(s\) need 9 video tokens .* hold 17"):
        adapter.check_token_counts(video["input_ids"], two_frames)


def test_build_inputs_bad_arguments(adapter) -> None:
    with pytest.raises(InputError, match="no frames"):
        adapter.build_inputs(None, [QUESTION], videos=[[]])
    with pytest.raises(InputError, match="one entry per prompt"):
        adapter.build_inputs([image(24, 24)], [QUESTION, "how many?"])
