"""``mmeff bench ar``: sequential forwards, wall time, prompt-following and sample distribution per decode loop.

Every method generates the same prompts at the same seeds on the same warm model, in one run,
so wall-time ratios compare like with like. Batch size 1 by default: SJD and ZipAR are
per-sequence accelerations (and batched SJD commits the batch's minimum per forward).
The distribution check compares each method's samples with plain sampling at the same
seeds, next to the noise floor: plain sampling at *other* seeds against the same plain run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..testbed.ar_eval import generate_set
from ..testbed.oracle import detect
from ..testbed.t2i_eval import summarise
from ..testbed.t2i_prompts import T2IPrompt, satisfied
from ..testbed.world import COLORS, SHAPES

#: (label, plugin name or None, options); windows sized for the testbed's 8 x 8 grid
METHODS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("plain", None, {}),
    ("sjd w16", "sjd", {"window": 16}),
    ("sjd w16 repeat_above", "sjd", {"window": 16, "init": "repeat_above"}),
    ("lantern k8 δ0.1", "lantern", {"window": 16, "k": 8, "delta": 0.1}),
    ("lantern k8 δ0.25", "lantern", {"window": 16, "k": 8, "delta": 0.25}),
    ("zipar w4", "zipar", {"window": 4}),
    ("zipar w2", "zipar", {"window": 2}),
]


def js_divergence(a: np.ndarray, b: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits) between two histograms."""
    p, q = a / max(a.sum(), 1), b / max(b.sum(), 1)
    m = (p + q) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        keep = x > 0
        return float((x[keep] * np.log2(x[keep] / y[keep])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def oracle_features(images: Sequence[np.ndarray]) -> dict[str, Any]:
    """What the oracle sees: objects per image, their mean area, and the histogram of (colour, shape) kinds."""
    detections = [detect(img) for img in images]
    kinds = Counter(d.kind for dets in detections for d in dets)
    hist = np.array([kinds.get((c, s), 0) for c in COLORS for s in SHAPES], dtype=float)
    counts = np.array([len(d) for d in detections], dtype=float)
    areas = [np.mean([d.area for d in dets]) for dets in detections if dets]
    return {"detections": detections, "objects_mean": float(counts.mean()), "objects_std": float(counts.std()),
            "area_mean": float(np.mean(areas)) if areas else 0.0, "kind_histogram": hist}


def run_method(pipe: Any, plugin: str | None, options: dict[str, Any], prompts: list[T2IPrompt],
               seeds: Sequence[int], batch_size: int, sampling: dict[str, Any]) -> dict[str, Any]:
    if plugin is not None:
        pipe.add_plugin(plugin, **options)
    try:
        pipe.generate_images([prompts[0].text], seed=0, **sampling)  # warm-up
        start = time.perf_counter()
        images, stats, codes = generate_set(pipe, prompts, seeds, batch_size=batch_size, **sampling)
        seconds = time.perf_counter() - start
    finally:
        if plugin is not None:
            pipe.remove_plugin(plugin)
    ordered = [p for _ in seeds for p in prompts]
    features = oracle_features(images)
    hits = [satisfied(p, d) for p, d in zip(ordered, features.pop("detections"))]
    forwards = [s["sequential_forwards"] for s in stats for _ in range(s["images"])]
    out = {"oracle": summarise(ordered, hits), "n": len(ordered), "seconds_per_image": seconds / len(ordered),
           "forwards_per_image": float(np.mean(forwards)), "codes": codes, "features": features,
           "tokens_per_forward": float(np.mean([s["tokens_per_forward"] for s in stats]))}
    if plugin is not None:
        out["plugin_stats"] = _mean_stats([s[plugin] for s in stats])
    return out


def _mean_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def run_bench(pipe: Any, prompts: list[T2IPrompt], seeds: Sequence[int], *, batch_size: int = 1,
              sampling: dict[str, Any], methods: list[tuple[str, str | None, dict[str, Any]]] = METHODS
              ) -> dict[str, Any]:
    k = pipe.adapter.codebook_size
    results: dict[str, Any] = {"methods": {}}
    for label, plugin, options in tqdm(methods, desc="bench ar"):
        results["methods"][label] = run_method(pipe, plugin, options, prompts, seeds, batch_size, sampling)
    other_seeds = [s + 1000 for s in seeds]  # the noise floor of the distribution check
    floor = run_method(pipe, None, {}, prompts, other_seeds, batch_size, sampling)
    plain = results["methods"]["plain"]
    reference = torch.bincount(plain["codes"].flatten(), minlength=k).numpy()
    for data in [*results["methods"].values(), floor]:
        hist = torch.bincount(data.pop("codes").flatten(), minlength=k).numpy()
        data["token_js_bits"] = js_divergence(reference, hist)
        data["kind_js_bits"] = js_divergence(plain["features"]["kind_histogram"], data["features"]["kind_histogram"])
        data["wall_time_ratio"] = plain["seconds_per_image"] / data["seconds_per_image"]
        data["forward_reduction"] = plain["forwards_per_image"] / data["forwards_per_image"]
    results["noise_floor"] = floor
    for data in [*results["methods"].values(), floor]:
        data["features"]["kind_histogram"] = data["features"]["kind_histogram"].tolist()
    return results
