"""GenEval-style prompts for the shapes world, the scenes that satisfy them, and oracle scoring.

Six categories as in GenEval: ``single_object`` ("a star"), ``colors`` ("a red star"),
``two_object`` ("a star and a circle"), ``color_attr`` ("a red star and a blue circle"),
``counting`` ("three stars") and ``position`` ("a star left of a circle"). A prompt is a
list of required groups (shape, optional colour, count) plus an optional relation between
the first two groups. Training captions for the text-to-image testbed come from the same
grammar, drawn with scenes built to satisfy them; evaluation prompts come from a disjoint
seed range. Images are scored by the OpenCV oracle (never by a reward model).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

import numpy as np

from .oracle import Detection, detect
from .questions import NUMBER_WORDS
from .world import COLORS, SHAPES, ObjectSpec, SceneSpec

CATEGORIES = ("single_object", "colors", "two_object", "color_attr", "counting", "position")
RELATIONS = ("left of", "right of", "above", "below")
PLURALS = {s: s + ("es" if s.endswith(("s", "x")) else "s") for s in SHAPES}
T2I_IMAGE_SIZE = 32
#: a relation holds when the centres differ by this fraction of the image along its axis
RELATION_MARGIN = 0.1
EVAL_SEED = 9_000_000
T2I_WORDS = (*COLORS, *SHAPES, *PLURALS.values(), *NUMBER_WORDS, "a", "an", "and", "left", "right", "of", "above",
             "below")


@dataclass(frozen=True)
class Group:
    shape: str
    color: str | None = None  # None: any colour
    count: int = 1

    def accepts(self, d: Detection) -> bool:
        return d.shape == self.shape and (self.color is None or d.color == self.color)

    def phrase(self) -> str:
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        words = [f"{self.color} {noun}" if self.color else noun]
        if self.count == 1:
            article = "an" if words[0][0] in "aeiou" else "a"
            return f"{article} {words[0]}"
        return f"{NUMBER_WORDS[self.count]} {words[0]}"


@dataclass(frozen=True)
class T2IPrompt:
    category: str
    groups: tuple[Group, ...]
    relation: str | None = None  # between groups[0] and groups[1]

    @property
    def text(self) -> str:
        if self.relation:
            return f"{self.groups[0].phrase()} {self.relation} {self.groups[1].phrase()}"
        return " and ".join(g.phrase() for g in self.groups)


def sample_prompt(rng: random.Random, category: str | None = None) -> T2IPrompt:
    """One prompt of ``category`` (a random one when None)."""
    category = category or rng.choice(CATEGORIES)
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; allowed: {list(CATEGORIES)}")
    colors, shapes = list(COLORS), list(SHAPES)
    if category == "single_object":
        return T2IPrompt(category, (Group(rng.choice(shapes)),))
    if category == "colors":
        return T2IPrompt(category, (Group(rng.choice(shapes), rng.choice(colors)),))
    if category == "counting":
        return T2IPrompt(category, (Group(rng.choice(shapes), None, rng.choice((2, 3))),))
    a, b = rng.sample(shapes, 2)
    if category == "two_object":
        return T2IPrompt(category, (Group(a), Group(b)))
    if category == "color_attr":
        ca, cb = rng.sample(colors, 2)
        return T2IPrompt(category, (Group(a, ca), Group(b, cb)))
    return T2IPrompt(category, (Group(a), Group(b)), rng.choice(RELATIONS))


def scene_for_prompt(prompt: T2IPrompt, seed: int, image_size: int = T2I_IMAGE_SIZE, object_scale: float = 1.0
                     ) -> SceneSpec:
    """A plain-background scene that satisfies ``prompt`` (colours left open are drawn at random).

    ``object_scale`` multiplies the objects' sizes: a generator trained on larger objects draws
    them larger, with more latent pixels for the edges that tell a hexagon from a circle.
    """
    if not 0.5 <= object_scale <= 1.6:
        raise ValueError(f"object_scale must lie in [0.5, 1.6] (objects must fit side by side), got {object_scale}")
    rng = random.Random(seed)
    kinds = [(g.color or rng.choice(list(COLORS)), g.shape) for g in prompt.groups for _ in range(g.count)]
    n = len(kinds)
    lo, hi = (0.16, 0.24) if n == 1 else (0.13, 0.18) if n == 2 else (0.11, 0.15)
    lo, hi = lo * object_scale, hi * object_scale
    for _ in range(500):
        objects = [_place(rng, color, shape, lo, hi) for color, shape in kinds]
        if prompt.relation:
            objects[:2] = _arrange(rng, objects[0], objects[1], prompt.relation)
        if _separated(objects):
            break
    light = rng.randint(225, 250)
    return SceneSpec(tuple(objects), "plain", seed, image_size,
                     (light, light - rng.randint(0, 10), light - rng.randint(0, 10)))


def _place(rng: random.Random, color: str, shape: str, lo: float, hi: float) -> ObjectSpec:
    size = rng.uniform(lo, hi)
    return ObjectSpec(shape, color, rng.uniform(size + 0.02, 0.98 - size), rng.uniform(size + 0.02, 0.98 - size),
                      size, rng.uniform(0, 360))


def _arrange(rng: random.Random, a: ObjectSpec, b: ObjectSpec, relation: str) -> list[ObjectSpec]:
    """Put ``a`` and ``b`` on either side of the image along the relation's axis (``a`` first)."""
    near, far = rng.uniform(0.2, 0.35), rng.uniform(0.65, 0.8)
    first, second = (near, far) if relation in ("left of", "above") else (far, near)
    axis = "cx" if relation in ("left of", "right of") else "cy"
    other = "cy" if axis == "cx" else "cx"
    base = rng.uniform(0.3, 0.7)
    fields = [
        {axis: first, other: base + rng.uniform(-0.1, 0.1)},
        {axis: second, other: base + rng.uniform(-0.1, 0.1)},
    ]
    def inside(o: ObjectSpec, v: float) -> float:  # a no-op at object_scale 1; larger objects stay in the image
        return min(max(v, o.size + 0.02), 0.98 - o.size)

    return [ObjectSpec(o.shape, o.color, inside(o, f.get("cx", 0.5)), inside(o, f.get("cy", 0.5)), o.size, o.rotation)
            for o, f in zip((a, b), fields)]


def _separated(objects: list[ObjectSpec]) -> bool:
    return all(
        ((a.cx - b.cx) ** 2 + (a.cy - b.cy) ** 2) ** 0.5 > 1.05 * (a.size + b.size)
        for i, a in enumerate(objects) for b in objects[i + 1:]
    )


def eval_prompts(per_category: int = 16, seed: int = 0) -> list[T2IPrompt]:
    """The benchmark's prompt set: ``per_category`` distinct prompts per category, in category order."""
    rng = random.Random(EVAL_SEED + seed)
    out: list[T2IPrompt] = []
    for category in CATEGORIES:
        seen: set[str] = set()
        for _ in range(100 * per_category):
            if len(seen) == per_category:
                break
            p = sample_prompt(rng, category)
            if p.text not in seen:
                seen.add(p.text)
                out.append(p)
    return out


def satisfied(prompt: T2IPrompt, detections: list[Detection]) -> bool:
    """GenEval's rule: every group found (exactly ``count`` for counting), and the relation holds."""
    for g in prompt.groups:
        n = sum(g.accepts(d) for d in detections)
        if (n != g.count) if prompt.category == "counting" else (n < 1):
            return False
    if prompt.category == "counting" and len(detections) != prompt.groups[0].count:
        return False  # stray objects of other shapes spoil a count as well
    if prompt.relation is None:
        return True
    firsts = [d for d in detections if prompt.groups[0].accepts(d)]
    seconds = [d for d in detections if prompt.groups[1].accepts(d)]
    return any(relation_holds(a, b, prompt.relation) for a in firsts for b in seconds)


def relation_holds(a: Detection | ObjectSpec, b: Detection | ObjectSpec, relation: str) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # image y grows downwards
    return {
        "left of": dx > RELATION_MARGIN,
        "right of": -dx > RELATION_MARGIN,
        "above": dy > RELATION_MARGIN,
        "below": -dy > RELATION_MARGIN,
    }[relation]


def true_prompts(detections: list[Detection]) -> list[T2IPrompt]:
    """Every prompt of the grammar that the oracle would accept for an image with these ``detections``.

    Candidates are built from the detected objects (their shapes, colours, counts and pairs)
    and kept only when ``satisfied`` says so, so the list is right by the benchmark's own rule.
    """
    candidates: list[T2IPrompt] = []
    for d in detections:
        candidates += [T2IPrompt("single_object", (Group(d.shape),)), T2IPrompt("colors", (Group(d.shape, d.color),))]
    shapes = {d.shape for d in detections}
    if len(shapes) == 1 and len(detections) in (2, 3):
        candidates.append(T2IPrompt("counting", (Group(detections[0].shape, None, len(detections)),)))
    for a in detections:
        for b in detections:
            if a.shape == b.shape:
                continue
            candidates.append(T2IPrompt("two_object", (Group(a.shape), Group(b.shape))))
            candidates += [T2IPrompt("position", (Group(a.shape), Group(b.shape)), r) for r in RELATIONS]
            if a.color != b.color:
                candidates.append(T2IPrompt("color_attr", (Group(a.shape, a.color), Group(b.shape, b.color))))
    unique = {p.text: p for p in candidates if satisfied(p, detections)}
    return list(unique.values())


def describe(detections: list[Detection], rng: random.Random, exclude: frozenset[str] = frozenset()
             ) -> T2IPrompt | None:
    """A random true prompt for the detections (a category first, then a prompt of it), none of whose text is
    in ``exclude``; None if there is none."""
    by_category: dict[str, list[T2IPrompt]] = {}
    for p in true_prompts(detections):
        if p.text not in exclude:
            by_category.setdefault(p.category, []).append(p)
    if not by_category:
        return None
    return rng.choice(by_category[rng.choice(sorted(by_category))])


def score_image(prompt: T2IPrompt, image: np.ndarray) -> bool:
    """Does an HxWx3 uint8 image follow ``prompt``, according to the OpenCV oracle?"""
    return satisfied(prompt, detect(image))


@cache
def _all_prompts() -> dict[str, T2IPrompt]:
    """Every prompt the grammar can say (about 1,100), by text."""
    out: list[T2IPrompt] = []
    colors = list(COLORS)
    out += [T2IPrompt("single_object", (Group(s),)) for s in SHAPES]
    out += [T2IPrompt("colors", (Group(s, c),)) for s in SHAPES for c in colors]
    out += [T2IPrompt("counting", (Group(s, None, n),)) for s in SHAPES for n in (2, 3)]
    for a in SHAPES:
        for b in SHAPES:
            if a == b:
                continue
            out.append(T2IPrompt("two_object", (Group(a), Group(b))))
            out += [T2IPrompt("position", (Group(a), Group(b)), r) for r in RELATIONS]
            out += [T2IPrompt("color_attr", (Group(a, ca), Group(b, cb))) for ca in colors for cb in colors if ca != cb]
    return {p.text: p for p in out}


def parse_prompt(text: str) -> T2IPrompt | None:
    """The structured prompt behind ``text``, or None when the grammar cannot say it."""
    return _all_prompts().get(" ".join(text.lower().split()))
