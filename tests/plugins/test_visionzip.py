"""VisionZip: the shared plugin behaviour; dominant + contextual counts reach the decoder."""

from __future__ import annotations

import pytest
import torch

from mmeff.errors import ConfigError
from mmeff.plugins.visionzip import VisionZipConfig
from mmeff.testing.plugin_tests import VLMPluginTesterMixin, cache_lengths, image_counts


class TestVisionZip(VLMPluginTesterMixin):
    plugin_name = "visionzip"
    neutral_options = {"budget": 1.0}
    active_options = {"budget": 0.5}
    bad_options = [{"budget": 0}, {"budget": "7"}, {"dominant": 4}, {"dominant": 0, "contextual": 1},
                   {"budget": None}]

    def assert_effect(self, pipe, inputs):
        lengths = cache_lengths(pipe, inputs)
        full = inputs["input_ids"].shape[1]
        assert len(set(lengths)) == 1 and lengths[0] < full  # the decoder never sees the dropped tokens
        stats = pipe.plugins["visionzip"].stats()
        if pipe.adapter.key == "llava":
            n = image_counts(pipe, inputs)
            assert [row[0] for row in stats["image_tokens_per_layer_by_row"]] == (n // 2).tolist()
        assert stats["final_image_tokens"] == stats["mean_image_tokens"] < stats["image_tokens_before"][0]


def test_presets_give_the_released_splits():
    assert VisionZipConfig(budget="192").counts(576) == (162, 30)
    assert VisionZipConfig(budget="128").counts(576) == (108, 20)
    assert VisionZipConfig(budget="64").counts(576) == (54, 10)
    assert sum(VisionZipConfig(budget="64").counts(144)) == 16
    assert VisionZipConfig(budget=1.0).counts(16) == (16, 0)
    assert VisionZipConfig(dominant=5, contextual=2, budget=None).counts(16) == (5, 2)
    with pytest.raises(ConfigError, match="both"):
        VisionZipConfig(dominant=3)


def _llava_and_features():
    """A LLaVA pipe, one image's inputs, and a function giving its projector features (the tower's feature path)."""
    import mmeff
    from mmeff.testing.plugin_tests import FACTORIES, PROMPTS, sample_images

    model, processor = FACTORIES["llava-sdpa"]()
    pipe = mmeff.wrap(model, processor)
    inputs = pipe.adapter.build_inputs(sample_images()[:1], PROMPTS[:1])

    def features() -> torch.Tensor:
        pipe.reset_state()
        with torch.no_grad():
            return model.get_image_features(pixel_values=inputs["pixel_values"], vision_feature_layer=-2,
                                            vision_feature_select_strategy="default").pooler_output[0]

    return pipe, inputs, features


def test_features_of_kept_tokens_are_untouched():
    """Dominant tokens pass through unchanged; only their neighbours go (checked on the projector output)."""
    pipe, _, features = _llava_and_features()
    plain = features()
    pipe.add_plugin("visionzip", dominant=6, contextual=0, budget=None, cls_token=False)
    reduced = features()
    kept = (reduced != 0).any(-1)
    assert int(kept.sum()) == 6
    torch.testing.assert_close(reduced[kept], plain[kept])


def test_the_cls_token_reaches_the_llm_in_a_kept_place_as_released():
    """Issue 29: the release passes CLS + (dominant - 1) patches + contextual tokens; mmeff writes the projected
    CLS into the first grid slot the kept patches leave free, so the count is unchanged."""
    pipe, inputs, features = _llava_and_features()
    plain = features()
    with torch.no_grad():
        hidden = pipe.adapter.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2]
        cls = pipe.model.model.multi_modal_projector(hidden[:, :1])[0, 0]
    pipe.add_plugin("visionzip", dominant=6, contextual=0, budget=None)
    reduced = features()
    kept = (reduced != 0).any(-1)
    assert int(kept.sum()) == 6  # CLS + 5 patches
    slots = kept.nonzero().flatten().tolist()
    same = [s for s in slots if torch.allclose(reduced[s], plain[s], atol=1e-6)]
    assert len(same) == 5
    (cls_slot,) = set(slots) - set(same)
    torch.testing.assert_close(reduced[cls_slot], cls, atol=1e-5, rtol=1e-5)
    assert set(range(cls_slot)) <= set(same)  # every slot before the CLS one holds a kept patch: the first free slot
