"""The paired comparison of two methods' oracle verdicts on the same images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmeff.testbed.t2i_eval import paired_difference, summarise
from mmeff.testbed.t2i_prompts import eval_prompts


def test_paired_difference_is_the_difference_of_overall_scores_with_a_hand_computed_se():
    prompts = eval_prompts(2)  # 12 prompts, two per category, in category order
    rng = np.random.default_rng(0)
    a, b = list(rng.random(12) < 0.5), list(rng.random(12) < 0.5)
    d = paired_difference(prompts, a, b)
    assert d["difference"] == pytest.approx(summarise(prompts, a)["overall"] - summarise(prompts, b)["overall"])
    per_cat = np.array(a, float).reshape(6, 2) - np.array(b, float).reshape(6, 2)
    expected_se = math.sqrt(sum(np.var(row, ddof=1) / 2 for row in per_cat)) / 6
    assert d["se"] == pytest.approx(expected_se)
    assert d["only_a"] - d["only_b"] == sum(a) - sum(b)
    assert d["only_a"] == sum(x and not y for x, y in zip(a, b))


def test_identical_verdicts_differ_by_zero_with_zero_se():
    prompts = eval_prompts(2)
    hits = [i % 3 == 0 for i in range(12)]
    assert paired_difference(prompts, hits, hits) == {"difference": 0.0, "se": 0.0, "only_a": 0, "only_b": 0}


def test_verdicts_both_sides_share_leave_the_paired_se_small():
    """Both right on the same images and one extra for a: the paired se is far below the unpaired one."""
    prompts = eval_prompts(4)
    b = [i % 2 == 0 for i in range(len(prompts))]
    a = list(b)
    a[1] = True
    d = paired_difference(prompts, a, b)
    unpaired = math.sqrt(2 * 0.5 * 0.5 / len(prompts))
    assert 0 < d["se"] < unpaired / 3


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one verdict per prompt"):
        paired_difference(eval_prompts(1), [True] * 6, [True] * 5)
