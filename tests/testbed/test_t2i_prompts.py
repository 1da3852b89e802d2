"""The text-to-image prompt set: grammar, scenes that satisfy it, and GenEval-style oracle scoring."""

from __future__ import annotations

import random

import pytest

from mmeff.testbed.oracle import Detection
from mmeff.testbed.render import render
from mmeff.testbed.t2i_prompts import (
    CATEGORIES,
    Group,
    T2IPrompt,
    describe,
    eval_prompts,
    parse_prompt,
    sample_prompt,
    satisfied,
    scene_for_prompt,
    score_image,
    true_prompts,
)
from mmeff.testbed.train_clip import corrupt


def _truth(scene) -> list[Detection]:
    return [Detection(o.shape, o.color, o.cx, o.cy, 1.0) for o in scene.objects]


def test_prompt_texts_read_as_english():
    assert T2IPrompt("colors", (Group("star", "red"),)).text == "a red star"
    assert T2IPrompt("colors", (Group("star", "orange"),)).text == "an orange star"
    assert T2IPrompt("counting", (Group("cross", None, 3),)).text == "three crosses"
    assert T2IPrompt("position", (Group("hexagon"), Group("circle")), "left of").text == "a hexagon left of a circle"
    assert T2IPrompt("color_attr", (Group("star", "red"), Group("square", "blue"))).text == \
        "a red star and a blue square"


@pytest.mark.parametrize("object_scale", [1.0, 1.4])
@pytest.mark.parametrize("category", CATEGORIES)
def test_scenes_satisfy_their_prompt_in_truth_and_for_the_oracle(category, object_scale):
    rng = random.Random(1)
    for i in range(8):
        prompt = sample_prompt(rng, category)
        scene = scene_for_prompt(prompt, seed=i, object_scale=object_scale)
        assert satisfied(prompt, _truth(scene)), prompt.text
        assert score_image(prompt, render(scene)), prompt.text
        assert all(o.size <= min(o.cx, o.cy, 1 - o.cx, 1 - o.cy) for o in scene.objects), "inside the image"


def test_object_scale_grows_the_objects_and_is_bounded():
    prompt = sample_prompt(random.Random(0), "single_object")
    base, large = scene_for_prompt(prompt, 3), scene_for_prompt(prompt, 3, object_scale=1.4)
    assert large.objects[0].size == pytest.approx(1.4 * base.objects[0].size)
    with pytest.raises(ValueError, match=r"object_scale must lie in \[0.5, 1.6\]"):
        scene_for_prompt(prompt, 3, object_scale=2.0)


def test_a_corrupted_caption_is_false_for_the_scene():
    rng = random.Random(2)
    for i in range(120):
        prompt = sample_prompt(rng)
        scene = scene_for_prompt(prompt, seed=i)
        wrong = corrupt(prompt, rng)
        assert wrong.text != prompt.text
        assert not satisfied(wrong, _truth(scene)), (prompt.text, wrong.text)


def test_scoring_rules():
    two = T2IPrompt("counting", (Group("star", None, 2),))
    stars = [Detection("star", "red", 0.2, 0.5, 1), Detection("star", "blue", 0.7, 0.5, 1)]
    assert satisfied(two, stars)
    assert not satisfied(two, stars[:1])
    assert not satisfied(two, [*stars, Detection("circle", "red", 0.5, 0.2, 1)])  # a stray object spoils a count
    left = T2IPrompt("position", (Group("star"), Group("circle")), "left of")
    assert satisfied(left, [Detection("star", "red", 0.2, 0.5, 1), Detection("circle", "red", 0.6, 0.5, 1)])
    assert not satisfied(left, [Detection("star", "red", 0.6, 0.5, 1), Detection("circle", "red", 0.2, 0.5, 1)])
    assert not satisfied(left, [Detection("star", "red", 0.45, 0.5, 1), Detection("circle", "red", 0.5, 0.5, 1)])
    colour = T2IPrompt("colors", (Group("star", "red"),))
    assert not satisfied(colour, [Detection("star", "blue", 0.5, 0.5, 1)])


def test_eval_prompts_are_deterministic_distinct_and_parse_back():
    prompts = eval_prompts(8)
    assert prompts == eval_prompts(8)
    assert len({p.text for p in prompts}) == len(prompts)
    assert {p.category for p in prompts} == set(CATEGORIES)
    assert all(parse_prompt(p.text) == p for p in prompts)
    assert parse_prompt("A  Red star") == T2IPrompt("colors", (Group("star", "red"),))
    assert parse_prompt("a red dragon") is None
    with pytest.raises(ValueError, match="allowed"):
        sample_prompt(random.Random(0), "style")


def test_true_prompts_are_every_prompt_the_oracle_accepts_for_the_detections():
    star, circle = Detection("star", "red", 0.2, 0.5, 1), Detection("circle", "blue", 0.8, 0.5, 1)
    texts = {p.text for p in true_prompts([star, circle])}
    assert texts == {"a star", "a red star", "a circle", "a blue circle", "a star and a circle",
                     "a circle and a star", "a red star and a blue circle", "a blue circle and a red star",
                     "a star left of a circle", "a circle right of a star"}
    assert all(parse_prompt(t) is not None for t in texts)  # sayable: the reward is trained on them
    three = [Detection("cross", c, x, 0.5, 1) for c, x in (("red", 0.2), ("red", 0.5), ("green", 0.8))]
    assert {"three crosses", "a red cross", "a green cross", "a cross"} == {p.text for p in true_prompts(three)}
    # same colour: no colour attribution prompt; too close for a relation
    near = [Detection("star", "red", 0.45, 0.5, 1), Detection("circle", "red", 0.5, 0.5, 1)]
    assert {p.category for p in true_prompts(near)} == {"single_object", "colors", "two_object"}
    assert true_prompts([]) == [] and describe([], random.Random(0)) is None
    rng = random.Random(0)
    drawn = [describe([star, circle], rng) for _ in range(200)]
    assert {p.text for p in drawn} == texts and len({p.category for p in drawn}) == 5
    kept = {describe([star, circle], rng, exclude=frozenset(texts - {"a star"})).text for _ in range(20)}
    assert kept == {"a star"} and describe([star, circle], rng, exclude=frozenset(texts)) is None
