"""Pure math of continuous speculative decoding: the acceptance ratio and residual sampling.

Standard deviations are ``(rows, 1)`` (one per token, as mmeff's fixed-variance head gives) or
``(rows, c)`` (one per dimension, as MAR's learned variance gives); products "over the token"
run over the ``c`` dimensions either way, so an isotropic std enters to the power ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, diag(std^2))`` per row (rows,); the full normalisation, so stds of two heads compare."""
    std = std.expand_as(x)
    return (-0.5 * ((x - mean) / std) ** 2 - std.log()).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def log_std_product_ratio(target_stds: list[torch.Tensor], draft_stds: list[torch.Tensor],
                          like: torch.Tensor) -> torch.Tensor:
    """``log prod_steps prod_dims sigma_target / sigma_draft`` per row of ``like`` (rows, c): the released
    ``fixed_term``, taken over the steps before the last (its sampler sums their ``log sigma`` per dimension)."""
    total = torch.zeros(like.shape[0], device=like.device)
    for s_t, s_d in zip(target_stds, draft_stds, strict=True):
        total = total + (s_t.log() - s_d.log()).expand_as(like).sum(-1)
    return total


def acceptance_log_ratio(x: torch.Tensor, mean_t: torch.Tensor, std_t: torch.Tensor, mean_d: torch.Tensor,
                         std_d: torch.Tensor, log_fixed: torch.Tensor, tau: float) -> torch.Tensor:
    """log r per row: the last-step Gaussians' density ratio at ``x`` with both stds inflated by ``tau``
    (normalised, so the std ratio enters to the power c once), times ``exp(log_fixed)``."""
    return gaussian_log_density(x, mean_t, tau * std_t) - gaussian_log_density(x, mean_d, tau * std_d) + log_fixed


def residual_log_q_over_p(x: torch.Tensor, mean_t: torch.Tensor, std_t: torch.Tensor, mean_d: torch.Tensor,
                          std_d: torch.Tensor, log_fixed: torch.Tensor) -> torch.Tensor:
    """``log(q(x) / (p(x) fixed))`` with the *unstretched* last-step densities: the released residual
    ``max(0, p - q / fixed)``, divided by its proposal ``p``, keeps ``x`` with probability ``1 - exp(this)``."""
    return gaussian_log_density(x, mean_d, std_d) - gaussian_log_density(x, mean_t, std_t) - log_fixed


def last_step_residual(mean_t: torch.Tensor, std_t: torch.Tensor, mean_d: torch.Tensor, std_d: torch.Tensor,
                       log_fixed: torch.Tensor, max_tries: int,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A sample of ``norm(max(0, p - q / fixed))`` per row, ``p``, ``q`` the target's and draft's last-step
    Gaussians: proposals ``x ~ p`` (``mean_t + std_t * noise``), kept by ``residual_by_rejection``.
    Returns the samples, which rows succeeded, and the proposals drawn per row (tries)."""
    rows = mean_t.shape[0]
    tries = 0

    def propose() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal tries
        tries += 1
        noise = torch.randn(mean_t.shape, generator=generator, device=mean_t.device)
        x = mean_t + std_t.expand_as(mean_t) * noise
        return x, residual_log_q_over_p(x, mean_t, std_t, mean_d, std_d, log_fixed)

    out, done = residual_by_rejection(propose, rows, max_tries, generator)
    return out, done, tries


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
