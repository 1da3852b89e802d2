"""Janus / Janus-Pro (``JanusForConditionalGeneration``) as a text-to-image token generator.

Janus generates images with its own head and embeddings on top of the Llama decoder:
``generation_head`` maps a hidden state to logits over the VQ codebook, and a drawn code
re-enters the decoder as ``generation_aligner(generation_embeddings(code))``. Its
``generate(generation_mode="image")`` samples one token per forward; mmeff's loops need the
pieces instead, so this adapter rebuilds exactly the inputs ``generate`` makes: the chat
template + ``<begin_of_image>`` prompt from the processor, and unconditional rows that are the
prompt with every token except BOS and ``<begin_of_image>`` replaced by the pad token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, InputError
from ..registry import register_adapter
from .ar_base import ARImageAdapter, run_decoder


def _janus_class() -> type | None:
    try:
        from transformers import JanusForConditionalGeneration
    except ImportError:  # transformers without Janus: nothing to match
        return None
    return JanusForConditionalGeneration


@register_adapter
class JanusAdapter(ARImageAdapter):
    key = "janus"
    description = "Janus / Janus-Pro text-to-image (Llama decoder + generation head over a VQ codebook)"

    def __init__(self, obj: nn.Module, processor: Any = None) -> None:
        super().__init__(obj, processor)
        self.model = obj
        self.inner = obj.model  # JanusModel: language_model, generation_*, vqmodel
        self.language_model: nn.Module = self.inner.language_model

    @property
    def default_guidance(self) -> float:
        """What Janus's ``generate`` uses when no guidance_scale is given: the generation config's, else 5."""
        scale = getattr(self.model.generation_config, "guidance_scale", None)
        return float(scale) if scale is not None else 5.0

    @classmethod
    def matches(cls, obj: Any) -> bool:
        if getattr(getattr(obj, "config", None), "model_type", None) != "janus":
            return False  # cheap test first: no Janus import for other models and pipelines
        janus = _janus_class()
        return janus is not None and isinstance(obj, janus)

    def hook_roots(self) -> list[nn.Module]:
        inner = self.inner
        return [self.language_model, inner.generation_embeddings, inner.generation_aligner, inner.generation_head,
                inner.vqmodel]

    # -- facts -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        side = self.model.config.vq_config.num_patches
        generated = self.model.config.vision_config.num_image_tokens  # how many tokens Janus's generate draws
        if generated != side * side:
            raise ConfigError(
                f"vision_config.num_image_tokens={generated} but the VQ decoder needs num_patches**2 = "
                f"{side}**2 = {side * side} codes (num_patches = vision image_size // patch_size); "
                "set num_image_tokens to num_patches**2"
            )
        return side, side

    @property
    def codebook_size(self) -> int:
        return self.inner.generation_head.vision_head.out_features

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "guidance_scale": self.default_guidance}

    # -- prompt ------------------------------------------------------------------------
    def _require_processor(self) -> Any:
        if self.processor is None:
            raise InputError(
                "Janus image generation needs the model's JanusProcessor (chat template + <begin_of_image> "
                "token); use mmeff.wrap(model, processor) or mmeff.load(...)"
            )
        return self.processor

    def _special_ids(self) -> tuple[int, int, int]:
        """``(bos, pad, boi)`` as ``generate`` reads them: the generation config first."""
        gen = self.model.generation_config
        tok = self._require_processor().tokenizer
        bos = gen.bos_token_id if gen.bos_token_id is not None else tok.bos_token_id
        pad = gen.pad_token_id
        if pad is None:  # generate falls back to the (first) eos id
            eos = gen.eos_token_id if gen.eos_token_id is not None else tok.eos_token_id
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        boi = (getattr(gen, "generation_kwargs", None) or {}).get("boi_token_id")
        if boi is None:
            boi = tok.convert_tokens_to_ids(self.processor.image_start_token)
        if bos is None or pad is None or boi is None:
            raise ConfigError(f"Janus needs bos, pad and <begin_of_image> ids; got bos={bos}, pad={pad}, boi={boi}")
        return int(bos), int(pad), int(boi)

    def prompt_ids(self, prompts: list[str], unconditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask: prompts as the processor builds them, then (optionally) their null rows."""
        processor = self._require_processor()
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise InputError("prompts must be a non-empty list of non-empty strings")
        texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": p}]}],
                                               add_generation_prompt=True) for p in prompts]
        enc = processor(text=texts, generation_mode="image", padding=True, padding_side="left", return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if unconditional:
            bos, pad, boi = self._special_ids()
            null = ids.clone()
            null[(null != bos) & (null != boi)] = pad  # same length and mask as the prompt, as generate does
            ids, mask = torch.cat([ids, null]), torch.cat([mask, mask])
        return ids.to(self.device), mask.to(self.device)

    # -- primitives --------------------------------------------------------------------
    def prefix(self, prompts: list[str], unconditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.prompt_ids(list(prompts), unconditional)
        return self.language_model.get_input_embeddings()(ids), mask

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.inner.generation_aligner(self.inner.generation_embeddings(codes))

    def backbone(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Any) -> torch.Tensor:
        return run_decoder(self.language_model, inputs_embeds, attention_mask, position_ids, cache)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner.generation_head(hidden)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        n = self.num_image_tokens
        if codes.ndim != 2 or codes.shape[1] != n:
            raise InputError(f"expected (batch, {n}) codes, got {tuple(codes.shape)}")
        pixels = self.model.decode_image_tokens(codes.to(self.device))  # (B, H, W, 3) in [-1, 1]
        return (pixels.permute(0, 3, 1, 2).float().clamp(-1, 1) + 1) / 2

    def code_vectors(self) -> torch.Tensor:
        # the VQ decoder looks codes up L2-normalised, so that is where "near" codes are near
        weight = self.inner.vqmodel.quantize.embedding.weight.detach()
        return nn.functional.normalize(weight, p=2, dim=-1)
