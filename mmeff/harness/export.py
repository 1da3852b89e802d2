"""``mmeff testbed export-lmms-eval``: the shapes suites as an lmms-eval task folder, offline.

For each suite it writes the held-out questions ``mmeff eval`` asks (same scenes, seed and order)
as a local Hugging Face dataset with the rendered images, a task YAML that loads it from disk,
and a ``utils.py`` that re-exports :mod:`mmeff.harness.shapes_tasks`. Point lmms-eval at the
folder with ``--include_path``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from ..testbed.evaluate import DEFAULT_SCENES
from ..testbed.questions import POPE_SPLITS, SUITES, build_suite
from ..testbed.render import render
from .shapes_tasks import CAPTION_METRICS, POPE_METRICS

MAX_NEW_TOKENS = {"caption": 24}  # else 2, as mmeff eval answers


def task_name(suite: str) -> str:
    return f"shapes_{suite}"


def export_tasks(out_dir: Path, suites: tuple[str, ...] = SUITES, n_scenes: int | None = None, seed: int = 0
                 ) -> list[Path]:
    """Write ``out_dir/<task>.yaml``, ``out_dir/utils.py`` and ``out_dir/data/<task>/``; return the YAML paths."""
    import datasets

    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suite(s) {sorted(unknown)}; choose from {SUITES}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "utils.py").write_text(
        '"""Written by `mmeff testbed export-lmms-eval`: the task functions live in mmeff."""\n\n'
        "from mmeff.harness.shapes_tasks import *  # noqa: F401,F403\n")
    written = []
    for suite in suites:
        questions = build_suite(suite, n_scenes or DEFAULT_SCENES[suite], seed=seed)
        rows = {"question_id": [], "question": [], "answer": [], "split": [], "scene": [], "image": []}
        for i, q in enumerate(tqdm(questions, desc=f"export {task_name(suite)}")):
            rows["question_id"].append(i)
            rows["question"].append(q.text)
            rows["answer"].append(q.answer)
            rows["split"].append(q.split)
            rows["scene"].append(json.dumps(asdict(q.scene)))
            rows["image"].append(render(q.scene))
        features = datasets.Features({
            "question_id": datasets.Value("int64"), "question": datasets.Value("string"),
            "answer": datasets.Value("string"), "split": datasets.Value("string"),
            "scene": datasets.Value("string"), "image": datasets.Image()})
        data_dir = out_dir / "data" / task_name(suite)
        datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(data_dir))
        path = out_dir / f"{task_name(suite)}.yaml"
        path.write_text(task_yaml(suite, data_dir, n_questions=len(questions), seed=seed))
        written.append(path)
    return written


def task_yaml(suite: str, data_dir: Path, n_questions: int, seed: int) -> str:
    if suite == "pope":
        process = "pope_process_results"
        metrics = [(f"pope_{s}_{m}", f"!function utils.pope_{s}_{m}", True) for s in POPE_SPLITS for m in POPE_METRICS]
    elif suite == "caption":
        process = "caption_process_results"
        metrics = [(m, f"!function utils.caption_{m}", m == "recall") for m in CAPTION_METRICS]
    else:
        process = "answer_process_results"
        metrics = [("accuracy", "!function utils.answer_accuracy", True)]
    lines = [
        f"# Written by `mmeff testbed export-lmms-eval`: {n_questions} questions of `mmeff eval --suite {suite}`"
        f" (seed {seed}).",
        f"task: {task_name(suite)}",
        f"dataset_path: {data_dir}",
        "dataset_kwargs:",
        "  load_from_disk: true",
        "test_split: test",
        "output_type: generate_until",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: answer",
        "generation_kwargs:",
        f"  max_new_tokens: {MAX_NEW_TOKENS.get(suite, 2)}",
        "  temperature: 0",
        "  do_sample: false",
        "  until: []",
        f"process_results: !function utils.{process}",
        "metric_list:",
    ]
    for name, aggregation, higher in metrics:
        lines += [f"  - metric: {name}", f"    aggregation: {aggregation}",
                  f"    higher_is_better: {str(higher).lower()}"]
    lines += ["metadata:", "  version: 1.0"]
    return "\n".join(lines) + "\n"
