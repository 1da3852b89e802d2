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
