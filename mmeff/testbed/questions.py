"""Question sets over shapes scenes, with exact answers from the scene spec.

Suites: ``pope`` (existence; random / popular / adversarial negatives, 3 positives and 3
negatives per image), ``attributes`` (colour of a uniquely-shaped object), ``counting``,
``spatial`` (left/right/above/below, yes/no) and ``caption`` (objects left to right).
Answers are single words except captions.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from .world import COLORS, SHAPES, SceneSpec, absent_partners, sample_scene

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
POPE_SPLITS = ("random", "popular", "adversarial")
SUITES = ("pope", "attributes", "counting", "spatial", "caption")
#: evaluation scenes come from seeds far from the training range
EVAL_SEED_OFFSET = 10_000_000


@dataclass(frozen=True)
class Question:
    scene: SceneSpec
    suite: str
    split: str  # POPE split, or the suite name
    text: str
    answer: str
    target: tuple[str, str] | None = None  # the (colour, shape) asked about, if any


def existence_question(kind: tuple[str, str]) -> str:
    color, shape = kind
    return f"is there a {color} {shape} in the image?"


def caption(scene: SceneSpec) -> str:
    return " , ".join(o.name for o in scene.left_to_right())


@lru_cache(maxsize=1)
def kind_popularity(n_scenes: int = 4000) -> tuple[tuple[str, str], ...]:
    """(colour, shape) kinds ordered by how often they appear in training scenes (POPE 'popular')."""
    counts: Counter = Counter()
    for seed in range(n_scenes):
        counts.update(sample_scene(seed).kinds())
    all_kinds = [(c, s) for c in COLORS for s in SHAPES]
    return tuple(sorted(all_kinds, key=lambda k: (-counts[k], k)))


def pope_questions(scene: SceneSpec, split: str, rng: random.Random, per_side: int = 3) -> list[Question]:
    """``per_side`` present and ``per_side`` absent kinds, negatives drawn per the split."""
    if split not in POPE_SPLITS:
        raise ValueError(f"POPE split must be one of {POPE_SPLITS}, got {split!r}")
    present = sorted(scene.kinds())
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in scene.kinds()]
    positives = rng.sample(present, min(per_side, len(present)))
    if split == "random":
        negatives = rng.sample(absent, per_side)
    elif split == "popular":
        negatives = [k for k in kind_popularity() if k in absent][:per_side]
    else:
        partners = sorted(absent_partners(scene))
        sharing = [k for k in absent if k not in partners and any(k[0] == p[0] or k[1] == p[1] for p in present)]
        rng.shuffle(partners)
        rng.shuffle(sharing)
        negatives = (partners + sharing + [k for k in absent if k not in partners and k not in sharing])[:per_side]
    out = [Question(scene, "pope", split, existence_question(k), "yes", k) for k in positives]
    out += [Question(scene, "pope", split, existence_question(k), "no", k) for k in negatives[: len(positives)]]
    rng.shuffle(out)
    return out


def attribute_questions(scene: SceneSpec) -> list[Question]:
    shapes = Counter(o.shape for o in scene.objects)
    return [
        Question(scene, "attributes", "attributes", f"what color is the {o.shape}?", o.color, o.kind)
        for o in scene.objects
        if shapes[o.shape] == 1
    ]


def counting_questions(scene: SceneSpec) -> list[Question]:
    out = [Question(scene, "counting", "counting", "how many objects are in the image?",
                    NUMBER_WORDS[len(scene.objects)])]
    colors = Counter(o.color for o in scene.objects)
    for color, n in sorted(colors.items()):
        text = f"how many {color} objects are there?"
        out.append(Question(scene, "counting", "counting", text, NUMBER_WORDS[n]))
    return out


def spatial_questions(scene: SceneSpec, rng: random.Random, margin: float = 0.08) -> list[Question]:
    """Yes/no relations between pairs clearly separated along the axis asked about."""
    out = []
    objs = list(scene.objects)
    rng.shuffle(objs)
    for a, b in zip(objs, objs[1:]):
        dx, dy = b.cx - a.cx, b.cy - a.cy
        if abs(dx) > margin:
            rel = rng.choice(["left of", "right of"])
            truth = (dx > 0) == (rel == "left of")
        elif abs(dy) > margin:
            rel = rng.choice(["above", "below"])
            truth = (dy > 0) == (rel == "above")
        else:
            continue
        text = f"is the {a.name} {rel} the {b.name}?"
        out.append(Question(scene, "spatial", "spatial", text, "yes" if truth else "no", a.kind))
    return out


def eval_scene(index: int, **kw) -> SceneSpec:
    return sample_scene(EVAL_SEED_OFFSET + index, **kw)


def pope_scenes(n_scenes: int, image_size: int = 96) -> list[SceneSpec]:
    """Held-out scenes of >= 3 objects in which some object's usual partner is missing."""
    scenes, index = [], 0
    while len(scenes) < n_scenes:
        scene = eval_scene(index, image_size=image_size, min_objects=3, priors=False)
        index += 1
        if absent_partners(scene):
            scenes.append(scene)
    return scenes


def build_suite(suite: str, n_scenes: int, seed: int = 0, image_size: int = 96) -> list[Question]:
    """Questions on held-out scenes (seeds disjoint from training), deterministic given ``seed``.

    POPE scenes hold at least 3 objects, are drawn *without* the co-occurrence prior, and
    keep only scenes where some object's usual partner is absent: the case the adversarial
    split probes (its negatives are those absent partners first).
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {SUITES}")
    rng = random.Random(seed)
    questions: list[Question] = []
    scenes = pope_scenes(n_scenes, image_size) if suite == "pope" else [eval_scene(i, image_size=image_size)
                                                                         for i in range(n_scenes)]
    for scene in scenes:
        if suite == "pope":
            for split in POPE_SPLITS:
                questions += pope_questions(scene, split, rng)
        elif suite == "attributes":
            questions += attribute_questions(scene)
        elif suite == "counting":
            questions += counting_questions(scene)
        elif suite == "spatial":
            questions += spatial_questions(scene, rng)
        else:
            questions.append(Question(scene, "caption", "caption", "describe the image.", caption(scene)))
    return questions
