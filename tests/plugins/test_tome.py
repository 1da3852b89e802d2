"""ToMe in the vision tower: the shared plugin behaviour; budgets and r schedules."""

from __future__ import annotations

import pytest

from mmeff.errors import ConfigError
from mmeff.plugins.tome import ToMeConfig
from mmeff.testing.plugin_tests import VLMPluginTesterMixin, cache_lengths, image_counts


class TestToMe(VLMPluginTesterMixin):
    plugin_name = "tome"
    neutral_options = {"r": 0}
    active_options = {"budget": 0.25}
    bad_options = [{"budget": 0}, {"r": -1}, {"budget": None}, {"proportional_attention": "yes"}]

    def assert_effect(self, pipe, inputs):
        lengths = cache_lengths(pipe, inputs)
        full = inputs["input_ids"].shape[1]
        assert len(set(lengths)) == 1 and lengths[0] < full
        stats = pipe.plugins["tome"].stats()
        if pipe.adapter.key == "llava":
            n = image_counts(pipe, inputs)
            assert [row[0] for row in stats["image_tokens_per_layer_by_row"]] == (n // 4).tolist()


def test_schedule_keeps_the_same_fraction_per_layer_and_hits_the_budget():
    targets = ToMeConfig(budget="192").targets(576, 23)
    assert targets[-1] == 192 and targets == sorted(targets, reverse=True)
    expected = [round(144 * (1 / 9) ** (1 / 3)), round(144 * (1 / 9) ** (2 / 3)), 16]
    assert ToMeConfig(budget="64").targets(144, 3) == expected
    assert ToMeConfig(r=16, budget=None).targets(576, 24)[-1] == 192
    with pytest.raises(ConfigError, match="budget or r"):
        ToMeConfig(budget=None)
