"""divprune: the shared plugin behaviour; the released max-min rule on the decoder's input embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmeff
from mmeff.errors import ConfigError
from mmeff.plugins.divprune.ops import max_min_subset
from mmeff.testing import tiny_qwen2_vl
from mmeff.testing.plugin_tests import PROMPTS, VLMPluginTesterMixin, cache_lengths, image_counts, sample_images


def released_divprune(visual_feature_vectors: torch.Tensor, threshold_terms: int) -> torch.Tensor:
    """The release's ``DivPrune`` loop (vbdi/divprune, ``llava_arch.py``), transcribed on the same tensors."""
    norm_matrix = visual_feature_vectors / visual_feature_vectors.norm(dim=1, keepdim=True)
    cosine_matrix = 1.0 - norm_matrix @ norm_matrix.t()
    s = torch.empty(threshold_terms, dtype=torch.long)
    for i in range(threshold_terms):
        m2 = cosine_matrix if i == 0 else torch.index_select(cosine_matrix, 0, s[:i])
        scores = torch.topk(m2, 2, dim=0, largest=False).values[1, :] if i == 0 else torch.min(m2, dim=0).values
        s[i] = torch.argmax(scores)
    return s


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n, k", [(144, 16), (576, 56), (40, 39), (2, 1)])
def test_max_min_subset_is_the_released_rule(seed, n, k):
    features = torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))
    want = released_divprune(features, k)
    assert len(set(want.tolist())) == k  # no exact duplicates: the release never picks a token twice here
    assert torch.equal(max_min_subset(features, k), want.sort().values)


def test_max_min_subset_picks_distinct_tokens_among_duplicates():
    """Known difference: among exact duplicates the release picks an already picked token again (its
    distance 0 ties the rest), keeping fewer tokens than asked; here every pick is a new token."""
    features = torch.cat([torch.eye(3), torch.eye(3)[:1].repeat(5, 1)])  # 3 directions, the first repeated
    assert len(set(released_divprune(features, 5).tolist())) < 5
    picked = max_min_subset(features, 5)
    assert picked.unique().numel() == 5 and {1, 2} <= set(picked.tolist())


def test_max_min_subset_keeps_all_when_asked_for_all():
    features = torch.randn(7, 4)
    assert torch.equal(max_min_subset(features, 7), torch.arange(7))
    assert torch.equal(max_min_subset(features, 9), torch.arange(7))


def test_released_ratio_is_the_default():
    assert mmeff.plugins.divprune.DivPruneConfig().kept(576) == 56


def test_budget_none_is_refused():
    with pytest.raises(ConfigError, match="divprune needs a budget"):
        mmeff.plugins.divprune.DivPruneConfig(budget=None)


def decoder_inputs(pipe, inputs) -> torch.Tensor:
    """The unmodified model's input to decoder layer 0 (embeddings with the image features written in)."""
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]

    handle = pipe.adapter.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with pipe.plugins_disabled(), torch.no_grad():
            pipe.reset_state()
            pipe.model(**inputs)
    finally:
        handle.remove()
    return captured["hidden"]


class TestDivPrune(VLMPluginTesterMixin):
    plugin_name = "divprune"
    neutral_options = {"budget": 1.0}
    active_options = {"budget": 0.25}
    bad_options = [{"budget": 0}, {"budget": 1.5}, {"budget": "half"}, {"layer": 2}]

    def assert_effect(self, pipe, inputs):
        lengths = cache_lengths(pipe, inputs)
        assert len(set(lengths)) == 1 and lengths[0] < inputs["input_ids"].shape[1]  # dropped before layer 0
        n = image_counts(pipe, inputs)
        counts = torch.round(n * 0.25).long()
        stats = pipe.plugins["divprune"].stats()
        assert [row[0] for row in stats["image_tokens_per_layer_by_row"]] == counts.tolist()
        hidden = decoder_inputs(pipe, inputs)
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
        candidates = pipe.adapter.image_token_mask(inputs["input_ids"]) & mask
        want = [max_min_subset(h[c], int(k)).tolist() for h, c, k in zip(hidden, candidates, counts)]
        assert stats["kept_image_tokens_by_row"] == want


def test_video_row_next_to_an_image_row_is_pruned_and_matches_solo_runs():
    """Qwen2-VL: a 4-frame video's tokens are pruned like an image's, beside an image row of another size."""
    pipe = mmeff.wrap(*tiny_qwen2_vl(layers=4, variant="qwen2_vl", attn_implementation="sdpa"))
    pipe.add_plugin("divprune", budget=0.25)
    rng = np.random.default_rng(3)
    clip = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(4)]
    images, videos, prompts = [None, sample_images()[0]], [clip, None], ["describe the video", PROMPTS[0]]
    inputs = pipe.to_model(pipe.adapter.build_inputs(images, prompts, videos=videos))
    ids = inputs["input_ids"]
    vision = (ids == pipe.adapter.video_token_id).sum(-1) + (ids == pipe.adapter.image_token_id).sum(-1)
    batched = pipe.generate(images, prompts, videos=videos, max_new_tokens=4, return_ids=True).new_tokens
    stats = pipe.last_stats["divprune"]
    assert stats["image_tokens_before"] == vision.float().tolist() and vision[0] > vision[1] > 0
    assert [row[-1] for row in stats["image_tokens_per_layer_by_row"]] == torch.round(vision * 0.25).long().tolist()
    for row in range(2):
        solo = pipe.generate([images[row]], [prompts[row]], videos=[videos[row]], max_new_tokens=4,
                             return_ids=True).new_tokens[0]
        assert torch.equal(solo, batched[row, : solo.shape[0]]), f"row {row} differs when batched"
