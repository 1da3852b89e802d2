"""Pure tensor math of contrastive decoding (formulas from the reference notes, section 0-4)."""

from __future__ import annotations

import math

import torch

DDPM_STEPS = 1000


def plausible(logits_pos: torch.Tensor, beta: float) -> torch.Tensor:
    """VCD's adaptive plausibility set: tokens with ``p >= beta * max p`` of the positive branch.

    Computed in logit space (``l >= max l + log beta``), so it never depends on the negative.
    """
    return logits_pos >= logits_pos.max(-1, keepdim=True).values + math.log(beta)


def contrast(logits_pos: torch.Tensor, logits_neg: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """``(1 + alpha) * l_pos - alpha * l_neg``: what the negative branch adds is subtracted."""
    return (1 + alpha) * logits_pos - alpha * logits_neg


def mask_implausible(scores: torch.Tensor, logits_pos: torch.Tensor, beta: float | None) -> torch.Tensor:
    """``beta=None``: no cut (a method that picks its own candidates, e.g. VDGD's nucleus)."""
    if beta is None:
        return scores
    return scores.masked_fill(~plausible(logits_pos, beta), float("-inf"))


def nucleus(logits: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """(B, V) bool: the smallest set of most likely tokens of ``softmax(logits / temperature)`` whose mass
    exceeds ``top_p`` (at least the top token), as transformers' top-p warper and VDGD's release keep."""
    scaled = logits.float() / temperature
    sorted_logits, order = scaled.sort(-1)  # ascending
    drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
    drop[..., -1] = False
    return ~drop.scatter(-1, order, drop)


def m3id_weight(step: int | torch.Tensor, lam: float) -> torch.Tensor:
    """M3ID's ``w_t = (1 - gamma_t) / gamma_t = exp(lam * t) - 1``: the image is forgotten as t grows."""
    return torch.expm1(torch.as_tensor(step, dtype=torch.float32) * lam)


def m3id_combine(logits_img: torch.Tensor, logits_noimg: torch.Tensor, step: int | torch.Tensor, lam: float,
                 threshold: float, scale: float = 1.0) -> torch.Tensor:
    """``l_c + scale * w_t (l_c - l_u)`` on rows where the model is unsure (``max p_c < threshold``), else ``l_c``.

    ``step`` is t, a scalar or one per row; ``threshold >= 1`` contrasts every row (no gate).
    """
    w = scale * m3id_weight(step, lam).to(logits_img.device)
    if w.ndim:
        w = w[:, None]
    if threshold >= 1:
        return logits_img + w * (logits_img - logits_noimg)
    unsure = logits_img.float().softmax(-1).amax(-1, keepdim=True) < threshold
    return torch.where(unsure, logits_img + w * (logits_img - logits_noimg), logits_img)


def ddpm_alpha_bar(step: int, total: int = DDPM_STEPS) -> float:
    """Cumulative signal share of VCD's schedule: ``beta_t = sigmoid(linspace(-6, 6)) * (5e-3 - 1e-5) + 1e-5``."""
    if not 0 <= step < total:
        raise ValueError(f"noise step must be in [0, {total}), got {step}")
    betas = torch.sigmoid(torch.linspace(-6, 6, total, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    return float(torch.cumprod(1 - betas, 0)[step])


def add_ddpm_noise(pixels: torch.Tensor, step: int, generator: torch.Generator | None = None,
                   total: int = DDPM_STEPS, shared: bool = False) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` in the processor's normalised pixel space.

    ``shared=True`` draws one noise pattern for every image of the batch.
    """
    abar = ddpm_alpha_bar(step, total)
    shape = (1, *pixels.shape[1:]) if shared else pixels.shape
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(pixels.device, pixels.dtype)
    return math.sqrt(abar) * pixels + math.sqrt(1 - abar) * noise


def description_scores(desc_logits: torch.Tensor, reduce: str = "min", valid: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """VDGD's per-token score ``-KL(onehot_k || p_j) = log p_j(k)`` reduced over description steps j.

    ``desc_logits`` is (B, T, V) and ``valid`` (B, T) marks the steps that belong to each
    description (not after its EOS). "min" takes the smallest KL, i.e. ``max_j log p_j(k)``
    (the released default), "avg" the mean, "sum" the sum. Returns (B, V), computed once per image.
    """
    logp = desc_logits.float().log_softmax(-1)
    if valid is None:
        valid = torch.ones(logp.shape[:2], dtype=torch.bool, device=logp.device)
    keep = valid[..., None]
    if reduce == "min":
        return logp.masked_fill(~keep, float("-inf")).amax(1)
    if reduce in ("avg", "sum"):
        total = logp.masked_fill(~keep, 0).sum(1)
        return total / valid.sum(1, keepdim=True).clamp(min=1) if reduce == "avg" else total
    raise ValueError(f"reduce must be 'min', 'avg' or 'sum', got {reduce!r}")


