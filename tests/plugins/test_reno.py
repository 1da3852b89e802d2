"""ReNO on tiny random diffusers pipelines with small differentiable rewards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import mmeff
from mmeff.errors import ConfigError, InputError, UnsupportedModelError
from mmeff.plugins.reno import RenoConfig, RewardSet, search_noise
from mmeff.plugins.reno.ops import chi_regulariser, clip_rows_
from mmeff.testing import tiny_flux, tiny_llava, tiny_pixart, tiny_sd, tiny_sdxl

PROMPTS = ["a red cube", "a blue sphere"]


class RednessReward(nn.Module):
    """Mean red minus mean blue: a reward whose gradient is known to be non-zero everywhere."""

    name = "redness"
    offset = 1.0
    default_weight = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.scale * (images[:, 0] - images[:, 2]).mean((1, 2))


class WorseEveryCall(nn.Module):
    """A reward that only falls: keep-best must hold on to iteration 0."""

    name = "worse"
    offset = 0.0
    default_weight = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        return images.mean((1, 2, 3)) * 1e-3 - self.calls


def reno(**options) -> dict:
    options.setdefault("rewards", {"redness": 1.0})
    options.setdefault("reward_models", {"redness": RednessReward()})
    return options


def _call(pipe, prompts=PROMPTS, seed=0, **kw):
    kw.setdefault("num_inference_steps", 1)
    kw.setdefault("guidance_scale", 1.0)
    if pipe.adapter.key == "pixart":
        kw.setdefault("use_resolution_binning", False)  # the tiny transformer's size has no bin table
    return pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images


FACTORIES = {"sd": tiny_sd, "sdxl": tiny_sdxl, "pixart": tiny_pixart, "flux": tiny_flux}


@pytest.fixture(params=list(FACTORIES))
def pipe(request):
    return mmeff.wrap(FACTORIES[request.param]())


# -- ops ------------------------------------------------------------------------------------------
def test_regulariser_is_chi_negative_log_density_up_to_a_constant():
    d = 64
    diffs = []
    for r in (2.0, 5.0, 8.0, 11.0):
        noise = torch.full((1, d), r / math.sqrt(d), dtype=torch.float64)
        log_pdf = (d - 1) * math.log(r) - r * r / 2 - (d / 2 - 1) * math.log(2) - math.lgamma(d / 2)
        diffs.append(chi_regulariser(noise).item() + log_pdf)
    assert np.allclose(diffs, diffs[0])
    assert diffs[0] == pytest.approx(-(d / 2 - 1) * math.log(2) - math.lgamma(d / 2))


def test_regulariser_gradcheck_and_minimum_at_sqrt_d_minus_1():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(chi_regulariser, (x,))
    d = 48
    radii = torch.linspace(4, 9, 501, dtype=torch.float64)
    values = torch.stack([chi_regulariser(torch.full((1, d), float(r) / math.sqrt(d), dtype=torch.float64))[0]
                          for r in radii])
    assert radii[values.argmin()].item() == pytest.approx(math.sqrt(d - 1), abs=0.02)


def test_clip_rows_matches_clip_grad_norm_per_image():
    g = torch.randn(3, 4, 2, 2) * torch.tensor([0.01, 1.0, 5.0]).view(3, 1, 1, 1)
    clipped = g.clone()
    clip_rows_(clipped, 0.1)
    for row in range(3):
        p = nn.Parameter(torch.zeros(4, 2, 2))
        p.grad = g[row].clone()
        torch.nn.utils.clip_grad_norm_([p], 0.1)
        assert torch.allclose(clipped[row], p.grad)


# -- neutral settings and removal ------------------------------------------------------------------
def test_zero_iterations_reproduce_the_plain_pipeline_exactly(pipe):
    plain = _call(pipe)
    pipe.add_plugin("reno", **reno(iterations=0))
    assert np.array_equal(_call(pipe), plain)


def test_remove_restores_the_plain_pipeline_and_weights(pipe):
    plain = _call(pipe)
    modules = pipe.adapter.hook_roots()  # denoiser, VAE, text encoders
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    flags = [{n: p.requires_grad for n, p in m.named_parameters()} for m in modules]
    modes = [[sub.training for sub in m.modules()] for m in modules]
    pipe.add_plugin("reno", **reno(iterations=3))
    changed = _call(pipe)
    assert not np.array_equal(changed, plain)
    pipe.remove_plugin("reno")
    assert np.array_equal(_call(pipe), plain)
    for m, state, flag, mode in zip(modules, before, flags, modes):
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
        assert flag == {n: p.requires_grad for n, p in m.named_parameters()}
        assert mode == [sub.training for sub in m.modules()]
        assert all(p.grad is None for p in m.parameters())


def test_positional_and_keyword_prompt_agree():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=2))
    a = pipe(PROMPTS, num_inference_steps=1, generator=torch.Generator().manual_seed(3), output_type="np").images
    b = pipe(prompt=PROMPTS, num_inference_steps=1, generator=torch.Generator().manual_seed(3),
             output_type="np").images
    assert np.array_equal(a, b)


# -- the optimisation ------------------------------------------------------------------------------
def test_reward_rises_and_the_best_iterate_is_what_the_pipeline_renders(pipe):
    pipe.add_plugin("reno", **reno(iterations=8, lr=20.0))
    images = _call(pipe)
    stats = pipe.last_stats["reno"]
    assert stats["iterations"] == 8
    assert stats["reward"][-1] > stats["reward"][0]
    assert all(b >= i for b, i in zip(stats["best_reward"], stats["initial_reward"]))
    # the final image is the best iterate's: its reward equals the stored best
    red = (images[..., 0] - images[..., 2]).mean((1, 2))
    assert np.allclose(red, stats["best_reward"], atol=1e-5)


def test_update_rule_is_sgd_nesterov_after_per_image_clipping():
    pipe = mmeff.wrap(tiny_sd())
    adapter = pipe.adapter
    config = RenoConfig(**reno(iterations=3, lr=5.0, grad_clip=0.1, reg_weight=0.01))
    rewards = RewardSet(config.reward_models, config.weights)
    seen: list[torch.Tensor] = []
    req = adapter.parse_call((), {"prompt": PROMPTS, "num_inference_steps": 1, "guidance_scale": 1.0,
                                   "generator": torch.Generator().manual_seed(0)})
    search_noise(adapter, req, rewards, config, on_iteration=lambda it, noise, img: seen.append(noise.clone()))
    # replay with torch's own SGD and clip_grad_norm_ per image
    req = adapter.parse_call((), {"prompt": PROMPTS, "num_inference_steps": 1, "guidance_scale": 1.0,
                                   "generator": torch.Generator().manual_seed(0)})
    noise0 = adapter.initial_noise(req)
    embeds = adapter.encode(req)
    params = [nn.Parameter(noise0[i : i + 1].clone()) for i in range(2)]
    opts = [torch.optim.SGD([p], lr=5.0, momentum=0.9, nesterov=True) for p in params]
    with adapter.differentiable():
        for it in range(2):
            for i, p in enumerate(params):
                assert torch.allclose(p.detach()[0], seen[it][i], atol=1e-5)
            for i, (p, opt) in enumerate(zip(params, opts)):
                sub = adapter.parse_call((), {"prompt": [PROMPTS[i]], "num_inference_steps": 1, "guidance_scale": 1.0})
                img = adapter.render(p, {k: (v[i : i + 1] if torch.is_tensor(v) else v) for k, v in embeds.items()},
                                     sub, None)
                loss = (1.0 - rewards(img, [PROMPTS[i]])["redness"]) + 0.01 * chi_regulariser(p)
                opt.zero_grad()
                loss.sum().backward()
                torch.nn.utils.clip_grad_norm_([p], 0.1)
                opt.step()
    assert torch.allclose(torch.cat([p.detach() for p in params]), seen[2], atol=1e-5)


def test_keep_best_returns_iteration_0_when_nothing_improves():
    pipe = mmeff.wrap(tiny_sd())
    plain = _call(pipe)
    pipe.add_plugin("reno", rewards={"worse": 1.0}, reward_models={"worse": WorseEveryCall()}, iterations=4)
    images = _call(pipe)
    assert pipe.last_stats["reno"]["best_iteration"] == [0, 0]
    assert np.array_equal(images, plain)


def test_a_batch_optimises_each_prompt_as_if_alone():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=4, lr=20.0))
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    both = pipe(PROMPTS, generator=gens, num_inference_steps=1, guidance_scale=1.0, output_type="np").images
    for i in range(2):
        alone = pipe([PROMPTS[i]], generator=[torch.Generator().manual_seed(5 + i)], num_inference_steps=1,
                     guidance_scale=1.0, output_type="np").images
        assert np.allclose(alone[0], both[i], atol=1e-5)


def test_reward_target_stops_early_only_once_every_image_reaches_it():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=20, reward_target=-10.0))
    _call(pipe)
    assert pipe.last_stats["reno"]["iterations"] == 1
    pipe.add_plugin("reno", **reno(iterations=5, reward_target=10.0))  # out of reach: every iteration runs
    _call(pipe)
    assert pipe.last_stats["reno"]["iterations"] == 5


def test_random_search_keeps_the_best_of_n_draws():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=6, search="random"))
    _call(pipe)
    stats = pipe.last_stats["reno"]
    per_image = np.array(stats["reward_per_image"])  # (iterations, batch)
    assert len(np.unique(per_image[:, 0])) == 6  # six different noises
    assert stats["best_iteration"] == per_image.argmax(0).tolist()
    assert stats["best_reward"] == pytest.approx(per_image.max(0).tolist())


def test_random_search_candidates_follow_each_images_seed_not_its_batch():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=4, search="random"))
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    pipe(PROMPTS, generator=gens, num_inference_steps=1, guidance_scale=1.0, output_type="np")
    both = np.array(pipe.last_stats["reno"]["reward_per_image"])
    pipe([PROMPTS[1]], generator=[torch.Generator().manual_seed(6)], num_inference_steps=1, guidance_scale=1.0)
    alone = np.array(pipe.last_stats["reno"]["reward_per_image"])
    assert np.allclose(both[:, 1], alone[:, 0], atol=1e-6)
    _call(pipe, seed=7)
    other_seed = np.array(pipe.last_stats["reno"]["reward_per_image"])
    assert not np.allclose(other_seed[1:, 1], both[1:, 1])


def test_random_search_draws_new_candidates_when_a_generator_is_reused():
    """Issue 29: a generator reused over calls gets new best-of-N candidates each call; a fresh one with
    the same seed repeats them."""
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=4, search="random"))
    options = dict(num_inference_steps=1, guidance_scale=1.0, output_type="np")
    g = torch.Generator().manual_seed(3)
    runs = []
    for generator in (g, g, torch.Generator().manual_seed(3)):
        pipe(PROMPTS, generator=generator, **options)
        runs.append(np.array(pipe.last_stats["reno"]["reward_per_image"]))
    assert not np.allclose(runs[0][1:], runs[1][1:])
    assert np.allclose(runs[0], runs[2], atol=1e-6)


def test_the_callers_generator_advances_as_in_the_plain_pipeline():
    """An ancestral scheduler draws from the generator at every step: reusing one generator over two
    calls must give the plain pipeline's two images."""
    pipe = mmeff.wrap(tiny_sd(scheduler="euler_ancestral"))
    g = torch.Generator().manual_seed(0)
    plain = [pipe(PROMPTS, generator=g, num_inference_steps=3, guidance_scale=1.0, output_type="np").images
             for _ in range(2)]
    pipe.add_plugin("reno", **reno(iterations=0))
    g = torch.Generator().manual_seed(0)
    with_plugin = [pipe(PROMPTS, generator=g, num_inference_steps=3, guidance_scale=1.0, output_type="np").images
                   for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, with_plugin))


def test_seed_option_makes_calls_without_a_generator_repeatable():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=2, seed=11))
    first = pipe(PROMPTS, num_inference_steps=1, guidance_scale=1.0, output_type="np").images
    second = pipe(PROMPTS, num_inference_steps=1, guidance_scale=1.0, output_type="np").images
    assert np.array_equal(first, second)


def test_stats_report_rewards_time_memory_and_best_iteration():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=3))
    _call(pipe)
    stats = pipe.last_stats["reno"]
    assert set(stats["rewards"]) == {"redness"} and len(stats["rewards"]["redness"]) == 3
    assert stats["seconds"] > 0 and len(stats["best_iteration"]) == 2
    assert pipe.last_stats["wall_time_s"] >= stats["seconds"]
    assert stats["peak_memory_kind"] == "process RSS"  # on the CPU: the process's resident memory
    assert stats["peak_memory_mb"] > 50  # the process, models included (the rise: tests/core/test_memory.py)


def test_cfg_and_more_steps_run_through_the_path():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=2))
    _call(pipe, num_inference_steps=2, guidance_scale=3.0)
    assert pipe.last_stats["reno"]["iterations"] == 2


# -- errors ---------------------------------------------------------------------------------------
def test_unknown_reward_and_bad_options_raise_naming_what_is_allowed():
    pipe = mmeff.wrap(tiny_sd())
    with pytest.raises(ConfigError, match=r"no_such_reward.*available: \[.*hpsv2.*shapes_clip"):
        pipe.add_plugin("reno", rewards={"no_such_reward": 1.0})
    with pytest.raises(ConfigError, match="search must be one of"):
        pipe.add_plugin("reno", **reno(search="grid"))
    with pytest.raises(ConfigError, match="precision must be one of"):
        pipe.add_plugin("reno", **reno(precision="fp8"))
    with pytest.raises(ConfigError, match="iterations"):
        pipe.add_plugin("reno", **reno(iterations=-1))
    with pytest.raises(ConfigError, match="weight"):
        pipe.add_plugin("reno", **reno(rewards={"redness": 0.0}))
    assert not pipe.plugins


def test_unsupported_models_and_bad_calls_raise():
    vlm = mmeff.wrap(*tiny_llava())
    with pytest.raises(UnsupportedModelError, match="diffusers_t2i"):
        vlm.add_plugin("reno", **reno())
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=1))
    with pytest.raises(InputError, match="non-empty"):
        pipe([""], num_inference_steps=1)
    with pytest.raises(InputError, match="num_images_per_prompt"):
        pipe(PROMPTS, num_images_per_prompt=2, num_inference_steps=1)
    with pytest.raises(InputError, match="multiple of"):
        pipe(PROMPTS, height=30, num_inference_steps=1)
    with pytest.raises(InputError, match="guidance_rescale"):
        pipe(PROMPTS, num_inference_steps=1, guidance_rescale=0.5)
    assert _call(pipe).shape[0] == 2  # a failed call leaves the plugin usable


def test_gradient_checkpointing_gives_the_same_optimisation_and_is_undone():
    pipe = mmeff.wrap(tiny_sd())
    pipe.add_plugin("reno", **reno(iterations=3, lr=20.0))
    plain_run = _call(pipe)
    seen = []
    handle = pipe.obj.unet.register_forward_hook(lambda m, a, o: seen.append(m.is_gradient_checkpointing))
    pipe.add_plugin("reno", **reno(iterations=3, lr=20.0, gradient_checkpointing=True))
    assert np.allclose(_call(pipe), plain_run, atol=1e-5)
    handle.remove()
    assert seen[:3] == [True] * 3 and seen[-1] is False  # on during the search, off for the final call
    assert not pipe.obj.unet.is_gradient_checkpointing and not pipe.obj.vae.is_gradient_checkpointing


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_path_still_raises_the_reward(precision, dtype):
    pipe = mmeff.wrap(tiny_sd())
    dtypes = []
    handle = pipe.obj.unet.conv_in.register_forward_hook(lambda m, a, o: dtypes.append(o.dtype))
    pipe.add_plugin("reno", **reno(iterations=6, lr=20.0, precision=precision))
    images = _call(pipe)
    handle.remove()
    assert dtypes[0] == dtype and dtypes[-1] == torch.float32  # autocast in the search only
    stats = pipe.last_stats["reno"]
    assert stats["reward"][-1] > stats["reward"][0] and np.isfinite(images).all()


def test_the_prompt_is_encoded_once_per_search():
    pipe = mmeff.wrap(tiny_sd())
    calls = []
    handle = pipe.obj.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    pipe.add_plugin("reno", **reno(iterations=5))
    _call(pipe)
    handle.remove()
    assert len(calls) == 2  # once for the search, once in the final diffusers call
