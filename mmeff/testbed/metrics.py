"""Scoring answers against the testbed's exact ground truth."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .world import COLORS, SHAPES, SceneSpec, absent_partners

_MENTION = re.compile(rf"\b({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})s?\b")


def normalize_answer(text: str) -> str:
    """First word, lower case, without punctuation: single-word answers compare exactly."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    if not answers:
        return float("nan")
    return sum(normalize_answer(p) == a for p, a in zip(predictions, answers)) / len(answers)


def yes_no_metrics(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """POPE's metrics, with "yes" as the positive class; anything but "yes" counts as "no"."""
    pred_yes = [normalize_answer(p) == "yes" for p in predictions]
    true_yes = [a == "yes" for a in answers]
    tp = sum(p and t for p, t in zip(pred_yes, true_yes))
    fp = sum(p and not t for p, t in zip(pred_yes, true_yes))
    fn = sum(t and not p for p, t in zip(pred_yes, true_yes))
    n = len(answers)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == t for p, t in zip(pred_yes, true_yes)) / n if n else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(pred_yes) / n if n else float("nan"),
        "n": n,
    }


def false_yes_rates(predictions: Sequence[str], answers: Sequence[str],
                    is_partner: Sequence[bool]) -> dict[str, float | None]:
    """Where the false "yes" answers go: the rate on absent usual partners vs other negatives,
    and the share of all errors that are a "yes" to an absent partner (the prior at work)."""
    said_yes = [normalize_answer(p) == "yes" for p in predictions]
    negatives = [(y, part) for y, a, part in zip(said_yes, answers, is_partner) if a == "no"]
    errors = sum(y != (a == "yes") for y, a in zip(said_yes, answers))
    partner = [y for y, part in negatives if part]
    other = [y for y, part in negatives if not part]
    return {
        "false_yes_partner": sum(partner) / len(partner) if partner else None,  # None: no such question
        "false_yes_other": sum(other) / len(other) if other else None,
        "partner_share_of_errors": sum(partner) / errors if errors else 0.0,
    }


def mentioned_objects(caption: str) -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2)) for m in _MENTION.finditer(caption.lower())}


def chair(captions: Sequence[str], scenes: Sequence[SceneSpec]) -> dict[str, float]:
    """CHAIR_s: captions with any object not in the image; CHAIR_i: such objects among all
    mentioned; recall: true objects that were mentioned."""
    hallucinated_caps = mentioned = hallucinated = covered = truth = partners = 0
    for text, scene in zip(captions, scenes):
        said, present = mentioned_objects(text), scene.kinds()
        wrong = said - present
        hallucinated_caps += bool(wrong)
        partners += len(wrong & absent_partners(scene))
        mentioned += len(said)
        hallucinated += len(wrong)
        covered += len(said & present)
        truth += len(present)
    n = len(captions)
    return {
        "chair_s": hallucinated_caps / n if n else float("nan"),
        "chair_i": hallucinated / mentioned if mentioned else 0.0,
        "recall": covered / truth if truth else float("nan"),
        "partner_share": partners / hallucinated if hallucinated else 0.0,
        "n": n,
    }
