"""An OpenCV oracle that recovers (colour, shape, position) of shapes-world objects from pixels alone.

It gives the testbed a pixel-level reference point: what a perfect perceiver could read off an
image, so model errors can be told apart from information the renderer never put on screen.

Pipeline: saturated pixels are object pixels (backgrounds and clutter are near-gray); each is
labelled with the nearest of the world's hues; every thick connected blob of one colour is then
explained by anti-aliased shape templates (the world's shape vocabulary) fitted by a small
pose search. Template fitting, rather than contour heuristics, is what separates a 6 px hexagon
from a 6 px circle, and treating other colours' pixels as "unknown" lets occluded shapes fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from .render import shape_polygon
from .world import COLORS, SHAPES, ObjectSpec

_CHROMA_MIN = 50.0  # max-min of RGB; backgrounds and clutter stay below ~35, object colours are >= 140
_MIN_AREA = 15  # px: the smallest object (a 6 px star) covers ~40 px
_MIN_THICKNESS = 2.0  # px of distance transform: drops 1-2 px seams where two colours blend
_SYMMETRY = {"circle": 360.0, "square": 90.0, "triangle": 120.0, "star": 72.0, "hexagon": 60.0, "cross": 90.0}
_GRID_STEP = 6.0  # degrees between starting rotations
_MAX_COST = 0.08  # squared alpha error per object pixel above which a blob is not one shape (one: < 0.05)
_SPLIT_GAIN = 0.5  # two shapes replace one only if they halve the error
_UNDER = 0.25  # weight of uncovered object pixels when fitting one of two merged objects
_REFINED = 3  # shapes refined after the rotation grid; all of them when the best fits worse than _GOOD_COST
_GOOD_COST = 0.01  # squared alpha error per object pixel of a clean fit (median 0.002)
_REFINE_ROUNDS = 4  # step halvings in the pose search
_AMBIGUOUS = 3.0  # runner-up shape within this factor of the best cost: polish both
_POLISH_TRIES = 60  # random joint moves per polished fit
_PAD = 4  # px of context around a blob
_BLUR_SIGMA = 0.0  # px
_MAX_MERGED = 4  # most same-coloured objects explained by one blob
_SUBPIX = 4  # the renderer's sub-pixel factor (fillPoly shift=2)


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    cx: float  # centre, fraction of the image width
    cy: float  # centre, fraction of the image height
    area: float  # visible area in pixels

    @property
    def kind(self) -> tuple[str, str]:
        return self.color, self.shape


@dataclass(frozen=True)
class _Fit:
    shape: str
    pose: tuple[float, float, float, float]  # cx, cy (ROI pixels), r (pixels), rotation (degrees)
    cost: float  # summed squared alpha error over the pixels that can be judged
    template: np.ndarray  # uint8 alpha of the fitted shape over the ROI


# ----------------------------------------------------------------------------------------------- templates


@cache
def _unit_polygon(shape: str) -> np.ndarray:
    """The renderer's polygon at unit size: the detector knows the vocabulary, not the scene."""
    return shape_polygon(ObjectSpec(shape, "red", 0.0, 0.0, 1.0, 0.0), 1).astype(np.float64) * _SUBPIX


def _draw(shape: str, pose: tuple[float, float, float, float], hw: tuple[int, int]) -> np.ndarray:
    """uint8 alpha of one shape drawn exactly as the renderer draws it."""
    cx, cy, r, theta = pose
    c, s = math.cos(math.radians(theta)) * r, math.sin(math.radians(theta)) * r
    pts = _unit_polygon(shape) @ np.array([[c, s], [-s, c]]) + (cx * _SUBPIX, cy * _SUBPIX)
    canvas = np.zeros(hw, np.uint8)
    cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    return canvas


@cache
def _area_model(shape: str) -> tuple[float, float]:
    """(k, p) with drawn alpha sum ~ k r^2 + p r: OpenCV's anti-aliased fill spreads ~0.7 px past the edge."""
    radii = np.array([4.0, 8.0, 16.0, 32.0])
    sums = [_draw(shape, (40.0, 40.0, float(r), 0.0), (80, 80)).sum() / 255.0 for r in radii]
    k, p = np.linalg.lstsq(np.stack([radii**2, radii], 1), np.array(sums), rcond=None)[0]
    return float(k), float(p)


def _radius_for_area(shape: str, area: float) -> float:
    k, p = _area_model(shape)
    return (-p + math.sqrt(p * p + 4 * k * max(area, 1.0))) / (2 * k)


@cache
def _inradius_ratio(shape: str) -> float:
    """Deepest distance-transform value of a drawn shape per unit radius (a star's core is thin)."""
    mask = (_draw(shape, (50.0, 50.0, 40.0, 0.0), (100, 100)) >= 128).astype(np.uint8)
    return float(cv2.distanceTransform(mask, cv2.DIST_L2, 5).max()) / 40.0


# ----------------------------------------------------------------------------------------------- pixels


@cache
def _color_table() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    names = tuple(COLORS)
    rgb = np.array([COLORS[n] for n in names], np.float32)
    hues = cv2.cvtColor(rgb.astype(np.uint8)[None], cv2.COLOR_RGB2HSV_FULL)[0, :, 0].astype(np.float32)
    return names, rgb, hues * (360.0 / 256.0)


def _label_pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest world hue (-1 for unsaturated pixels), and the chroma."""
    img = image.astype(np.float32)
    chroma = img.max(2) - img.min(2)
    hue = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)[..., 0].astype(np.float32) * (360.0 / 256.0)
    _, _, hues = _color_table()
    diff = np.abs(hue[..., None] - hues)
    label = np.minimum(diff, 360.0 - diff).argmin(-1).astype(np.int32)
    label[chroma < _CHROMA_MIN] = -1
    return label, chroma


def _background(image: np.ndarray, chroma: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Local background colour: median of the near-gray pixels around a blob (gradients drift)."""
    x0, y0, x1, y1 = box
    roi, gray = image[y0:y1, x0:x1].reshape(-1, 3), chroma[y0:y1, x0:x1].reshape(-1) < _CHROMA_MIN / 2
    if gray.sum() < 8:
        roi, gray = image.reshape(-1, 3), chroma.reshape(-1) < _CHROMA_MIN / 2
    if gray.sum() == 0:
        return np.full(3, 240.0, np.float32)
    return np.median(roi[gray].astype(np.float32), 0)


def _alpha(roi: np.ndarray, color: np.ndarray, background: np.ndarray) -> np.ndarray:
    """uint8 coverage of ``color`` over the background, by projection on the background->colour line.

    The gray axis is projected out first, so gray clutter lines, noise and brightness ramps under an
    anti-aliased edge do not read as partial coverage.
    """
    d = _chromatic(color - background)
    a = (_chromatic(roi.astype(np.float32) - background) @ d) / float(d @ d)
    return np.round(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)


def _chromatic(rgb: np.ndarray) -> np.ndarray:
    """Colour minus its gray component (mean of the channels)."""
    return rgb - rgb.mean(-1, keepdims=True)


def _thick_components(mask: np.ndarray) -> list[np.ndarray]:
    """Connected blobs big and thick enough to be (part of) an object rather than a blended seam."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < _MIN_AREA:
            continue
        blob = labels == i
        if cv2.distanceTransform(blob.astype(np.uint8), cv2.DIST_L2, 3).max() >= _MIN_THICKNESS:
            out.append(blob)
    return out


# ----------------------------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class _Target:
    """What one blob's shapes are fitted to (ROI coordinates)."""

    alpha: np.ndarray  # uint8 coverage of the blob's colour
    smooth: np.ndarray  # the same, blurred: the fitting cost compares blurred images
    known: np.ndarray  # uint8 mask of pixels that can be judged (not under or next to another colour)

    @classmethod
    def make(cls, alpha: np.ndarray, known: np.ndarray) -> _Target:
        return cls(alpha, _smooth(alpha), known)

    def without(self, covered: np.ndarray) -> _Target:
        """Pixels under ``covered`` (uint8 alpha of shapes already placed) become unknown."""
        return _Target(self.alpha, self.smooth, self.known & (covered < 128).astype(np.uint8))

    def area(self) -> float:
        return float(self.alpha[self.known > 0].sum()) / 255.0


def _smooth(image: np.ndarray) -> np.ndarray:
    """An optional blur of both sides of the cost (off by default: it blunts the corners that tell shapes apart)."""
    return cv2.GaussianBlur(image, (5, 5), _BLUR_SIGMA) if _BLUR_SIGMA > 0 else image


def _cost(template: np.ndarray, target: _Target, under: float = 1.0) -> float:
    """Squared error between blurred alphas over known pixels; ``under`` < 1 forgives uncovered object pixels."""
    t = _smooth(template)
    if under == 1.0:
        return cv2.norm(t, target.smooth, cv2.NORM_L2SQR, mask=target.known) / 65025.0
    diff = (t.astype(np.float32) - target.smooth) * target.known
    return float(np.sum(np.where(diff > 0, diff, under * diff) * diff)) / 65025.0


def _refine(shape: str, pose: tuple[float, float, float, float], target: _Target, under: float) -> _Fit:
    """Pattern search over (cx, cy, r, theta) with halving steps: cheap, and enough from a good start."""
    hw = target.alpha.shape
    best_t = _draw(shape, pose, hw)
    best = _cost(best_t, target, under)
    steps = [1.0, 1.0, 0.08 * pose[2], _GRID_STEP / 2 if shape != "circle" else 0.0]
    for _ in range(_REFINE_ROUNDS):
        improved = True
        while improved:
            improved = False
            for k, step in enumerate(steps):
                for sign in (1.0, -1.0) if step else ():
                    cand = list(pose)
                    cand[k] += sign * step
                    if cand[2] <= 1.0:
                        continue
                    t = _draw(shape, tuple(cand), hw)
                    c = _cost(t, target, under)
                    if c < best - 1e-9:
                        pose, best, best_t, improved = tuple(cand), c, t, True
        steps = [s / 2 for s in steps]
    return _Fit(shape, pose, best, best_t)


def _fit(target: _Target, cx: float, cy: float, radius: Callable[[str], float], under: float = 1.0) -> _Fit:
    """Best shape at a start position: every shape over a rotation grid, the leaders refined."""
    hw = target.alpha.shape
    starts = []
    for shape in SHAPES:
        r = radius(shape)
        thetas = np.arange(0.0, _SYMMETRY[shape], _GRID_STEP) if shape != "circle" else (0.0,)
        cost, theta = min((_cost(_draw(shape, (cx, cy, r, th), hw), target, under), float(th)) for th in thetas)
        starts.append((cost, shape, (cx, cy, r, theta)))
    starts.sort()
    fits = [_refine(shape, pose, target, under) for _, shape, pose in starts[:_REFINED]]
    if min(f.cost for f in fits) > _GOOD_COST * target.area():  # occluded or merged: the grid may rank wrongly
        fits += [_refine(shape, pose, target, under) for _, shape, pose in starts[_REFINED:]]
    fits.sort(key=lambda f: f.cost)
    if fits[1].cost < _AMBIGUOUS * fits[0].cost:  # a close call (small hexagon vs circle): search both harder
        fits[:2] = sorted((_polish(f, target, under) for f in fits[:2]), key=lambda f: f.cost)
    return fits[0]


def _polish(fit: _Fit, target: _Target, under: float) -> _Fit:
    """Random joint moves around a fit: OpenCV's anti-aliasing makes the cost jump with sub-pixel vertex
    positions, so the exact pose sits in a narrow pit that one-coordinate-at-a-time search can step over."""
    rng = np.random.default_rng(0)  # deterministic: same image, same answer
    hw = target.alpha.shape
    pose, best, best_t = np.array(fit.pose), fit.cost, fit.template
    scale = np.array([0.3, 0.3, 0.03 * pose[2], 2.0 if fit.shape != "circle" else 0.0])
    for _ in range(_POLISH_TRIES):
        cand = pose + rng.normal(size=4) * scale
        t = _draw(fit.shape, tuple(cand), hw)
        c = _cost(t, target, under)
        if c < best:
            pose, best, best_t = cand, c, t
    return _Fit(fit.shape, tuple(float(v) for v in pose), best, best_t)


def _fit_region(target: _Target, region: np.ndarray) -> _Fit:
    """Start from the region's alpha centroid and area: right for a whole, unmerged object."""
    m = target.alpha.astype(np.float32) * region / 255.0
    total = float(m.sum())
    ys, xs = np.indices(m.shape)
    cx, cy = float((m * xs).sum() / total), float((m * ys).sum() / total)
    return _fit(target, cx, cy, lambda shape: _radius_for_area(shape, total))


def _fit_peak(target: _Target, region: np.ndarray) -> _Fit:
    """One of several merged objects: start at the blob's deepest point, forgive leaving the others uncovered."""
    dt = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(dt.argmax()), dt.shape)
    depth = float(dt.max()) + 0.5
    return _fit(target, float(x), float(y), lambda shape: depth / _inradius_ratio(shape), under=_UNDER)


def _union(fits: list[_Fit], shape: tuple[int, int], skip: int = -1) -> np.ndarray:
    """uint8 alpha of same-coloured shapes drawn over each other."""
    clear = np.ones(shape, np.float32)
    for i, f in enumerate(fits):
        if i != skip:
            clear *= 1.0 - f.template.astype(np.float32) / 255.0
    return np.round((1.0 - clear) * 255).astype(np.uint8)


def _split(target: _Target, blob: np.ndarray, first: _Fit) -> list[_Fit]:
    """Several shapes for a blob one shape explains badly: fit what the others leave, refit each, repeat."""
    fits = [first]
    while len(fits) < _MAX_MERGED and _cost(_union(fits, blob.shape), target) > _MAX_COST * target.area():
        covered = _union(fits, blob.shape)
        rest = _thick_components(blob & (covered < 64))
        if not rest:
            break
        fits.append(_fit_region(target.without(covered), max(rest, key=lambda p: int(p.sum()))))
        for i in range(len(fits) - 1):
            others = _union(fits, blob.shape, skip=i)
            own = blob & (others < 64)
            if own.sum() >= _MIN_AREA:
                fits[i] = _fit_region(target.without(others), own)
    return _prune(target, fits)


def _prune(target: _Target, fits: list[_Fit]) -> list[_Fit]:
    """Drop shapes the others already explain: a poor early fit can leave a leftover that got its own shape."""
    limit = _MAX_COST * target.area()
    keep = list(fits)
    for fit in sorted(fits, key=lambda f: -f.cost):
        rest = [f for f in keep if f is not fit]
        if rest and _cost(_union(rest, target.alpha.shape), target) <= limit:
            keep = rest
    return keep


def _explain_blob(
    image: np.ndarray, chroma: np.ndarray, label: np.ndarray, blob: np.ndarray, color_idx: int
) -> list[tuple[_Fit, float, tuple[int, int]]]:
    """Fits for a blob (same-coloured objects may touch and merge), each with its visible area."""
    _, rgb, _ = _color_table()
    h, w = blob.shape
    ys, xs = np.nonzero(blob)
    x0, y0 = max(0, xs.min() - _PAD), max(0, ys.min() - _PAD)
    x1, y1 = min(w, xs.max() + _PAD + 1), min(h, ys.max() + _PAD + 1)
    roi_blob = blob[y0:y1, x0:x1]
    kernel = np.ones((3, 3), np.uint8)
    near = cv2.dilate(roi_blob.astype(np.uint8), kernel, iterations=2)
    alpha = _alpha(image[y0:y1, x0:x1], rgb[color_idx], _background(image, chroma, (x0, y0, x1, y1))) * near
    roi_label = label[y0:y1, x0:x1]
    others = ((roi_label >= 0) & (roi_label != color_idx)).astype(np.uint8)
    # pixels next to another colour are blends: unknown too (and blurring would spread them further)
    unknown = cv2.dilate(others, kernel, iterations=1 + (_BLUR_SIGMA > 0)).astype(bool) & ~roi_blob
    target = _Target.make(alpha, (~unknown).astype(np.uint8))

    fits = [_fit_region(target, roi_blob)]
    if fits[0].cost > _MAX_COST * target.area():
        options = [_split(target, roi_blob, f) for f in (fits[0], _fit_peak(target, roi_blob))]
        scored = [(_cost(_union(o, roi_blob.shape), target), len(o), o) for o in options]
        cost, _, best = min(scored, key=lambda c: c[:2])
        if cost < _SPLIT_GAIN * fits[0].cost:
            fits = best
    out = []
    for f in fits:
        visible = float(np.minimum(alpha, f.template)[target.known > 0].sum()) / 255.0
        out.append((f, visible, (x0, y0)))
    return out


# ----------------------------------------------------------------------------------------------- API


def detect(image: np.ndarray) -> list[Detection]:
    """Objects in an HxWx3 uint8 RGB image, at any resolution."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB, got shape {image.shape}")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    names, _, _ = _color_table()
    label, chroma = _label_pixels(image)
    out: list[Detection] = []
    for ci, name in enumerate(names):
        for blob in _thick_components(label == ci):
            for fit, visible, (x0, y0) in _explain_blob(image, chroma, label, blob, ci):
                out.append(Detection(fit.shape, name, (fit.pose[0] + x0) / w, (fit.pose[1] + y0) / h, visible))
    return out


def count_objects(image: np.ndarray) -> int:
    return len(detect(image))


def match(pred: list[Detection], truth: list[ObjectSpec], max_dist: float = 0.1) -> tuple[int, int, int]:
    """(tp, fp, fn): greedy one-to-one matching of equal (colour, shape) kinds, nearest centres first."""
    pairs = sorted(
        (math.hypot(p.cx - t.cx, p.cy - t.cy), i, j)
        for i, p in enumerate(pred)
        for j, t in enumerate(truth)
        if p.kind == t.kind and math.hypot(p.cx - t.cx, p.cy - t.cy) <= max_dist
    )
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    tp = len(used_p)
    return tp, len(pred) - tp, len(truth) - tp


def object_f1(tp: int, fp: int, fn: int) -> float:
    """F1 over objects; an empty scene with no predictions is perfect."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom
