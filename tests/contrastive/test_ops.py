"""The pure tensor math of contrastive decoding."""

from __future__ import annotations

import math

import pytest
import torch

from mmeff.contrastive import ops


def test_plausible_keeps_tokens_within_beta_of_the_top():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.04, 0.16]]))
    assert ops.plausible(logits, 0.1).tolist() == [[True, True, False, True]]
    assert ops.plausible(logits, 1.0).tolist() == [[True, False, False, False]]


def test_contrast_and_mask():
    lp, ln = torch.tensor([[2.0, 1.0, -5.0]]), torch.tensor([[2.0, 0.0, -9.0]])
    assert torch.equal(ops.contrast(lp, ln, 0.0), lp)
    assert ops.contrast(lp, ln, 1.0).tolist() == [[2.0, 2.0, -1.0]]
    masked = ops.mask_implausible(ops.contrast(lp, ln, 1.0), lp, 0.1)
    assert masked[0, 2] == float("-inf") and masked[0, 1] == 2.0  # -5 is far below 2 + log 0.1


def test_vcd_noise_schedule_matches_the_reference_numbers():
    # reference notes: step 500 gives 0.863 x0 + 0.505 eps; step 999 gives 0.285 / 0.958
    for step, signal, noise in ((500, 0.863, 0.505), (999, 0.285, 0.958)):
        abar = ops.ddpm_alpha_bar(step)
        assert math.sqrt(abar) == pytest.approx(signal, abs=1e-3)
        assert math.sqrt(1 - abar) == pytest.approx(noise, abs=1e-3)
    with pytest.raises(ValueError, match="noise step"):
        ops.ddpm_alpha_bar(1000)


def test_add_ddpm_noise_is_seeded_and_shared_on_request():
    x = torch.randn(3, 3, 8, 8)
    a = ops.add_ddpm_noise(x, 500, torch.Generator().manual_seed(0))
    b = ops.add_ddpm_noise(x, 500, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    shared = ops.add_ddpm_noise(x, 500, torch.Generator().manual_seed(0), shared=True)
    eps = (shared - math.sqrt(ops.ddpm_alpha_bar(500)) * x) / math.sqrt(1 - ops.ddpm_alpha_bar(500))
    torch.testing.assert_close(eps[0], eps[2], atol=1e-5, rtol=0)


def test_m3id_weight_grows_and_applies_only_when_unsure():
    assert ops.m3id_weight(0, 0.02).item() == 0.0
    assert ops.m3id_weight(50, 0.02).item() == pytest.approx(math.e - 1, rel=1e-5)
    sure = torch.tensor([[10.0, 0.0, 0.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.1, 0.0, 0.0, 0.0, 0.0]])  # max p = 0.22 < 0.3
    neg = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])
    assert torch.equal(ops.m3id_combine(sure, neg, 50, 0.02, 0.3), sure)
    expected = unsure + (math.e - 1) * (unsure - neg)
    torch.testing.assert_close(ops.m3id_combine(unsure, neg, 50, 0.02, 0.3), expected)
    per_row = ops.m3id_combine(unsure.repeat(2, 1), neg.repeat(2, 1), torch.tensor([0.0, 50.0]), 0.02, 0.3)
    torch.testing.assert_close(per_row[0], unsure[0])
    torch.testing.assert_close(per_row[1], expected[0])


def test_description_scores_reduce_over_valid_steps_only():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.0001, 0.0001, 0.9998]]]))
    valid = torch.tensor([[True, True, False]])
    best = ops.description_scores(logits, "min", valid)
    torch.testing.assert_close(best, torch.log(torch.tensor([[0.7, 0.2, 0.8]])))
    avg = ops.description_scores(logits, "avg", valid)
    torch.testing.assert_close(avg, (torch.log(torch.tensor([[0.7, 0.2, 0.1]])) + torch.log(torch.tensor(
        [[0.1, 0.1, 0.8]]))) / 2)
    with pytest.raises(ValueError, match="reduce"):
        ops.description_scores(logits, "max")


