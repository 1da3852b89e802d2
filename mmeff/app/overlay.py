"""Pure image math for the app: which pixels a kept image token covers, and how to show it.

Kept in its own module, free of Gradio, so that the geometry (the part that can silently be wrong:
a transposed grid or an off-by-one cell looks plausible on screen) is unit-tested without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def to_uint8(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from what pipelines and Gradio hand over (floats in [0, 1], grey or RGBA arrays)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def center_square(image: np.ndarray) -> np.ndarray:
    """The centred square crop: the part a CLIP-style processor (resize shortest edge, centre crop) shows the
    vision tower, so the token grid is laid over the pixels the tokens actually came from."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def grid_side(n_tokens: int) -> int:
    """Side of the square patch grid of ``n_tokens`` image tokens (144 -> 12)."""
    side = math.isqrt(n_tokens)
    if n_tokens < 1 or side * side != n_tokens:
        raise ValueError(f"{n_tokens} image tokens do not form a square grid; the overlay needs one")
    return side


def kept_mask(kept: Sequence[int], n_tokens: int) -> np.ndarray:
    """side x side booleans, True where a token was kept; ordinals are row-major (token ``i`` is row
    ``i // side``, column ``i % side``), as a ViT flattens its patch grid."""
    side = grid_side(n_tokens)
    mask = np.zeros(n_tokens, dtype=bool)
    ordinals = np.asarray(list(kept), dtype=np.int64)
    if ordinals.size and (ordinals.min() < 0 or ordinals.max() >= n_tokens):
        raise ValueError(f"kept token ordinals must lie in [0, {n_tokens}), got {sorted(set(ordinals.tolist()))}")
    mask[ordinals] = True
    return mask.reshape(side, side)


def upsample_grid(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A per-cell grid stretched to height x width pixels: pixel (y, x) takes cell (y*rows//height,
    x*cols//width), so cells tile the image exactly even when the size is not a multiple of the grid."""
    rows, cols = grid.shape[:2]
    ys = np.arange(height) * rows // height
    xs = np.arange(width) * cols // width
    return grid[ys[:, None], xs[None, :]]


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (96 px scenes are too small to read on screen)."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6,
                 color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """Blend ``color`` over ``image`` in proportion to a per-cell ``heat`` in [0, 1] (any grid size)."""
    base = to_uint8(image).astype(np.float64)
    weight = np.clip(upsample_grid(np.asarray(heat, dtype=np.float64), *base.shape[:2]), 0.0, 1.0)[..., None]
    out = base * (1 - alpha * weight) + np.asarray(color, dtype=np.float64) * alpha * weight
    return out.round().clip(0, 255).astype(np.uint8)


def kept_overlay(image: np.ndarray, kept: Sequence[int] | None, n_tokens: int, *, dim: float = 0.25,
                 scale: int = 3) -> np.ndarray:
    """The model's view of ``image`` with dropped tokens' cells dimmed to ``dim`` of their brightness (kept
    cells unchanged), enlarged ``scale`` times. ``kept=None`` (a plugin that drops nothing) keeps every cell."""
    square = center_square(to_uint8(image))
    if kept is None:
        return enlarge(square, scale)
    mask = kept_mask(kept, n_tokens)
    factor = np.where(upsample_grid(mask, *square.shape[:2]), 1.0, dim)[..., None]
    return enlarge((square.astype(np.float64) * factor).round().astype(np.uint8), scale)
