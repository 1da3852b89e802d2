"""Ranking a generator's samples by a reward, scored against the oracle's verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mmeff
from mmeff.rewards import load_reward
from mmeff.testbed.assets import SHAPES_SD
from mmeff.testbed.reward_alignment import alignment_summary, reward_alignment, within_prompt_auc
from mmeff.testbed.t2i_eval import oracle_scores, summarise, to_uint8
from mmeff.testbed.t2i_prompts import eval_prompts, score_image


def test_auc_counts_same_prompt_pairs_with_ties_as_half():
    rewards = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0]])
    hits = np.array([[True, False, False], [False, True, False]])
    # prompt 0: the hit beats both misses; prompt 1: beats 0, ties 5
    assert within_prompt_auc(rewards, hits) == (3.5 / 4, 4)


def test_auc_ignores_prompts_without_both_verdicts_and_is_nan_without_pairs():
    rewards = np.array([[1.0, 2.0], [9.0, 0.0]])
    assert within_prompt_auc(rewards, np.array([[True, True], [True, False]])) == (1.0, 1)
    auc, pairs = within_prompt_auc(rewards, np.array([[True, True], [False, False]]))
    assert math.isnan(auc) and pairs == 0


def test_auc_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="prompts, samples"):
        within_prompt_auc(np.zeros((2, 3)), np.zeros((2, 2), bool))


def test_a_reward_that_agrees_with_the_oracle_picks_as_the_oracle_would():
    prompts = eval_prompts(1)
    rng = np.random.default_rng(0)
    hits = rng.random((len(prompts), 4)) < 0.4
    summary = alignment_summary(prompts, hits.astype(float) + 0.01 * rng.random(hits.shape), hits)
    assert summary["reward_pick"] == summary["oracle_pick"]
    assert summary["auc"] == 1.0
    inverted = alignment_summary(prompts, -hits.astype(float), hits)
    assert inverted["auc"] == 0.0
    assert inverted["reward_pick"]["overall"] <= inverted["mean_hit"]["overall"]


@torch.no_grad()
def test_mean_hit_is_the_plain_pipelines_oracle_score_on_the_same_seeds():
    pipe = mmeff.load(str(SHAPES_SD))
    call = {"num_inference_steps": 1, "guidance_scale": 1.0}
    summary = reward_alignment(pipe, load_reward("shapes_clip"), eval_prompts(1), samples=2, seed=7, call=call)
    plain = oracle_scores(pipe, per_category=1, seeds=(7, 8), **call)
    assert summary["mean_hit"] == plain
    assert summary["samples_per_prompt"] == 2
    # the picks, recomputed image by image: seed 7 and seed 8 of each prompt, scored by oracle and reward
    prompts, reward = eval_prompts(1), load_reward("shapes_clip")
    hits, scores = [], []
    for seed in (7, 8):
        images = pipe([p.text for p in prompts], generator=[torch.Generator().manual_seed(seed) for _ in prompts],
                      output_type="pt", **call).images.float()
        scores.append(reward(images, [p.text for p in prompts]).float())
        hits.append([score_image(p, img) for p, img in zip(prompts, to_uint8(images))])
    hits_t = torch.tensor(hits)
    assert summary["oracle_pick"] == summarise(prompts, (hits_t[0] | hits_t[1]).tolist())
    picked = hits_t[torch.stack(scores).argmax(0), torch.arange(len(prompts))]
    assert summary["reward_pick"] == summarise(prompts, picked.tolist())
