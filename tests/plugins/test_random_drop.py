"""random_drop: the shared plugin behaviour; a seeded subset of exactly the budget."""

from __future__ import annotations

import torch

from mmeff.plugins.random_drop.ops import random_keep
from mmeff.testing.plugin_tests import VLMPluginTesterMixin, cache_lengths, image_counts


class TestRandomDrop(VLMPluginTesterMixin):
    plugin_name = "random_drop"
    neutral_options = {"budget": 1.0}
    active_options = {"budget": 0.25}
    bad_options = [{"budget": 0}, {"budget": None}, {"budget": 1.5}, {"layer": -1}, {"layer": 8}, {"seed": "a"}]

    def assert_effect(self, pipe, inputs):
        lengths = cache_lengths(pipe, inputs)
        n = image_counts(pipe, inputs)
        full = inputs["input_ids"].shape[1]
        assert len(set(lengths)) == 1 and lengths[0] < full  # dropped before layer 0
        stats = pipe.plugins["random_drop"].stats()
        assert [row[0] for row in stats["image_tokens_per_layer_by_row"]] == torch.round(n * 0.25).long().tolist()
        # which ones: the seeded subset, as ordinals among each row's image tokens (the heat maps' input)
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
        candidates = pipe.adapter.image_token_mask(inputs["input_ids"]) & mask
        keep = random_keep(candidates, torch.round(n * 0.25).long(), seed=0)
        want = [torch.nonzero(k[c]).flatten().tolist() for k, c in zip(keep, candidates)]
        assert stats["kept_image_tokens_by_row"] == want


def test_random_keep_is_seeded_per_row():
    candidates = torch.tensor([[False, True, True, True, True, False]] * 2)
    keep = random_keep(candidates, torch.tensor([2, 2]), seed=3)
    assert keep.sum(-1).tolist() == [2, 2] and torch.equal(keep[0], keep[1])
    assert not (keep & ~candidates).any()
    assert torch.equal(random_keep(candidates, torch.tensor([2, 2]), seed=3), keep)
    others = {tuple(random_keep(candidates, torch.tensor([2, 2]), seed=s)[0].tolist()) for s in range(8)}
    assert len(others) > 1
