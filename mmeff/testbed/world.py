"""The shapes world: scene specs with exact ground truth, sampled deterministically from a seed.

A scene is 1-6 objects (shape x colour, size, position, rotation) on a background. The
training distribution has built-in co-occurrence priors (:data:`PARTNERS`): when one
member of a pair is in a scene, its partner usually is too, so a model can learn the
language prior that POPE's adversarial split probes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLORS: dict[str, tuple[int, int, int]] = {  # RGB, hues far apart so the oracle separates them
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 20),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "purple": (150, 40, 190),
}
BACKGROUNDS = ("plain", "gradient", "noise", "clutter")

#: documented co-occurrence pairs: each member brings its partner along with probability
#: :data:`PARTNER_PROB` in training scenes
#: (each colour and each shape appears in exactly two pairs)
PARTNERS: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = (
    (("red", "circle"), ("blue", "square")),
    (("yellow", "star"), ("purple", "hexagon")),
    (("green", "triangle"), ("orange", "cross")),
    (("blue", "triangle"), ("red", "hexagon")),
    (("purple", "circle"), ("green", "star")),
    (("orange", "square"), ("yellow", "cross")),
)
PARTNER_PROB = 0.85


def partner_of(color: str, shape: str) -> tuple[str, str] | None:
    for a, b in PARTNERS:
        if (color, shape) == a:
            return b
        if (color, shape) == b:
            return a
    return None


def absent_partners(scene: SceneSpec) -> set[tuple[str, str]]:
    """Usual partners of present objects that are missing: the likeliest hallucinations."""
    kinds = scene.kinds()
    return {p for k in kinds if (p := partner_of(*k)) is not None and p not in kinds}


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    cx: float  # centre, fraction of the image width
    cy: float
    size: float  # half-extent, fraction of the image width
    rotation: float  # degrees

    @property
    def kind(self) -> tuple[str, str]:
        return self.color, self.shape

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    background: str
    seed: int
    image_size: int = 96
    background_color: tuple[int, int, int] = (245, 245, 245)
    extras: dict = field(default_factory=dict, compare=False, hash=False)

    def kinds(self) -> set[tuple[str, str]]:
        return {o.kind for o in self.objects}

    def left_to_right(self) -> list[ObjectSpec]:
        return sorted(self.objects, key=lambda o: (o.cx, o.cy))


def sample_scene(
    seed: int,
    *,
    image_size: int = 96,
    min_objects: int = 1,
    max_objects: int = 6,
    priors: bool = True,
    backgrounds: tuple[str, ...] = BACKGROUNDS,
    min_size: float = 0.06,
    max_size: float = 0.14,
) -> SceneSpec:
    """A scene from ``seed`` alone (same seed, same scene). Distinct (colour, shape) kinds per scene."""
    rng = random.Random(seed)
    n = rng.randint(min_objects, max_objects)
    kinds: list[tuple[str, str]] = []
    while len(kinds) < n:
        kind = (rng.choice(list(COLORS)), rng.choice(SHAPES))
        if kind in kinds:
            continue
        kinds.append(kind)
        partner = partner_of(*kind)
        if priors and partner and partner not in kinds and len(kinds) < max_objects and rng.random() < PARTNER_PROB:
            kinds.append(partner)
    objects = _place(rng, kinds[:max_objects], min_size, max_size)
    light = rng.randint(225, 250)
    return SceneSpec(
        objects=tuple(objects),
        background=rng.choice(backgrounds),
        seed=seed,
        image_size=image_size,
        background_color=(light, light - rng.randint(0, 10), light - rng.randint(0, 10)),
    )


def _place(rng: random.Random, kinds: list[tuple[str, str]], min_size: float, max_size: float) -> list[ObjectSpec]:
    """Rejection-sample positions so objects overlap at most a little (partial occlusion allowed)."""
    placed: list[ObjectSpec] = []
    for color, shape in kinds:
        for _ in range(200):
            size = rng.uniform(min_size, max_size)
            cx, cy = rng.uniform(size + 0.02, 0.98 - size), rng.uniform(size + 0.02, 0.98 - size)
            if all(((cx - o.cx) ** 2 + (cy - o.cy) ** 2) ** 0.5 > 0.8 * (size + o.size) for o in placed):
                placed.append(ObjectSpec(shape, color, cx, cy, size, rng.uniform(0, 360)))
                break
    return placed
