"""Continuous speculative decoding against the released code (MarkXCloud/CSpD).

Each reference below is the release's rule written out again, independently of mmeff's code, on small
tensors: ``spec_decode/spec_decode_runner.py`` (``DistributionProcessor``: ``judge_accept`` for the
acceptance ratio, ``subtracted_distribution_unormalize`` / ``sample_distribution`` for resampling) and
``diffusion/gaussian_diffusion.py`` (``p_sample_with_noise``: no noise at t = 0; MAR's ``DiffLoss`` samples
with ``clip_denoised=False``). The head sampler is checked against diffusers' own ``DDPMScheduler.step``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mmeff.car.loop import ContinuousStats, HeadSettings
from mmeff.car.sampler import HeadTrajectory, sample_head
from mmeff.car.speculative import SpeculativeDecoder, log_ratio
from mmeff.testing.car import tiny_continuous_ar

C = 3  # token dimensions

# two tokens (rows), three head steps; isotropic stds (rows, 1) per step, as mmeff's head gives
TARGET = HeadTrajectory(
    sample=torch.tensor([[0.20, -0.10, 0.40], [1.00, 0.50, -0.30]]),
    means=[torch.zeros(2, C), torch.zeros(2, C), torch.tensor([[0.25, -0.05, 0.30], [0.90, 0.60, -0.20]])],
    stds=[torch.tensor([[0.50], [0.60]]), torch.tensor([[0.30], [0.25]]), torch.tensor([[0.020], [0.050]])],
)
DRAFT = HeadTrajectory(
    sample=torch.tensor([[0.21, -0.08, 0.37], [1.10, 0.40, -0.25]]),
    means=[torch.zeros(2, C), torch.zeros(2, C), torch.tensor([[0.21, -0.08, 0.37], [1.10, 0.40, -0.25]])],
    stds=[torch.tensor([[0.40], [0.70]]), torch.tensor([[0.20], [0.35]]), torch.tensor([[0.030], [0.040]])],
)


def per_dim(std: torch.Tensor) -> torch.Tensor:
    return std.double().expand(-1, C)


def release_fixed_term(target: HeadTrajectory, draft: HeadTrajectory) -> torch.Tensor:
    """The release accumulates ``0.5 * log_variance`` (log sigma, per dimension) over every step but t = 0,
    then ``fixed_term = exp(sum over dimensions of (target's - draft's))``."""
    log_var_t = sum(per_dim(s).log() for s in target.stds[:-1])
    log_var_d = sum(per_dim(s).log() for s in draft.stds[:-1])
    return torch.exp((log_var_t - log_var_d).sum(-1))


def release_judge_accept(x, target: HeadTrajectory, draft: HeadTrajectory, tau: float) -> torch.Tensor:
    """``p_x * fixed_term * prod(x1_std) / (q_x * prod(x2_std))`` with unnormalised densities at std * tau;
    x1 is the draft (q), x2 the target (p), the stds their last step's."""
    x = x.double()
    s_d, s_t = per_dim(draft.stds[-1]), per_dim(target.stds[-1])
    q_x = torch.exp(-0.5 * (((x - draft.means[-1].double()) / s_d / tau) ** 2).sum(-1))
    p_x = torch.exp(-0.5 * (((x - target.means[-1].double()) / s_t / tau) ** 2).sum(-1))
    return p_x * release_fixed_term(target, draft) * s_d.prod(-1) / (q_x * s_t.prod(-1))


def release_pdf(x, mean, std) -> torch.Tensor:
    """``x1_pdf`` / ``x2_pdf``: normalised, at the step's own std (no tau)."""
    std = per_dim(std)
    return torch.exp(-0.5 * (((x.double() - mean.double()) / std) ** 2).sum(-1)) / (
        (2 * math.pi) ** (C / 2) * std.prod(-1))


def release_keep_probability(x, target: HeadTrajectory, draft: HeadTrajectory) -> torch.Tensor:
    """``subtracted_distribution_unormalize``: ``clamp(p(x) - q(x) / fixed_term, 0) / p(x)``."""
    p = release_pdf(x, target.means[-1], target.stds[-1])
    q = release_pdf(x, draft.means[-1], draft.stds[-1])
    return (p - q / release_fixed_term(target, draft)).clamp(min=0) / p


# -- (a) the acceptance ratio --------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [42.0, 1.5])
def test_acceptance_ratio_is_the_releases_judge_accept(tau):
    """The last step's std ratio enters as (sigma_d / sigma_t)^c (normalised densities) and each earlier
    step's as (sigma_t / sigma_d)^c (products over the c dimensions), not c + 1 and 1."""
    x = DRAFT.sample
    expected = release_judge_accept(x, TARGET, DRAFT, tau).log()
    assert torch.allclose(log_ratio(x, TARGET, DRAFT, tau).double(), expected, atol=1e-5)


def test_acceptance_ratio_with_per_dimension_stds_is_the_releases():
    """MAR's head learns one variance per dimension; the ratio's products run over them."""
    from mmeff.car.ops import acceptance_log_ratio, log_std_product_ratio

    g = torch.Generator().manual_seed(0)

    def traj() -> HeadTrajectory:
        stds = [torch.rand(2, C, generator=g) * 0.5 + 0.05 for _ in range(3)]
        return HeadTrajectory(DRAFT.sample, [torch.randn(2, C, generator=g) * 0.1 for _ in range(3)], stds)

    target, draft, tau = traj(), traj(), 4.0
    x = draft.means[-1] + 0.1
    log_fixed_t = sum((t.double().log() - d.double().log()).sum(-1) for t, d in zip(target.stds[:-1], draft.stds[:-1]))
    q_x = torch.exp(-0.5 * (((x - draft.means[-1]).double() / draft.stds[-1] / tau) ** 2).sum(-1))
    p_x = torch.exp(-0.5 * (((x - target.means[-1]).double() / target.stds[-1] / tau) ** 2).sum(-1))
    expected = (p_x * log_fixed_t.exp() * draft.stds[-1].double().prod(-1) / (q_x * target.stds[-1].double().prod(-1)))
    log_fixed = log_std_product_ratio(target.stds[:-1], draft.stds[:-1], x)
    got = acceptance_log_ratio(x, target.means[-1], target.stds[-1], draft.means[-1], draft.stds[-1], log_fixed, tau)
    assert torch.allclose(got.double(), expected.log(), atol=1e-5)


# -- (b) resampling a rejected token ------------------------------------------------------------------


def test_residual_keep_probability_is_the_releases_with_unstretched_densities():
    from mmeff.car.ops import log_std_product_ratio, residual_log_q_over_p

    g = torch.Generator().manual_seed(0)
    x = TARGET.means[-1] + TARGET.stds[-1] * torch.randn(2, C, generator=g)
    x = torch.cat([x, DRAFT.means[-1]])  # at the draft's mean q is large: nothing to keep there
    target = HeadTrajectory(x, [m.repeat(2, 1) for m in TARGET.means], [s.repeat(2, 1) for s in TARGET.stds])
    draft = HeadTrajectory(x, [m.repeat(2, 1) for m in DRAFT.means], [s.repeat(2, 1) for s in DRAFT.stds])
    expected = release_keep_probability(x, target, draft)
    log_fixed = log_std_product_ratio(target.stds[:-1], draft.stds[:-1], x)
    got = (1 - residual_log_q_over_p(x, target.means[-1], target.stds[-1], draft.means[-1], draft.stds[-1],
                                     log_fixed).exp()).clamp(min=0)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    assert (expected[:2] > 0).all() and (expected[2:] == 0).all()  # both regimes are exercised


def test_rejected_tokens_are_drawn_from_the_targets_last_step_gaussian_at_its_own_std():
    """With the draft's Gaussian far away every proposal is kept, so the first one is the token: the target's
    last-step mean plus its (not tau-inflated) std times the generator's next normal draw."""
    from mmeff.car.speculative import resample_from_last_step

    far = HeadTrajectory(DRAFT.sample, [*DRAFT.means[:-1], DRAFT.means[-1] + 100.0], DRAFT.stds)
    noise = torch.randn(2, C, generator=torch.Generator().manual_seed(3))
    tokens, done, tries = resample_from_last_step(TARGET, far, 100, torch.Generator().manual_seed(3))
    assert done.all() and tries == 1
    assert torch.allclose(tokens, TARGET.means[-1] + TARGET.stds[-1] * noise, atol=1e-6)


def test_resampled_tokens_follow_the_releases_residual_in_one_dimension():
    """c = 1, p = N(0, 1), q = N(0.5, 0.8^2), fixed_term = 1.25 (one earlier step, sigma 0.5 vs 0.4): kept
    samples must follow norm(max(0, p - q / 1.25)), integrated numerically on a grid."""
    from mmeff.car.speculative import resample_from_last_step

    rows = 20_000

    def traj(mean: float, stds: list[float]) -> HeadTrajectory:
        full = [torch.full((rows, 1), s) for s in stds]
        return HeadTrajectory(torch.zeros(rows, 1), [torch.full((rows, 1), mean)] * len(stds), full)

    target, draft = traj(0.0, [0.5, 1.0]), traj(0.5, [0.4, 0.8])
    x, done, _ = resample_from_last_step(target, draft, 200, torch.Generator().manual_seed(0))
    assert done.all()
    grid = torch.linspace(-8, 8, 160_001, dtype=torch.float64)
    p = torch.distributions.Normal(0.0, 1.0).log_prob(grid).exp()
    q = torch.distributions.Normal(0.5, 0.8).log_prob(grid).exp()
    density = (p - q / 1.25).clamp(min=0)
    cdf = torch.cumsum(density, 0) / density.sum()
    edges = [-8.0, -1.0, 0.0, 0.5, 1.5, 8.0]
    x = x.squeeze(-1).double()
    for lo, hi in zip(edges, edges[1:]):
        expected = float(cdf[torch.searchsorted(grid, torch.tensor(hi, dtype=torch.float64)).clamp(max=len(grid) - 1)]
                         - cdf[torch.searchsorted(grid, torch.tensor(lo, dtype=torch.float64))])
        observed = float(((x >= lo) & (x < hi)).float().mean())
        assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / rows) + 2e-3, (lo, hi)


def test_the_decoder_resamples_each_committed_rejection_from_its_positions_gaussians_without_head_runs():
    """Row 1 rejects at position 0, row 0 at position 1; the round commits one token, so only row 1 is
    resampled, from the target's last-step Gaussian at position 0 (verification's), with no head run."""
    far = HeadTrajectory(DRAFT.sample, [*DRAFT.means[:-1], DRAFT.means[-1] + 100.0], DRAFT.stds)
    shifted = HeadTrajectory(TARGET.sample, [m + 5.0 for m in TARGET.means], TARGET.stds)
    decoder = SpeculativeDecoder(SimpleNamespace(token_dim=C), draft_len=2)
    decoder._trajs = ([TARGET, shifted], [far, far])
    stats = ContinuousStats()
    out = decoder._resample(SimpleNamespace(token_dim=C), torch.zeros(2, 2, 8), torch.tensor([1, 0]), 1,
                            HeadSettings(None, steps_at=lambda s: 3), 0, torch.Generator().manual_seed(4), stats)
    noise = torch.randn(1, C, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(out[1], TARGET.means[-1][1] + TARGET.stds[-1][1] * noise[0], atol=1e-6)
    assert torch.equal(out[0], torch.zeros(C))
    assert (stats.resampled, stats.resample_proposals, stats.head_steps, stats.draft_head_steps) == (1, 1, 0, 0)


def test_config_resamples_as_released_by_default_and_keeps_the_head_rule_as_an_option():
    from mmeff.errors import ConfigError
    from mmeff.plugins.continuous_spec import ContinuousSpecConfig

    assert ContinuousSpecConfig(draft="d").resample == "last_step"
    assert ContinuousSpecConfig(draft="d", resample="head").resample == "head"
    with pytest.raises(ConfigError, match="resample"):
        ContinuousSpecConfig(draft="d", resample="exact")


# -- (c) the head sampler -----------------------------------------------------------------------------


def diffusers_loop(model, z, start, steps: int, seeds: list[int]) -> torch.Tensor:
    """The head sampled with diffusers' own ``DDPMScheduler.step`` (its noise from one seeded generator per
    step), following the scheduler's config (``clip_sample`` included)."""
    scheduler = model.scheduler
    scheduler.set_timesteps(steps)
    x = start.clone()
    with torch.no_grad():
        for t, seed in zip(scheduler.timesteps, seeds):
            eps = model.head(x, torch.full((x.shape[0],), int(t)), z)
            x = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
    return x


def head_inputs(model, steps: int):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, model.backbone.config.hidden_size, generator=g)
    start = torch.randn(2, model.config.token_dim, generator=g)
    seeds = [100 + k for k in range(steps)]
    per_step = torch.stack([torch.randn(2, model.config.token_dim, generator=torch.Generator().manual_seed(s))
                            for s in seeds])
    return z, start, per_step, seeds


def test_head_adds_no_noise_at_the_last_step_as_ddpm_scheduler_step():
    model = tiny_continuous_ar()
    model.scheduler.register_to_config(clip_sample=False)
    steps = 6
    z, start, per_step, seeds = head_inputs(model, steps)
    traj = sample_head(model.head, model.scheduler, z, steps, None, start, per_step)
    assert torch.equal(traj.sample, traj.means[-1])
    other = per_step.clone()
    other[-1] = 7.0
    assert torch.equal(sample_head(model.head, model.scheduler, z, steps, None, start, other).sample, traj.sample)
    assert torch.allclose(traj.sample, diffusers_loop(model, z, start, steps, seeds), atol=1e-5)
    assert (traj.stds[-1] > 0).all()  # the last step's std is still recorded, for the acceptance ratio


@pytest.mark.parametrize("clip_range", [1.0, 0.5])
def test_clip_sample_is_honoured_on_request_and_ignored_by_default_as_released(clip_range):
    model = tiny_continuous_ar()
    assert model.scheduler.config.clip_sample  # diffusers' default, as in the bundled models' configs
    model.scheduler.register_to_config(clip_sample_range=clip_range)
    steps = 6
    z, start, per_step, seeds = head_inputs(model, steps)
    clipped = sample_head(model.head, model.scheduler, z, steps, None, start, per_step, honour_clip_sample=True)
    assert torch.allclose(clipped.sample, diffusers_loop(model, z, start, steps, seeds), atol=1e-5)
    default = sample_head(model.head, model.scheduler, z, steps, None, start, per_step)
    model.scheduler.register_to_config(clip_sample=False)
    unclipped = diffusers_loop(model, z, start, steps, seeds)
    assert torch.allclose(default.sample, unclipped, atol=1e-5)
    assert (default.sample - clipped.sample).abs().max() > 1e-2  # the clip does bite on this head
