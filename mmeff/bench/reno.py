"""``mmeff bench reno``: ReNO against the plain pipeline and best-of-N at equal compute,
on the shapes prompt set, scored by the OpenCV oracle (never by the reward being optimised).

One 50-iteration run per image gives ReNO at every smaller budget too: the trajectory of the
first k iterations does not depend on the total, and keep-best over them is exactly what a
k-iteration run returns. Best-of-N likewise keeps the best of its first k draws. Equal
compute means the same number of generator and reward evaluations (ReNO also pays a
backward pass per update; wall time is reported beside it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters.t2i_base import T2IAdapter
from ..memory import peak_memory
from ..testbed.reward_alignment import reward_alignment
from ..testbed.t2i_eval import paired_difference, summarise, to_uint8
from ..testbed.t2i_prompts import T2IPrompt, score_image

SEARCHES = {"reno": "gradient", "best_of_n": "random"}


@dataclass
class Trace:
    """Per image: the best-so-far reward and oracle verdict after every iteration."""

    best_reward: list[list[float]] = field(default_factory=list)  # [iteration][image]
    current_reward: list[list[float]] = field(default_factory=list)
    hit: list[list[bool]] = field(default_factory=list)
    seconds: float = 0.0


def run_search(adapter: T2IAdapter, rewards: Any, prompts: list[T2IPrompt], seeds: list[int], search: str,
               iterations: int, call: dict[str, Any], reno_options: dict[str, Any], batch_size: int) -> Trace:
    """Run one search over every (prompt, seed) pair; the oracle scores each new best image."""
    from mmeff.plugins.reno import RenoConfig, search_noise

    config = RenoConfig(rewards=dict(rewards.weights), iterations=iterations, search=search, **reno_options)
    trace = Trace()
    chunks = list(range(0, len(prompts), batch_size))
    for start in tqdm(chunks, desc=f"bench reno: {search}", leave=False):
        batch, batch_seeds = prompts[start : start + batch_size], seeds[start : start + batch_size]
        req = adapter.parse_call((), {**call, "prompt": [p.text for p in batch],
                                      "generator": [torch.Generator().manual_seed(s) for s in batch_seeds]})
        hits = np.zeros(len(batch), bool)
        best_reward = np.full(len(batch), -np.inf)
        started = time.perf_counter()
        captured: list[torch.Tensor] = []
        result = search_noise(adapter, req, rewards, config, on_iteration=_collector(captured))
        trace.seconds += time.perf_counter() - started
        if len(result.history) != iterations:
            raise RuntimeError(f"expected {iterations} iterations, the search ran {len(result.history)}")
        batch_best, batch_current, batch_hit = [], [], []
        for it, (images, record) in enumerate(zip(captured, result.history)):
            total = np.array(record["total"])
            new = np.array(record["best_iteration"]) == it  # the search's own keep-best decided this
            if new.any():
                for row, img in zip(np.flatnonzero(new), to_uint8(images[torch.from_numpy(new)])):
                    hits[row] = score_image(batch[row], img)
                best_reward[new] = total[new]
            batch_best.append(best_reward.tolist())
            batch_current.append(total.tolist())
            batch_hit.append(hits.tolist())
        _extend(trace, batch_best, batch_current, batch_hit, start == 0)
    return trace


def _collector(store: list[torch.Tensor]):
    def collect(it: int, noise: torch.Tensor, images: torch.Tensor) -> None:
        store.append(images.cpu())

    return collect


def _extend(trace: Trace, best: list, current: list, hit: list, first: bool) -> None:
    """Append one batch's columns to the per-iteration rows."""
    if first:
        trace.best_reward, trace.current_reward, trace.hit = best, current, hit
        return
    for rows, new in ((trace.best_reward, best), (trace.current_reward, current), (trace.hit, hit)):
        for r, n in zip(rows, new):
            r.extend(n)


def summarise_trace(trace: Trace, prompts: list[T2IPrompt], budgets: list[int]) -> list[dict[str, Any]]:
    """Oracle scores per category and the mean best reward at each iteration budget (each <= the run's length)."""
    out = []
    for k in budgets:
        out.append({"iterations": k, "oracle": summarise(prompts, trace.hit[k - 1]),
                    "reward": float(np.mean(trace.best_reward[k - 1])), "n": len(prompts)})
    return out


def run_bench(pipe: Any, rewards: Any, prompts: list[T2IPrompt], seeds: int, *, iterations: int = 50,
              budgets: tuple[int, ...] = (1, 10, 25, 50), num_inference_steps: int = 1, guidance_scale: float = 1.0,
              batch_size: int = 32, reno_options: dict[str, Any] | None = None,
              alignment_samples: int = 8) -> dict[str, Any]:
    """Plain pipeline (budget 1 = iteration 0), ReNO and best-of-N, on every prompt x seed.

    Also how well the reward ranks the pipeline's own samples (``alignment_samples`` seeds per
    prompt, seeds from 1000, away from the benchmark's): the reward can only buy what it sees.
    """
    if (reno_options or {}).get("reward_target") is not None:
        raise ValueError("bench reno compares fixed budgets; reward_target would stop batches early")
    adapter: T2IAdapter = pipe.adapter
    budgets = tuple(min(k, iterations) for k in budgets)  # run_search checks that every run has `iterations`
    pairs = [(p, s) for p in prompts for s in range(seeds)]
    all_prompts, all_seeds = [p for p, _ in pairs], [s for _, s in pairs]
    call = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    results: dict[str, Any] = {"methods": {}, "curves": {}, "peak_memory_mb": {}}
    plain_hits, plain_seconds = _plain(pipe, all_prompts, all_seeds, call, batch_size)
    results["plain"] = {"oracle": summarise(all_prompts, plain_hits), "seconds_per_image": plain_seconds,
                        "n": len(all_prompts)}
    traces: dict[str, Trace] = {}
    for method, search in SEARCHES.items():
        with peak_memory(adapter.device) as memory:
            trace = run_search(adapter, rewards, all_prompts, all_seeds, search, iterations, call,
                               reno_options or {}, batch_size)
        results["peak_memory_mb"][method] = memory.mb
        results.setdefault("peak_memory_added_mb", {})[method] = memory.added_mb
        results["peak_memory_kind"] = memory.kind
        # iteration 0 is the plain image; a mismatch would mean the differentiable path is off
        results.setdefault("iteration0_mismatches", {})[method] = sum(a != b for a, b in zip(trace.hit[0], plain_hits))
        traces[method] = trace
        rows = summarise_trace(trace, all_prompts, list(budgets))
        results["methods"][method] = {"budgets": rows, "seconds_per_image": trace.seconds / len(all_prompts)}
        results["curves"][method] = {
            "oracle": [summarise(all_prompts, h)["overall"] for h in trace.hit],
            "best_reward": [float(np.mean(r)) for r in trace.best_reward],
            "current_reward": [float(np.mean(r)) for r in trace.current_reward],
        }
    results["paired"] = _paired(all_prompts, plain_hits, traces, budgets)
    results["hits"] = {"plain": [int(h) for h in plain_hits],
                       **{m: {str(k): [int(h) for h in t.hit[k - 1]] for k in budgets}
                          for m, t in traces.items()}}
    if alignment_samples > 1:  # reward_alignment runs under no_grad itself
        results["reward_alignment"] = reward_alignment(
            pipe, lambda images, texts: rewards.total(rewards(images, texts)), prompts,
            samples=alignment_samples, call=call, batch_size=batch_size)
    results["images"] = len(all_prompts)
    return results


def _paired(prompts: list[T2IPrompt], plain_hits: list[bool], traces: dict[str, Trace],
            budgets: tuple[int, ...]) -> dict[str, list[dict[str, Any]]]:
    """ReNO against best-of-N and against the plain image, on the same images at every budget."""
    reno, bon = traces["reno"].hit, traces["best_of_n"].hit
    out: dict[str, list[dict[str, Any]]] = {"reno_vs_best_of_n": [], "reno_vs_plain": []}
    for k in budgets:
        if k <= 1:
            continue
        out["reno_vs_best_of_n"].append({"iterations": k, **paired_difference(prompts, reno[k - 1], bon[k - 1])})
        out["reno_vs_plain"].append({"iterations": k, **paired_difference(prompts, reno[k - 1], plain_hits)})
    return out


@torch.no_grad()
def _plain(pipe: Any, prompts: list[T2IPrompt], seeds: list[int], call: dict[str, Any],
           batch_size: int) -> tuple[list[bool], float]:
    """The unmodified pipeline's verdicts and seconds per image (after one warm-up batch)."""
    pipe([p.text for p in prompts[:batch_size]], output_type="np", **call)
    hits: list[bool] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch_size]]
        images = pipe([p.text for p in chunk], generator=gens, output_type="np", **call).images
        hits += [score_image(p, img) for p, img in zip(chunk, to_uint8(images))]
    return hits, (time.perf_counter() - start) / len(prompts)
