"""LQCD (Zhao et al. 2024, leading-query contrastive decoding): the negative branch asks the
leading form of the question ("there is a dog, right?"), so what the leading phrasing adds
(sycophantic "yes") is subtracted from the neutral query's logits.

Only yes/no questions have a leading form. A row whose prompt is open ("what color ...?") or
already leading is passed through: its negative is the prompt itself, so it decodes as plain
greedy (``last_stats["lqcd"]["passed_through"]`` lists those rows). Give ``leading=`` to pass the
neutral/leading pairs yourself, as the paper evaluates them."""

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
            derived = [leading_form(p, self.config.tag) for p in prompts]
            self._extra = {"passed_through": [i for i, q in enumerate(derived) if q is None]}
            return [p if q is None else q for p, q in zip(prompts, derived)]
        if isinstance(given, str):
            return [given] * len(prompts)
        if len(given) != len(prompts):
            raise InputError(f"lqcd has {len(given)} leading queries for {len(prompts)} prompts; give one per prompt")
        return list(given)

    def negative(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> Branch:
        neg = self.adapter.build_inputs(images, self.leading_queries(prompts))
        return Branch.from_inputs(neg, same_images=True)
