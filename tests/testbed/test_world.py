import pickle

import numpy as np

from mmeff.testbed.render import render
from mmeff.testbed.world import COLORS, PARTNER_PROB, PARTNERS, SHAPES, partner_of, sample_scene


def test_scenes_are_deterministic_and_picklable():
    a, b = sample_scene(123), sample_scene(123)
    assert a == b
    assert pickle.loads(pickle.dumps(a)) == a
    assert np.array_equal(render(a), render(b))
    assert sample_scene(124) != a


def test_scene_contents_are_within_the_world():
    for seed in range(200):
        scene = sample_scene(seed)
        assert 1 <= len(scene.objects) <= 6
        kinds = [o.kind for o in scene.objects]
        assert len(kinds) == len(set(kinds)), "one object per (colour, shape) kind"
        for o in scene.objects:
            assert o.shape in SHAPES and o.color in COLORS
            assert 0 < o.cx - o.size and o.cx + o.size < 1 and 0 < o.cy - o.size and o.cy + o.size < 1


def test_partners_usually_co_occur_in_training_scenes():
    with_member = together = 0
    for seed in range(3000):
        kinds = sample_scene(seed).kinds()
        for a, b in PARTNERS:
            if a in kinds or b in kinds:
                with_member += 1
                together += a in kinds and b in kinds
    rate = together / with_member
    assert rate > PARTNER_PROB - 0.25, f"partners co-occur in only {rate:.2f} of scenes with one of them"
    assert partner_of(*PARTNERS[0][0]) == PARTNERS[0][1]


def test_render_shape_and_dtype():
    image = render(sample_scene(5, image_size=64))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
