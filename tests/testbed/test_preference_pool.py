"""The judged pool of generated samples and the pair loss the shapes reward is fine-tuned with."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmeff
from mmeff.testbed.assets import SHAPES_SD
from mmeff.testbed.oracle import Detection, detect
from mmeff.testbed.preference_pool import (
    EXCLUDED_EVAL_PER_CATEGORY,
    PreferencePool,
    build_pool,
    described_loss,
    excluded_texts,
    pool_prompt_texts,
    preference_loss,
    soft_nce,
)
from mmeff.testbed.t2i_prompts import eval_prompts, parse_prompt, satisfied, score_image


def _pool(hits: list[bool], per_prompt: int) -> PreferencePool:
    """Image i is filled with the value i, so a pair can be traced back to its rows."""
    n = len(hits)
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 3)).copy()
    texts = [f"prompt {k}" for k in range(n // per_prompt)]
    return PreferencePool(images, texts, np.repeat(np.arange(len(texts)), per_prompt), np.array(hits))


def test_pool_prompts_are_distinct_balanced_and_never_evaluation_prompts():
    texts = pool_prompt_texts(20, seed=0)
    assert len(set(texts)) == len(texts) and texts == pool_prompt_texts(20, seed=0)
    evaluation = {p.text for p in eval_prompts(EXCLUDED_EVAL_PER_CATEGORY)}
    assert not evaluation & set(texts)
    per_category = Counter(parse_prompt(t).category for t in texts)
    # single_object has 6 prompts, all evaluation prompts; counting 12, of which 8 are
    assert per_category == {"colors": 20, "two_object": 20, "color_attr": 20, "position": 20, "counting": 4}


def test_pairs_are_one_accepted_and_one_rejected_sample_of_the_same_prompt():
    # prompt 0: all rejected, prompt 1: mixed, prompt 2: all accepted
    pool = _pool([False] * 3 + [True, False, False] + [True] * 3, per_prompt=3)
    assert pool.pair_prompts().tolist() == [1]
    texts, good, bad = pool.sample_pairs(20, random.Random(0))
    assert texts == ["prompt 1"] * 20
    assert set(good[:, 0, 0, 0].tolist()) == {3} and set(bad[:, 0, 0, 0].tolist()) == {4, 5}
    with pytest.raises(ValueError, match="no prompt with both"):
        _pool([True, True, False, False], per_prompt=2).sample_pairs(1, random.Random(0))


def _described_pool() -> PreferencePool:
    """Two prompts, three samples each, with what the oracle found in each sample."""
    star, circle = Detection("star", "red", 0.2, 0.5, 1), Detection("circle", "green", 0.8, 0.5, 1)
    square = Detection("square", "green", 0.5, 0.5, 1)
    detections = [(star, circle), (circle,), (), (square,), (star,), (square, star)]
    texts = ["a red star and a green circle", "a green square"]
    prompt = np.array([0, 0, 0, 1, 1, 1])
    hits = np.array([satisfied(parse_prompt(texts[i]), list(d)) for i, d in zip(prompt, detections)])
    images = np.broadcast_to(np.arange(6, dtype=np.uint8)[:, None, None, None], (6, 2, 2, 3)).copy()
    return PreferencePool(images, texts, prompt, hits, detections)


def test_pool_round_trips_through_a_file(tmp_path):
    for pool in (_pool([True, False, False, True], per_prompt=2), _described_pool()):
        pool.save(tmp_path / "pool.pt")
        back = PreferencePool.load(tmp_path / "pool.pt")
        assert back.texts == pool.texts and back.summary() == pool.summary() and back.detections == pool.detections
        assert np.array_equal(back.images, pool.images) and np.array_equal(back.hits, pool.hits)


def test_described_batch_marks_every_text_each_sample_satisfies():
    pool = _described_pool()
    assert pool.hits.tolist() == [True, False, False, True, False, True]
    images, texts, positive = pool.described_batch(2, 3, random.Random(0))
    rows = images[:, 0, 0, 0].tolist()
    assert sorted(rows) == list(range(6))  # both prompts, every sample of each once
    assert set(pool.texts) <= set(texts) and len(set(texts)) == len(texts)
    for i, r in enumerate(rows):
        expected = [satisfied(parse_prompt(t), list(pool.detections[r])) for t in texts]
        assert positive[i].tolist() == expected
    assert not set(texts) & excluded_texts()  # no description is an evaluation prompt
    assert not positive[rows.index(2)].any()  # nothing detected: no text fits
    assert positive[rows.index(1)].any()  # a rejected sample still fits its own description
    with pytest.raises(ValueError, match="no detections"):
        _pool([True, False], per_prompt=2).described_batch(1, 2, random.Random(0))


def test_soft_nce_shares_the_target_among_positives_and_skips_rows_without_one():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    positive = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])
    log_p = F.log_softmax(logits, 1)
    expected = (-(log_p[0, 0] + log_p[0, 2]) / 2 - log_p[1, 1]) / 2
    assert soft_nce(logits, positive).item() == pytest.approx(expected.item())
    zero = soft_nce(logits.requires_grad_(), torch.zeros(3, 3, dtype=torch.bool))
    assert zero.item() == 0 and zero.requires_grad
    images, texts = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    scale = torch.tensor(7.0, dtype=torch.float64)
    logits = scale * F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    both = (soft_nce(logits, positive) + soft_nce(logits.T, positive.T)) / 2
    assert described_loss(scale, images, texts, positive).item() == pytest.approx(both.item())


def test_pair_loss_is_the_cross_entropy_of_choosing_the_accepted_image():
    text = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    good = torch.tensor([[2.0, 0.0]], dtype=torch.float64)  # cosine 1
    bad = torch.tensor([[0.0, 3.0]], dtype=torch.float64)  # cosine 0
    scale = torch.tensor(10.0, dtype=torch.float64)
    expected = F.softplus(torch.tensor([-10.0, 10.0], dtype=torch.float64)).tolist()
    assert preference_loss(scale, good, bad, text).item() == pytest.approx(expected[0])
    assert preference_loss(scale, bad, good, text).item() == pytest.approx(expected[1])


@torch.no_grad()
def test_built_pool_holds_the_oracles_verdict_on_each_sample_and_is_reproducible():
    pipe = mmeff.load(str(SHAPES_SD))
    call = {"num_inference_steps": 1, "guidance_scale": 1.0}
    pool = build_pool(pipe, per_category=1, samples=2, call=call, batch_size=4)
    assert pool.images.shape == (10, 32, 32, 3) and pool.prompt.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert pool.texts == pool_prompt_texts(1, seed=0)
    verdicts = [score_image(parse_prompt(pool.texts[i]), img) for i, img in zip(pool.prompt, pool.images)]
    assert pool.hits.tolist() == verdicts
    assert [list(d) for d in pool.detections] == [detect(img) for img in pool.images]
    again = build_pool(pipe, per_category=1, samples=2, call=call, batch_size=4)
    assert np.array_equal(again.images, pool.images)
    assert not np.array_equal(pool.images[0], pool.images[1])  # samples of a prompt use different seeds
