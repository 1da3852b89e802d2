"""DAMRO on Qwen2-VL / Qwen2.5-VL: the negative branch is the prompt holding only each image's k outlier
tokens (most attention received in the tower's last block, VisionZip's Qwen signal) at their own M-RoPE ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmeff
from mmeff.contrastive.decode import Branch, ContrastiveDecoder
from mmeff.errors import InputError
from mmeff.testing import tiny_qwen2_vl
from mmeff.testing.qwen import merged_embeddings, original_positions
from mmeff.token_drop.merged_vision import merged_counts, tower_signal

K = 3


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)]


@pytest.mark.parametrize("variant", ["qwen2_vl", "qwen2_5_vl"])
def test_negative_branch_is_the_prompt_with_only_the_outliers_at_their_ids(variant):
    model, processor = tiny_qwen2_vl(variant=variant, layers=4)
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("damro", k=K)
    prompts = ["what is in the image ?", "how many ?"]
    inputs = pipe.adapter.build_inputs(_images(), prompts)
    assert not inputs["attention_mask"].bool().all(), "left padded"
    plugin = pipe.plugins["damro"]
    neg = plugin.negative(pipe, inputs, _images(), prompts)

    tower, grid = pipe.adapter.vision_tower, inputs["image_grid_thw"]
    counts = merged_counts(tower, grid)
    scores = tower_signal(tower, inputs["pixel_values"], grid)
    starts = np.cumsum([0, *counts[:-1]])
    want_outliers = [scores[s : s + n].topk(K).indices.sort().values.tolist() for s, n in zip(starts, counts)]
    assert plugin._extra["outlier_tokens"] == want_outliers

    # the same k tokens as VisionZip's dominant ones with no contextual tokens (one signal)
    with torch.no_grad():
        plain = tower(inputs["pixel_values"], grid_thw=grid).pooler_output
        pipe.add_plugin("visionzip", dominant=K, contextual=0, budget=None)
        pipe.reset_state()
        zipped = tower(inputs["pixel_values"], grid_thw=grid).pooler_output
        pipe.remove_plugin("visionzip")
    kept = (zipped != 0).any(-1).nonzero().squeeze(-1).tolist()
    assert kept == [s + i for s, row in zip(starts, want_outliers) for i in row]
    assert plain.shape == zipped.shape

    decoder = ContrastiveDecoder(model, lambda lp, ln, step: lp, positions=pipe.adapter)
    solo = Branch(neg.input_ids, neg.attention_mask, Branch.from_inputs(inputs).vision, position_mask=neg.position_mask)
    with pipe.plugins_disabled(), torch.no_grad():
        decoder.run(solo, None, max_new_tokens=1, eos_token_id=None, pad_token_id=0)
        embeds = merged_embeddings(model, inputs)
        positions, _ = original_positions(model, inputs)
        for b in range(2):
            keep = neg.attention_mask[b].bool()
            image = pipe.adapter.image_token_mask(inputs["input_ids"][b])
            assert int((keep & image).sum()) == K and int((inputs["attention_mask"][b].bool() & ~image).sum()) == int(
                (keep & ~image).sum())
            want = model(inputs_embeds=embeds[b : b + 1, keep], position_ids=positions[:, b : b + 1, keep]).logits
            torch.testing.assert_close(decoder.last_prefill[b], want[0, -1].float(), atol=1e-5, rtol=1e-5)


def test_k_larger_than_an_image_is_a_clear_error():
    model, processor = tiny_qwen2_vl(layers=2)
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("damro", k=50)
    with pytest.raises(InputError, match="k=50 is more than"):
        pipe.generate(_images(), ["what is in the image ?", "how many ?"], max_new_tokens=2)
    pipe.remove_plugin("damro")
    assert len(pipe.generate(_images(), ["what is in the image ?", "how many ?"], max_new_tokens=2)) == 2
