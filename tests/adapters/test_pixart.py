"""mmeff.adapters.pixart on real tiny PixArt-alpha / PixArt-sigma pipelines built from configs."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

import mmeff
from mmeff.adapters.pixart import PixArtAdapter
from mmeff.adapters.t2i_base import rewind, snapshot
from mmeff.errors import InputError, UnsupportedModelError
from mmeff.testing import tiny_pixart, tiny_sd

PROMPTS = ["a red cube", "a blue sphere"]
NO_BINS = {"use_resolution_binning": False}  # the tiny transformer's sample_size 8 has no aspect-ratio bins


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kwargs(**extra) -> dict:
    return {"prompt": PROMPTS, "num_inference_steps": 2, "generator": _gen(), **NO_BINS, **extra}


def _render(pipe, kwargs: dict, decode_chunk: int | None = None):
    """The adapter's differentiable path, as a noise-optimising plugin drives it."""
    adapter = pipe.adapter
    req = adapter.parse_call((), {**kwargs, "generator": _gen()})
    noise = adapter.initial_noise(req)
    state = snapshot(req.generator)
    embeds = adapter.encode(req)
    noise = noise.clone().requires_grad_(True)
    with adapter.differentiable():
        image = adapter.render(noise, embeds, req, rewind(req.generator, state), decode_chunk=decode_chunk)
    return image, noise


def _call(pipe, kwargs: dict) -> torch.Tensor:
    return pipe.obj(**{**kwargs, "generator": _gen()}, output_type="pt").images


@pytest.fixture
def pixart():
    return mmeff.wrap(tiny_pixart())


# -- matching and facts -------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [False, True])
def test_wrap_picks_pixart(sigma):
    pipe = mmeff.wrap(tiny_pixart(sigma=sigma))
    assert isinstance(pipe.adapter, PixArtAdapter)
    assert pipe.adapter.key == "pixart" and pipe.adapter.family == "t2i"
    assert pipe.adapter.is_sigma is sigma
    assert "pixart" in mmeff.list_adapters()
    assert mmeff.wrap(tiny_sd()).adapter.key == "diffusers_t2i"  # SD still goes to its own adapter


def test_non_pipeline_objects_are_rejected(pixart):
    for obj in (pixart.obj.transformer, pixart.obj.scheduler):
        with pytest.raises(UnsupportedModelError):
            mmeff.wrap(obj)


@pytest.mark.parametrize("sigma", [False, True])
def test_modules_and_describe(sigma):
    pipe = mmeff.wrap(tiny_pixart(sigma=sigma))
    raw, adapter = pipe.obj, pipe.adapter
    assert [id(m) for m in adapter.hook_roots()] == [id(raw.transformer), id(raw.vae), id(raw.text_encoder)]
    assert adapter.denoiser is raw.transformer and adapter.text_encoders == [raw.text_encoder]
    facts = adapter.describe()
    assert facts["adapter"] == "pixart"
    assert facts["pipeline"] == type(raw).__name__
    assert facts["sigma"] is sigma
    assert facts["default_size"] == 16 and adapter.default_hw() == (16, 16)
    assert facts["latent_shape"] == (1, 4, 8, 8)
    assert facts["learned_sigma"] is True
    assert facts["max_sequence_length"] == (300 if sigma else 120)  # the pipeline's own __call__ default
    assert facts["scheduler"] == "DDIMScheduler"


# -- the differentiable path matches __call__ ------------------------------------------------------
@pytest.mark.parametrize(
    ("sigma", "scheduler", "extra"),
    [
        (False, "ddim_default", {"num_inference_steps": 1, "guidance_scale": 1.0}),
        (False, "ddim_default", {"num_inference_steps": 2, "guidance_scale": 1.0}),
        (False, "ddim_default", {"num_inference_steps": 2}),  # default guidance 4.5: CFG on
        (False, "ddpm", {"num_inference_steps": 1, "guidance_scale": 4.5, "negative_prompt": "a cone"}),
        (False, "ddpm", {"timesteps": [400], "guidance_scale": 1.0}),  # ReNO's PixArt-DMD one-step setting
        (True, "ddim_default", {"num_inference_steps": 1, "guidance_scale": 1.0}),
        (True, "ddpm", {"num_inference_steps": 2, "guidance_scale": 3.0}),
        (True, "ddpm", {"timesteps": [400], "guidance_scale": 1.0, "max_sequence_length": 16}),
    ],
)
def test_render_matches_call(sigma, scheduler, extra):
    pipe = mmeff.wrap(tiny_pixart(sigma=sigma, scheduler=scheduler))
    kwargs = _kwargs(**extra)
    image, noise = _render(pipe, kwargs)
    assert image.shape == (2, 3, 16, 16)
    assert torch.equal(image.detach(), _call(pipe, kwargs))  # max abs diff 0.0
    image.sum().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0
    assert all(p.grad is None for m in pipe.adapter.hook_roots() for p in m.parameters())


def test_initial_noise_and_latents_reproduce_the_pipeline():
    """DDPM draws step noise after the initial noise, so the generator must continue where it left off."""
    pipe = mmeff.wrap(tiny_pixart(scheduler="ddpm"))
    kwargs = _kwargs(guidance_scale=2.0)
    req = pipe.adapter.parse_call((), kwargs)
    noise = pipe.adapter.initial_noise(req)
    assert tuple(noise.shape) == pipe.adapter.noise_shape(req) == (2, 4, 8, 8)
    assert noise.dtype == pipe.adapter.noise_dtype()
    own = _call(pipe, kwargs)
    given = pipe.obj(**{**kwargs, "generator": req.generator, "latents": noise}, output_type="pt").images
    assert torch.equal(own, given)


def test_given_latents_are_checked(pixart):
    req = pixart.adapter.parse_call((), _kwargs(latents=torch.zeros(2, 4, 8, 9)))
    with pytest.raises(InputError, match=r"\(2, 4, 8, 8\)"):
        pixart.adapter.initial_noise(req)


def test_decode_chunk_gives_the_same_images(pixart):
    kwargs = _kwargs(guidance_scale=1.0)
    whole, _ = _render(pixart, kwargs)
    chunked, _ = _render(pixart, kwargs, decode_chunk=1)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)  # batch-size-dependent CPU kernels


def test_differentiable_restores_flags(pixart):
    adapter = pixart.adapter
    params = [p for m in adapter.hook_roots() for p in m.parameters()]
    for i, p in enumerate(params):
        p.requires_grad_(i % 3 == 0)
    before = [p.requires_grad for p in params]
    with adapter.differentiable():
        assert not any(p.requires_grad for p in params)
        image, noise = _render(pixart, _kwargs(guidance_scale=1.0))  # nests: restores to frozen, then to before
        assert not any(p.requires_grad for p in params)
    assert [p.requires_grad for p in params] == before


# -- sizes and options -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -8, 12, 20, 16.0, True, "16"])
def test_bad_sizes_raise_input_error(pixart, bad):
    with pytest.raises(InputError, match=r"height must be a positive multiple of 8 pixels \(8, 16, 24, \.\.\.") as err:
        pixart.adapter.check_size(bad, 16)
    assert repr(bad) in str(err.value)
    with pytest.raises(InputError, match="width must be a positive multiple of 8"):
        pixart.adapter.check_size(16, bad)


def test_parse_call_checks_sizes(pixart):
    with pytest.raises(InputError, match="height must be a positive multiple of 8 pixels"):
        pixart.adapter.parse_call((), _kwargs(height=12))
    with pytest.raises(ValueError, match="divisible by 8"):  # the pipeline's own check agrees
        _call(pixart, _kwargs(height=12))


def test_binning_without_bins_raises_like_the_pipeline(pixart):
    kwargs = {"prompt": PROMPTS, "num_inference_steps": 1, "generator": _gen()}  # binning on by default
    with pytest.raises(ValueError, match="Invalid sample size"):
        pixart.obj(**kwargs)
    with pytest.raises(InputError, match="use_resolution_binning=False"):
        pixart.adapter.parse_call((), kwargs)


@pytest.mark.parametrize("sigma", [False, True])
def test_binning_sets_the_noise_shape(sigma):
    """sample_size 32 bins to PixArt's 256-px table; the image is resized back to the requested size."""
    adapter = mmeff.wrap(tiny_pixart(sample_size=32, sigma=sigma)).adapter
    req = adapter.parse_call((), {"prompt": "a cube", "height": 48, "width": 64})
    assert adapter.generation_hw(req) == (208, 288)
    assert adapter.noise_shape(req) == (1, 4, 104, 144)
    req = adapter.parse_call((), {"prompt": "a cube", "height": 48, "width": 64, **NO_BINS})
    assert adapter.noise_shape(req) == (1, 4, 24, 32)


class _Captured(Exception):
    pass


def _transformer_inputs(transformer, run) -> dict:
    """Everything the first transformer call receives (the call is stopped before it computes)."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs, hidden_states=args[0] if args else kwargs.get("hidden_states"))
        raise _Captured

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(_Captured):
            run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("sigma", [False, True])
def test_micro_conditions_match_at_1024(sigma):
    """sample_size 128 (PixArt-XL-2-1024): alpha adds resolution/aspect-ratio conditions, sigma does not."""
    pipe = mmeff.wrap(tiny_pixart(sample_size=128, sigma=sigma))
    kwargs = {"prompt": PROMPTS, "height": 256, "width": 192, "num_inference_steps": 1, "generator": _gen()}
    ours = _transformer_inputs(pipe.obj.transformer, lambda: _render(pipe, kwargs))
    theirs = _transformer_inputs(pipe.obj.transformer, lambda: _call(pipe, kwargs))
    assert ours.keys() == theirs.keys()
    added = ours.pop("added_cond_kwargs"), theirs.pop("added_cond_kwargs")
    for key in ("resolution", "aspect_ratio"):
        if sigma:
            assert added[0][key] is None and added[1][key] is None
        else:
            assert added[0][key].shape == (4, 2 if key == "resolution" else 1)  # CFG doubles the batch
            assert torch.equal(added[0][key], added[1][key])
    for key, value in ours.items():
        if torch.is_tensor(value):
            assert torch.equal(value, theirs[key]), key
        else:
            assert value == theirs[key], key


def test_one_step_needs_pred_original_sample(pixart):
    """PixArt's own DPM-Solver scheduler returns no pred_original_sample: __call__ fails on one step too."""
    pixart.obj.scheduler = DPMSolverMultistepScheduler()
    kwargs = _kwargs(num_inference_steps=1, guidance_scale=1.0)
    with pytest.raises(IndexError):
        _call(pixart, kwargs)
    with pytest.raises(InputError, match="pred_original_sample"):
        _render(pixart, kwargs)
    image, _ = _render(pixart, _kwargs(guidance_scale=1.0))  # two steps are fine
    assert torch.equal(image.detach(), _call(pixart, _kwargs(guidance_scale=1.0)))
