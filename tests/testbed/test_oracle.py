"""The OpenCV oracle recovers rendered scenes from pixels alone."""

import json

import numpy as np
import pytest

from mmeff.testbed.oracle import Detection, count_objects, detect, match, object_f1
from mmeff.testbed.questions import EVAL_SEED_OFFSET
from mmeff.testbed.render import render
from mmeff.testbed.world import ObjectSpec, SceneSpec, sample_scene


def _scene_f1(seeds, image_size: int = 96) -> tuple[float, tuple[int, int, int]]:
    totals = np.zeros(3, int)
    for seed in seeds:
        scene = sample_scene(seed, image_size=image_size)
        totals += match(detect(np.asarray(render(scene))), list(scene.objects))
    return object_f1(*totals), tuple(totals)


def test_oracle_object_f1_on_held_out_renders():
    f1, (tp, fp, fn) = _scene_f1(range(EVAL_SEED_OFFSET + 123_000, EVAL_SEED_OFFSET + 123_060))
    assert tp > 150
    assert f1 >= 0.98, (tp, fp, fn)


def test_oracle_works_at_another_resolution():
    f1, _ = _scene_f1(range(EVAL_SEED_OFFSET + 7_000, EVAL_SEED_OFFSET + 7_015), image_size=160)
    assert f1 >= 0.95


def test_oracle_reads_a_hand_made_scene():
    scene = SceneSpec(
        objects=(ObjectSpec("star", "yellow", 0.25, 0.3, 0.12, 10.0),
                 ObjectSpec("square", "blue", 0.7, 0.7, 0.1, 30.0)),
        background="plain",
        seed=0,
        image_size=96,
    )
    found = detect(np.asarray(render(scene)))
    assert sorted(d.kind for d in found) == [("blue", "square"), ("yellow", "star")]
    star = next(d for d in found if d.shape == "star")
    assert abs(star.cx - 0.25) < 0.03 and abs(star.cy - 0.3) < 0.03
    assert count_objects(np.asarray(render(scene))) == 2


def test_empty_image_has_no_objects():
    assert detect(np.full((64, 64, 3), 200, np.uint8)) == []


def test_match_and_f1_on_hand_made_predictions():
    truth = [ObjectSpec("circle", "red", 0.2, 0.2, 0.1, 0.0), ObjectSpec("star", "blue", 0.8, 0.8, 0.1, 0.0)]
    pred = [Detection("circle", "red", 0.21, 0.2, 50.0), Detection("circle", "red", 0.8, 0.8, 50.0),
            Detection("star", "blue", 0.2, 0.2, 50.0)]
    assert match(pred, truth) == (1, 2, 1)  # the blue star is too far from its truth to count
    assert object_f1(1, 2, 1) == pytest.approx(2 / 5)
    assert object_f1(0, 0, 0) == 1.0


def test_detect_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="HxWx3"):
        detect(np.zeros((32, 32), np.uint8))


def test_oracle_check_command_writes_a_report(tmp_path):
    from mmeff.cli import main

    main(["testbed", "oracle", "--n-scenes", "12", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "oracle.json").read_text())
    assert result["n_scenes"] == 12 and result["overall"]["f1"] >= 0.95
    assert set(result["recall_by_shape"]) <= {"circle", "square", "triangle", "star", "hexagon", "cross"}
    assert (tmp_path / "oracle.md").is_file() and (tmp_path / "oracle.png").is_file()
