"""One batch of image generations in flight: the KV cache, what each cache slot holds, and the mask.

Multi-token decoding needs three things ``generate`` does not give: feeding several image
tokens per forward (drafts, or tokens from several rows), rolling rejected ones back, and
attention that exposes exactly the tokens generated so far. The cache is a plain
``DynamicCache`` appended in generation order; each slot remembers its raster position, and
every forward gets explicit RoPE ``position_ids`` and a 4D additive mask built from that
record, so slot order never has to match raster order (ZipAR writes rows out of order).

Visibility rule: a query at raster position ``i`` sees every prompt token of its row and
every real image token at a position ``<= i`` already in the cache (itself included).
A slot fed as *hidden* (ZipAR's stand-in for a row's last token once the real one replaces it, or
from the start in its earlier variant) is seen by nothing but itself (``hide_slot``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError


class DecodeSession:
    def __init__(self, adapter: Any, prompts: list[str], guidance_scale: float | None) -> None:
        if guidance_scale is not None and not adapter.has_unconditional():
            raise InputError(f"guidance_scale needs an unconditional path, which {adapter.key!r} models lack; "
                             "pass guidance_scale=None")
        self.adapter = adapter
        self.prompts = list(prompts)
        self.guidance_scale = guidance_scale
        self.cfg = guidance_scale is not None
        self.batch = len(prompts)
        embeds, mask = adapter.prefix(prompts, unconditional=self.cfg)
        self.rows = embeds.shape[0]
        self.prefix_mask = mask.bool()
        self.prefix_len = mask.sum(1)  # real prompt tokens per row: image position 0 sits right after them
        self.cache = adapter.new_cache()
        self.slot_pos: list[int] = []  # raster position of every image slot, in cache order
        self.slot_proxy: list[bool] = []
        self.forwards = 0
        self.tokens_fed = 0
        self.progress: Any = None  # a tqdm bar over image positions, when the caller asked for one
        position_ids = (mask.cumsum(1) - 1).clamp_min(0)
        additive = self._additive(self._prefix_visibility(mask.shape[1]))
        hidden = adapter.backbone(embeds, additive, position_ids, self.cache)
        self.forwards += 1
        #: (rows, K) logits for image position 0 (hidden states for continuous-token models)
        self.first_logits = self._read(hidden[:, -1])

    # -- what goes in and comes out per image token (continuous-token sessions override) ----------
    def _embed(self, items: torch.Tensor) -> torch.Tensor:
        return self.adapter.embed_codes(items)

    def _read(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter.code_logits(hidden)

    # -- masks -------------------------------------------------------------------------
    def _prefix_visibility(self, length: int) -> torch.Tensor:
        causal = torch.ones(length, length, dtype=torch.bool, device=self.prefix_mask.device).tril()
        return causal[None] & self.prefix_mask[:, None, :]  # (rows, L, L)

    def _additive(self, visible: torch.Tensor) -> torch.Tensor:
        dtype = self.adapter.dtype
        out = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        out = out.masked_fill(~visible, torch.finfo(dtype).min)
        return out[:, None]  # (rows, 1, queries, keys)

    def visibility(self, positions: list[int], proxies: list[bool]) -> torch.Tensor:
        """(rows, n, L + slots) boolean: which cache entries each new query may attend to."""
        device = self.prefix_mask.device
        n, start = len(positions), len(self.slot_pos) - len(positions)
        slot_pos = torch.tensor(self.slot_pos, device=device)
        real = ~torch.tensor(self.slot_proxy, device=device, dtype=torch.bool)
        query_pos = torch.tensor(positions, device=device)
        image = (slot_pos[None] <= query_pos[:, None]) & real[None]  # (n, S)
        own = torch.arange(start, start + n, device=device)
        image[torch.arange(n, device=device), own] = True
        prefix = self.prefix_mask[:, None, :].expand(-1, n, -1)
        return torch.cat([prefix, image[None].expand(self.rows, -1, -1)], dim=-1)

    # -- running -----------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, positions: list[int], proxies: list[bool] | None = None) -> torch.Tensor:
        """Feed ``codes`` (B, n) at raster ``positions``; returns (rows, n, K) logits, one per fed token.

        The output at a token predicts the token after it in raster order.
        """
        proxies = proxies or [False] * len(positions)
        if tuple(codes.shape[:2]) != (self.batch, len(positions)) or len(proxies) != len(positions):
            raise ValueError(f"codes {tuple(codes.shape)} do not match {len(positions)} positions")
        rows_codes = torch.cat([codes, codes]) if self.cfg else codes
        embeds = self._embed(rows_codes.to(self.prefix_mask.device))
        self.slot_pos += list(positions)
        self.slot_proxy += list(proxies)
        position_ids = self.prefix_len[:, None] + torch.tensor(positions, device=self.prefix_len.device)[None]
        additive = self._additive(self.visibility(list(positions), list(proxies)))
        hidden = self.adapter.backbone(embeds, additive, position_ids, self.cache)
        self.forwards += 1
        self.tokens_fed += len(positions)
        if self.progress is not None and positions:  # the furthest position reached (drafts run ahead of accepts)
            self.progress.update(max(0, max(positions) + 1 - self.progress.n))
        return self._read(hidden)

    def hide_slot(self, slot: int) -> None:
        """From the next forward on, cache slot ``slot`` is seen by no query but its own (a replaced proxy)."""
        self.slot_proxy[slot] = True

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` cache slots (rejected drafts), in both CFG halves at once."""
        if n <= 0:
            return
        if n > len(self.slot_pos):
            raise ValueError(f"cannot roll back {n} slots, the cache holds {len(self.slot_pos)} image slots")
        self.cache.crop(-n)
        del self.slot_pos[-n:]
        del self.slot_proxy[-n:]

    def stats(self) -> dict[str, Any]:
        return {"sequential_forwards": self.forwards, "tokens_fed": self.tokens_fed}
