"""LQCD (Zhao et al. 2024, leading-query contrastive decoding): the negative branch asks the
leading form of the question ("there is a dog, right?"), so what the leading phrasing adds
(sycophantic "yes") is subtracted from the neutral query's logits."""

from __future__ import annotations

from typing import Any

from mmeff.contrastive.decode import Branch
from mmeff.contrastive.plugin_base import ContrastivePlugin
from mmeff.errors import InputError
from mmeff.registry import register_plugin

from .config import LQCDConfig
from .ops import leading_form


@register_plugin
class LQCDPlugin(ContrastivePlugin):
    name = "lqcd"
    config_cls = LQCDConfig
    description = "LQCD: contrast the neutral query with its leading form (against sycophancy)"
    config: LQCDConfig

    def leading_queries(self, prompts: list[str]) -> list[str]:
        given = self.config.leading
        if given is None:
            return [leading_form(p, self.config.tag) for p in prompts]
        if isinstance(given, str):
            return [given] * len(prompts)
        if len(given) != len(prompts):
            raise InputError(f"lqcd has {len(given)} leading queries for {len(prompts)} prompts; give one per prompt")
        return list(given)

    def negative(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> Branch:
        neg = self.adapter.build_inputs(images, self.leading_queries(prompts))
        return Branch.from_inputs(neg, same_images=True)
