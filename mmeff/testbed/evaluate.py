"""``mmeff eval``: run a question suite through a wrapped VLM and score it.

Batched, deterministic given a seed, and data-parallel under ``accelerate launch``: each
process answers its shard of the questions and the main process gathers and scores them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from tqdm import tqdm

from ..bench.report import markdown_table, print_table, write_json
from ..pipeline import MMPipeline
from .metrics import accuracy, chair, false_yes_rates, yes_no_metrics
from .questions import POPE_SPLITS, SUITES, Question, build_suite
from .render import render
from .world import absent_partners

DEFAULT_SCENES = {"pope": 50, "attributes": 60, "counting": 60, "spatial": 60, "caption": 60}


def answer_questions(pipe: MMPipeline, questions: list[Question], batch_size: int, max_new_tokens: int,
                     progress: bool = True, *, prompt_template: str = "{question}",
                     generate_kwargs: dict[str, Any] | None = None) -> tuple[list[str], dict[str, float]]:
    """Answers in question order, plus totals from ``last_stats`` (time, tokens, image tokens kept).

    ``prompt_template`` rewrites each question (controls such as a "prefer yes" phrasing);
    ``generate_kwargs`` go to ``pipe.generate`` (e.g. ``do_sample=True``).
    """
    answers: list[str] = []
    totals: dict[str, float] = defaultdict(float)
    batches = range(0, len(questions), batch_size)
    for start in tqdm(batches, desc="eval", unit="batch", disable=not progress):
        batch = questions[start : start + batch_size]
        images = [render(q.scene) for q in batch]
        prompts = [prompt_template.format(question=q.text) for q in batch]
        options = {"do_sample": False, **(generate_kwargs or {})}  # greedy unless asked: evals must repeat
        answers += pipe.generate(images, prompts, max_new_tokens=max_new_tokens, **options)
        stats = pipe.last_stats
        totals["wall_time_s"] += stats["wall_time_s"]
        totals["generated_tokens"] += stats["new_tokens"] * len(batch)
        totals["batches"] += 1
        for value in stats.values():  # the first token-reduction plugin's view covers them all
            if isinstance(value, dict) and "mean_image_tokens" in value:
                totals["mean_image_tokens_sum"] += value["mean_image_tokens"]
                totals["final_image_tokens_sum"] += value["final_image_tokens"]
                totals["image_tokens_before_sum"] += sum(value["image_tokens_before"]) / len(
                    value["image_tokens_before"])
                break
    return answers, dict(totals)


def score(suite: str, questions: list[Question], answers: list[str]) -> dict[str, Any]:
    if suite == "pope":
        out = {}
        for split in POPE_SPLITS:
            idx = [i for i, q in enumerate(questions) if q.split == split]
            preds, truth = [answers[i] for i in idx], [questions[i].answer for i in idx]
            partner = [questions[i].target in absent_partners(questions[i].scene) for i in idx]
            out[split] = yes_no_metrics(preds, truth) | false_yes_rates(preds, truth, partner)
        return out
    if suite == "caption":
        return {"caption": chair(answers, [q.scene for q in questions])}
    return {suite: {"accuracy": accuracy(answers, [q.answer for q in questions]), "n": len(questions)}}


def run_eval(
    pipe: MMPipeline,
    suite: str,
    out_dir: Path | None = None,
    *,
    n_scenes: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    max_new_tokens: int | None = None,
    prompt_template: str = "{question}",
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {SUITES}")
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only machines shard with gloo
    questions = build_suite(suite, n_scenes or DEFAULT_SCENES[suite], seed=seed)
    max_new_tokens = max_new_tokens or (24 if suite == "caption" else 2)
    with state.split_between_processes(list(enumerate(questions))) as shard:
        shard_questions = [q for _, q in shard]
        shard_answers, totals = answer_questions(pipe, shard_questions, batch_size, max_new_tokens,
                                                 progress=progress and state.is_main_process,
                                                 prompt_template=prompt_template, generate_kwargs=generate_kwargs)
        local = [(i, a) for (i, _), a in zip(shard, shard_answers)]
    gathered = _gather(state, local)
    all_totals = _gather(state, [totals])
    if not state.is_main_process:
        return {}
    answers = [a for _, a in sorted(gathered)]
    result = summarize(pipe, suite, questions, answers, all_totals, seed, state.num_processes)
    if out_dir is not None:
        write_report(Path(out_dir), result)
    return result


def _gather(state: PartialState, items: list) -> list:
    if state.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def summarize(pipe, suite, questions, answers, totals_list, seed, processes) -> dict[str, Any]:
    totals: dict[str, float] = defaultdict(float)
    for t in totals_list:
        for k, v in t.items():
            totals[k] += v
    efficiency = {
        "wall_time_s": totals["wall_time_s"],
        "tokens_per_s": totals["generated_tokens"] / totals["wall_time_s"] if totals["wall_time_s"] else 0.0,
    }
    if totals.get("mean_image_tokens_sum"):
        efficiency["mean_image_tokens"] = totals["mean_image_tokens_sum"] / totals["batches"]
        efficiency["final_image_tokens"] = totals["final_image_tokens_sum"] / totals["batches"]
        efficiency["image_tokens_before"] = totals["image_tokens_before_sum"] / totals["batches"]
    return {
        "suite": suite,
        "seed": seed,
        "processes": processes,
        "model": type(pipe.model).__name__,
        "plugins": {name: p.config.to_dict() for name, p in pipe.plugins.items()},
        "metrics": score(suite, questions, answers),
        "efficiency": efficiency,
        "examples": [{"question": q.text, "answer": q.answer, "prediction": a}
                     for q, a in list(zip(questions, answers))[:20]],
    }


def write_report(out_dir: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"eval_{result['suite']}.json", result)
    metric_names = sorted({k for m in result["metrics"].values() for k in m if k != "n"})
    rows = [[split, *[m.get(k, "") for k in metric_names], m.get("n", "")] for split, m in result["metrics"].items()]
    headers = ["split", *metric_names, "n"]
    print_table(f"mmeff eval {result['suite']}", headers, rows)
    plugins = ", ".join(f"{n} {o}" for n, o in result["plugins"].items()) or "none"
    md = [f"# Eval: {result['suite']}", "", f"Model {result['model']}; plugins: {plugins}; seed {result['seed']}.", "",
          markdown_table(headers, rows), "", "Efficiency: " + ", ".join(
              f"{k} {v:.3f}" for k, v in result["efficiency"].items()), "", f"![metrics](eval_{result['suite']}.png)"]
    (out_dir / f"eval_{result['suite']}.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, (split, m) in enumerate(result["metrics"].items()):
        values = [m.get(k) or 0 for k in metric_names]
        ax.bar([j + i * 0.8 / len(result["metrics"]) for j in range(len(metric_names))], values,
               0.8 / len(result["metrics"]), label=split)
    ax.set_xticks(range(len(metric_names)), metric_names, rotation=15)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"eval_{result['suite']}.png", dpi=110)
    plt.close(fig)
