"""What every autoregressive image-token generator exposes to mmeff's decode loops.

The loops (plain sampling, SJD, LANTERN, ZipAR) never call ``generate``: multi-token
methods cannot hook a loop that samples one token per forward. They call these five
primitives instead, with explicit position ids, a 4D additive attention mask and a
``DynamicCache`` they crop themselves (``mmeff.ar.session.DecodeSession``). Wrapping a new
model family (Emu3, Lumina-mGPT, ...) means writing one subclass of this.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

import torch

from .base import Adapter


@functools.cache
def _cache_keyword(forward: Any) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def run_decoder(decoder: torch.nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """A transformers decoder stack with an explicit cache: ``cache=`` since 5.2x, ``past_key_values=`` before."""
    kwargs = {_cache_keyword(type(decoder).forward): cache}
    out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=True, **kwargs)
    return out.last_hidden_state


class ARImageAdapter(Adapter):
    family: ClassVar[str] = "ar_image"
    #: guidance scale used when the caller gives none (Janus and LlamaGen ship with CFG on)
    default_guidance: ClassVar[float | None] = None

    # -- facts -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """Rows x columns of image tokens, raster order."""
        raise NotImplementedError

    @property
    def codebook_size(self) -> int:
        raise NotImplementedError

    @property
    def num_image_tokens(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def device(self) -> torch.device:
        return next(self.hook_roots()[0].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hook_roots()[0].parameters()).dtype

    def has_unconditional(self) -> bool:
        """Whether the model has a null-prompt path for classifier-free guidance."""
        return True

    # -- primitives --------------------------------------------------------------------
    def prefix(self, prompts: list[str], unconditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt embeddings ``(rows, L, d)`` and their 0/1 mask ``(rows, L)``.

        Rows are the prompts, then (if ``unconditional``) one null prompt per prompt; the last
        position of every row is the one whose output predicts the first image token.
        """
        raise NotImplementedError

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(rows, n)`` code indices -> ``(rows, n, d)`` input embeddings."""
        raise NotImplementedError

    def backbone(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Any) -> torch.Tensor:
        """Run the decoder stack with a 4D additive mask; returns the last hidden states."""
        raise NotImplementedError

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> logits over the codebook only ``(..., codebook_size)``."""
        raise NotImplementedError

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` codes -> ``(B, 3, H, W)`` images in [0, 1]."""
        raise NotImplementedError

    def code_vectors(self) -> torch.Tensor:
        """``(codebook_size, c)`` latent vectors of the codes (LANTERN's neighbourhoods)."""
        raise NotImplementedError

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.key, "grid": self.grid, "codebook_size": self.codebook_size,
                "image_tokens": self.num_image_tokens}
