"""The behaviour every contrastive-decoding plugin must show, on top of the VLM plugin mixin.

Subclass with ``plugin_name``, ``neutral_options`` (alpha 0), ``active_options`` and
``bad_options``. The checks: alpha=0 and beta=1 reproduce plain greedy decoding; the
negative rows of the batched forward give the logits of a solo run of the negative
input; both rows of a pair are fed the same token; separate caches are distinct objects
and give the same tokens as the batched rows.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from ..contrastive.decode import Branch, ContrastiveDecoder
from .plugin_tests import FACTORY_PARAMS, PROMPTS, VLMPluginTesterMixin, sample_images


class ContrastivePluginTesterMixin(VLMPluginTesterMixin):
    max_new_tokens: ClassVar[int] = 5
    #: options that make the contrast strong enough to change greedy tokens of a random tiny model
    strong_options: ClassVar[dict[str, Any]] = {"alpha": 5.0, "beta": 1e-3}
    #: plugins whose positive branch differs from the plain prompt (VDGD) skip the exactness checks
    positive_is_plain: ClassVar[bool] = True
    #: vision-tower passes per generate call (1 when the negative branch reuses the positive features)
    vision_passes: ClassVar[int] = 1

    def _branches(self, pipe) -> tuple[Branch, Branch | None]:
        plugin = pipe.plugins[self.plugin_name]
        images = sample_images()
        inputs = pipe.adapter.build_inputs(images, PROMPTS)
        pipe.reset_state()
        inputs = plugin.positive(pipe, inputs, images, PROMPTS)
        return Branch.from_inputs(inputs), plugin.negative(pipe, inputs, images, PROMPTS)

    def assert_effect(self, pipe, inputs) -> None:
        with pipe.plugins_disabled():
            plain = self.generate(pipe)
        name = self.plugin_name
        pipe.remove_plugin(name)
        pipe.add_plugin(name, **{**self.active_options, **self.strong_options})
        contrasted = self.generate(pipe)
        assert not torch.equal(contrasted, plain), f"{name} with a strong contrast left every token unchanged"
        stats = pipe.last_stats[name]
        assert stats["forwards"] >= 1 and stats["per_token_s"] >= 0

    @pytest.mark.parametrize("factory", FACTORY_PARAMS)
    def test_alpha_zero_and_beta_one_reproduce_greedy(self, factory):
        if factory not in self.runs_on() or not self.positive_is_plain:
            pytest.skip("not applicable")
        pipe = self.make_pipe(factory)
        plain = self.generate(pipe)
        for options in ({**self.active_options, **self.neutral_options},
                        {**self.active_options, **self.strong_options, "beta": 1.0}):
            pipe.add_plugin(self.plugin_name, **options)
            assert torch.equal(self.generate(pipe), plain), f"{options} must give plain greedy decoding"
            pipe.remove_plugin(self.plugin_name)

    @pytest.mark.parametrize("factory", FACTORY_PARAMS)
    def test_negative_rows_match_a_solo_run(self, factory):
        if factory not in self.runs_on():
            pytest.skip(f"{self.plugin_name} does not run on {factory}")
        pipe = self.make_pipe(factory)
        pipe.add_plugin(self.plugin_name, **self.active_options)
        pos, neg = self._branches(pipe)
        if neg is None:
            pytest.skip("single-branch method")
        decoder = ContrastiveDecoder(pipe.model, lambda lp, ln, step: lp)
        decoder.run(pos, neg, max_new_tokens=1, eos_token_id=None, pad_token_id=0)
        batched = decoder.last_prefill[len(PROMPTS):]
        solo_decoder = ContrastiveDecoder(pipe.model, lambda lp, ln, step: lp)
        solo_neg = neg if not neg.same_images else Branch(neg.input_ids, neg.attention_mask, pos.vision,
                                                          position_mask=neg.position_mask)
        solo_decoder.run(solo_neg, None, max_new_tokens=1, eos_token_id=None, pad_token_id=0)
        torch.testing.assert_close(batched, solo_decoder.last_prefill, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("separate", [False, True])
    def test_both_branches_get_the_same_token(self, separate):
        pipe = self.make_pipe(self.runs_on()[0])
        if separate and self.plugin_name == "vdgd":
            pytest.skip("single-branch method")
        pipe.add_plugin(self.plugin_name, **{**self.active_options, **self.strong_options, "separate": separate})
        fed: list[torch.Tensor] = []
        handle = pipe.model.register_forward_pre_hook(
            lambda m, a, kw: fed.append(kw["input_ids"].clone()) if kw["input_ids"].shape[1] == 1 else None,
            with_kwargs=True)
        try:
            tokens = self.generate(pipe)
        finally:
            handle.remove()
        assert fed, "no decode step ran"
        if self.plugin_name == "vdgd":
            assert pipe.last_stats["vdgd"]["forwards"] >= 2, "the answer loop ran no decode step"
            return
        rows = len(PROMPTS)
        steps = [torch.cat(fed[i:i + 2]) for i in range(0, len(fed), 2)] if separate else fed
        for step, ids in enumerate(steps):
            assert torch.equal(ids[:rows], ids[rows:]), f"step {step}: the branches were fed different tokens"
            assert torch.equal(ids[:rows, 0], tokens[:, step])

    def test_separate_caches_are_distinct_and_agree_with_batched_rows(self):
        if self.plugin_name == "vdgd":
            pytest.skip("single-branch method")
        pipe = self.make_pipe(self.runs_on()[0])
        pipe.add_plugin(self.plugin_name, **{**self.active_options, **self.strong_options})
        pos, neg = self._branches(pipe)
        plugin = pipe.plugins[self.plugin_name]
        runs = {}
        for separate in (False, True):
            decoder = ContrastiveDecoder(pipe.model, plugin.combine, plugin.config.beta, separate=separate)
            runs[separate] = decoder.run(pos, neg, max_new_tokens=4, eos_token_id=None, pad_token_id=0).new_tokens
            caches = [s.cache for s in decoder.last_streams]
            assert len({id(c) for c in caches}) == len(caches) == (2 if separate else 1)
        assert torch.equal(runs[False], runs[True])

    def test_vision_tower_runs_only_as_often_as_the_method_needs(self):
        pipe = self.make_pipe(self.runs_on()[0])
        pipe.add_plugin(self.plugin_name, **self.active_options)
        calls: list[int] = []
        handle = pipe.adapter.vision_tower.register_forward_hook(lambda m, a, o: calls.append(1))
        try:
            self.generate(pipe)
        finally:
            handle.remove()
        assert len(calls) == self.vision_passes, f"{len(calls)} vision passes, expected {self.vision_passes}"
