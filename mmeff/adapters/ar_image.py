"""Adapter for LlamaGen-style generators made of standard classes (``mmeff.ar.model.ARImageModel``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..ar.model import ARImageModel
from ..registry import register_adapter
from .ar_base import ARImageAdapter, run_decoder


@register_adapter
class ARImageLMAdapter(ARImageAdapter):
    key = "ar_image"
    description = "causal LM over text + VQ codes with a diffusers VQModel decoder (LlamaGen-style; shapes-ar)"

    obj: ARImageModel

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return isinstance(obj, ARImageModel)

    def hook_roots(self) -> list[nn.Module]:
        return [self.obj.lm, self.obj.vq]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.obj.config.grid)

    @property
    def codebook_size(self) -> int:
        return self.obj.config.codebook_size

    def has_unconditional(self) -> bool:
        return self.obj.config.null_caption

    def prefix(self, prompts: list[str], unconditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.obj.prompt_ids(list(prompts), unconditional)
        return self.obj.lm.get_input_embeddings()(ids), mask

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.obj.lm.get_input_embeddings()(codes + self.obj.config.code_offset)

    def backbone(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Any) -> torch.Tensor:
        return run_decoder(self.obj.lm.model, inputs_embeds, attention_mask, position_ids, cache)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        start = self.obj.config.code_offset
        head = self.obj.lm.get_output_embeddings()
        weight = head.weight[start : start + self.codebook_size]
        bias = head.bias[start : start + self.codebook_size] if getattr(head, "bias", None) is not None else None
        return nn.functional.linear(hidden, weight, bias)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.obj.decode_codes(codes)

    def code_vectors(self) -> torch.Tensor:
        return self.obj.vq.quantize.embedding.weight.detach()
