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
from fnmatch import fnmatch
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..testbed.ar_eval import generate_set
from ..testbed.oracle import detect
from ..testbed.t2i_eval import summarise
from ..testbed.t2i_prompts import T2IPrompt, satisfied
from ..testbed.world import COLORS, SHAPES

#: discrete tokens (shapes-ar): windows sized for the testbed's 8 x 8 grid
METHODS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("plain", None, {}),
    ("sjd w16", "sjd", {"window": 16}),
    ("sjd w16 repeat_above", "sjd", {"window": 16, "init": "repeat_above"}),
    ("lantern k8 δ0.1", "lantern", {"window": 16, "k": 8, "delta": 0.1}),
    ("lantern k8 δ0.25", "lantern", {"window": 16, "k": 8, "delta": 0.25}),
    ("zipar w4", "zipar", {"window": 4}),
    ("zipar w2", "zipar", {"window": 2}),
]


#: MAR's sampling default (``--num_sampling_steps 100``): the baseline the DiSA paper's speed-ups are against
MAR_HEAD_STEPS = 100
PLAIN_MAR_STEPS = f"plain, {MAR_HEAD_STEPS} head steps"


#: looser acceptance than the released inner temperature (42): the last-step densities' std is inflated
#: more, so more drafts pass; the oracle and the distribution check say what that costs. At the second
#: value nearly every draft passes: the row shows the draft's own samples, the far end of the trade.
RELAXED_TAUS = (200, 1000)


def continuous_methods(draft: str) -> list[tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]]:
    """Continuous tokens (shapes-mar): ``(label, plugins, sampling overrides)``. DiSA as in the paper
    (50 -> 5, linear) next to plain decoding at the testbed's 50 head steps and at MAR's 100 (the
    paper's baseline), speculative decoding with the bundled draft, and both together."""
    disa = ("disa", {"upper": 50, "lower": 5, "schedule": "linear"})
    spec = ("continuous_spec", {"draft": draft, "draft_len": 8})
    cosine = ("disa", {**disa[1], "schedule": "cosine"})
    loose = [("continuous_spec", {**spec[1], "inner_temperature": tau}) for tau in RELAXED_TAUS]
    return [("plain", [], {}), (PLAIN_MAR_STEPS, [], {"diffusion_steps": MAR_HEAD_STEPS}),
            ("disa 50→5 linear", [disa], {}), ("disa 50→5 cosine", [cosine], {}),
            ("disa 25→5 linear", [("disa", {"upper": 25, "lower": 5, "schedule": "linear"})], {}),
            ("continuous_spec k8", [spec], {}), ("continuous_spec k8 + disa", [spec, disa], {}),
            (f"continuous_spec k8 τ{RELAXED_TAUS[0]}", [loose[0]], {}),
            (f"continuous_spec k8 τ{RELAXED_TAUS[0]} + disa", [loose[0], disa], {}),
            (f"continuous_spec k8 τ{RELAXED_TAUS[1]}", [loose[1]], {})]


def select_methods(methods: list, patterns: Sequence[str]) -> list:
    """The methods whose label matches one of the fnmatch ``patterns`` (all when none), the plain baselines
    always first: every ratio is against plain decoding measured in the same run."""
    if not patterns:
        return methods
    baselines = [m for m in methods if m[0].startswith("plain")]
    chosen = baselines + [m for m in methods if m not in baselines
                          and any(fnmatch(m[0].lower(), p.lower()) for p in patterns)]  # 'SJD*' finds 'sjd w16'
    if len(chosen) == len(baselines):
        raise ValueError(f"no method matches {list(patterns)}; the methods are {[m[0] for m in methods]}")
    return chosen


def _as_plugins(plugin: str | None | list, options: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(plugin, list):
        return plugin
    return [] if plugin is None else [(plugin, options or {})]


def _unpack(method: tuple) -> tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """``(label, plugins, sampling overrides)`` from either method layout: discrete ``(label, plugin,
    options)`` or continuous ``(label, [(plugin, options), ...], overrides)`` (overrides optional)."""
    label, first, *rest = method
    if isinstance(first, list):
        return label, first, rest[0] if rest else {}
    return label, _as_plugins(first, rest[0] if rest else None), {}


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


def run_method(pipe: Any, plugin: str | None | list, options: dict[str, Any] | None, prompts: list[T2IPrompt],
               seeds: Sequence[int], batch_size: int, sampling: dict[str, Any], label: str | None = None
               ) -> dict[str, Any]:
    plugins = _as_plugins(plugin, options)
    for name, opts in plugins:
        pipe.add_plugin(name, **opts)
    try:
        pipe.generate_images([prompts[0].text], seed=0, **sampling)  # warm-up
        start = time.perf_counter()
        images, stats, codes = generate_set(pipe, prompts, seeds, batch_size=batch_size, progress=label,
                                            **sampling)
        seconds = time.perf_counter() - start
    finally:
        for name, _ in plugins:
            pipe.remove_plugin(name)
    ordered = [p for _ in seeds for p in prompts]
    features = oracle_features(images)
    hits = [satisfied(p, d) for p, d in zip(ordered, features.pop("detections"))]
    forwards = [s["sequential_forwards"] for s in stats for _ in range(s["images"])]
    out = {"oracle": summarise(ordered, hits), "hits": hits, "n": len(ordered),
           "seconds_per_image": seconds / len(ordered),
           "forwards_per_image": float(np.mean(forwards)), "codes": codes, "features": features,
           "tokens_per_forward": float(np.mean([s["image_tokens"] / s["sequential_forwards"] for s in stats]))}
    if "head_steps" in stats[0]:  # continuous tokens: the diffusion head's work and the draft's
        out["head_steps_per_image"] = float(np.mean([s["head_steps"] for s in stats]))
        out["draft_forwards_per_image"] = float(np.mean([s.get("draft_forwards", 0) for s in stats]))
    accept = [s.get("acceptance_rate", s.get(plugins[0][0], {}).get("acceptance_rate") if plugins else None)
              for s in stats]
    out["acceptance_rate"] = float(np.mean(accept)) if accept and accept[0] is not None else None
    if plugins and isinstance(stats[0].get(plugins[0][0]), dict):
        out["plugin_stats"] = _mean_stats([s[plugins[0][0]] for s in stats])
    return out


def _mean_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def run_bench(pipe: Any, prompts: list[T2IPrompt], seeds: Sequence[int], *, batch_size: int = 1,
              sampling: dict[str, Any], methods: list | None = None) -> dict[str, Any]:
    """Every method (``(label, plugin, options)``, or ``(label, [(plugin, options), ...], sampling overrides)``
    with the overrides optional) on the same seeds."""
    methods = methods if methods is not None else METHODS
    results: dict[str, Any] = {"methods": {}}
    for method in tqdm(methods, desc="bench ar"):
        label, plugins, overrides = _unpack(method)
        results["methods"][label] = run_method(pipe, plugins, None, prompts, seeds, batch_size,
                                               {**sampling, **overrides}, label)
    other_seeds = [s + 1000 for s in seeds]  # the noise floor of the distribution check
    floor = run_method(pipe, None, {}, prompts, other_seeds, batch_size, sampling, "noise floor")
    plain = results["methods"]["plain"]
    discrete = not plain["codes"].is_floating_point()
    if discrete:
        k = pipe.adapter.codebook_size
        reference = torch.bincount(plain["codes"].flatten(), minlength=k).numpy()
    for data in [*results["methods"].values(), floor]:
        codes = data.pop("codes")
        data["token_js_bits"] = js_divergence(reference, torch.bincount(codes.flatten(), minlength=k).numpy()) \
            if discrete else None
        if "head_steps_per_image" in data:
            data["head_step_reduction"] = plain["head_steps_per_image"] / data["head_steps_per_image"]
        data["kind_js_bits"] = js_divergence(plain["features"]["kind_histogram"], data["features"]["kind_histogram"])
        data["wall_time_ratio"] = plain["seconds_per_image"] / data["seconds_per_image"]
        data["forward_reduction"] = plain["forwards_per_image"] / data["forwards_per_image"]
    results["noise_floor"] = floor
    for data in [*results["methods"].values(), floor]:
        data["features"]["kind_histogram"] = data["features"]["kind_histogram"].tolist()
    return results
