"""Gemma 3 (``gemma3`` adapter, ``tiny_gemma3`` factory): the processor's layout, several images per
prompt, loading from a folder, the engine's own masks (sliding windows, bidirectional image
attention) equal to transformers', decoding through the sliding cache, refusals and bad input.

The tiny model: 16 soft tokens per image, layers sliding/sliding/full/sliding repeated, a 20-token
window shorter than every prompt here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.cache_utils import DynamicSlidingWindowLayer

import mmeff
from mmeff import registry
from mmeff.errors import InputError, UnsupportedModelError
from mmeff.testing import tiny_gemma3
from mmeff.testing.gemma3 import BOI, EOI, SLIDING_WINDOW, TOKENS_PER_IMAGE
from mmeff.testing.plugin_tests import PROMPTS, forward_modules, sample_images
from mmeff.token_drop.engine import DropEngine

ATOL = 1e-5


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipe() -> mmeff.MMPipeline:
    return mmeff.wrap(*tiny_gemma3(layers=8))


def test_template_processor_and_token_types(pipe) -> None:
    adapter = pipe.adapter
    assert adapter.key == "gemma3" and adapter.sliding_windows_reproduced
    text = adapter.chat_prompt("what is there ?", system="be brief")
    assert text.startswith("<bos><start_of_turn>user\nbe brief\n\n<start_of_image>what is there ?<end_of_turn>")
    assert text.endswith("<start_of_turn>model\n")
    inputs = adapter.build_inputs([image(24, 40), [image(32, 32, 1), image(16, 16, 2)]], PROMPTS)
    ids = inputs["input_ids"]
    image_mask = adapter.image_token_mask(ids)
    assert image_mask.sum(-1).tolist() == [TOKENS_PER_IMAGE, 2 * TOKENS_PER_IMAGE]
    assert torch.equal(inputs["token_type_ids"].bool(), image_mask)
    tok = pipe.processor.tokenizer
    assert (ids == tok.convert_tokens_to_ids(BOI)).sum(-1).tolist() == [1, 2]
    assert (ids == tok.convert_tokens_to_ids(EOI)).sum(-1).tolist() == [1, 2]
    assert ids.shape[1] > SLIDING_WINDOW
    assert adapter.describe()["layer_types"] == ["full_attention", "sliding_attention"]


def test_loads_from_a_folder(tmp_path) -> None:
    model, processor = tiny_gemma3(layers=2)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = mmeff.load(tmp_path)
    assert loaded.adapter.key == "gemma3"
    images, prompts = sample_images(), PROMPTS
    want = mmeff.wrap(model, processor).generate(images, prompts, max_new_tokens=3, return_ids=True).new_tokens
    assert torch.equal(loaded.generate(images, prompts, max_new_tokens=3, return_ids=True).new_tokens, want)


def test_engine_masks_equal_transformers_for_a_row_that_keeps_everything(pipe) -> None:
    """Row 0 is exempt from the drop, row 1 loses image tokens: the batch is re-laid out and every
    layer of row 0 runs on the engine's own masks (windows, image blocks) and rotary tables, in
    prefill and through the sliding cache in decoding. Row 0 must equal its unmodified solo run."""
    model = pipe.model
    images = [[image(24, 24), image(32, 32, 1)], image(16, 40, 2)]
    prompts = ["is there a red circle in the image ?", "how many ?"]
    inputs = pipe.adapter.build_inputs(images, prompts)
    solo = pipe.adapter.build_inputs(images[:1], prompts[:1])
    assert torch.equal(solo["input_ids"][0], inputs["input_ids"][0])  # row 0 is the longer one: no padding
    with torch.no_grad():
        want_logits = model(**solo).logits[0, -1]
        want_tokens = model.generate(**solo, max_new_tokens=8, do_sample=False)[0, solo["input_ids"].shape[1]:]

    pipe.add_plugin("pyramid_drop", layers=[2, 4, 6], ratio=0.5)
    try:
        engine = DropEngine.existing(pipe.adapter)
        pipe.reset_state()
        engine.exempt(torch.tensor([True, False]))
        with torch.no_grad():
            got_logits = model(**inputs).logits[0, -1]
        counts = [int(layout.image_counts[0]) for layout in engine.layer_layouts()]
        assert counts == [2 * TOKENS_PER_IMAGE] * 8  # row 0 keeps everything
        assert int(engine.layer_layouts()[-1].image_counts[1]) < TOKENS_PER_IMAGE  # row 1 lost tokens
        torch.testing.assert_close(got_logits, want_logits, atol=ATOL, rtol=0)

        pipe.reset_state()
        engine.exempt(torch.tensor([True, False]))
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
        assert torch.equal(out.sequences[0, inputs["input_ids"].shape[1]:], want_tokens)
        sliding = [layer for layer in out.past_key_values.layers if isinstance(layer, DynamicSlidingWindowLayer)]
        assert sliding and all(layer.keys.shape[-2] == SLIDING_WINDOW - 1 for layer in sliding)
    finally:
        pipe.remove_plugin("pyramid_drop")


@pytest.mark.parametrize("plugin, options", [("pyramid_drop", {}), ("fastv", {}), ("random_drop", {})])
def test_rows_with_different_image_counts_match_solo_runs(pipe, plugin, options) -> None:
    images = [[image(24, 24), image(32, 32, 1)], image(16, 40, 2)]
    prompts = ["is there a red circle in the image ?", "how many ?"]
    pipe.add_plugin(plugin, **options)
    try:
        batch = pipe.generate(images, prompts, max_new_tokens=6, return_ids=True).new_tokens
        assert pipe.last_stats[plugin]["final_image_tokens"] < pipe.last_stats[plugin]["image_tokens_before"][0]
        for i in range(2):
            solo = pipe.generate(images[i : i + 1], prompts[i : i + 1], max_new_tokens=6, return_ids=True).new_tokens
            assert torch.equal(batch[i, : solo.shape[1]], solo[0]), f"{plugin} row {i}"
    finally:
        pipe.remove_plugin(plugin)


@pytest.mark.parametrize("plugin", ["visionzip", "tome", "mustdrop:merge", "mustdrop:key_fraction"])
def test_vision_side_methods_are_refused_with_the_reason(pipe, plugin) -> None:
    """MustDrop's decoder and cache stages run here; its vision-side parts, asked for explicitly, are refused."""
    plugin, _, stage = plugin.partition(":")
    options = {"merge": {"merge": True}, "key_fraction": {"key_fraction": 0.1}}.get(stage, {})
    before = forward_modules(pipe.model)
    assert registry.support_cell(plugin, "gemma3") == ("✓" if stage else "✗")
    with pytest.raises(UnsupportedModelError, match="CLS"):
        pipe.add_plugin(plugin, **options)
    assert forward_modules(pipe.model) == before and plugin not in pipe.plugins
    if not stage:
        assert "CLS" in registry.refusal(plugin, "gemma3")


def test_bad_inputs_raise_input_error_and_leave_the_model_usable(pipe) -> None:
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    ids = inputs["input_ids"].clone()
    ids[0, ids[0] == pipe.model.config.image_token_id] = pipe.processor.tokenizer.pad_token_id
    with pytest.raises(InputError, match="16 each"):
        pipe.adapter.check_token_counts(ids, inputs)
    with pytest.raises(InputError, match="empty"):
        pipe.generate(sample_images(), ["   ", "how many?"])
    assert len(pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)) == 2
