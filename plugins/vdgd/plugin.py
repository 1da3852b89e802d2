"""VDGD (Ghosh et al., ICLR'25): the model first describes the image; each answer token is then
chosen among the candidates by ``-KL(onehot_k || p_desc_j) = log p_desc_j(k)`` reduced over the
description's steps j. That score never depends on the decode step, so it is one
vocabulary-sized vector per image, computed once: no extra forward per answer token. As released,
the candidates are the top-p 0.5 nucleus of the logits at temperature 0.5 and the token is drawn
from the softmax of their scores (``choice="greedy"``: mmeff's deterministic variant).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from mmeff.contrastive.decode import Branch
from mmeff.contrastive.ops import description_scores, nucleus
from mmeff.contrastive.plugin_base import ContrastivePlugin
from mmeff.registry import register_plugin

from .config import RELEASED_ANSWER_PROMPT, VDGDConfig


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
    def describe(self, pipe: Any, images: list[Any], prompts: list[str]) -> tuple[list[str], torch.Tensor]:
        """Greedy descriptions (the describe prompt carries each row's question) and (B, V) token scores
        from their per-step logits."""
        c = self.config
        inputs = pipe.to_model(self.adapter.build_inputs(images, [c.describe_for(q) for q in prompts]))
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
        c = self.config
        texts, self._scores = self.describe(pipe, images, prompts)
        pipe.reset_state()  # token-reduction state from the description call must not carry into the answer
        self._extra = {"descriptions": texts, **self._description_cost}
        if c.prefix == "none":
            return inputs
        if c.prefix == "inline":
            answers = [RELEASED_ANSWER_PROMPT.format(description=t, question=q) for t, q in zip(texts, prompts)]
            return pipe.to_model(self.adapter.build_inputs(images, answers))
        history = [[(c.describe_for(q), t)] for t, q in zip(texts, prompts)]
        return pipe.to_model(self.adapter.build_inputs(images, prompts, history=history))

    def _samples(self) -> bool:
        return self.config.choice == "sample" and self.config.alpha != 0

    def plausibility_beta(self) -> float | None:
        return None if self._samples() else self.config.beta

    def prepare_generate(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str],
                         kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """As released, the token is drawn from the softmax of the candidates' scores, nothing else applied
        (a caller's explicit ``do_sample=False`` takes the best candidate instead)."""
        if self._samples() and "do_sample" not in kwargs and "generation_config" not in kwargs:
            kwargs = {**kwargs, "do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
        return super().prepare_generate(pipe, inputs, images, prompts, kwargs)

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
        scores = self._scores.to(logits_pos.device).expand_as(logits_pos)
        if self.config.choice == "sample":  # the release's candidates: the nucleus of the answer's logits
            keep = nucleus(logits_pos, self.config.top_p, self.config.temperature)
            scores = scores.masked_fill(~keep, float("-inf"))
        return scores
