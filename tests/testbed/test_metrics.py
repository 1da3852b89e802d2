import pytest

from mmeff.testbed.metrics import (
    accuracy,
    chair,
    false_yes_rates,
    mentioned_objects,
    normalize_answer,
    yes_no_metrics,
)
from mmeff.testbed.world import ObjectSpec, SceneSpec


def test_normalize_answer_takes_the_first_word():
    assert normalize_answer("Yes, there is.") == "yes"
    assert normalize_answer("  RED ") == "red"
    assert normalize_answer("") == ""


def test_yes_no_metrics_on_hand_made_predictions():
    answers = ["yes", "yes", "no", "no"]
    m = yes_no_metrics(["yes", "no", "yes", "no"], answers)
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["yes_ratio"] == 0.5
    m = yes_no_metrics(["yes", "yes", "yes", "yes"], answers)
    assert m["recall"] == 1.0 and m["precision"] == 0.5 and m["yes_ratio"] == 1.0
    assert m["f1"] == pytest.approx(2 / 3)


def test_accuracy():
    assert accuracy(["Two", "red"], ["two", "blue"]) == 0.5


def test_chair_on_hand_made_captions():
    def scene(*kinds):
        objs = tuple(ObjectSpec(s, c, 0.5, 0.5, 0.1, 0) for c, s in kinds)
        return SceneSpec(objs, "plain", 0)

    scenes = [scene(("red", "circle"), ("blue", "square")), scene(("green", "star"),)]
    caps = ["red circle , blue square", "green star , yellow cross"]
    m = chair(caps, scenes)
    assert m["chair_s"] == 0.5 and m["chair_i"] == 0.25 and m["recall"] == 1.0
    assert mentioned_objects("two red circles and a blue square") == {("red", "circle"), ("blue", "square")}


def test_chair_counts_hallucinated_partners():
    scenes = [SceneSpec((ObjectSpec("circle", "red", 0.5, 0.5, 0.1, 0),), "plain", 0)]
    m = chair(["red circle , blue square , green star"], scenes)  # blue square is the red circle's partner
    assert m["chair_i"] == pytest.approx(2 / 3) and m["partner_share"] == 0.5


def test_false_yes_rates_separate_partner_negatives():
    answers = ["yes", "no", "no", "no", "no"]
    preds = ["yes", "yes", "yes", "no", "yes"]
    partner = [False, True, True, False, False]
    m = false_yes_rates(preds, answers, partner)
    assert m["false_yes_partner"] == 1.0 and m["false_yes_other"] == 0.5
    assert m["partner_share_of_errors"] == pytest.approx(2 / 3)
    assert false_yes_rates(["no"], ["yes"], [False])["false_yes_partner"] is None  # no negatives: undefined
