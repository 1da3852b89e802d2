"""The shapes testbed's suites as lmms-eval task functions: same questions, prompts and scoring as ``mmeff eval``.

An exported task folder's ``utils.py`` re-exports this module, so the YAML's ``!function utils.X``
lands here. Every POPE question returns every split's items (each tagged with its split) and the
aggregations filter: lmms-eval gathers metrics by key across processes, so every rank must
produce the same keys whatever questions it drew.
"""

from __future__ import annotations

import json
from typing import Any

from ..testbed.metrics import accuracy, chair, yes_no_metrics
from ..testbed.questions import POPE_SPLITS
from ..testbed.world import ObjectSpec, SceneSpec

POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
CAPTION_METRICS = ("chair_s", "chair_i", "recall")


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """The question as ``mmeff eval`` asks it: no pre- or post-prompt unless a task config adds one."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def scene_from_json(text: str) -> SceneSpec:
    data = json.loads(text)
    return SceneSpec(objects=tuple(ObjectSpec(**o) for o in data["objects"]), background=data["background"],
                     seed=data["seed"], image_size=data["image_size"],
                     background_color=tuple(data["background_color"]), extras=data.get("extras", {}))


# -- POPE ------------------------------------------------------------------------------------
def pope_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    item = {"split": doc["split"], "prediction": results[0], "answer": doc["answer"], "question_id": doc["question_id"]}
    return {f"pope_{split}_{metric}": item for split in POPE_SPLITS for metric in POPE_METRICS}


def _pope_aggregation(split: str, metric: str):
    def aggregate(items: list[dict[str, Any]]) -> float:
        mine = [i for i in items if i["split"] == split]
        return yes_no_metrics([i["prediction"] for i in mine], [i["answer"] for i in mine])[metric]

    aggregate.__name__ = f"pope_{split}_{metric}"
    aggregate.__doc__ = f"POPE {metric} on the {split} split (as ``mmeff eval --suite pope`` scores it)."
    return aggregate


POPE_AGGREGATIONS = {f"pope_{s}_{m}": _pope_aggregation(s, m) for s in POPE_SPLITS for m in POPE_METRICS}
globals().update(POPE_AGGREGATIONS)  # module attributes, so the YAML can name them: !function utils.pope_random_f1


# -- one-word answers (attributes, counting, spatial) ------------------------------------------
def answer_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    return {"accuracy": {"prediction": results[0], "answer": doc["answer"]}}


def answer_accuracy(items: list[dict[str, Any]]) -> float:
    return accuracy([i["prediction"] for i in items], [i["answer"] for i in items])


# -- captions (CHAIR) --------------------------------------------------------------------------
def caption_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    item = {"caption": results[0], "scene": doc["scene"]}
    return {metric: item for metric in CAPTION_METRICS}


def _chair(metric: str):
    def aggregate(items: list[dict[str, Any]]) -> float:
        return chair([i["caption"] for i in items], [scene_from_json(i["scene"]) for i in items])[metric]

    aggregate.__name__ = f"caption_{metric}"
    aggregate.__doc__ = f"CHAIR's {metric} (as ``mmeff eval --suite caption`` scores it)."
    return aggregate


CAPTION_AGGREGATIONS = {f"caption_{m}": _chair(m) for m in CAPTION_METRICS}
globals().update(CAPTION_AGGREGATIONS)

__all__ = ["doc_to_visual", "doc_to_text", "pope_process_results", "answer_process_results", "answer_accuracy",
           "caption_process_results", *POPE_AGGREGATIONS, *CAPTION_AGGREGATIONS]
