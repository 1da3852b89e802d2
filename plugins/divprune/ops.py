"""DivPrune's selection as pure tensor math: a greedy max-min diverse subset under cosine distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """(N, N) ``1 - cos`` between the rows of ``features`` (N, D), in float32."""
    unit = F.normalize(features.float(), dim=-1)
    return 1.0 - unit @ unit.T


def max_min_subset(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k,), ascending, of DivPrune's greedy max-min diverse subset of the rows of ``features``.

    As released: the first pick is the token farthest from its nearest other token; each next pick
    is the token whose distance to the nearest already-picked token is largest. The released loop
    takes the minimum over the picked rows afresh each step; a running minimum gives the same values.
    Picked tokens are excluded from later picks (the release relies on their distance 0 to themselves,
    which picks a token twice when the rest are exact duplicates; see "known differences").
    """
    n = features.shape[0]
    k = min(k, n)
    if k >= n:
        return torch.arange(n, device=features.device)
    dist = cosine_distance(features)
    picked = torch.empty(k, dtype=torch.long, device=features.device)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    nearest = torch.full((n,), float("inf"), device=features.device)
    for i in range(k):
        if i == 0:
            scores = dist.topk(2, dim=0, largest=False).values[1]  # distance to the nearest *other* token
        else:
            nearest = torch.minimum(nearest, dist[picked[i - 1]])
            scores = nearest.masked_fill(taken, float("-inf"))
        picked[i] = scores.argmax()
        taken[picked[i]] = True
    return picked.sort().values
