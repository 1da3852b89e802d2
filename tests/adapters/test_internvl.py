"""InternVL (``internvl`` adapter, ``tiny_internvl`` factory): dynamic tiling and placeholders, video as frames,
token drop under 1-D RoPE, batch rows equal solo runs, vision-side methods refused, bad input.

The tiny model's tiles are 16 px with 4-px patches: 4 image tokens per tile after the 2x2 pixel shuffle.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmeff
from mmeff import registry
from mmeff.errors import InputError, UnsupportedModelError
from mmeff.testing import tiny_internvl
from mmeff.testing.internvl import IMG_CONTEXT, IMG_END, IMG_START, TOKENS_PER_TILE
from mmeff.testing.plugin_tests import PROMPTS, forward_modules
from mmeff.token_drop.engine import DropEngine

QUESTION = "what color is the cat?"
ATOL = 1e-5


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def frames(n: int = 4, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(n)]


def make_pipe(**kw) -> mmeff.MMPipeline:
    return mmeff.wrap(*tiny_internvl(layers=8, **kw))


def context_counts(pipe: mmeff.MMPipeline, inputs: dict) -> list[int]:
    return pipe.adapter.image_token_mask(inputs["input_ids"]).sum(-1).tolist()


@pytest.fixture(scope="module")
def pipe() -> mmeff.MMPipeline:
    return make_pipe()


# -- the factory ------------------------------------------------------------------------------
@pytest.mark.parametrize("text_model, attention", [("qwen2", "Qwen2Attention"), ("llama", "LlamaAttention")])
def test_builds_with_tied_token_ids(text_model: str, attention: str) -> None:
    model, processor = tiny_internvl(text_model=text_model)
    tok, cfg = processor.tokenizer, model.config
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessor"
    assert cfg.image_token_id == tok.convert_tokens_to_ids(IMG_CONTEXT) == processor.image_token_id
    assert processor.start_image_token_id == tok.convert_tokens_to_ids(IMG_START)
    assert processor.end_image_token_id == tok.convert_tokens_to_ids(IMG_END)
    assert cfg.text_config.vocab_size == len(tok)
    assert type(model.model.language_model.layers[0].self_attn).__name__ == attention
    assert not model.training


def test_bad_text_model() -> None:
    with pytest.raises(ValueError, match="text_model"):
        tiny_internvl(text_model="gemma")


def test_chat_template_and_tokenizer(pipe) -> None:
    processor = pipe.processor
    conv = [
        {"role": "system", "content": [{"type": "text", "text": "describe"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "and this?"}]},
    ]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\ndescribe<|im_end|>\n"
        "<|im_start|>user\n<IMG_CONTEXT>\nwhat color is the cat?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
        "<|im_start|>user\n<video>\nand this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    batch = processor(images=[image(24, 24)], videos=[frames()], text=[text], return_tensors="pt")
    tokens = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert "<unk>" not in tokens
    assert tokens.count(IMG_START) == tokens.count(IMG_END) == 1 + 4  # the image, then one per frame
    assert "Frame4" in tokens and "<video>" not in tokens


@pytest.mark.parametrize("size, tiles", [((16, 16), 1), ((24, 24), 5), ((16, 40), 4), ((40, 16), 4), ((16, 64), 5)])
def test_tiles_and_image_tokens_follow_aspect_ratio(pipe, size, tiles) -> None:
    """1 tile (no thumbnail) for a tile-sized image; else the closest grid (2x2, 3x1, 1x3, 4x1) + a thumbnail."""
    inputs = pipe.adapter.build_inputs([image(*size)], [QUESTION])
    assert inputs["pixel_values"].shape == (tiles, 3, 16, 16)
    assert context_counts(pipe, inputs) == [tiles * TOKENS_PER_TILE]
    assert pipe.processor._get_num_multimodal_tokens([size]).num_image_tokens == [tiles * TOKENS_PER_TILE]
    pipe.adapter.check_token_counts(inputs["input_ids"], inputs)


# -- the adapter ------------------------------------------------------------------------------
def test_adapter_facts_and_image_mask(pipe) -> None:
    adapter = pipe.adapter
    assert adapter.key == "internvl" and adapter.supports_video and adapter.position_axes == 1
    assert adapter.tokens_per_tile == TOKENS_PER_TILE == 4
    assert adapter.describe()["image_tokens_per_tile"] == 4
    inputs = adapter.build_inputs([image(24, 24), image(16, 40, 1)], PROMPTS)
    ids, mask = inputs["input_ids"], adapter.image_token_mask(inputs["input_ids"])
    assert mask.sum(-1).tolist() == [20, 16]
    assert not inputs["attention_mask"].bool().all(), "the batch must be left padded"
    tok = pipe.processor.tokenizer
    start, end = tok.convert_tokens_to_ids(IMG_START), tok.convert_tokens_to_ids(IMG_END)
    assert not mask[(ids == start) | (ids == end)].any(), "<img> / </img> carry no image features"
    assert torch.equal(mask, ids == pipe.model.config.image_token_id)
    # the context tokens sit in one run between the markers
    for row in range(2):
        positions = mask[row].nonzero().squeeze(-1)
        assert int(ids[row, positions[0] - 1]) == start and int(ids[row, positions[-1] + 1]) == end
        assert positions[-1] - positions[0] + 1 == positions.numel()


def test_vision_side_methods_refused_with_reason(pipe) -> None:
    forwards = forward_modules(pipe.model)
    for name, options in {"visionzip": {}, "tome": {}}.items():
        assert not registry.supported(name, "internvl")
        reason = registry.refusal(name, "internvl")
        assert reason and "pixel shuffle" in reason, name
        with pytest.raises(UnsupportedModelError, match="internvl|InternVL"):
            pipe.add_plugin(name, **options)
        assert not pipe.plugins and forward_modules(pipe.model) == forwards
    # MustDrop's decoder and cache stages run on InternVL; its vision-side parts, asked for, are refused
    assert registry.supported("mustdrop", "internvl")
    with pytest.raises(UnsupportedModelError, match="pixel shuffle"):
        pipe.add_plugin("mustdrop", merge=True)
    assert not pipe.plugins and forward_modules(pipe.model) == forwards
    with pytest.raises(UnsupportedModelError, match="pixel shuffle"):
        pipe.adapter.feature_layer_index()


@pytest.mark.parametrize("text_model", ["qwen2", "llama"])
def test_attention_ranked_methods_accept_both_backbones(text_model: str) -> None:
    pipe = make_pipe(text_model=text_model)
    pipe.add_plugin("fastv")
    pipe.generate([image(24, 24)], [QUESTION], max_new_tokens=2)
    stats = pipe.last_stats["fastv"]
    assert stats["image_tokens_before"] == [20.0]
    assert stats["image_tokens_per_layer_by_row"][0][-1] == 10


# -- video --------------------------------------------------------------------------------------
def test_video_frames_become_image_tokens(pipe) -> None:
    inputs = pipe.adapter.build_inputs([None], ["describe the video"], videos=[frames()])
    assert inputs["pixel_values"].shape == (4, 3, 16, 16)  # one tile per frame, in pixel_values
    assert "pixel_values_videos" not in inputs
    assert context_counts(pipe, inputs) == [16]
    pipe.adapter.check_token_counts(inputs["input_ids"], inputs)
    out = pipe.generate(None, ["describe the video"], videos=[frames()], max_new_tokens=3, return_ids=True)
    assert out.new_tokens.shape == (1, 3)


def test_video_and_image_rows_reduced_and_match_solo_runs() -> None:
    pipe = make_pipe()
    pipe.add_plugin("pyramid_drop")
    images, videos, prompts = [None, image(24, 24)], [frames(), None], ["describe the video", PROMPTS[0]]
    inputs = pipe.adapter.build_inputs(images, prompts, videos=videos)
    assert context_counts(pipe, inputs) == [16, 20]
    batched = pipe.generate(images, prompts, videos=videos, max_new_tokens=5, return_ids=True).new_tokens
    stats = pipe.last_stats["pyramid_drop"]
    assert stats["image_tokens_before"] == [16.0, 20.0]
    assert [row[-1] for row in stats["image_tokens_per_layer_by_row"]] == [2, 2]  # 16 and 20 at 0.5 ** 3
    pad = pipe.processor.tokenizer.pad_token_id
    for row in range(2):
        solo = pipe.generate([images[row]], [prompts[row]], videos=[videos[row]], max_new_tokens=5,
                             return_ids=True).new_tokens[0]
        assert torch.equal(solo, batched[row, :solo.shape[0]]), f"row {row} differs when batched"
        assert (batched[row, solo.shape[0]:] == pad).all()


# -- batch rows = solo runs -------------------------------------------------------------------
BATCH_IMAGES = [image(24, 24), image(16, 40, 1), [image(16, 16, 2), image(16, 64, 3)]]  # 20, 16, 4 + 20 tokens
BATCH_PROMPTS = ["is there a red circle in the image?", "how many?", "describe the image"]


@pytest.mark.parametrize("plugin, options", [
    (None, {}),
    ("pyramid_drop", {}),
    ("fastv", {}),
    ("random_drop", {"budget": 0.5, "layer": 2}),
    ("vcd", {"alpha": 1.0}),
    ("icd", {"alpha": 1.0}),
])
def test_batch_rows_of_different_sizes_match_solo_runs(plugin, options) -> None:
    pipe = make_pipe()
    if plugin:
        pipe.add_plugin(plugin, **options)
    inputs = pipe.adapter.build_inputs(BATCH_IMAGES, BATCH_PROMPTS)
    assert context_counts(pipe, inputs) == [20, 16, 24]
    assert inputs["pixel_values"].shape[0] == 5 + 4 + 1 + 5
    batched = pipe.generate(BATCH_IMAGES, BATCH_PROMPTS, max_new_tokens=5, return_ids=True).new_tokens
    assert len({tuple(r) for r in batched.tolist()}) > 1, "the random model must not answer every row alike"
    pad = pipe.processor.tokenizer.pad_token_id
    for row in range(3):
        solo = pipe.generate([BATCH_IMAGES[row]], [BATCH_PROMPTS[row]], max_new_tokens=5,
                             return_ids=True).new_tokens[0]
        n = solo.shape[0]
        assert torch.equal(solo, batched[row, :n]), f"row {row} differs when batched under {plugin}"
        assert (batched[row, n:] == pad).all()


# -- token drop under 1-D RoPE: the compact convention is exact -------------------------------
def test_drop_before_layer_0_equals_unmodified_model_on_kept_tokens() -> None:
    """random_drop before layer 0 (compact positions): each row's prefill and cached decode logits equal the
    unmodified model run on that row's kept tokens alone, at positions 0..n-1, unpadded."""
    pipe = make_pipe(attn_implementation="eager")
    model = pipe.model
    pipe.add_plugin("random_drop", layer=0, budget=0.5, seed=1)
    inputs = pipe.to_model(pipe.adapter.build_inputs([image(24, 24), image(16, 40, 1)], PROMPTS))
    steps = 3
    pipe.reset_state()
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=steps + 1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=pipe.processor.tokenizer.pad_token_id)
    layout = DropEngine.existing(pipe.adapter).state.layouts[-1]
    with pipe.plugins_disabled(), torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        features = model.model.get_image_features(inputs["pixel_values"]).pooler_output
        mask = pipe.adapter.image_token_mask(inputs["input_ids"])
        embeds = embeds.masked_scatter(mask[..., None], features.reshape(-1, features.shape[-1]))
    new = gen.sequences[:, inputs["input_ids"].shape[1]:]
    for b in range(2):
        idx = layout.idx[b][layout.valid[b]]
        idx = idx[inputs["attention_mask"][b, idx].bool()]
        assert int(mask[b, idx].sum()) == int(mask[b].sum()) // 2
        with pipe.plugins_disabled(), torch.no_grad():
            ref = model(inputs_embeds=embeds[b, idx][None], use_cache=True)
            torch.testing.assert_close(gen.logits[0][b].float(), ref.logits[0, -1].float(), atol=ATOL, rtol=0)
            # the reference tells conventions apart: the kept tokens at their original ids give other logits
            original = (inputs["attention_mask"][b].cumsum(-1) - 1)[idx][None]
            kept_ids = model(inputs_embeds=embeds[b, idx][None], position_ids=original).logits[0, -1].float()
            assert (kept_ids - gen.logits[0][b].float()).abs().max() > 20 * ATOL
            cache = ref.cache
            for j in range(steps):
                out = model(input_ids=new[b, j].view(1, 1), cache=cache, use_cache=True)
                cache = out.cache
                torch.testing.assert_close(gen.logits[j + 1][b].float(), out.logits[0, -1].float(), atol=ATOL,
                                           rtol=0, msg=lambda m, b=b, j=j: f"row {b}, decode step {j + 1}: {m}")


# -- the adapter touches nothing; contrastive decoding refuses video ----------------------------
def test_wrapping_registers_no_hook_on_the_model() -> None:
    model, processor = tiny_internvl()
    mmeff.wrap(model, processor)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert not any("_mmeff_hooks" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("plugin", ["icd", "lqcd", "vcd"])
def test_contrastive_decoding_refuses_video_frames(plugin) -> None:
    """InternVL folds frames into pixel_values, so the refusal must come from the call's videos."""
    pipe = make_pipe()
    pipe.add_plugin(plugin)
    with pytest.raises(InputError, match="video"):
        pipe.generate([None, image(24, 24)], ["describe the video", PROMPTS[0]], videos=[frames(), None])


# -- bad input --------------------------------------------------------------------------------
def test_placeholder_and_tile_mismatches_raise_input_error(pipe) -> None:
    adapter = pipe.adapter
    inputs = adapter.build_inputs([image(24, 24), image(16, 40, 1)], PROMPTS)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    adapter.check_token_counts(ids, inputs)  # consistent: no error

    with pytest.raises(InputError, match="8 tile.* need 32 image tokens .* hold 36"):
        adapter.check_token_counts(ids, {**inputs, "pixel_values": pixels[:-1]})
    with pytest.raises(InputError, match="no pixel_values"):
        adapter.check_token_counts(ids, {k: v for k, v in inputs.items() if k != "pixel_values"})
    tok = pipe.processor.tokenizer
    unk, context = tok.convert_tokens_to_ids("<unk>"), pipe.model.config.image_token_id

    short = ids.clone()
    short[0, int((short[0] == context).nonzero()[0])] = unk
    with pytest.raises(InputError, match="need 36 image tokens .* hold 35"):
        adapter.check_token_counts(short, inputs)

    # right total, wrong split: one image token of image 0 moved after the second prompt
    moved = short.clone()
    moved[1, -1] = context
    with pytest.raises(InputError, match="prompt 0, image 0: 20 tokens between <img> and </img>, 19 of them"):
        adapter.check_token_counts(moved, inputs)
    unpaired = ids.clone()
    first = int((unpaired[0] == context).nonzero()[0])
    unpaired[0, first - 1] = context  # the <img> marker becomes a context token, one context token text
    unpaired[0, first] = unk
    with pytest.raises(InputError, match="prompt 0: <img> and </img> markers do not pair up"):
        adapter.check_token_counts(unpaired, inputs)


def test_image_tokens_outside_markers_raise_input_error(pipe) -> None:
    adapter = pipe.adapter
    inputs = adapter.build_inputs([image(16, 16)], [QUESTION])  # one tile: <img> + 4 tokens + </img>
    context = pipe.model.config.image_token_id
    ids = torch.cat([inputs["input_ids"], torch.full((1, 4), context)], 1)  # a tile's worth after the prompt
    with pytest.raises(InputError, match="need 4 image tokens .* hold 8"):
        adapter.check_token_counts(ids, inputs)
    two_tiles = {**inputs, "pixel_values": inputs["pixel_values"].repeat(2, 1, 1, 1)}
    with pytest.raises(InputError, match="prompt 0: 4 image tokens outside <img>...</img>"):
        adapter.check_token_counts(ids, two_tiles)



# -- DAMRO: the patch-to-token map of the pixel shuffle ---------------------------------------
def test_tile_token_patches_is_the_models_pixel_shuffle(pipe) -> None:
    """Each image token concatenates the ViT patches the map names, in that order (before the projector)."""
    model = pipe.model
    where = pipe.adapter.tile_token_patches()
    assert where.shape == (TOKENS_PER_TILE, 4) and sorted(where.flatten().tolist()) == list(range(4 * TOKENS_PER_TILE))
    side = int((4 * TOKENS_PER_TILE) ** 0.5)
    patches = torch.randn(2, side * side, 5)
    shuffled = model.model.pixel_shuffle(patches.view(2, side, side, 5), scale_factor=0.5).reshape(2, -1, 20)
    for t in range(TOKENS_PER_TILE):
        want = torch.cat([patches[:, int(i)] for i in where[t]], -1)
        assert torch.equal(shuffled[:, t], want)


def test_damro_negative_keeps_each_images_top_cls_tokens_in_descending_order(pipe) -> None:
    from mmeff.contrastive.decode import Branch, ContrastiveDecoder

    model = pipe.model
    plugin = pipe.add_plugin("damro", k=2)
    try:
        images, prompts = [image(24, 24), image(16, 16, seed=1)], [QUESTION, "how many?"]
        inputs = pipe.adapter.build_inputs(images, prompts)
        with torch.no_grad():
            neg = plugin.negative(pipe, inputs, images, prompts)
            scores, features = pipe.adapter.cls_token_scores(inputs["pixel_values"])
            decoder = ContrastiveDecoder(model, lambda lp, ln, step: lp)
            decoder.run(Branch.from_inputs(inputs), neg, max_new_tokens=1, eos_token_id=None, pad_token_id=0)
            embeds = model.get_input_embeddings()(inputs["input_ids"])
            is_image = inputs["input_ids"] == model.config.image_token_id
            flat_scores, flat = scores.flatten(), features.flatten(0, 1)
            start = 0
            for row in range(2):
                n = int(is_image[row].sum())
                order = flat_scores[start : start + n].topk(2).indices  # descending CLS share
                assert plugin._extra["outlier_tokens"][row] == order.sort().values.tolist()
                first = int(is_image[row].nonzero()[0])
                valid = inputs["attention_mask"][row].bool()
                before = embeds[row, :first][valid[:first]]
                after = embeds[row, first + n:]
                prompt = torch.cat([before, flat[start + order].to(embeds.dtype), after])[None]
                want = model(inputs_embeds=prompt).logits[0, -1].float()
                torch.testing.assert_close(decoder.last_prefill[2 + row], want, atol=1e-4, rtol=1e-4)
                start += n
    finally:
        pipe.remove_plugin("damro")
