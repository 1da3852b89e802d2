"""Plain raster decoding over continuous tokens, and what every continuous decode loop shares.

One seeded generator is consumed in a fixed order per token: the head's starting noise,
then its per-step noise (``draw_noise``). The number of head steps per AR step comes from a
schedule (constant by default; DiSA anneals it), so DiSA composes with any loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..ar.session import DecodeSession
from .sampler import HeadTrajectory, draw_noise, sample_head


class ContinuousSession(DecodeSession):
    """A ``DecodeSession`` whose inputs are token vectors and whose outputs are hidden states."""

    def _embed(self, items: torch.Tensor) -> torch.Tensor:
        return self.adapter.embed_tokens(items)

    def _read(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


@dataclass
class HeadSettings:
    guidance_scale: float | None
    temperature: float = 1.0
    steps_at: Callable[[int], int] = lambda s: 50  # head denoising steps at AR step s


@dataclass
class ContinuousStats:
    head_steps: int = 0  # per image, summed over tokens (the target's; drafts counted separately)
    draft_head_steps: int = 0
    draft_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    resampled: int = 0  # rejected tokens resampled from the residual
    resample_proposals: int = 0  # proposals drawn for them (last_step: Gaussian draws; head: two head runs each)
    resample_failures: int = 0

    def as_dict(self, tokens: int) -> dict[str, float | int]:
        out = {"head_steps": self.head_steps, "head_steps_per_token": self.head_steps / max(1, tokens)}
        if self.drafted:
            out.update(draft_head_steps=self.draft_head_steps, draft_forwards=self.draft_forwards,
                       drafted=self.drafted, accepted=self.accepted, acceptance_rate=self.accepted / self.drafted,
                       resampled=self.resampled, resample_proposals=self.resample_proposals,
                       resample_failures=self.resample_failures)
        return out


def head_sample(adapter, z: torch.Tensor, settings: HeadSettings, step: int, batch: int,
                generator: torch.Generator | None) -> tuple[HeadTrajectory, torch.Tensor, torch.Tensor]:
    """One token per image at AR step ``step``: (trajectory, starting noise, per-step noise)."""
    n = settings.steps_at(step)
    start, per_step = draw_noise(batch, adapter.token_dim, n, generator, z.device)
    traj = sample_head(adapter.head, adapter.scheduler, z, n, settings.guidance_scale, start, per_step,
                       settings.temperature)
    return traj, start, per_step


def plain_decode(session: ContinuousSession, settings: HeadSettings, generator: torch.Generator | None,
                 stats: ContinuousStats) -> torch.Tensor:
    adapter = session.adapter
    n, b = adapter.num_image_tokens, session.batch
    tokens = torch.zeros(b, n, adapter.token_dim, device=session.first_logits.device)
    z = session.first_logits
    for i in range(n):
        traj, _, _ = head_sample(adapter, z, settings, i, b, generator)
        tokens[:, i] = traj.sample
        stats.head_steps += len(traj.means)
        if i + 1 < n:
            z = session.forward(traj.sample[:, None], [i])[:, -1]
    return tokens
