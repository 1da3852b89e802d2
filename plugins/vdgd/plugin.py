"""VDGD (Ghosh et al., ICLR'25): the model first describes the image; each answer token is then
chosen among the plausible ones by ``-KL(onehot_k || p_desc_j) = log p_desc_j(k)`` reduced over
the description's steps j. That score never depends on the decode step, so it is one
vocabulary-sized vector per image, computed once: no extra forward per answer token.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from mmeff.contrastive.decode import Branch
from mmeff.contrastive.ops import description_scores
from mmeff.contrastive.plugin_base import ContrastivePlugin
from mmeff.registry import register_plugin

from .config import VDGDConfig


@register_plugin
class VDGDPlugin(ContrastivePlugin):
    name = "vdgd"
    config_cls = VDGDConfig
    description = "VDGD: describe the image first, then prefer answer tokens the description made likely"
    config: VDGDConfig

    def __init__(self, config: VDGDConfig) -> None:
        super().__init__(config)
        self._scores: torch.Tensor | None = None
        self._description_cost: dict[str, float] = {}

    @torch.no_grad()
    def describe(self, pipe: Any, images: list[Any]) -> tuple[list[str], torch.Tensor]:
        """Greedy descriptions and (B, V) token scores from their per-step logits."""
        c = self.config
        inputs = pipe.to_model(self.adapter.build_inputs(images, [c.describe_prompt] * len(images)))
        tok = pipe.processor.tokenizer
        start = time.perf_counter()
        out = pipe.model.generate(**inputs, max_new_tokens=c.description_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id, output_logits=True, return_dict_in_generate=True)
        self._description_cost = {"description_forwards": len(out.logits),
                                  "description_s": time.perf_counter() - start}
        new = out.sequences[:, inputs["input_ids"].shape[1]:]
        eos = (new == tok.eos_token_id).long()
        valid = (eos.cumsum(1) - eos) == 0  # steps up to and including a row's EOS
        scores = description_scores(torch.stack(out.logits, 1), c.reduce, valid)
        texts = [t.strip() for t in self.adapter.decode(new)]
        return texts, scores

    def positive(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> dict[str, Any]:
        texts, self._scores = self.describe(pipe, images)
        pipe.reset_state()  # token-reduction state from the description call must not carry into the answer
        self._extra = {"descriptions": texts, **self._description_cost}
        if not self.config.prefix:
            return inputs
        history = [[(self.config.describe_prompt, t)] for t in texts]
        return pipe.to_model(self.adapter.build_inputs(images, prompts, history=history))

    def negative(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> Branch | None:
        return None

    def stats(self) -> dict[str, Any]:
        """The answer loop's stats, with ``forwards`` counting the description pass too (its own cost is
        reported as ``description_forwards`` / ``description_s``)."""
        out = super().stats()
        if out and "description_forwards" in out:
            out = {**out, "answer_forwards": out["forwards"], "forwards": out["forwards"] + out["description_forwards"]}
        return out

    def combine(self, logits_pos: torch.Tensor, logits_neg: torch.Tensor | None, step: int) -> torch.Tensor:
        if self.config.alpha == 0:
            return logits_pos
        return self._scores.to(logits_pos.device).expand_as(logits_pos)
