"""Qwen3-VL: drops before the decoder layers that receive *deepstack* vision features.

Qwen3-VL adds features from three vision blocks to the visual tokens' hidden states after its
first decoder layers, indexed by a full-length mask. The engine takes those additions over and
adds each token's features only where that token is still present. Ideal: with a drop before
decoder layer 0, the plugin equals the unmodified decoder run on the kept tokens alone, at their
original M-RoPE ids, with the deepstack features of the kept visual tokens.
"""

from __future__ import annotations

import torch

import mmeff
from mmeff.testing import tiny_qwen2_vl
from mmeff.testing.plugin_tests import sample_images
from mmeff.token_drop.engine import DropEngine

ATOL = 1e-5


def test_drop_before_deepstack_layers_equals_the_decoder_on_the_kept_tokens():
    model, processor = tiny_qwen2_vl(variant="qwen3_vl", layers=8)
    pipe = mmeff.wrap(model, processor)
    assert pipe.adapter.key == "qwen3_vl" and len(model.config.vision_config.deepstack_visual_indexes) == 2
    pipe.add_plugin("random_drop", layer=0, budget=0.5, seed=1)
    inputs = pipe.to_model(pipe.adapter.build_inputs([sample_images()[1]], ["how many ?"]))
    pipe.reset_state()
    with torch.no_grad():
        got = model(**inputs).logits[0, -1]
    layout = DropEngine.existing(pipe.adapter).state.layouts[-1]
    kept = layout.idx[0][layout.valid[0]]  # one unpadded row
    visual = inputs["input_ids"][0] == model.config.image_token_id
    assert 0 < int(visual[kept].sum()) < int(visual.sum())

    with pipe.plugins_disabled(), torch.no_grad():
        encoded = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        features = torch.cat(encoded.pooler_output)
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        embeds = embeds.masked_scatter(visual[None, :, None], features)
        positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                  image_grid_thw=inputs["image_grid_thw"])
        rows = visual.long().cumsum(0)[kept][visual[kept]] - 1  # feature rows of the kept visual tokens
        deepstack = [torch.cat(layer)[rows] for layer in encoded.deepstack_features]
        out = model.model.language_model(
            inputs_embeds=embeds[:, kept], position_ids=positions[:, :, kept], visual_pos_masks=visual[kept][None],
            deepstack_visual_embeds=deepstack,
        )
        want = model.lm_head(out.last_hidden_state)[0, -1]
        without = model.lm_head(model.model.language_model(
            inputs_embeds=embeds[:, kept], position_ids=positions[:, :, kept]).last_hidden_state)[0, -1]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (got - without).abs().max() > 20 * ATOL, "the deepstack features must make a difference here"


def test_neutral_drop_keeps_every_deepstack_addition():
    model, processor = tiny_qwen2_vl(variant="qwen3_vl", layers=8)
    pipe = mmeff.wrap(model, processor)
    inputs = pipe.to_model(pipe.adapter.build_inputs(sample_images(), ["how many ?", "what color ?"]))
    with torch.no_grad():
        baseline = model(**inputs).logits[:, -1]
        pipe.add_plugin("random_drop", layer=0, budget=1.0)
        pipe.reset_state()
        torch.testing.assert_close(model(**inputs).logits[:, -1], baseline, atol=ATOL, rtol=0)


def test_video_row_next_to_an_image_row_matches_solo_runs():
    """Qwen3-VL's videos (timestamps between frames, deepstack features on video tokens) are reduced
    like images, and each row of a batch holding a video and an image equals its solo run."""
    import numpy as np

    model, processor = tiny_qwen2_vl(variant="qwen3_vl", layers=8)
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("pyramid_drop")
    rng = np.random.default_rng(3)
    clip = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(4)]
    images, videos, prompts = [None, sample_images()[0]], [clip, None], ["what happens ?", "how many ?"]
    batched = pipe.generate(images, prompts, videos=videos, max_new_tokens=5, return_ids=True).new_tokens
    counts = pipe.last_stats["pyramid_drop"]["image_tokens_per_layer_by_row"]
    assert counts[0][0] == 18 and counts[0][-1] < counts[0][0] and counts[1][-1] < counts[1][0]
    pad = processor.tokenizer.pad_token_id
    for row in range(2):
        solo = pipe.generate([images[row]], [prompts[row]], videos=[videos[row]], max_new_tokens=5,
                             return_ids=True).new_tokens[0]
        assert torch.equal(solo, batched[row, : solo.shape[0]]), f"row {row} differs when batched"
        assert (batched[row, solo.shape[0]:] == pad).all()
