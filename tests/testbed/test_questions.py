from collections import Counter

from mmeff.testbed.questions import (
    EVAL_SEED_OFFSET,
    NUMBER_WORDS,
    build_suite,
    caption,
    kind_popularity,
)
from mmeff.testbed.world import partner_of, sample_scene


def test_suites_are_deterministic():
    assert build_suite("pope", 5, seed=3) == build_suite("pope", 5, seed=3)
    assert build_suite("spatial", 5, seed=3) == build_suite("spatial", 5, seed=3)


def test_eval_scenes_are_disjoint_from_training_seeds():
    for q in build_suite("counting", 10):
        assert q.scene.seed >= EVAL_SEED_OFFSET


def test_pope_is_balanced_and_negatives_are_absent():
    questions = build_suite("pope", 30)
    for split in ("random", "popular", "adversarial"):
        qs = [q for q in questions if q.split == split]
        answers = Counter(q.answer for q in qs)
        assert answers["yes"] == answers["no"] > 0
        for q in qs:
            assert (q.target in q.scene.kinds()) == (q.answer == "yes")


def test_adversarial_negatives_prefer_absent_partners():
    questions = [q for q in build_suite("pope", 60) if q.split == "adversarial" and q.answer == "no"]
    partner_negatives = 0
    for q in questions:
        partners = {partner_of(*k) for k in q.scene.kinds()} - {None} - q.scene.kinds()
        partner_negatives += q.target in partners
        if partners:  # absent partners are asked about before any other negative
            asked = {x.target for x in questions if x.scene == q.scene}
            assert len(asked & partners) == min(3, len(partners))
    assert partner_negatives > 0.5 * len(questions)


def test_popular_negatives_follow_training_frequency():
    top = kind_popularity()
    for q in [q for q in build_suite("pope", 10) if q.split == "popular" and q.answer == "no"]:
        absent_ranked = [k for k in top if k not in q.scene.kinds()]
        assert q.target in absent_ranked[:3]


def test_answers_match_the_scene():
    for q in build_suite("counting", 20):
        if q.text.startswith("how many objects"):
            assert q.answer == NUMBER_WORDS[len(q.scene.objects)]
    for q in build_suite("attributes", 20):
        shape = q.text.split()[-1].rstrip("?")
        assert [o.color for o in q.scene.objects if o.shape == shape] == [q.answer]
    for q in build_suite("spatial", 20):
        assert q.answer in ("yes", "no")


def test_caption_lists_objects_left_to_right():
    scene = sample_scene(7)
    names = caption(scene).split(" , ")
    assert len(names) == len(scene.objects)
    xs = [next(o.cx for o in scene.objects if o.name == n) for n in names]
    assert xs == sorted(xs)
