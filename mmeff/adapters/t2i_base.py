"""What every text-to-image adapter provides: a differentiable few-step path from initial noise to pixels.

diffusers runs ``__call__`` under ``no_grad``, so methods that optimise the initial noise
(ReNO) need the same computation with gradients. Each adapter rebuilds it from the
pipeline's own components (``encode_prompt``, ``prepare_latents``, the denoiser, the
scheduler's ``step``, the VAE decode) and must reproduce ``__call__``'s output for the same
noise: the tests check that. Weights stay frozen; gradients reach only the noise.

The noise a plugin optimises is the tensor the pipeline accepts as ``latents=`` (raw N(0, I)
noise; for Flux already packed), so handing the optimised noise back to ``__call__`` gives the
pipeline's own output type for it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError
from .base import Adapter


@dataclass
class T2IRequest:
    """The parts of one diffusers call that decide the image, validated."""

    prompts: list[str]
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    generator: torch.Generator | list[torch.Generator] | None
    latents: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # timesteps, sigmas, negative_prompt, eta, ...

    @property
    def batch_size(self) -> int:
        return len(self.prompts)


def snapshot(generator: torch.Generator | list[torch.Generator] | None) -> Any:
    """States to rewind to, so every iteration sees the same scheduler noise (ReNO's fixed generator)."""
    if generator is None:
        return None
    if isinstance(generator, list):
        return [g.get_state() for g in generator]
    return generator.get_state()


def rewind(generator: torch.Generator | list[torch.Generator] | None, state: Any) -> Any:
    """Fresh generators in the snapshotted state (the caller's generator objects are left alone)."""
    if generator is None:
        return None
    if isinstance(generator, list):
        return [_copy(g, s) for g, s in zip(generator, state)]
    return _copy(generator, state)


def restore(generator: torch.Generator | list[torch.Generator] | None, state: Any) -> None:
    """Put the caller's own generator(s) back in the snapshotted state (so later draws advance them)."""
    if generator is None:
        return
    for g, st in zip(generator, state) if isinstance(generator, list) else [(generator, state)]:
        g.set_state(st)


def _copy(g: torch.Generator, state: torch.Tensor) -> torch.Generator:
    new = torch.Generator(device=g.device)
    new.set_state(state)
    return new


class T2IAdapter(Adapter):
    """Base of the text-to-image adapters. Subclasses implement the ``_``-prefixed steps."""

    family = "t2i"
    #: call keywords passed through to the differentiable path (besides prompt, sizes, steps, guidance)
    path_keywords: tuple[str, ...] = ("timesteps", "sigmas", "negative_prompt", "eta")
    #: keywords every path honours, and those that do not change the image
    BASE_KEYWORDS = ("prompt", "height", "width", "num_inference_steps", "guidance_scale", "generator", "latents",
                     "num_images_per_prompt", "output_type", "return_dict")

    def __init__(self, obj: Any, processor: Any = None) -> None:
        super().__init__(obj, processor)
        self.pipeline = obj

    @property
    def components(self) -> dict[str, Any]:
        """Read live on every access, so later component swaps are seen."""
        return self.pipeline.components

    @property
    def denoiser(self) -> nn.Module:
        raise NotImplementedError

    @property
    def vae(self) -> nn.Module:
        return self.components["vae"]

    @property
    def scheduler(self) -> Any:
        return self.components["scheduler"]

    @property
    def device(self) -> torch.device:
        return self.pipeline._execution_device

    def call_default(self, name: str) -> Any:
        """The default of keyword ``name`` in the pipeline class's own ``__call__``."""
        return inspect.signature(type(self.pipeline).__call__).parameters[name].default

    def _option(self, req: T2IRequest, name: str) -> Any:
        """A path keyword from the call, else ``__call__``'s default for it."""
        value = req.extra.get(name)
        return self.call_default(name) if value is None else value

    @property
    def default_steps(self) -> int:
        """``num_inference_steps`` when the call does not say (the pipeline's own default)."""
        return int(self.call_default("num_inference_steps"))

    @property
    def default_guidance(self) -> float:
        return float(self.call_default("guidance_scale"))

    # -- facts shared by the latent-diffusion pipelines ------------------------------------------
    #: ``check_inputs`` of SD, SDXL and PixArt rejects heights and widths that are not multiples of 8
    pipeline_size_multiple: int = 8

    @property
    def text_encoders(self) -> list[nn.Module]:
        raise NotImplementedError

    def hook_roots(self) -> list[nn.Module]:
        roots = [self.denoiser, self.vae, *self.text_encoders]
        return list({id(m): m for m in roots}.values())  # one module shared twice is one root

    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        factor = getattr(self.pipeline, "vae_scale_factor", None)
        return int(factor or 2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def size_multiple(self) -> int:
        """Heights/widths must divide by this: the VAE's downsampling and the pipeline's own check."""
        return math.lcm(self.vae_scale_factor, self.pipeline_size_multiple)

    @property
    def default_size(self) -> int:
        """The pipeline's default height and width in pixels (what ``height=None`` gives)."""
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    def default_hw(self) -> tuple[int, int]:
        return self.default_size, self.default_size

    # -- the call ---------------------------------------------------------------------------
    def parse_call(self, args: tuple, kwargs: dict[str, Any]) -> T2IRequest:
        """Validate a ``pipe(...)`` call the way a noise-optimising plugin needs it."""
        if args:
            if len(args) > 1 or "prompt" in kwargs:
                raise InputError("pass the prompt as the only positional argument or as prompt=")
            kwargs = {**kwargs, "prompt": args[0]}
        unknown = sorted(k for k in kwargs if k not in (*self.BASE_KEYWORDS, *self.path_keywords))
        if unknown:
            raise InputError(
                f"{unknown} change the image in ways the differentiable path of {type(self.pipeline).__name__} "
                f"does not reproduce, so the optimised noise would be rendered differently; allowed here: "
                f"{sorted({*self.BASE_KEYWORDS, *self.path_keywords})}"
            )
        prompt = kwargs.get("prompt")
        if prompt is None:
            raise InputError("this plugin needs prompt= (text), not prompt_embeds: the rewards score the prompt text")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise InputError(f"prompts must be non-empty strings, got {prompt!r}")
        if kwargs.get("num_images_per_prompt", 1) != 1:
            raise InputError("num_images_per_prompt must be 1 here; repeat the prompt in the list instead")
        h, w = self.default_hw()
        height, width = kwargs.get("height") or h, kwargs.get("width") or w
        self.check_size(height, width)
        steps = kwargs.get("num_inference_steps", self.default_steps)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"num_inference_steps must be a positive int, got {steps!r}")
        generator = kwargs.get("generator")
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise InputError(f"got {len(generator)} generators for {len(prompts)} prompts; pass one per prompt")
        return T2IRequest(
            prompts=prompts, height=height, width=width, num_inference_steps=steps,
            guidance_scale=float(kwargs.get("guidance_scale", self.default_guidance)), generator=generator,
            latents=kwargs.get("latents"),
            extra={k: kwargs[k] for k in self.path_keywords if kwargs.get(k) is not None},
        )

    def check_size(self, height: int, width: int) -> None:
        """Raise :class:`InputError` for sizes the pipeline cannot make."""
        self.check_side("height", height)
        self.check_side("width", width)

    def check_side(self, name: str, value: Any) -> int:
        """``value`` if it is a positive multiple of :attr:`size_multiple` pixels, else an :class:`InputError`."""
        m = self.size_multiple
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % m:
            raise InputError(
                f"{name} must be a positive multiple of {m} pixels ({m}, {2 * m}, {3 * m}, ...; "
                f"default {self.default_size}) for {type(self.pipeline).__name__}, got {value!r}"
            )
        return value

    # -- the differentiable path -------------------------------------------------------------
    def noise_shape(self, req: T2IRequest) -> tuple[int, ...]:
        """Shape of the ``latents=`` tensor the pipeline takes for this request."""
        raise NotImplementedError

    def noise_dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def initial_noise(self, req: T2IRequest) -> torch.Tensor:
        """The noise ``__call__`` would draw itself: same generator, same ``randn_tensor`` call, so the
        generator ends in the state ``prepare_latents`` would leave it in."""
        if req.latents is not None:
            if tuple(req.latents.shape) != self.noise_shape(req):
                raise InputError(f"latents must have shape {self.noise_shape(req)}, got {tuple(req.latents.shape)}")
            return req.latents.to(self.device, self.noise_dtype())
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(self.noise_shape(req), generator=req.generator, device=self.device,
                            dtype=self.noise_dtype())

    @torch.no_grad()
    def encode(self, req: T2IRequest) -> dict[str, Any]:
        """Prompt embeddings (once per call, without gradients), ready for :meth:`render`."""
        raise NotImplementedError

    def render(self, noise: torch.Tensor, embeds: dict[str, Any], req: T2IRequest, generator: Any,
               decode_chunk: int | None = None) -> torch.Tensor:
        """Images in [0, 1], ``(B, 3, H, W)``, differentiable with respect to ``noise``."""
        raise NotImplementedError

    @contextlib.contextmanager
    def differentiable(self, gradient_checkpointing: bool = False) -> Iterator[None]:
        """Frozen weights, eval mode, gradients on; optional checkpointing; all undone afterwards."""
        modules = self.path_modules()
        flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
        modes = [(sub, sub.training) for m in modules for sub in m.modules()]
        # the denoiser and VAE (diffusers models) carry the graph; text encoders run once under no_grad
        checkpointing = [m for m in modules if gradient_checkpointing and hasattr(m, "enable_gradient_checkpointing")
                         and getattr(m, "_supports_gradient_checkpointing", False)]
        was = [(m, m.is_gradient_checkpointing) for m in checkpointing]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            for m in modules:
                m.eval()
            for m in checkpointing:
                m.enable_gradient_checkpointing()
            with torch.enable_grad():
                yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            for sub, mode in modes:
                sub.training = mode
            for m, on in was:
                if not on:
                    m.disable_gradient_checkpointing()

    def path_modules(self) -> list[nn.Module]:
        return list({id(m): m for m in self.hook_roots()}.values())

    def decode_chunked(self, latents: torch.Tensor, decode: Any, chunk: int | None) -> torch.Tensor:
        """VAE decode in chunks of ``chunk`` images (peak memory), the whole batch when None."""
        if not chunk or chunk >= latents.shape[0]:
            return decode(latents)
        return torch.cat([decode(part) for part in latents.split(chunk)])
