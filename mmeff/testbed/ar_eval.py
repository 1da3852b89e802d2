"""Prompt-following of an autoregressive image-token generator on the shapes prompt set (OpenCV oracle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .t2i_eval import summarise, to_uint8
from .t2i_prompts import T2IPrompt, eval_prompts, score_image

#: how the bundled shapes-ar model is sampled in evaluations and benchmarks
SHAPES_AR_SAMPLING = {"guidance_scale": 3.0, "temperature": 1.0, "top_k": None}


def as_pipeline(model: Any) -> Any:
    """An ``MMPipeline`` for a bare ``ARImageModel`` (or the pipeline itself)."""
    import mmeff

    return model if isinstance(model, mmeff.MMPipeline) else mmeff.wrap(model)


@torch.no_grad()
def generate_set(pipe: Any, prompts: Sequence[T2IPrompt], seeds: Sequence[int], *, batch_size: int = 64,
                 progress: str | None = None,
                 **sampling: Any) -> tuple[list[np.ndarray], list[dict[str, Any]], torch.Tensor]:
    """Every (prompt, seed) image as uint8 arrays, each batch's ``last_stats``, and the codes (rows x N).

    ``progress``: a label for a per-image progress bar (a bench method takes minutes at batch 1).

    One seed per batch of prompts: batch ``i`` of seed ``s`` uses ``seed = s * 100_003 + i``, so
    methods compared at the same seeds draw from the same random streams.
    """
    images: list[np.ndarray] = []
    stats: list[dict[str, Any]] = []
    codes: list[torch.Tensor] = []
    bar = tqdm(total=len(prompts) * len(seeds), desc=progress, unit="image", leave=False, disable=progress is None)
    for s in seeds:
        for i in range(0, len(prompts), batch_size):
            chunk = [p.text for p in prompts[i : i + batch_size]]
            out = pipe.generate_images(chunk, seed=s * 100_003 + i, output_type="pt", **sampling)
            images += to_uint8(out)
            stats.append(dict(pipe.last_stats))
            codes.append(pipe.last_codes.cpu())
            bar.update(len(chunk))
    bar.close()
    return images, stats, torch.cat(codes)


def ar_oracle_scores(model: Any, *, per_category: int = 8, seeds: Sequence[int] = (0, 1), batch_size: int = 64,
                     **sampling: Any) -> dict[str, float]:
    """Oracle success rate per category and overall for plain sampling (or whatever loop is attached)."""
    pipe = as_pipeline(model)
    prompts = eval_prompts(per_category)
    images, _, _ = generate_set(pipe, prompts, seeds, batch_size=batch_size, **{**SHAPES_AR_SAMPLING, **sampling})
    ordered = [p for _ in seeds for p in prompts]
    return summarise(ordered, [score_image(p, img) for p, img in zip(ordered, images)])
