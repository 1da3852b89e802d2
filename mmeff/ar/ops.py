"""Pure tensor math for autoregressive image-token sampling: guidance, warping, speculative acceptance.

Every decode loop (plain, SJD, LANTERN, ZipAR) draws from distributions built here, so a
loop that verifies drafts and one that samples token by token agree on what "the model's
distribution" is: classifier-free guidance first, then temperature / top-k / top-p.
"""

from __future__ import annotations

import torch


def guide(logits: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Rows ``[cond..., uncond...]`` -> ``uncond + scale * (cond - uncond)``; no guidance passes through."""
    if scale is None:
        return logits
    cond, uncond = logits.float().chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def warp(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
         top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) over the last axis; removed entries become -inf."""
    logits = logits.float() / max(temperature, 1e-8)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample(probs: torch.Tensor, generator: torch.Generator | None, greedy: bool = False) -> torch.Tensor:
    """One draw per row of ``(..., V)`` probabilities (argmax when greedy); consumes one multinomial call."""
    if greedy:
        return probs.argmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def accept_probability(p_draft: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
    """Speculative acceptance ``min(1, p(d) / q(d))`` that keeps the target distribution exact."""
    return (p_draft / q_draft.clamp_min(1e-20)).clamp(max=1.0)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))``, what a rejected position is resampled from (p itself if nothing is left)."""
    r = (p - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 1e-12, r / total.clamp_min(1e-20), p)


def relaxed_probability(p: torch.Tensor, draft: torch.Tensor, neighbours: torch.Tensor, delta: float) -> torch.Tensor:
    """LANTERN's ``p~(x) = p(x) + sum of p(n_j)`` over x's nearest codes while their cumulative mass stays <= delta.

    ``p``: (..., V) probabilities; ``draft``: (...) codes; ``neighbours``: (V, k) codes sorted by latent
    distance to each code (the code itself excluded). Moving at most ``delta`` of mass bounds the
    total-variation distance to ``p`` by ``delta``; ``delta = 0`` or ``k = 0`` gives ``p(x)``.
    """
    own = p.gather(-1, draft.unsqueeze(-1)).squeeze(-1)
    if delta <= 0 or neighbours.shape[-1] == 0:
        return own
    near = neighbours[draft]  # (..., k)
    mass = p.gather(-1, near)
    kept = mass.cumsum(-1) <= delta
    return own + (mass * kept).sum(-1)


def lantern_release_residual(p: torch.Tensor, q: torch.Tensor, nearest: torch.Tensor, delta: float) -> torch.Tensor:
    """Released LANTERN's resampling distribution after rejecting a draft x: ``norm(max(0, p' - q))``.

    ``p'`` is ``p`` zeroed at *all* of ``nearest`` (x's ``k + 1`` nearest codes, x itself excluded)
    whenever x could borrow at all, i.e. its nearest code fits the budget (``p(n_1) <= delta``); the
    release removes the whole neighbourhood, not only the codes that lent mass. ``p``, ``q``: (..., V);
    ``nearest``: (..., k+1). With ``q`` one-hot at x this zeroes x too, as the release's ``q = 1`` path.
    If nothing is left the plain residual is used (the release falls back to a uniform distribution).
    """
    if nearest.shape[-1] == 0:
        return residual(p, q)
    lent = p.gather(-1, nearest[..., :1]) <= delta
    cut = torch.where(lent, p.scatter(-1, nearest, 0.0), p)
    r = (cut - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 1e-12, r / total.clamp_min(1e-20), residual(p, q))
