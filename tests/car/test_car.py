"""Continuous-token AR generation: schedules, head sampling, DiSA, continuous speculative decoding."""

from __future__ import annotations

import math

import pytest
import torch

import mmeff
from mmeff.car.loop import ContinuousStats, HeadSettings
from mmeff.car.ops import residual_by_rejection
from mmeff.car.sampler import HeadTrajectory, draw_noise, sample_head
from mmeff.car.schedules import SCHEDULES, annealed_steps
from mmeff.car.speculative import SpeculativeDecoder, log_ratio
from mmeff.errors import ConfigError, InputError, UnsupportedModelError
from mmeff.testing.car import tiny_continuous_ar, write_tiny_pair

PROMPTS = ["red circle", "two blue squares left of star"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_tiny_pair(tmp_path_factory.mktemp("car"))


def generate(pipe, **kw):
    pipe.generate_images(PROMPTS, seed=0, output_type="pt", **{"diffusion_steps": 8, **kw})
    return pipe.last_codes.clone(), dict(pipe.last_stats)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_annealed_schedules_start_at_upper_end_at_lower_and_never_rise(schedule):
    steps = [annealed_steps(s, 64, 50, 5, schedule) for s in range(64)]
    assert steps[0] == 50 and steps[-1] == 5 and all(a >= b for a, b in zip(steps, steps[1:]))


def test_annealed_schedules_match_the_papers_formulas_in_the_middle():
    """DiSA's n(s) at s = 32 of T = 64, 50 -> 5: linear 5 + floor(31/63 * 45) = 27, cosine
    5 + floor((cos(32 pi / 63) + 1) / 2 * 45) = 26."""
    assert annealed_steps(32, 64, 50, 5, "linear") == 27
    assert annealed_steps(32, 64, 50, 5, "cosine") == 26
    assert annealed_steps(21, 64, 50, 5, "linear") == 5 + math.floor(42 / 63 * 45)


def test_two_stage_and_constant_schedules():
    assert [annealed_steps(s, 4, 9, 2, "two_stage") for s in range(4)] == [9, 9, 2, 2]
    # the release's threshold is (T - 1) / 2: with 5 steps only steps 0 and 1 get the upper count
    assert [annealed_steps(s, 5, 9, 2, "two_stage") for s in range(5)] == [9, 9, 2, 2, 2]
    assert {annealed_steps(s, 4, 9, 2, "constant") for s in range(4)} == {2}
    assert set(SCHEDULES) == {"linear", "cosine", "two_stage", "constant"}
    with pytest.raises(ValueError, match="schedule must be one of"):
        annealed_steps(0, 4, 9, 2, "exp")


def test_head_sampling_is_a_function_of_the_noise_and_guidance_shares_it():
    model = tiny_continuous_ar()
    z = torch.randn(4, 32)
    start, per_step = draw_noise(2, 4, 6, torch.Generator().manual_seed(0), z.device)
    a = sample_head(model.head, model.scheduler, z, 6, 2.0, start, per_step)
    b = sample_head(model.head, model.scheduler, z, 6, 2.0, start, per_step)
    assert torch.equal(a.sample, b.sample) and len(a.means) == len(a.stds) == 6
    assert (torch.stack(a.stds) > 0).all()  # the last step's variance is clipped, never 0


def test_guidance_combines_the_conditional_and_unconditional_halves_in_that_order():
    """One step: the guided mean is x0 under the noise prediction uncond + s * (cond - uncond), the halves
    taken from separate head runs; swapping them fails."""
    model = tiny_continuous_ar()
    with torch.no_grad():  # give the context a say (the tiny head's adaLN starts at zero)
        for block in model.head.blocks:
            block.modulation[1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))  # 2 cond rows, then 2 uncond rows
    start, per_step = draw_noise(2, 4, 1, torch.Generator().manual_seed(0), z.device)
    guided = sample_head(model.head, model.scheduler, z, 1, 3.0, start, per_step)
    t = torch.full((2,), 0)  # one step: t = 0 (evenly spaced from 999 to 0, one point), straight to clean
    cond, uncond = model.head(start, t, z[:2]), model.head(start, t, z[2:])
    a = model.scheduler.alphas_cumprod[0]
    x0 = (start - (1 - a).sqrt() * (uncond + 3.0 * (cond - uncond))) / a.sqrt()
    swapped = (start - (1 - a).sqrt() * (cond + 3.0 * (uncond - cond))) / a.sqrt()
    right, wrong = (guided.means[0] - x0).abs().max(), (guided.means[0] - swapped).abs().max()
    assert right < 1e-5 and wrong > 1e3 * max(float(right), 1e-7)  # last step to clean: the mean is x0


def test_head_timesteps_follow_the_schedulers_spacing():
    """The sampler walks the scheduler's own respacing: MAR's ("linspace") from 999, the bundled pair's
    "leading" from 980 at 50 steps (see ``SHAPES_MAR_SPACING`` for why not 999)."""
    from diffusers import DDPMScheduler

    from mmeff.car.sampler import respaced
    from mmeff.testbed.assets import SHAPES_MAR, SHAPES_MAR_SMALL
    from mmeff.testbed.mar_model import SHAPES_MAR_SPACING

    mar_like = tiny_continuous_ar(spacing="linspace")
    assert respaced(mar_like.scheduler, 5) == [(999, 749), (749, 500), (500, 250), (250, 0), (0, -1)]
    for folder in (SHAPES_MAR, SHAPES_MAR_SMALL):
        bundled = DDPMScheduler.from_pretrained(folder / "scheduler")
        assert bundled.config.timestep_spacing == SHAPES_MAR_SPACING
        assert respaced(bundled, 50)[0][0] == 980 and respaced(bundled, 5)[0] == (800, 600)


def test_disa_constant_at_upper_is_plain_decoding_and_annealing_cuts_head_steps():
    pipe = mmeff.wrap(tiny_continuous_ar())
    plain, plain_stats = generate(pipe)
    pipe.add_plugin("disa", upper=8, lower=8, schedule="constant")
    codes, _ = generate(pipe)
    assert torch.equal(codes, plain)
    pipe.remove_plugin("disa")
    pipe.add_plugin("disa", upper=8, lower=2)
    _, stats = generate(pipe)
    assert stats["head_steps"] < plain_stats["head_steps"] == 8 * 16
    pipe.remove_plugin("disa")
    assert torch.equal(generate(pipe)[0], plain)


@pytest.mark.parametrize("guidance,prefill", [(3.0, 0.15), (None, 0.0), (2.0, 0.5)])
def test_speculative_with_the_target_as_draft_accepts_everything_and_is_plain_decoding(pair, guidance, prefill):
    target, _ = pair
    pipe = mmeff.load(target)
    plain, plain_stats = generate(pipe, guidance_scale=guidance)
    pipe.add_plugin("continuous_spec", draft=str(target), draft_len=4, prefill_ratio=prefill)
    codes, stats = generate(pipe, guidance_scale=guidance)
    assert stats["acceptance_rate"] == 1.0 and torch.equal(codes, plain)
    assert stats["target_forwards"] < plain_stats["target_forwards"]


@pytest.mark.parametrize("resample", ["last_step", "head"])
def test_speculative_with_a_real_draft_runs_and_composes_with_disa(pair, resample):
    target, draft = pair
    pipe = mmeff.load(target)
    pipe.add_plugin("continuous_spec", draft=str(draft), draft_len=4, resample=resample)
    pipe.generate_images(PROMPTS, seed=0, output_type="pt", diffusion_steps=8)
    unannealed = dict(pipe.last_stats)
    resampled, proposals = unannealed["resampled"], unannealed["resample_proposals"]
    if resample == "head":
        # every rejected token is resampled from the residual; proposals come in growing runs (2, then 16), and
        # where drafts are mostly rejected (a random draft) the first short run usually suffices
        first, later = SpeculativeDecoder.RUN_SIZES
        assert resampled > 0 and first * resampled <= proposals < later * resampled
    else:  # as released: one proposal per try from the last-step Gaussian, at most max_tries
        assert resampled > 0 and resampled <= proposals <= 100 * resampled
    pipe.add_plugin("disa", upper=8, lower=2)
    images = pipe.generate_images(PROMPTS, seed=0, output_type="pt")
    stats = pipe.last_stats
    assert images.shape == (2, 3, 16, 16) and stats["drafted"] > 0 and stats["draft_forwards"] > 0
    # annealed inside the target's verification and the draft's head too
    assert stats["head_steps"] < unannealed["head_steps"]
    assert stats["draft_head_steps"] < unannealed["draft_head_steps"]
    assert not torch.isnan(images).any() and pipe.last_codes.abs().sum(-1).gt(0).all()  # no zero-vector tokens


@pytest.mark.parametrize("guidance", [2.0, None])
def test_batched_verification_equals_one_head_run_per_position(guidance):
    """Verification runs the target head over the k drafted positions as one batch per step count
    (DiSA gives positions different counts); each position must get what a lone run gives it."""
    model = tiny_continuous_ar()
    b, k, c = 2, 5, model.config.token_dim
    rows = 2 * b if guidance is not None else b
    z_t = torch.randn(rows, k, model.backbone.config.hidden_size)
    settings = HeadSettings(guidance, steps_at=lambda s: [6, 6, 4, 6, 4][s - 3])  # positions 3..7
    g = torch.Generator().manual_seed(0)
    noises = [draw_noise(b, c, settings.steps_at(3 + j), g, z_t.device) for j in range(k)]
    batched = SpeculativeDecoder._target_trajectories(model, z_t, noises, settings, 3)
    for j, traj in enumerate(batched):
        alone = sample_head(model.head, model.scheduler, z_t[:, j], settings.steps_at(3 + j), guidance, *noises[j])
        assert len(traj.means) == len(alone.means) == settings.steps_at(3 + j)
        assert torch.allclose(traj.sample, alone.sample, atol=1e-5)
        assert all(torch.allclose(a, b_, atol=1e-5) for a, b_ in zip(traj.means, alone.means))
        assert all(torch.equal(a, b_) for a, b_ in zip(traj.stds, alone.stds))


def test_acceptance_ratio_matches_its_closed_form_on_gaussians():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g)
    def traj(mu_scale, stds):
        means = [torch.randn(3, 4, generator=g) * mu_scale for _ in stds]
        return HeadTrajectory(x, means, [torch.full((3, 1), s) for s in stds])
    t, d = traj(1.0, [0.5, 0.3, 0.02]), traj(0.5, [0.4, 0.2, 0.03])
    tau = 42.0
    normal = torch.distributions.Normal
    lt = normal(t.means[-1], 0.02 * tau).log_prob(x).sum(-1)
    ld = normal(d.means[-1], 0.03 * tau).log_prob(x).sum(-1)
    # as released: normalised last-step densities, and each earlier step's std ratio to the power c = 4
    expected = lt - ld + 4 * (math.log(0.5 / 0.4) + math.log(0.3 / 0.2))
    assert torch.allclose(log_ratio(x, t, d, tau), expected, atol=1e-5)


def test_residual_resampling_follows_max_p_minus_q_in_one_dimension():
    """p = N(0, 1), q = N(1, 1): kept samples must follow norm(max(0, p - q)), all of it at x < 0.5."""
    g = torch.Generator().manual_seed(0)
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(1.0, 1.0)
    rows = 20_000

    def propose():
        x = torch.randn(rows, 1, generator=g)
        return x, (q.log_prob(x) - p.log_prob(x)).squeeze(-1)

    x, done = residual_by_rejection(propose, rows, 200, g)
    assert done.all()
    x = x.squeeze(-1)
    grid = torch.linspace(-4, 0.5, 10)
    density = (p.log_prob(grid).exp() - q.log_prob(grid).exp()).clamp(min=0)
    mass = (p.cdf(torch.tensor(0.5)) - q.cdf(torch.tensor(0.5)))  # the residual's total mass
    assert (x < 0.5).all()
    for lo, hi in [(-4.0, -1.0), (-1.0, 0.0), (0.0, 0.5)]:
        expected = float((p.cdf(torch.tensor(hi)) - q.cdf(torch.tensor(hi)) - p.cdf(torch.tensor(lo))
                          + q.cdf(torch.tensor(lo))) / mass)
        observed = float(((x >= lo) & (x < hi)).float().mean())
        assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / rows) + 1e-3
    assert density.sum() > 0


@pytest.mark.parametrize("guidance", [2.0, None])
def test_resampled_tokens_do_not_depend_on_how_proposals_are_batched(guidance):
    """``_resample_rows`` draws proposals in runs (RUN_SIZES); one proposal per run is the plain algorithm.
    Rows of two different contexts, interleaved, must get the same residual per context either way: a
    layout slip between candidates, rows or guidance halves would hand one context's samples to the other."""
    target = mmeff.wrap(tiny_continuous_ar(0)).adapter
    draft = mmeff.wrap(tiny_continuous_ar(1, hidden=16, layers=1, head_width=16)).adapter
    with torch.no_grad():  # the tiny heads' adaLN starts at zero, deaf to the context: give it a say
        for block in [*target.head.blocks, *draft.head.blocks]:
            block.modulation[1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    rows, steps = 3000, 4
    g = torch.Generator().manual_seed(0)
    contexts = [(torch.randn(2, 32, generator=g) * 3, torch.randn(2, 16, generator=g) * 3) for _ in range(2)]
    which = torch.arange(rows) % 2

    def layout(i: int) -> torch.Tensor:  # (rows or 2 rows, d): cond rows, then uncond rows with guidance
        halves = [torch.stack([contexts[int(w)][i][h] for w in which]) for h in range(2 if guidance else 1)]
        return torch.cat(halves)

    settings = HeadSettings(guidance, steps_at=lambda s: steps)
    samples = {}
    for sizes in [(1,), (2, 16)]:
        decoder = SpeculativeDecoder(draft, max_tries=100)
        decoder.RUN_SIZES = sizes
        stats = ContinuousStats()
        samples[sizes] = decoder._resample_rows(target, layout(0), layout(1), torch.arange(rows), rows, steps,
                                                settings, torch.Generator().manual_seed(1), stats)
        assert stats.resampled == rows and stats.resample_failures < rows // 100
    for w in range(2):
        a, b = samples[(1,)][which == w], samples[(2, 16)][which == w]
        se = ((a.var(0) + b.var(0)) / len(a)).sqrt()
        assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all()
    first, second = samples[(1,)][which == 0].mean(0), samples[(1,)][which == 1].mean(0)
    assert (first - second).abs().max() > 10 * se.max()  # the contexts are told apart, so a mix-up would show


def test_only_rows_whose_resampled_token_is_committed_are_resampled():
    """The batch commits its rows' minimum: a row rejecting at position 1 commits 2 tokens, so the row that
    rejected at 3 is cut before its resampled token and must not spend head runs on it."""
    target = mmeff.wrap(tiny_continuous_ar(0)).adapter
    draft = mmeff.wrap(tiny_continuous_ar(1, hidden=16, layers=1, head_width=16)).adapter
    decoder = SpeculativeDecoder(draft, resample="head")  # the released default: test_continuous_spec_release.py
    decoder._draft_hidden = torch.randn(2, 4, 16)
    z_t = torch.randn(2, 4, 32)
    stats = ContinuousStats()
    out = decoder._resample(target, z_t, torch.tensor([1, 3]), 2, HeadSettings(None, steps_at=lambda s: 4), 0,
                            torch.Generator().manual_seed(0), stats)
    assert stats.resampled == 1 and out[0].abs().sum() > 0 and torch.equal(out[1], torch.zeros(4))


def test_acceptance_uniforms_follow_the_generators_state_not_only_its_seed():
    from mmeff.car.speculative import acceptance_generator

    def uniforms(g):
        return torch.rand(5, generator=acceptance_generator(g, torch.device("cpu")))

    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(uniforms(a), uniforms(b))  # same seed, same state: repeatable
    torch.randn(3, generator=a)  # a generator reused for a second call has moved on ...
    assert not torch.equal(uniforms(a), uniforms(b))  # ... so that call gets fresh acceptance uniforms
    assert torch.equal(torch.randn(3, generator=b), torch.randn(3, generator=torch.Generator().manual_seed(5)))


def test_resampling_that_gives_up_keeps_a_sample_of_p_never_zero():
    def propose():
        return torch.ones(3, 2), torch.zeros(3)  # q = p: the residual is empty, nothing is ever kept
    x, done = residual_by_rejection(propose, 3, 5, torch.Generator().manual_seed(0))
    assert not done.any() and torch.equal(x, torch.ones(3, 2))


def test_cfg_rows_stay_paired(pair):
    target, draft = pair
    pipe = mmeff.load(target)
    pipe.add_plugin("continuous_spec", draft=str(draft), draft_len=3)
    fed = []
    original = pipe.adapter.embed_tokens
    pipe.adapter.embed_tokens = lambda t: fed.append(t.clone()) or original(t)
    generate(pipe, guidance_scale=3.0)
    assert fed and all(torch.equal(t[: len(PROMPTS)], t[len(PROMPTS):]) for t in fed)


def test_bad_configs_and_drafts_are_refused(pair, tmp_path):
    target, _ = pair
    pipe = mmeff.wrap(tiny_continuous_ar())
    with pytest.raises(ConfigError, match="lower"):
        pipe.add_plugin("disa", upper=5, lower=10)
    with pytest.raises(ConfigError, match="schedule"):
        pipe.add_plugin("disa", schedule="exp")
    with pytest.raises(ConfigError, match="needs draft"):
        pipe.add_plugin("continuous_spec")
    from mmeff.testing.ar import tiny_ar_image

    tiny_ar_image().save_pretrained(tmp_path / "discrete")
    with pytest.raises(ConfigError, match="same family"):
        pipe.add_plugin("continuous_spec", draft=str(tmp_path / "discrete"))
    from mmeff.testing.car import tiny_vae

    other = tiny_continuous_ar(seed=3, vae=tiny_vae(seed=7))
    with pytest.raises(ConfigError, match="another VAE"):
        mmeff.load(target).add_plugin("continuous_spec", draft=other)
    spaced = tiny_continuous_ar(seed=3, vae=mmeff.load(target).model.vae, spacing="linspace")
    with pytest.raises(ConfigError, match="scheduler differs"):
        mmeff.load(target).add_plugin("continuous_spec", draft=spaced)
    v_pred = tiny_continuous_ar()
    v_pred.scheduler.register_to_config(prediction_type="v_prediction")
    with pytest.raises(UnsupportedModelError, match="epsilon"):
        mmeff.wrap(v_pred).generate_images(PROMPTS)
    assert not pipe.plugins
    with pytest.raises(UnsupportedModelError):
        pipe.add_plugin("sjd")
    with pytest.raises(InputError, match="top_k"):
        pipe.generate_images(PROMPTS, top_k=5)
