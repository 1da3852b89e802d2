"""``mmeff bench halluc``: every contrastive method and the honest controls on the shapes testbed.

Quality: POPE random / popular / adversarial (accuracy, precision, recall, F1, yes-ratio)
and caption CHAIR, on the same questions for every row; sampled rows over several seeds
(mean and spread). Controls, after the "mirage of performance gains" critique: greedy,
plain sampling, the plausibility mask alone (alpha 0) under sampling, a "prefer yes"
prompt (a confirmation tag "..., right?"), and plain greedy with a constant bias on the
"yes" logit (a pure yes-ratio shift, both ways).

Speed: decode time per token of each method's loop against a single-branch run of the
same loop on the same batch, timed in the same process (medians), so the ratio isolates
what the negative branch costs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from ..contrastive.decode import Branch, ContrastiveDecoder
from ..pipeline import MMPipeline
from ..testbed.evaluate import run_eval
from ..testbed.questions import POPE_SPLITS, build_suite
from ..testbed.render import render

PREFER_YES = "{question} , right?"  # a confirmation tag that invites "yes", used as a plain prompt
SHAPES_DESCRIBE = "describe the image."
# ICD's released instruction is mostly <unk> to the shapes tokenizer; this one uses its words and,
# like the original, primes the model to report objects loosely
SHAPES_DISTURBANCE = "there are many objects in the image ."


@dataclass(frozen=True)
class HallucMethod:
    label: str
    plugin: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sample: bool = False
    prompt: str = "{question}"
    kind: str = "method"  # "control" or "method"
    yes_bias: float | None = None  # added to the "yes" token's logit (a pure yes-ratio shift)


def default_methods() -> list[HallucMethod]:
    return [
        HallucMethod("greedy", kind="control"),
        HallucMethod("sampling", sample=True, kind="control"),
        HallucMethod("mask only (sampling)", "vcd", {"alpha": 0.0, "beta": 0.1}, sample=True, kind="control"),
        HallucMethod("prefer-yes prompt", prompt=PREFER_YES, kind="control"),
        HallucMethod("yes-bias +0.25", yes_bias=0.25, kind="control"),
        HallucMethod("yes-bias -0.1", yes_bias=-0.1, kind="control"),
        HallucMethod("vcd", "vcd", {"alpha": 1.0, "beta": 0.1}),
        HallucMethod("vcd (sampling)", "vcd", {"alpha": 1.0, "beta": 0.1}, sample=True),
        HallucMethod("damro", "damro", {"alpha": 2.0, "k": 10, "beta": 0.1}),
        HallucMethod("icd", "icd", {"alpha": 1.0, "beta": 0.1, "instruction": SHAPES_DISTURBANCE}),
        HallucMethod("lqcd", "lqcd", {"alpha": 1.0, "beta": 0.1}),
        HallucMethod("m3id", "m3id", {"alpha": 1.0, "beta": 0.1}),
        # the testbed's vocabulary has no words for the release's long prompts; deterministic for POPE
        HallucMethod("vdgd", "vdgd", {"describe_prompt": SHAPES_DESCRIBE, "description_tokens": 24, "prefix": "turn",
                                      "choice": "greedy"}),
    ]


def _mean_spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def _quality_once(pipe: MMPipeline, method: HallucMethod, n_pope: int, n_caption: int, seed: int,
                  batch_size: int) -> dict[str, float]:
    gen = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0} if method.sample else {"do_sample": False}
    if method.sample:
        torch.manual_seed(seed)
    if method.yes_bias is not None:
        yes = pipe.processor.tokenizer.convert_tokens_to_ids("yes")
        gen["sequence_bias"] = {(yes,): method.yes_bias}
    out: dict[str, float] = {}
    pope = run_eval(pipe, "pope", None, n_scenes=n_pope, batch_size=batch_size, seed=0,
                    prompt_template=method.prompt, generate_kwargs=gen, progress=False)
    for split in POPE_SPLITS:
        m = pope["metrics"][split]
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio", "false_yes_partner", "false_yes_other"):
            out[f"{split}_{key}"] = m.get(key)
    caption = run_eval(pipe, "caption", None, n_scenes=n_caption, batch_size=batch_size, seed=0,
                       generate_kwargs=gen, progress=False)["metrics"]["caption"]
    out.update(chair_s=caption["chair_s"], chair_i=caption["chair_i"], caption_recall=caption["recall"])
    return out


def run_quality(pipe: MMPipeline, methods: list[HallucMethod], *, n_pope: int, n_caption: int, seeds: int,
                batch_size: int = 32) -> list[dict[str, Any]]:
    rows = []
    for method in tqdm(methods, desc="bench halluc: quality", unit="method"):
        start = time.perf_counter()
        runs = []
        for seed in range(seeds) if method.sample else [0]:
            if method.plugin:  # VCD's noise is part of what a seed varies
                options = {**method.options, "noise_seed": seed} if method.plugin == "vcd" else method.options
                pipe.add_plugin(method.plugin, **options)
            try:
                runs.append(_quality_once(pipe, method, n_pope, n_caption, seed, batch_size))
            finally:
                if method.plugin:
                    pipe.remove_plugin(method.plugin)
        keys = runs[0].keys()
        rows.append({
            "method": method.label, "kind": method.kind, "plugin": method.plugin, "options": method.options,
            "sampled": method.sample, "seeds": len(runs), "prompt": method.prompt,
            "metrics": {k: _mean_spread([r[k] for r in runs if r[k] is not None]) if runs[0][k] is not None
                        else None for k in keys},
            "wall_time_s": time.perf_counter() - start,
        })
    return rows


def _branches(pipe: MMPipeline, method: HallucMethod, images: list, prompts: list[str]
              ) -> tuple[Any, Branch, Branch | None, float]:
    """The method's combine rule and branches for one batch, and what building them cost
    (VCD's noise, DAMRO's vision pass, VDGD's description)."""
    inputs = pipe.to_model(pipe.adapter.build_inputs(images, prompts))
    if not method.plugin:
        return (lambda lp, ln, step: lp), Branch.from_inputs(inputs), None, 0.0
    plugin = pipe.add_plugin(method.plugin, **method.options)
    try:
        pipe.reset_state()
        start = time.perf_counter()
        inputs = plugin.positive(pipe, inputs, images, prompts)
        neg = plugin.negative(pipe, inputs, images, prompts)
        setup_s = time.perf_counter() - start
        return plugin.combine, Branch.from_inputs(inputs), neg, setup_s
    finally:
        pipe.remove_plugin(method.plugin)


@torch.no_grad()
def run_speed(pipe: MMPipeline, methods: list[HallucMethod], *, batch: int = 8, tokens: int = 24, runs: int = 5
              ) -> list[dict[str, Any]]:
    """Per-token decode and prefill time of each method's loop, as ratios to the single-branch loop."""
    questions = build_suite("pope", max(1, batch // 6 + 1), seed=0)[:batch]
    images = [render(q.scene) for q in questions]
    prompts = [q.text for q in questions]
    pad = pipe.processor.tokenizer.pad_token_id
    timed = [m for m in methods if not m.sample and m.prompt == "{question}" and m.yes_bias is None]
    prepared = {m.label: _branches(pipe, m, images, prompts) for m in timed}
    samples: dict[str, dict[str, list[float]]] = {m.label: {"decode": [], "prefill": []} for m in timed}
    for _ in tqdm(range(runs + 1), desc="bench halluc: speed", unit="round"):
        for m in timed:  # interleaved, so drift in machine load hits every method alike
            combine, pos, neg, _ = prepared[m.label]
            decoder = ContrastiveDecoder(pipe.model, combine, beta=m.options.get("beta", 0.1))
            result = decoder.run(pos, neg, max_new_tokens=tokens, eos_token_id=None, pad_token_id=pad)
            samples[m.label]["decode"].append(result.per_token_s)
            samples[m.label]["prefill"].append(result.prefill_s)
    base = {k: statistics.median(v[1:]) for k, v in samples["greedy"].items()}  # first round warms up
    rows = []
    for m in timed:
        med = {k: statistics.median(v[1:]) for k, v in samples[m.label].items()}
        rows.append({"method": m.label, "per_token_ms": med["decode"] * 1e3, "prefill_ms": med["prefill"] * 1e3,
                     "per_token_ratio": med["decode"] / base["decode"],
                     "prefill_ratio": med["prefill"] / base["prefill"],
                     "branch_setup_ms": prepared[m.label][3] * 1e3, "batch": batch, "tokens": tokens})
    return rows
