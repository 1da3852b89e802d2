"""Sampling math: guidance, warping, speculative acceptance, residuals, LANTERN's relaxed probability."""

import torch

from mmeff.ar.ops import accept_probability, guide, relaxed_probability, residual, sample, warp


def test_guide_combines_cond_first_rows_and_passes_through_without_scale():
    cond, uncond = torch.randn(2, 5), torch.randn(2, 5)
    rows = torch.cat([cond, uncond])
    assert torch.allclose(guide(rows, 3.0), uncond + 3.0 * (cond - uncond))
    assert torch.equal(guide(rows, None), rows)


def test_warp_top_k_and_top_p_keep_the_right_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(warp(logits, top_k=2)[0, 2:]).all() and torch.isfinite(warp(logits, top_k=2)[0, :2]).all()
    kept = torch.isfinite(warp(logits, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7 <= 0.8: the smallest prefix reaching 0.7
    assert torch.allclose(warp(logits, temperature=2.0), logits / 2)


def test_sample_is_argmax_when_greedy_and_uses_the_generator():
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert sample(probs, None, greedy=True).tolist() == [1, 0]
    a = sample(probs[:1].expand(64, 2), torch.Generator().manual_seed(3))
    b = sample(probs[:1].expand(64, 2), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_speculative_acceptance_and_residual_preserve_the_target():
    """Draft from q, accept with min(1, p/q), else resample from norm(max(0, p - q)): the result is p."""
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.2, 0.6])
    accept = accept_probability(p, q)
    total = q * accept + (q * (1 - accept)).sum() * residual(p[None], q[None])[0]
    assert torch.allclose(total, p, atol=1e-6)
    assert torch.allclose(residual(p[None], p[None])[0], p)  # nothing left: fall back to p


def test_relaxed_probability_borrows_at_most_delta_from_nearest_codes():
    p = torch.tensor([[0.4, 0.05, 0.05, 0.5]])
    neighbours = torch.tensor([[1, 2, 3], [0, 2, 3], [1, 0, 3], [2, 1, 0]])
    draft = torch.tensor([0])
    assert torch.allclose(relaxed_probability(p, draft, neighbours, 0.0), torch.tensor([0.4]))
    assert torch.allclose(relaxed_probability(p, draft, neighbours, 0.1), torch.tensor([0.5]))  # both 0.05s
    assert torch.allclose(relaxed_probability(p, draft, neighbours, 0.07), torch.tensor([0.45]))
    assert torch.allclose(relaxed_probability(p, draft, neighbours[:, :0], 0.5), torch.tensor([0.4]))
