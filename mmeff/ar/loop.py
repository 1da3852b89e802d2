"""Plain token-by-token image decoding: the baseline every accelerated loop is measured against."""

from __future__ import annotations

import torch

from .sampling import SamplingConfig
from .session import DecodeSession


def plain_decode(session: DecodeSession, sampling: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Raster order, one forward per token after the prompt's; returns (B, N) codes.

    Random stream: one ``multinomial`` call per position over the whole batch, in order.
    """
    n = session.adapter.num_image_tokens
    logits = session.first_logits
    tokens: list[torch.Tensor] = []
    for i in range(n):
        tok = sampling.draw(sampling.probs(logits), generator)
        tokens.append(tok)
        if i + 1 < n:
            logits = session.forward(tok[:, None], [i])[:, -1]
    return torch.stack(tokens, dim=1)
