"""The app's overlay geometry: token ordinals land on the right cells, cells tile the image exactly."""

import numpy as np
import pytest

from mmeff.app.overlay import (
    center_square,
    enlarge,
    grid_side,
    heat_overlay,
    kept_mask,
    kept_overlay,
    to_uint8,
    upsample_grid,
)


def test_grid_side_needs_a_square():
    assert grid_side(144) == 12
    with pytest.raises(ValueError, match="square grid"):
        grid_side(150)


def test_kept_mask_is_row_major():
    mask = kept_mask([0, 13, 143], 144)
    assert mask.shape == (12, 12) and mask.sum() == 3
    assert mask[0, 0] and mask[1, 1] and mask[11, 11]
    with pytest.raises(ValueError, match=r"\[0, 144\)"):
        kept_mask([144], 144)


def test_upsample_grid_tiles_uneven_sizes():
    grid = np.arange(9).reshape(3, 3)
    up = upsample_grid(grid, 10, 7)
    assert up.shape == (10, 7)
    assert set(np.unique(up)) == set(range(9))  # every cell shows up
    assert up[0, 0] == 0 and up[-1, -1] == 8 and up[0, -1] == 2 and up[-1, 0] == 6
    rows = [np.count_nonzero(up[:, 0] == v) for v in (0, 3, 6)]
    assert max(rows) - min(rows) <= 1  # cells differ by at most one pixel


def test_center_square_and_to_uint8():
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[:, 2:6] = 7
    assert (center_square(image) == 7).all() and center_square(image).shape == (4, 4, 3)
    assert to_uint8(np.ones((2, 2, 3), dtype=np.float32)).max() == 255
    assert to_uint8(np.zeros((2, 2), dtype=np.uint8)).shape == (2, 2, 3)
    assert to_uint8(np.zeros((2, 2, 4), dtype=np.uint8)).shape == (2, 2, 3)


def test_kept_overlay_dims_exactly_the_dropped_cells():
    image = np.full((96, 96, 3), 200, dtype=np.uint8)
    out = kept_overlay(image, [1], 144, dim=0.25, scale=2)  # token 1: row 0, column 1 -> pixels 0..7, 8..15
    assert out.shape == (192, 192, 3)
    small = out[::2, ::2]
    assert (small[0:8, 8:16] == 200).all()
    assert (small[0:8, 0:8] == 50).all() and (small[8:, :] == 50).all()
    assert (kept_overlay(image, None, 144, scale=1) == image).all()  # nothing dropped: unchanged


def test_heat_overlay_blends_by_heat():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    heat = np.array([[1.0, 0.0], [0.0, 0.5]])
    out = heat_overlay(image, heat, alpha=1.0, color=(200, 100, 0))
    assert (out[0, 0] == (200, 100, 0)).all() and (out[0, 3] == 0).all() and (out[3, 3] == (100, 50, 0)).all()


def test_enlarge():
    assert enlarge(np.arange(4).reshape(2, 2), 3).shape == (6, 6)
    with pytest.raises(ValueError):
        enlarge(np.zeros((2, 2)), 0)
