"""The bundled shapes-clip: loads through open_clip and the reward registry, and tells true captions from false."""

from __future__ import annotations

import random

import open_clip
import torch

from mmeff.rewards import load_reward
from mmeff.testbed.assets import SHAPES_CLIP
from mmeff.testbed.render import render
from mmeff.testbed.t2i_prompts import sample_prompt, scene_for_prompt
from mmeff.testbed.train_clip import corrupt


def test_loads_with_open_clip():
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{SHAPES_CLIP}")
    tokens = open_clip.get_tokenizer(f"local-dir:{SHAPES_CLIP}")(["a red star"])
    assert model.encode_text(tokens).shape == (1, 64)


@torch.no_grad()
def test_reward_prefers_the_true_caption_over_a_corrupted_one():
    reward = load_reward("shapes_clip")
    rng = random.Random(123)
    prompts = [sample_prompt(rng, c) for c in ("colors", "counting", "color_attr", "two_object") for _ in range(10)]
    images = torch.stack([torch.from_numpy(render(scene_for_prompt(p, i))).permute(2, 0, 1).float() / 255
                          for i, p in enumerate(prompts)])
    true = reward(images, [p.text for p in prompts])
    false = reward(images, [corrupt(p, rng).text for p in prompts])
    # measured 0.89 overall on the recipe's held-out check (position near chance, so it is left out here)
    assert (true > false).float().mean() >= 0.8
