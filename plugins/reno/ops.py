"""ReNO's tensor math: the chi regulariser on the noise norm and per-image gradient clipping."""

from __future__ import annotations

import torch


def chi_regulariser(noise: torch.Tensor) -> torch.Tensor:
    """``0.5 ||e||^2 - (d - 1) log ||e||`` per image: the negative log-density of a chi_d
    distribution at ``||e||`` up to a constant, so it keeps the noise norm near ``sqrt(d - 1)``,
    where Gaussian noise of ``d`` dimensions lives. Computed in at least fp32 (fp16 norms overflow).
    """
    flat = noise.flatten(1).to(torch.promote_types(noise.dtype, torch.float32))
    d = flat.shape[1]
    norm = flat.norm(dim=1)
    return 0.5 * norm.square() - (d - 1) * torch.log(norm)


def clip_rows_(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """In place: each image's gradient scaled to at most ``max_norm``, with the coefficient
    ``torch.nn.utils.clip_grad_norm_`` uses, so one image's gradient never rescales another's
    and a batch of prompts optimises exactly as each prompt alone. Returns the pre-clip norms."""
    norms = grad.flatten(1).float().norm(dim=1)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(coef.view(-1, *([1] * (grad.dim() - 1))).to(grad.dtype))
    return norms


def reward_loss(rewards: dict[str, torch.Tensor], weights: dict[str, float], offsets: dict[str, float]) -> torch.Tensor:
    """``sum_i w_i (c_i - r_i)`` per image, the objective ReNO minimises (before the regulariser)."""
    total = None
    for name, value in rewards.items():
        term = weights[name] * (offsets[name] - value.float())
        total = term if total is None else total + term
    assert total is not None
    return total
