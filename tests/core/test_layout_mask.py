"""``layout_mask`` against transformers' own Gemma 3 masks, on the same left-padded batch.

The engine builds every decoder layer's mask itself once tokens are gone, so with nothing gone
its masks must be the ones transformers builds: causal + padding, each image's tokens attending
to each other both ways (``token_type_ids``), and on sliding layers only keys ``k > q - window``.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import create_masks_for_vision_model, get_block_sequence_ids_for_mask

from mmeff.testing import tiny_gemma3
from mmeff.token_drop.ops import causal_mask, image_blocks, layout_mask

LENGTH = 14


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0: no padding, two images; row 1: three pads, one image (image tokens marked 1)."""
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    mask[1, :3] = 0
    types = torch.zeros(2, LENGTH, dtype=torch.long)
    types[0, 2:5] = 1
    types[0, 7:10] = 1
    types[1, 5:9] = 1
    return mask, types


@pytest.mark.parametrize("window", [4, 100])
def test_masks_equal_transformers_gemma3_masks(window):
    model, _ = tiny_gemma3(layers=2, sliding_window=window, attn_implementation="sdpa")
    config = model.config.get_text_config()
    mask, types = _batch()
    embeds = torch.zeros(2, LENGTH, config.hidden_size)
    want = create_masks_for_vision_model(
        config=config, inputs_embeds=embeds, attention_mask=mask, cache=None, position_ids=None,
        block_sequence_ids=get_block_sequence_ids_for_mask(types),
    )
    blocks = image_blocks(types)
    assert torch.equal(blocks, get_block_sequence_ids_for_mask(types))
    index = torch.arange(LENGTH).expand(2, -1)
    for kind, w in (("full_attention", None), ("sliding_attention", window)):
        got = layout_mask(index, index, mask.bool(), window=w, q_block=blocks, k_block=blocks, as_bool=True,
                          dtype=torch.float32)
        assert want[kind] is not None
        assert torch.equal(got, want[kind].bool()), kind
    if window < LENGTH:  # the window really cuts keys off, and image tokens see later image tokens
        sliding = layout_mask(index, index, mask.bool(), window=window, q_block=blocks, k_block=blocks,
                              as_bool=True, dtype=torch.float32)
        assert not torch.equal(sliding, layout_mask(index, index, mask.bool(), q_block=blocks, k_block=blocks,
                                                    as_bool=True, dtype=torch.float32))
    assert bool(want["full_attention"][0, 0, 2, 4])  # first image token sees the last one of its image


def test_dropped_tokens_keep_their_original_window_and_block():
    """After a drop, index 9 (an image token) still sees its image's survivors both ways, and a
    window of 4 is counted in original indices, not in slots."""
    idx = torch.tensor([[0, 1, 2, 4, 9, 11, 12, 13]])
    blocks = image_blocks(torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0]])).gather(1, idx)
    got = layout_mask(idx, idx, torch.ones_like(idx, dtype=torch.bool), window=4, q_block=blocks, k_block=blocks,
                      as_bool=True, dtype=torch.float32)[0, 0]
    slot = {int(t): i for i, t in enumerate(idx[0])}
    assert bool(got[slot[2], slot[4]])  # same image, later token
    assert not bool(got[slot[4], slot[9]])  # another image, later
    assert bool(got[slot[13], slot[11]]) and not bool(got[slot[13], slot[9]])  # 13 - 9 = 4 is outside the window
    assert not bool(got[slot[12], slot[4]])  # slots 3 apart, indices 8 apart


def test_invalid_query_rows_see_nothing_and_causal_mask_is_its_plain_case():
    valid = torch.tensor([[False, True, True, True]])
    idx = torch.tensor([[0, 3, 5, 6]])
    got = layout_mask(torch.where(valid, idx, -1), idx, valid, as_bool=True, dtype=torch.float32)
    assert not got[0, 0, 0].any()
    want = causal_mask(valid, 4, as_bool=True, dtype=torch.float32)
    assert torch.equal(got, want)
    additive = causal_mask(valid, 2, as_bool=False, dtype=torch.float32)
    assert additive.shape == (1, 1, 2, 4) and additive[0, 0, 0, 0] == torch.finfo(torch.float32).min
