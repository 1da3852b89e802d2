"""FastV's keep counts (its ranking is :func:`mmeff.token_drop.scoring.last_query_attention`)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def fastv_keep_counts(image_counts: torch.Tensor, kept: Callable[[int], int]) -> torch.Tensor:
    """Per row, how many of its ``image_counts`` image tokens survive (rows may differ: LLaVA-NeXT)."""
    return torch.tensor([kept(int(n)) for n in image_counts.tolist()], dtype=torch.long,
                        device=image_counts.device)
