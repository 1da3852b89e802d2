"""PyramidDrop's ranking: attention of the last instruction token (one recomputed query row,
see :mod:`mmeff.token_drop.scoring`) and the released code's keep-count schedule."""

from __future__ import annotations

import torch

from mmeff.token_drop.scoring import last_query_attention, topk_mask

__all__ = ["last_query_attention", "stage_keep_counts", "topk_mask"]


def stage_keep_counts(original_counts: torch.Tensor, ratio: float, stage: int) -> torch.Tensor:
    """``int(n * ratio**stage)`` per row, the released code's cumulative ratio schedule."""
    return torch.floor(original_counts.double() * ratio**stage + 1e-9).long()
