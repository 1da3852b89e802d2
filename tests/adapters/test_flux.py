"""mmeff.adapters.flux on real tiny FLUX.1-shaped pipelines built from configs."""

from __future__ import annotations

import pytest
import torch

import mmeff
from mmeff.adapters.flux import FluxAdapter
from mmeff.adapters.t2i_base import rewind, snapshot
from mmeff.errors import InputError, UnsupportedModelError
from mmeff.testing import tiny_flux

PROMPTS = ["a red cube", "a blue sphere"]
#: schnell-like (static shift, no guidance embedding; VAE scale 1) and dev-like (shift mu, guidance; VAE scale 2)
VARIANTS = {
    "schnell": {"guidance_embeds": False, "scheduler": "flow", "vae_blocks": 1},
    "dev": {"guidance_embeds": True, "scheduler": "flow_dynamic", "vae_blocks": 2},
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kwargs(**extra) -> dict:
    return {"prompt": PROMPTS, "height": 16, "width": 24, "num_inference_steps": 2, "max_sequence_length": 24,
            "generator": _gen(), **extra}


def _prepare(pipe, kwargs: dict):
    adapter = pipe.adapter
    req = adapter.parse_call((), {**kwargs, "generator": _gen()})
    noise = adapter.initial_noise(req)
    return req, noise, snapshot(req.generator), adapter.encode(req)


def _render(pipe, kwargs: dict, decode_chunk: int | None = None):
    """The adapter's differentiable path, as a noise-optimising plugin drives it."""
    adapter = pipe.adapter
    req, noise, state, embeds = _prepare(pipe, kwargs)
    noise = noise.clone().requires_grad_(True)
    with adapter.differentiable():
        image = adapter.render(noise, embeds, req, rewind(req.generator, state), decode_chunk=decode_chunk)
    return image, noise


def _call(pipe, kwargs: dict, **extra) -> torch.Tensor:
    return pipe.obj(**{**kwargs, "generator": _gen(), **extra}, output_type="pt").images


@pytest.fixture
def flux():
    return mmeff.wrap(tiny_flux())


# -- matching and facts -------------------------------------------------------------------------
def test_wrap_picks_flux(flux):
    assert isinstance(flux.adapter, FluxAdapter)
    assert flux.adapter.key == "flux" and flux.adapter.family == "t2i"
    assert "flux" in mmeff.list_adapters()
    for obj in (flux.obj.transformer, flux.obj.vae):
        with pytest.raises(UnsupportedModelError):
            mmeff.wrap(obj)


def test_modules_and_describe(flux):
    raw, adapter = flux.obj, flux.adapter
    roots = [raw.transformer, raw.vae, raw.text_encoder, raw.text_encoder_2]
    assert [id(m) for m in adapter.hook_roots()] == [id(m) for m in roots]
    facts = adapter.describe()
    assert facts["adapter"] == "flux" and facts["pipeline"] == "FluxPipeline"
    assert facts["default_size"] == 128 and adapter.default_hw() == (128, 128)  # default_sample_size x VAE scale
    assert facts["noise_shape"] == (1, 64 * 64, 4)  # packed (B, (h/2)(w/2), 4C)
    assert facts["latent_channels"] == 1 and facts["vae_scale_factor"] == 1
    assert facts["guidance_embeds"] is False
    assert facts["max_sequence_length"] == 512
    assert facts["text_encoders"] == ["CLIPTextModel", "T5EncoderModel"]
    assert facts["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert mmeff.wrap(tiny_flux(guidance_embeds=True)).adapter.describe()["guidance_embeds"] is True


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_noise_shape_is_the_packed_latents(variant):
    pipe = mmeff.wrap(tiny_flux(**VARIANTS[variant]))
    req = pipe.adapter.parse_call((), _kwargs())
    f = pipe.adapter.vae_scale_factor
    assert pipe.adapter.noise_shape(req) == (2, (16 // f // 2) * (24 // f // 2), 4)
    latents = pipe.obj(**_kwargs(num_inference_steps=1), output_type="latent").images
    assert tuple(latents.shape) == pipe.adapter.noise_shape(req)


# -- the differentiable path matches __call__ ------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("steps", [1, 2])
def test_render_matches_call(variant, steps):
    pipe = mmeff.wrap(tiny_flux(**VARIANTS[variant]))
    kwargs = _kwargs(num_inference_steps=steps, guidance_scale=3.5)
    expected = _call(pipe, kwargs)
    req, noise, state, embeds = _prepare(pipe, kwargs)
    with torch.no_grad():  # the same computation, bit for bit
        assert torch.equal(pipe.adapter.render(noise, embeds, req, rewind(req.generator, state)), expected)
    image, noise = _render(pipe, kwargs)
    assert image.shape == (2, 3, 16, 24)
    # with frozen weights torch picks another CPU kernel for the VAE's 4-channel attention projections
    # (F.linear on a non-contiguous input): the images then agree to float32 rounding only
    torch.testing.assert_close(image.detach(), expected, rtol=0, atol=1e-6)
    image.sum().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0
    assert all(p.grad is None for m in pipe.adapter.hook_roots() for p in m.parameters())


def test_default_sequence_length_and_prompt_2(flux):
    kwargs = _kwargs(prompt_2=["a green cone", "a ring"])
    del kwargs["max_sequence_length"]  # the pipeline's own default, 512
    req, noise, state, embeds = _prepare(flux, kwargs)
    assert embeds["encoder_hidden_states"].shape[1] == 512
    with torch.no_grad():
        assert torch.equal(flux.adapter.render(noise, embeds, req, None), _call(flux, kwargs))


def test_initial_noise_and_latents_reproduce_the_pipeline(flux):
    kwargs = _kwargs()
    req = flux.adapter.parse_call((), kwargs)
    noise = flux.adapter.initial_noise(req)
    assert tuple(noise.shape) == (2, 96, 4) and noise.dtype == flux.adapter.noise_dtype()
    assert torch.equal(_call(flux, kwargs), _call(flux, kwargs, latents=noise))


def test_given_latents_are_used_unscaled_and_checked(flux):
    noise = torch.randn(2, 96, 4, generator=_gen(3))
    req = flux.adapter.parse_call((), _kwargs(latents=noise))
    assert torch.equal(flux.adapter.initial_noise(req), noise)
    req = flux.adapter.parse_call((), _kwargs(latents=noise[:, :80]))
    with pytest.raises(InputError, match=r"\(2, 96, 4\)"):
        flux.adapter.initial_noise(req)


def test_decode_chunk_gives_the_same_images(flux):
    whole, _ = _render(flux, _kwargs())
    chunked, _ = _render(flux, _kwargs(), decode_chunk=1)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)  # batch-size-dependent CPU kernels


def test_differentiable_restores_flags(flux):
    adapter = flux.adapter
    params = [p for m in adapter.hook_roots() for p in m.parameters()]
    for i, p in enumerate(params):
        p.requires_grad_(i % 3 == 1)
    before = [p.requires_grad for p in params]
    with adapter.differentiable():
        assert not any(p.requires_grad for p in params)
    assert [p.requires_grad for p in params] == before


# -- sizes and options -------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "multiple"), [("schnell", 2), ("dev", 4)])
def test_bad_sizes_raise_input_error(variant, multiple):
    adapter = mmeff.wrap(tiny_flux(**VARIANTS[variant])).adapter
    assert adapter.size_multiple == multiple
    m = multiple
    pattern = rf"height must be a positive multiple of {m} pixels \({m}, {2 * m}, {3 * m}, \.\.\."
    for bad in (0, -m, m + 1, 3 * m - 1, float(m), True, str(m)):
        with pytest.raises(InputError, match=pattern) as err:
            adapter.check_size(bad, 4 * m)
        assert repr(bad) in str(err.value)
        with pytest.raises(InputError, match=f"width must be a positive multiple of {m}"):
            adapter.check_size(4 * m, bad)
    with pytest.raises(InputError, match=f"multiple of {m}"):
        adapter.parse_call((), _kwargs(height=4 * m + 1))


def test_true_cfg_is_refused(flux):
    with pytest.raises(InputError, match="true CFG"):
        flux.adapter.parse_call((), _kwargs(true_cfg_scale=4.0, negative_prompt="a cone"))
    # without a negative prompt, or at true_cfg_scale 1, __call__ ignores them: so does the adapter
    flux.adapter.parse_call((), _kwargs(true_cfg_scale=4.0))
    flux.adapter.parse_call((), _kwargs(negative_prompt="a cone"))


@pytest.mark.parametrize("bad", [0, 513, 2.5, True])
def test_bad_sequence_length(flux, bad):
    with pytest.raises(InputError, match="max_sequence_length"):
        flux.adapter.parse_call((), _kwargs(max_sequence_length=bad))


def test_prompt_2_count_is_checked(flux):
    with pytest.raises(InputError, match="prompt_2"):
        flux.adapter.parse_call((), _kwargs(prompt_2=["a cone"]))
