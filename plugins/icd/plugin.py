"""ICD (Wang et al., ACL Findings'24): the negative branch is the same image and question under
a disturbance instruction, so what an instruction-confused model would say is subtracted."""

from __future__ import annotations

from typing import Any

from mmeff.contrastive.decode import Branch
from mmeff.contrastive.plugin_base import ContrastivePlugin
from mmeff.registry import register_plugin

from .config import ICDConfig


@register_plugin
class ICDPlugin(ContrastivePlugin):
    name = "icd"
    config_cls = ICDConfig
    description = "ICD: contrast with the prompt under a disturbance instruction (instruction contrastive decoding)"
    config: ICDConfig

    def negative(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> Branch:
        neg = self.adapter.build_inputs(images, prompts, system=self.config.instruction)
        return Branch.from_inputs(neg, same_images=True)
