"""Prompt-following of a text-to-image pipeline on the shapes prompt set, scored by the OpenCV oracle."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .t2i_prompts import CATEGORIES, T2IPrompt, eval_prompts, score_image


def to_uint8(images: Any) -> list[np.ndarray]:
    """Pipeline output (PIL list, float array in [0, 1] or (B, 3, H, W) tensor) -> HxWx3 uint8 arrays."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img in images:
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        out.append(arr)
    return out


def summarise(prompts: Sequence[T2IPrompt], hits: Sequence[bool]) -> dict[str, float]:
    """Per-category and overall (mean of categories, as GenEval reports) success rates."""
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for p, h in zip(prompts, hits):
        by_cat[p.category].append(bool(h))
    scores = {c: float(np.mean(by_cat[c])) for c in CATEGORIES if by_cat[c]}
    scores["overall"] = float(np.mean(list(scores.values()))) if scores else float("nan")
    return scores


def paired_difference(prompts: Sequence[T2IPrompt], a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Overall score of ``a`` minus that of ``b``, judged on the same images, with its paired standard error.

    Two methods run on the same prompts and seeds can share much of their noise (an easy prompt is
    easy for both); the per-image difference leaves that out. Where the two end on different images
    (two searches often do) the paired se is about the two unpaired ones combined.
    Overall is the mean over categories, so its variance is the sum of the per-category ones / C².
    Also counts the discordant images (only ``a`` right, only ``b`` right): McNemar's view.
    """
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(f"paired_difference needs one verdict per prompt: {len(prompts)}, {len(a)}, {len(b)}")
    by_cat: dict[str, list[float]] = defaultdict(list)
    for p, x, y in zip(prompts, a, b):
        by_cat[p.category].append(float(x) - float(y))
    cats = [c for c in CATEGORIES if by_cat[c]]
    variance = sum(np.var(by_cat[c], ddof=1) / len(by_cat[c]) if len(by_cat[c]) > 1 else 0.0 for c in cats)
    return {"difference": float(np.mean([np.mean(by_cat[c]) for c in cats])),
            "se": float(np.sqrt(variance)) / len(cats),
            "only_a": int(sum(bool(x) and not y for x, y in zip(a, b))),
            "only_b": int(sum(bool(y) and not x for x, y in zip(a, b)))}


@torch.no_grad()
def oracle_scores(
    pipe: Callable[..., Any],
    *,
    num_inference_steps: int = 4,
    per_category: int = 8,
    seeds: Sequence[int] = (0, 1),
    guidance_scale: float = 1.0,
    batch_size: int = 32,
) -> dict[str, float]:
    """Generate every prompt of the set once per seed and score it with the oracle."""
    prompts = [p for p in eval_prompts(per_category) for _ in seeds]
    seed_list = [s for _ in eval_prompts(per_category) for s in seeds]
    hits: list[bool] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        generators = [torch.Generator().manual_seed(s) for s in seed_list[i : i + batch_size]]
        out = pipe([p.text for p in chunk], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=generators, output_type="np")
        hits += [score_image(p, img) for p, img in zip(chunk, to_uint8(out.images))]
    return summarise(prompts, hits)
