"""Sampling one token from the diffusion head: DDPM ancestral steps with explicit, shareable noise.

The head is sampled with the ``DDPMScheduler``'s own noise schedule respaced to ``steps``
(``set_timesteps``), using the posterior mean and the "fixed small" variance at each step.
The noise is passed in rather than drawn inside, because continuous speculative decoding
runs the draft and the target heads along *aligned* trajectories (same starting noise, same
per-step noise) and needs every step's mean and standard deviation to compute the density
ratio. Classifier-free guidance combines the conditional and unconditional predictions at
every step; both halves start from the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadTrajectory:
    sample: torch.Tensor  # (B, c) the token
    means: list[torch.Tensor]  # per step (B, c): the Gaussian each step drew from
    stds: list[torch.Tensor]  # per step (B, 1)


def respaced(scheduler, steps: int) -> list[tuple[int, int]]:
    """``(t, previous t)`` pairs, the scheduler's spacing for ``steps`` steps (previous -1 = clean)."""
    scheduler.set_timesteps(steps)
    ts = [int(t) for t in scheduler.timesteps]
    return list(zip(ts, ts[1:] + [-1]))


def draw_noise(batch: int, dim: int, steps: int, generator: torch.Generator | None,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting noise (B, c) and per-step noise (steps, B, c), in that order from one generator."""
    start = torch.randn(batch, dim, generator=generator, device=device)
    per_step = torch.randn(steps, batch, dim, generator=generator, device=device)
    return start, per_step


@torch.no_grad()
def sample_head(head, scheduler, z: torch.Tensor, steps: int, guidance_scale: float | None,
                start: torch.Tensor, per_step: torch.Tensor, temperature: float = 1.0) -> HeadTrajectory:
    """Denoise ``start`` (B, c) into a token, conditioned on ``z`` (rows, d): rows = B, or 2B with guidance."""
    alphas = scheduler.alphas_cumprod.to(z.device, torch.float32)
    x = start.float()
    means, stds = [], []
    last_var = None
    for k, (t, prev) in enumerate(respaced(scheduler, steps)):
        inp = torch.cat([x, x]) if guidance_scale is not None else x
        tt = torch.full((inp.shape[0],), t, device=z.device, dtype=torch.long)
        eps = head(inp.to(z.dtype), tt, z).float()
        if guidance_scale is not None:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        a_t = alphas[t]
        a_prev = alphas[prev] if prev >= 0 else torch.ones((), device=z.device)
        beta = 1 - a_t / a_prev
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        var = beta * (1 - a_prev) / (1 - a_t)
        if prev < 0:  # the last step's posterior variance is 0: clip it to the step before's, as MAR does
            var = last_var if last_var is not None else beta * 1e-2
        last_var = var
        std = (var.clamp_min(1e-20).sqrt() * temperature).expand(x.shape[0], 1)
        means.append(mean)
        stds.append(std)
        x = mean + std * per_step[k]
    return HeadTrajectory(x, means, stds)
