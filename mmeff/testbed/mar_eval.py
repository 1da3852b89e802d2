"""Prompt-following of a continuous-token AR generator (shapes-mar, its draft) on the shapes prompts (OpenCV oracle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .ar_eval import as_pipeline
from .t2i_eval import summarise, to_uint8
from .t2i_prompts import eval_prompts, score_image

#: how the shapes-mar pair is sampled in evaluations (50 head steps per token: the adapter's default, MAR's)
SHAPES_MAR_SAMPLING = {"guidance_scale": 3.0, "temperature": 1.0, "diffusion_steps": 50}


@torch.no_grad()
def mar_oracle_scores(model: Any, *, per_category: int = 8, seeds: Sequence[int] = (0, 1), batch_size: int = 64,
                      **sampling: Any) -> dict[str, float]:
    """Oracle success rate per category and overall, with plain decoding (or whatever loop is attached).

    Batch ``i`` of seed ``s`` uses ``seed = s * 100_003 + i``, as ``ar_eval.generate_set`` does,
    so models compared at the same seeds draw from the same random streams.
    """
    pipe = as_pipeline(model)
    settings = {**SHAPES_MAR_SAMPLING, **sampling}
    prompts = eval_prompts(per_category)
    ordered, hits = [], []
    for s in seeds:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            images = pipe.generate_images([p.text for p in chunk], seed=s * 100_003 + i, output_type="pt", **settings)
            ordered += chunk
            hits += [score_image(p, img) for p, img in zip(chunk, to_uint8(images))]
    return summarise(ordered, hits)
