"""mmeff eval vs lmms-eval --model mmeff on the full shapes suites: answers per question, and the metrics.

Reads the lmms-eval runs that ``run.sh`` wrote under OUT_DIR and prints a markdown table.
"""

import json
import sys
from pathlib import Path

import mmeff
from mmeff.harness.plugin_stack import parse_plugin_stack
from mmeff.testbed.evaluate import DEFAULT_SCENES, answer_questions, score
from mmeff.testbed.questions import build_suite

SUITES = ("pope", "counting", "caption")


def lmms_answers(out: Path, suite: str, n: int) -> tuple[list[str], dict]:
    samples = next(out.rglob(f"*_samples_shapes_{suite}.jsonl"))
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"][f"shapes_{suite}"]
    by_doc = {}
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        resp = sample["filtered_resps"]
        by_doc[sample["doc_id"]] = resp if isinstance(resp, str) else resp[0]
    return [by_doc[i] for i in range(n)], results


def metric_pairs(suite: str, ours: dict, theirs: dict) -> list[tuple[str, float, float]]:
    if suite == "pope":
        return [(f"{s} {m}", ours[s][m], theirs[f"pope_{s}_{m},none"]) for m in ("accuracy", "f1") for s in ours]
    if suite == "caption":
        return [(k, ours["caption"][k], theirs[f"{k},none"]) for k in ("chair_s", "chair_i", "recall")]
    return [("accuracy", ours[suite]["accuracy"], theirs["accuracy,none"])]


def main(root: Path) -> None:
    print("| plugins | suite | lmms-eval processes | same answers | metric | mmeff eval | lmms-eval |")
    print("|---|---|---|---|---|---|---|")
    for label, plugins in (("baseline", ""), ("fastv", "fastv:budget=64")):
        pipe = mmeff.load("assets/models/shapes-llava")
        for name, options in parse_plugin_stack(plugins):
            pipe.add_plugin(name, **options)
        for suite in SUITES:
            questions = build_suite(suite, DEFAULT_SCENES[suite])
            answers, _ = answer_questions(pipe, questions, 16, 24 if suite == "caption" else 2, progress=False)
            ours = score(suite, questions, answers)
            for procs in (1, 2):
                got, theirs = lmms_answers(root / f"lmms_{label}_{procs}p", suite, len(questions))
                same = sum(a == b for a, b in zip(answers, got))
                for metric, a, b in metric_pairs(suite, ours, theirs):
                    print(f"| {plugins or 'none'} | {suite} | {procs} | {same}/{len(questions)} | {metric} "
                          f"| {a:.4f} | {b:.4f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
