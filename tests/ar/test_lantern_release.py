"""LANTERN against the released code (jadohu/LANTERN): relaxed acceptance and what a rejected draft becomes.

The reference functions below restate, one candidate at a time, what the release's
``evaluate_posterior`` does (``models/ea_model_lumina_mgpt.py`` for a drafter distribution ``q``,
``models/ea_model_llamagen.py`` / ``ea_model_anole.py`` for drafts taken with ``q = 1``), over a
neighbour table built as ``entrypoints/generate_codebook.py`` builds it (every other code by L2
distance, the code itself excluded). mmeff is checked against them on hand-made tensors.
"""

from types import SimpleNamespace

import pytest
import torch

import mmeff
from mmeff.ar.jacobi import neighbour_table
from mmeff.errors import ConfigError
from mmeff.plugins.lantern import LanternConfig, LanternPlugin
from mmeff.testing.ar import tiny_ar_image

VECTORS = torch.tensor([[0.0], [1.0], [2.5], [4.5], [7.0], [10.0]])  # six codes on a line, no distance ties
TABLE = torch.tensor([[1, 2, 3, 4, 5], [0, 2, 3, 4, 5], [1, 3, 0, 4, 5],  # all other codes, nearest first
                      [2, 4, 1, 0, 5], [3, 5, 2, 1, 0], [4, 3, 2, 1, 0]])


def release_relaxed(p: torch.Tensor, x: int, k: int, delta: float) -> float:
    """p~(x): p(x) plus the cumulative mass of x's first k neighbours at the last index where it is <= delta."""
    cumsum = torch.cumsum(p[TABLE[x, :k]], 0)
    fits = (cumsum <= delta).nonzero()
    return float(p[x] + (cumsum[fits[-1, 0]] if fits.numel() else 0.0))


def release_resample(p: torch.Tensor, x: int, q: torch.Tensor | None, k: int, delta: float) -> torch.Tensor:
    """The release's distribution after rejecting x: if any prefix of x's k neighbours fits in delta, p is
    zeroed at x's first k+1 neighbours; then p - q clipped at 0 (drafter q) or p(x) = 0 (q = 1); renormalised."""
    out = p.clone()
    if (torch.cumsum(p[TABLE[x, :k]], 0) <= delta).any():
        out[TABLE[x, : k + 1]] = 0
    if q is None:
        out[x] = 0
    else:
        out = (out - q).clamp_min(0)
    if out.sum() == 0:
        out = torch.ones_like(out)
    return out / out.sum()


def old_resample(p: torch.Tensor, x: int, q: torch.Tensor, k: int, delta: float) -> torch.Tensor:
    """mmeff's former rule, kept as ``rejection="borrowed"``: zero the lenders only, renormalise, residual."""
    near = TABLE[x, :k]
    used = near[torch.cumsum(p[near], 0) <= delta]
    out = p.clone()
    out[used] = 0
    out = ((out / out.sum()) - q).clamp_min(0)
    return out / out.sum()


def decoder(k: int, delta: float, **options):
    """The plugin's own decoder, over a stand-in session whose adapter only has the hand-made codebook."""
    plugin = LanternPlugin(LanternConfig(window=3, k=k, delta=delta, **options))
    return plugin.decoder(SimpleNamespace(adapter=SimpleNamespace(code_vectors=lambda: VECTORS)))


P_DRAFT2 = torch.tensor([0.30, 0.05, 0.10, 0.20, 0.15, 0.20])  # x=2 lends from 1 only; 1, 3, 0 are its 3 nearest
P_DRAFT4 = torch.tensor([0.05, 0.25, 0.20, 0.08, 0.12, 0.30])  # x=4 lends from 3 only; 3, 5, 2 are its 3 nearest
Q_DRAFT4 = torch.tensor([0.02, 0.10, 0.30, 0.05, 0.50, 0.03])
P_CUT = torch.tensor([0.40, 0.00, 0.20, 0.25, 0.15, 0.00])  # x=2's nearest code has 0 mass (as after top-k)
P_FAR = torch.tensor([0.20, 0.30, 0.10, 0.15, 0.15, 0.10])  # x=2's nearest code alone exceeds delta: no lending
CASES = [  # p, draft, q (None: one-hot, the release's q = 1), k, delta
    (P_DRAFT2, 2, None, 2, 0.1),
    (P_DRAFT4, 4, Q_DRAFT4, 2, 0.1),
    (P_DRAFT4, 4, None, 1, 0.1),
    (P_CUT, 2, None, 1, 0.1),
    (P_CUT, 2, torch.full((6,), 1 / 6), 2, 0.05),
    (P_FAR, 2, None, 3, 0.1),
    (P_DRAFT2, 2, torch.tensor([0.3, 0.2, 0.02, 0.2, 0.18, 0.1]), 5, 0.3),  # k = K - 1: k+1 stops at the end
]


def test_neighbour_table_is_the_releases():
    assert neighbour_table(VECTORS, 5).tolist() == TABLE.tolist()
    assert decoder(2, 0.1).relaxation.neighbours.tolist() == TABLE[:, :3].tolist()  # k + 1 columns kept
    assert decoder(5, 0.1).relaxation.neighbours.tolist() == TABLE.tolist()  # capped at the codebook


@pytest.mark.parametrize("p,x,q,k,delta", CASES)
def test_relaxed_acceptance_matches_the_release(p, x, q, k, delta):
    target = decoder(k, delta)._target_probability(p[None, None], torch.tensor([[x]]))
    assert target.item() == pytest.approx(release_relaxed(p, x, k, delta), abs=1e-6)


@pytest.mark.parametrize("p,x,q,k,delta", CASES)
def test_rejected_draft_is_resampled_as_in_the_release(p, x, q, k, delta):
    """One row, its only draft rejected: the decoder resamples from the release's distribution."""
    q_full = torch.nn.functional.one_hot(torch.tensor(x), 6).float() if q is None else q
    p_rows = torch.stack([p, torch.full((6,), 1 / 6)])[None]  # (1, drafts + 1, K)
    out = decoder(k, delta)._final_distribution(p_rows, torch.tensor([[x]]), q_full[None, None], torch.tensor([0]))
    assert torch.allclose(out[0], release_resample(p, x, q, k, delta), atol=1e-6)


def test_rows_of_a_batch_are_resampled_independently():
    """Row 0 rejects its first (one-hot) draft, row 1 its second (drafter q) draft, row 2 accepts both."""
    k, delta = 2, 0.1
    p = torch.stack([torch.stack([P_DRAFT2, P_FAR, P_CUT]), torch.stack([P_FAR, P_DRAFT4, P_CUT]),
                     torch.stack([P_FAR, P_FAR, P_CUT])])
    d_tok = torch.tensor([[2, 0], [1, 4], [3, 3]])
    d_q = torch.nn.functional.one_hot(d_tok, 6).float()
    d_q[1, 1] = Q_DRAFT4
    out = decoder(k, delta)._final_distribution(p, d_tok, d_q, torch.tensor([0, 1, 2]))
    assert torch.allclose(out[0], release_resample(P_DRAFT2, 2, None, k, delta), atol=1e-6)
    assert torch.allclose(out[1], release_resample(P_DRAFT4, 4, Q_DRAFT4, k, delta), atol=1e-6)
    assert torch.allclose(out[2], P_CUT)  # all accepted: the bonus position's own distribution


def test_borrowed_option_keeps_the_former_rule():
    q_full = torch.nn.functional.one_hot(torch.tensor(2), 6).float()
    for p, x, q in [(P_DRAFT2, 2, q_full), (P_DRAFT4, 4, Q_DRAFT4)]:
        p_rows = torch.stack([p, p])[None]
        out = decoder(2, 0.1, rejection="borrowed")._final_distribution(
            p_rows, torch.tensor([[x]]), q[None, None], torch.tensor([0]))
        assert torch.allclose(out[0], old_resample(p, x, q, 2, 0.1), atol=1e-6)
        assert not torch.allclose(out[0], release_resample(p, x, None if q is q_full else q, 2, 0.1), atol=1e-3)


def test_nothing_left_falls_back_to_the_plain_residual():
    """All mass on x's neighbourhood and x: the release samples uniformly, mmeff uses SJD's residual."""
    p = torch.tensor([0.05, 0.05, 0.80, 0.10, 0.0, 0.0])
    q = torch.nn.functional.one_hot(torch.tensor(2), 6).float()
    out = decoder(2, 0.1)._final_distribution(torch.stack([p, p])[None], torch.tensor([[2]]), q[None, None],
                                              torch.tensor([0]))
    assert torch.allclose(out[0], torch.tensor([0.25, 0.25, 0.0, 0.5, 0.0, 0.0]), atol=1e-6)


def test_rejection_option_defaults_to_the_release_and_is_validated():
    assert LanternConfig().rejection == "release"
    with pytest.raises(ConfigError, match="rejection"):
        LanternConfig(rejection="q")


@pytest.mark.parametrize("rejection", ["release", "borrowed"])
def test_both_rules_generate_through_the_pipeline(rejection):
    pipe = mmeff.wrap(tiny_ar_image())
    pipe.add_plugin("lantern", window=4, k=4, delta=0.2, rejection=rejection)
    images = pipe.generate_images(["red circle", "green star"], guidance_scale=3.0, seed=0, output_type="pt")
    assert torch.isfinite(images).all() and pipe.last_stats["sequential_forwards"] < 16
