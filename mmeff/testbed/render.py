"""Draw scene specs with OpenCV. Pure function of the spec: same spec, same pixels."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .world import COLORS, ObjectSpec, SceneSpec


def shape_polygon(obj: ObjectSpec, image_size: int) -> np.ndarray:
    """Vertices (N, 2) in pixels of a rotated shape; circles get a fine polygon."""
    cx, cy, r = obj.cx * image_size, obj.cy * image_size, obj.size * image_size
    if obj.shape == "circle":
        unit = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif obj.shape == "square":
        unit = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif obj.shape == "triangle":
        unit = [(math.cos(t), math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif obj.shape == "hexagon":
        unit = [(math.cos(t), math.sin(t)) for t in np.arange(6) * math.pi / 3]
    elif obj.shape == "star":
        unit = [
            ((1.0 if i % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + i * math.pi / 5),
             (1.0 if i % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + i * math.pi / 5))
            for i in range(10)
        ]
    elif obj.shape == "cross":
        a, b = 0.3, 0.9
        unit = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
                (-a, -a)]
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    theta = math.radians(obj.rotation)
    c, s = math.cos(theta), math.sin(theta)
    pts = [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in unit]
    return np.array(pts, dtype=np.float32)


def render_background(scene: SceneSpec) -> np.ndarray:
    size = scene.image_size
    rng = np.random.default_rng(scene.seed + 7919)
    base = np.array(scene.background_color, np.float32)
    img = np.tile(base, (size, size, 1))
    if scene.background == "gradient":
        other = base - rng.uniform(15, 35, 3)
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        ramp = ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
        img = img * (1 - ramp) + other * ramp
    elif scene.background == "noise":
        img = img + rng.normal(0, 6, (size, size, 1)).astype(np.float32)
    elif scene.background == "clutter":
        img = np.ascontiguousarray(img)
        for _ in range(rng.integers(4, 9)):
            gray = float(rng.uniform(170, 215))
            p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
            cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), (gray, gray, gray), 1, cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.uint8)


def render(scene: SceneSpec) -> np.ndarray:
    """HxWx3 uint8 RGB image; objects drawn in spec order (later ones occlude earlier ones)."""
    img = np.ascontiguousarray(render_background(scene))
    scale = 4  # draw at 4x with sub-pixel vertices for clean edges
    for obj in scene.objects:
        pts = np.round(shape_polygon(obj, scene.image_size) * scale).astype(np.int32)
        cv2.fillPoly(img, [pts], COLORS[obj.color], lineType=cv2.LINE_AA, shift=2)
    return img


def object_map(scene: SceneSpec) -> np.ndarray:
    """HxW int map: index of the visible object at each pixel (-1 = background), occlusion as drawn."""
    ids = np.full((scene.image_size, scene.image_size), -1, np.int32)
    for i, obj in enumerate(scene.objects):
        pts = np.round(shape_polygon(obj, scene.image_size) * 4).astype(np.int32)
        cv2.fillPoly(ids, [pts], i, shift=2)
    return ids
