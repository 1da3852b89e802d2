"""Sampling one token from the diffusion head: DDPM ancestral steps with explicit, shareable noise.

The head is sampled with the ``DDPMScheduler``'s own noise schedule respaced to ``steps``
(``set_timesteps``), using the posterior mean and the "fixed small" variance at each step.
The noise is passed in rather than drawn inside, because continuous speculative decoding
runs the draft and the target heads along *aligned* trajectories (same starting noise, same
per-step noise) and needs every step's mean and standard deviation to compute the density
ratio. Classifier-free guidance combines the conditional and unconditional predictions at
every step; both halves start from the same noise.

The last step (to the clean token) adds no noise, as MAR's ``p_sample`` (``nonzero_mask``) and
``DDPMScheduler.step`` do: the token is that step's mean. Its standard deviation is still
recorded (the previous step's, as MAR clips it), since the acceptance ratio compares the
two heads' last-step Gaussians. The predicted clean token is not clipped by default, as MAR's
``DiffLoss`` samples with ``clip_denoised=False``; ``honour_clip_sample=True`` applies the
scheduler's ``clip_sample`` / ``clip_sample_range`` the way ``DDPMScheduler.step`` does.
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


def clip_bound(scheduler, honour_clip_sample: bool) -> float | None:
    """The bound ``DDPMScheduler.step`` clamps its x0 prediction to, when asked to honour the config."""
    if not honour_clip_sample or not scheduler.config.get("clip_sample", False):
        return None
    return float(scheduler.config.get("clip_sample_range", 1.0))


def posterior_step(x: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor,
                   bound: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and "fixed small" variance of ``q(x_prev | x_t, x0)`` with x0 predicted from ``eps`` (and
    clamped to ``[-bound, bound]`` if given)."""
    beta = 1 - a_t / a_prev
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if bound is not None:
        x0 = x0.clamp(-bound, bound)
    mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
    return mean, beta * (1 - a_prev) / (1 - a_t)


@torch.no_grad()
def sample_head(head, scheduler, z: torch.Tensor, steps: int, guidance_scale: float | None,
                start: torch.Tensor, per_step: torch.Tensor, temperature: float = 1.0,
                honour_clip_sample: bool = False) -> HeadTrajectory:
    """Denoise ``start`` (B, c) into a token, conditioned on ``z`` (rows, d): rows = B, or 2B with guidance.

    ``per_step`` holds one noise per step; the last step's is drawn (so the random stream does not depend
    on this rule) but not used."""
    return head_trajectory(head, scheduler, z, steps, guidance_scale, start, per_step, temperature,
                           honour_clip_sample)


def head_trajectory(head, scheduler, z: torch.Tensor, steps: int, guidance_scale: float | None,
                    start: torch.Tensor, per_step: torch.Tensor, temperature: float = 1.0,
                    honour_clip_sample: bool = False) -> HeadTrajectory:
    """``sample_head`` with autograd left on: a draft can be trained through its own sampling steps."""
    alphas = scheduler.alphas_cumprod.to(z.device, torch.float32)
    bound = clip_bound(scheduler, honour_clip_sample)
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
        a_prev = alphas[prev] if prev >= 0 else torch.ones((), device=z.device)
        mean, var = posterior_step(x, eps, alphas[t], a_prev, bound)
        if prev < 0:  # the last step's posterior variance is 0: clip it to the step before's, as MAR does
            var = last_var if last_var is not None else (1 - alphas[t]) * 1e-2
        last_var = var
        std = (var.clamp_min(1e-20).sqrt() * temperature).expand(x.shape[0], 1)
        means.append(mean)
        stds.append(std)
        x = mean if prev < 0 else mean + std * per_step[k]  # no noise into the clean token
    return HeadTrajectory(x, means, stds)
