"""random_drop's subset: a seeded random choice per row that does not depend on the batch."""

from __future__ import annotations

import torch


def random_keep(candidates: torch.Tensor, counts: torch.Tensor, seed: int) -> torch.Tensor:
    """Per row, mark ``counts[b]`` of the ``candidates`` (B, L) at random.

    Each row draws from its own generator seeded with ``seed``, so a row keeps the same
    tokens alone or in any batch.
    """
    keep = torch.zeros_like(candidates)
    for b in range(candidates.shape[0]):
        slots = candidates[b].nonzero().squeeze(-1)
        g = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(slots.numel(), generator=g)[: int(counts[b])]
        keep[b, slots[chosen.to(slots.device)]] = True
    return keep
