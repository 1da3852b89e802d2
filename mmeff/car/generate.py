"""``MMPipeline.generate_images`` for continuous-token models: plugins pick the loop and the step schedule."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..errors import InputError, UnsupportedModelError
from .loop import ContinuousSession, ContinuousStats, HeadSettings, plain_decode


def generate_continuous(pipe: Any, prompts: list[str], guidance_scale: float | None, temperature: float,
                        diffusion_steps: int | None, generator: torch.Generator | None,
                        progress: Any = None) -> tuple[torch.Tensor, dict]:
    adapter = pipe.adapter
    steps = diffusion_steps if diffusion_steps is not None else adapter.default_steps
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"diffusion_steps must be an integer >= 1, got {steps!r}")
    if guidance_scale is not None and not guidance_scale > 0:
        raise InputError(f"guidance_scale must be > 0 or None, got {guidance_scale}")
    if temperature <= 0:
        raise InputError(f"temperature must be > 0 for continuous tokens, got {temperature}")
    prediction = adapter.scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise UnsupportedModelError(f"the head sampler implements noise prediction ('epsilon'); this model's "
                                    f"scheduler predicts {prediction!r}")
    settings = HeadSettings(guidance_scale, temperature, lambda s: steps)
    active = pipe._active()
    for plugin in active:  # DiSA: the head-step schedule
        if "head_steps" in plugin.owned_stages():
            settings.steps_at = plugin.schedule(adapter.num_image_tokens, steps)
    start = time.perf_counter()
    session = ContinuousSession(adapter, prompts, guidance_scale)
    session.progress = progress
    stats = ContinuousStats()
    loops = [p for p in active if "image_decode_loop" in p.owned_stages()]
    if loops:
        tokens = loops[0].decode(session, settings, generator, stats)
    else:
        tokens = plain_decode(session, settings, generator, stats)
    images = adapter.decode_tokens(tokens)
    base = {"wall_time_s": time.perf_counter() - start, "images": len(prompts),
            "image_tokens": adapter.num_image_tokens, "target_forwards": session.forwards,
            "sequential_forwards": session.forwards, "guidance_scale": guidance_scale,
            **stats.as_dict(adapter.num_image_tokens)}
    return images, {"tokens": tokens, "stats": base}
