"""Pure math of continuous speculative decoding: residual sampling by acceptance-rejection."""

from __future__ import annotations

from collections.abc import Callable

import torch


def residual_by_rejection(propose: Callable[[], tuple[torch.Tensor, torch.Tensor]], rows: int, max_tries: int,
                          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples from ``norm(max(0, p - q))`` given a sampler of ``p``.

    ``propose()`` returns ``x`` (rows, c) drawn from ``p`` and ``log q(x) - log p(x)`` (rows,); ``x`` is kept
    with probability ``max(0, 1 - q(x)/p(x))``, which makes kept samples follow the residual. Returns the
    samples and which rows succeeded within ``max_tries`` (the others hold their last proposal, a sample
    of ``p``, never a zero vector).
    """
    out, done = None, None
    for _ in range(max_tries):
        x, log_q_over_p = propose()
        if out is None:
            out = x.clone()
            done = torch.zeros(rows, dtype=torch.bool, device=x.device)
        keep = (1 - log_q_over_p.exp()).clamp(min=0)
        take = ~done & (torch.rand(rows, generator=generator, device=x.device) < keep)
        out[take | ~done] = x[take | ~done]  # undecided rows keep their latest proposal as the fallback
        done |= take
        if bool(done.all()):
            break
    return out, done
