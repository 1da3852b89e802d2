"""mmeff.adapters.diffusers_t2i on real tiny StableDiffusion / SDXL pipelines built from configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForText2Image,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

import mmeff
from mmeff.adapters.diffusers_t2i import DiffusersT2IAdapter
from mmeff.errors import InputError, UnsupportedModelError
from mmeff.pipeline import MMPipeline
from mmeff.testing import tiny_sd, tiny_sdxl

PROMPT = "a red circle"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _call_kwargs(**extra) -> dict:
    return {"num_inference_steps": 2, "output_type": "np", "generator": _gen(), **extra}


@pytest.fixture
def sd() -> MMPipeline:
    return mmeff.wrap(tiny_sd())


@pytest.fixture
def sdxl() -> MMPipeline:
    return mmeff.wrap(tiny_sdxl())


# -- matching ---------------------------------------------------------------------------------
def test_wrap_picks_diffusers_t2i(sd, sdxl):
    for pipe in (sd, sdxl):
        assert isinstance(pipe.adapter, DiffusersT2IAdapter)
        assert pipe.adapter.key == "diffusers_t2i"
        assert pipe.adapter.family == "t2i"
    assert "diffusers_t2i" in mmeff.list_adapters()


def test_subclass_and_auto_pipeline_match():
    class MyPipeline(StableDiffusionPipeline):
        pass

    base = tiny_sd()
    assert mmeff.wrap(MyPipeline(**base.components)).adapter.key == "diffusers_t2i"
    assert mmeff.wrap(AutoPipelineForText2Image.from_pipe(base)).adapter.key == "diffusers_t2i"


def test_non_text_to_image_diffusers_objects_are_rejected():
    base = tiny_sd()
    img2img = StableDiffusionImg2ImgPipeline(**base.components)  # same modules, but needs an input image
    for obj in (img2img, base.unet):
        with pytest.raises(UnsupportedModelError, match="diffusers_t2i"):
            mmeff.wrap(obj)


def test_wrap_unknown_object_names_supported_families():
    with pytest.raises(UnsupportedModelError) as err:
        mmeff.wrap(object())
    message = str(err.value)
    assert "object" in message
    for key in ("diffusers_t2i", "llava", "llava_next"):
        assert key in message


# -- modules and facts ------------------------------------------------------------------------
def test_modules_resolve_sd(sd):
    raw, adapter = sd.obj, sd.adapter
    assert adapter.denoiser is raw.unet
    assert adapter.vae is raw.vae
    assert adapter.scheduler is raw.scheduler
    assert adapter.text_encoders == [raw.text_encoder]
    assert adapter.tokenizers == [raw.tokenizer]
    assert adapter.is_sdxl is False
    roots = adapter.hook_roots()
    assert [id(m) for m in roots] == [id(raw.unet), id(raw.vae), id(raw.text_encoder)]
    assert all(isinstance(m, torch.nn.Module) for m in roots)


def test_modules_resolve_sdxl(sdxl):
    raw, adapter = sdxl.obj, sdxl.adapter
    assert adapter.is_sdxl is True
    assert adapter.text_encoders == [raw.text_encoder, raw.text_encoder_2]
    assert adapter.tokenizers == [raw.tokenizer, raw.tokenizer_2]
    assert len(adapter.hook_roots()) == 4


def test_swapped_component_is_seen(sd):
    new = EulerDiscreteScheduler.from_config(sd.obj.scheduler.config)
    sd.obj.scheduler = new
    assert sd.adapter.scheduler is new
    assert sd.adapter.describe()["scheduler"] == "EulerDiscreteScheduler"


def test_describe(sd, sdxl):
    facts = sd.adapter.describe()
    assert facts["adapter"] == "diffusers_t2i"
    assert facts["pipeline"] == "StableDiffusionPipeline"
    assert facts["latent_shape"] == (1, 4, 16, 16)
    assert facts["scheduler"] == "DDIMScheduler"
    assert sdxl.adapter.describe()["sdxl"] is True


@pytest.mark.parametrize("fixture", ["sd", "sdxl"])
def test_latent_shape(fixture, request):
    adapter = request.getfixturevalue(fixture).adapter
    assert adapter.vae_scale_factor == 2
    assert adapter.latent_channels == 4
    assert adapter.default_size == 32
    assert adapter.latent_shape(None, None, 1) == (1, 4, 16, 16)
    assert adapter.latent_shape(48, 64, 3) == (3, 4, 24, 32)


@pytest.mark.parametrize("fixture", ["sd", "sdxl"])
def test_latent_shape_matches_the_pipelines_latents(fixture, request):
    pipe = request.getfixturevalue(fixture)
    out = pipe.obj(PROMPT, height=48, width=64, num_images_per_prompt=2, **_call_kwargs(output_type="latent"))
    assert tuple(out.images.shape) == pipe.adapter.latent_shape(48, 64, 2)


@pytest.mark.parametrize("bad", [0, -8, 12, 33, 32.0, True, "32"])
def test_bad_sizes_raise_input_error(sd, bad):
    with pytest.raises(InputError, match=r"height must be a positive multiple of 8 pixels \(8, 16, 24, \.\.\.") as err:
        sd.adapter.latent_shape(bad, 32, 1)
    assert repr(bad) in str(err.value)
    with pytest.raises(InputError, match="width"):
        sd.adapter.latent_shape(32, bad, 1)


def test_size_multiple_follows_the_pipeline_check(sd):
    """The tiny VAE downsamples by 2, but the pipeline itself rejects sizes that are not multiples of 8."""
    assert sd.adapter.size_multiple == 8
    with pytest.raises(ValueError, match="divisible by 8"):
        sd.obj(PROMPT, height=12, width=32, **_call_kwargs())


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_bad_batch_size_raises_input_error(sd, bad):
    with pytest.raises(InputError, match="batch_size"):
        sd.adapter.latent_shape(32, 32, bad)


# -- running ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["sd", "sdxl"])
def test_call_matches_raw_pipeline(fixture, request):
    pipe = request.getfixturevalue(fixture)
    ours = pipe(PROMPT, **_call_kwargs()).images
    raw = pipe.obj(PROMPT, **_call_kwargs()).images
    assert ours.shape == (1, 32, 32, 3)
    assert np.array_equal(ours, raw)
    assert pipe.last_stats["wall_time_s"] > 0


def test_call_with_size_and_batch(sd):
    ours = sd(PROMPT, height=48, width=40, num_images_per_prompt=2, **_call_kwargs()).images
    raw = sd.obj(PROMPT, height=48, width=40, num_images_per_prompt=2, **_call_kwargs()).images
    assert ours.shape == (2, 48, 40, 3)
    assert np.array_equal(ours, raw)


def test_generate_is_for_vlms(sd):
    with pytest.raises(UnsupportedModelError, match="generate"):
        sd.generate(None, PROMPT)


def test_load_saved_pipeline_folder(tmp_path):
    original = tiny_sd()
    original.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").is_file()
    pipe = mmeff.load(tmp_path)
    assert pipe.adapter.key == "diffusers_t2i"
    assert type(pipe.obj) is StableDiffusionPipeline
    pipe.obj.set_progress_bar_config(disable=True)
    assert np.array_equal(pipe(PROMPT, **_call_kwargs()).images, original(PROMPT, **_call_kwargs()).images)
    auto = AutoPipelineForText2Image.from_pretrained(tmp_path)
    assert mmeff.wrap(auto).adapter.key == "diffusers_t2i"


# -- the differentiable path (ReNO) -----------------------------------------------------------------
def _render(pipe: MMPipeline, kwargs: dict, decode_chunk: int | None = None):
    from mmeff.adapters.t2i_base import rewind, snapshot

    adapter = pipe.adapter
    req = adapter.parse_call((), kwargs)
    noise = adapter.initial_noise(req)
    state = snapshot(req.generator)
    embeds = adapter.encode(req)
    noise = noise.clone().requires_grad_(True)
    with adapter.differentiable():
        image = adapter.render(noise, embeds, req, rewind(req.generator, state), decode_chunk=decode_chunk)
    return image, noise


@pytest.mark.parametrize("factory", [tiny_sd, tiny_sdxl])
def test_decode_chunk_gives_the_same_images_and_gradients(factory):
    """The VAE decoded one image at a time (less activation memory) is the same function of the noise."""
    pipe = mmeff.wrap(factory())
    kwargs = {"prompt": ["a cube", "a sphere", "a ring"], "num_inference_steps": 1, "guidance_scale": 1.0}
    whole, noise_a = _render(pipe, {**kwargs, "generator": _gen(4)})
    chunked, noise_b = _render(pipe, {**kwargs, "generator": _gen(4)}, decode_chunk=1)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    (whole * torch.linspace(0, 1, whole.shape[-1])).sum().backward()
    (chunked * torch.linspace(0, 1, chunked.shape[-1])).sum().backward()
    torch.testing.assert_close(noise_b.grad, noise_a.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("factory,scheduler", [(tiny_sd, "ddim"), (tiny_sd, "euler"), (tiny_sd, "euler_ancestral"),
                                               (tiny_sdxl, "euler"), (tiny_sdxl, "euler_ancestral")])
@pytest.mark.parametrize("steps,guidance", [(1, 1.0), (2, 3.0)])
def test_render_matches_call_and_reaches_only_the_noise(factory, scheduler, steps, guidance):
    pipe = mmeff.wrap(factory(scheduler=scheduler))
    kwargs = {"prompt": ["a cube", "a sphere"], "num_inference_steps": steps, "guidance_scale": guidance,
              "generator": _gen(3)}
    image, noise = _render(pipe, kwargs)
    reference = pipe.obj(**{**kwargs, "generator": _gen(3)}, output_type="pt").images
    assert torch.equal(image.detach(), reference)
    image.sum().backward()
    assert noise.grad.abs().sum() > 0
    assert all(p.grad is None for m in pipe.adapter.hook_roots() for p in m.parameters())


def test_sdxl_prompt_2_reaches_the_path():
    pipe = mmeff.wrap(tiny_sdxl())
    kwargs = {"prompt": ["a cube"], "prompt_2": ["a ring"], "num_inference_steps": 1, "guidance_scale": 1.0,
              "generator": _gen()}
    image, _ = _render(pipe, kwargs)
    assert torch.equal(image.detach(), pipe.obj(**{**kwargs, "generator": _gen()}, output_type="pt").images)


def test_fp16_sdxl_decodes_in_fp32_like_call():
    pipe = mmeff.wrap(tiny_sdxl().to(torch.float16))
    kwargs = {"prompt": ["a cube"], "num_inference_steps": 1, "guidance_scale": 1.0, "generator": _gen()}
    image, _ = _render(pipe, kwargs)
    reference = pipe.obj(**{**kwargs, "generator": _gen()}, output_type="pt").images
    assert image.dtype == torch.float32 and torch.equal(image.detach(), reference)
    assert pipe.obj.vae.dtype == torch.float16  # put back


def test_keywords_the_path_does_not_reproduce_are_refused(sd, sdxl):
    with pytest.raises(InputError, match="guidance_rescale"):
        sd.adapter.parse_call((), {"prompt": "a cube", "guidance_rescale": 0.7})
    with pytest.raises(InputError, match="original_size"):
        sdxl.adapter.parse_call((), {"prompt": "a cube", "original_size": (64, 64)})
    with pytest.raises(InputError, match="prompt_2"):  # SD has no second prompt
        sd.adapter.parse_call((), {"prompt": "a cube", "prompt_2": "a ring"})


def test_offline_clip_tokenizer_keeps_every_listed_word_whole():
    """BPE applies merges by rank across the whole vocabulary: a letter chain per word is not enough."""
    from mmeff.testing.diffusion import clip_tokenizer

    words = ["orange", "triangle", "green", "hexagon", "crosses", "and", "an", "or"]
    tok = clip_tokenizer(words)
    assert all(tok.tokenize(w) == [w + "</w>"] for w in words)
    assert tok.tokenize("an orange triangle") == ["an</w>", "orange</w>", "triangle</w>"]
