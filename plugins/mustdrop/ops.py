"""MustDrop's pure math: dual-attention filtering and a layer-average budget schedule."""

from __future__ import annotations

import torch


def dual_attention(attn: torch.Tensor, query_weight: torch.Tensor, image: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """From attention rows ``attn`` (B, Q, L) of the text after the image, per key: the summed
    attention over the valid queries (``query_weight`` (B, Q) 0/1) as a share of the total on
    image tokens, and the maximum over queries. Both (B, L), zero off ``image``."""
    w = query_weight.to(attn.dtype)[..., None]
    summed = (attn * w).sum(1) * image
    share = summed / summed.sum(-1, keepdim=True).clamp(min=1e-12)
    peak = (attn * w).amax(1) * image
    return share, peak


def threshold_keep(share: torch.Tensor, peak: torch.Tensor, image: torch.Tensor, keys: torch.Tensor,
                   global_threshold: float, individual_threshold: float) -> torch.Tensor:
    """The released rule: drop only if *both* are below their thresholds; key tokens never drop."""
    drop = (share < global_threshold) & (peak < individual_threshold)
    return image & (~drop | keys)


def joint_score(share: torch.Tensor, peak: torch.Tensor, global_threshold: float, individual_threshold: float
                ) -> torch.Tensor:
    """The common threshold multiplier at which a token would first be dropped: raising both
    thresholds by a factor t drops exactly the tokens with score < t, so top-k by this score is
    the dual-threshold rule tuned to keep k tokens."""
    return torch.maximum(share / global_threshold, peak / individual_threshold)


def layer_average_schedule(n_before: int, n_in: int, boundaries: tuple[int, ...], num_layers: int,
                           target_average: float, floor: int) -> list[int]:
    """Keep counts after each boundary, geometric in the stage index, such that the image tokens
    averaged over decoder layers equal ``target_average`` (as close as integers allow).

    ``n_in`` tokens reach layer 0; counts never go below ``floor`` (the key set) or above ``n_in``.
    ``n_before`` is only a cap for the answer.
    """
    lengths = [b - a for a, b in zip(boundaries, (*boundaries[1:], num_layers))]
    head = boundaries[0] * n_in

    def counts(rho: float) -> list[int]:
        return [min(n_in, max(floor, round(n_in * rho ** (s + 1)))) for s in range(len(boundaries))]

    def average(rho: float) -> float:
        return (head + sum(c * n for c, n in zip(counts(rho), lengths))) / num_layers

    if average(1.0) <= target_average:
        return counts(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if average(mid) > target_average:
            hi = mid
        else:
            lo = mid
    best = counts(lo)
    # integer rounding: spend what is left of the budget on the last stage
    spare = round(target_average * num_layers - (head + sum(c * n for c, n in zip(best, lengths))))
    if spare and lengths[-1]:
        cap = best[-2] if len(best) > 1 else n_in
        best[-1] = min(cap, max(floor, best[-1] + spare // lengths[-1]))
    return [min(c, n_before) for c in best]
