"""Every registered reward, on its tiny random instance: shape, gradients, frozen weights, determinism."""

import pytest
import torch

from mmeff.rewards import Reward, get_reward, list_rewards

NAMES = ["aesthetic", "clip", "hpsv2", "imagereward", "pickscore", "shapes_clip"]
PROMPTS = ["a red cube beside a blue sphere", "two yellow circles"]
_CACHE: dict[str, Reward] = {}


def tiny(name: str) -> Reward:
    if name not in _CACHE:
        _CACHE[name] = get_reward(name).tiny()
    return _CACHE[name]


def images(hw=(40, 48), seed=0, requires_grad=False) -> torch.Tensor:
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(requires_grad)


def test_every_reward_is_covered():
    assert list_rewards() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_and_differentiable(name):
    reward = tiny(name)
    x = images(requires_grad=True)
    out = reward(x, PROMPTS)
    assert out.shape == (2,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_weights_frozen_and_eval(name):
    reward = tiny(name)
    reward.train()  # a reward stays in eval mode: dropout would make it random
    assert not reward.training and not any(m.training for m in reward.modules())
    assert not any(p.requires_grad for p in reward.parameters())
    reward(images(requires_grad=True), PROMPTS).sum().backward()
    assert all(p.grad is None for p in reward.parameters())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(24, 20), (64, 96)])
def test_any_image_size(name, hw):
    assert tiny(name)(images(hw), PROMPTS).shape == (2,)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    x = images()
    with torch.no_grad():
        first = tiny(name)(x, PROMPTS)
        torch.testing.assert_close(tiny(name)(x, PROMPTS), first, atol=0, rtol=0)
        torch.testing.assert_close(get_reward(name).tiny(seed=0)(x, PROMPTS), first, atol=0, rtol=0)
        assert not torch.equal(get_reward(name).tiny(seed=1)(x, PROMPTS), first)


@pytest.mark.parametrize("name", NAMES)
def test_prompt_matters(name):
    x = images()[:1].expand(2, -1, -1, -1)
    with torch.no_grad():
        a, b = tiny(name)(x, ["a red cube", "three green stars"])
    if name == "aesthetic":  # the LAION predictor scores the image alone
        assert a == b
    else:
        assert a != b


@pytest.mark.parametrize("name", NAMES)
def test_needs_one_prompt_per_image(name):
    with pytest.raises(ValueError, match="one prompt per image"):
        tiny(name)(images(), PROMPTS[:1])


def test_clip_is_scaled_hpsv2_is_bare_cosine():
    """Same open_clip model: ReNO's CLIP reward is logit_scale.exp()·cos, HPSv2 the bare cosine."""
    from mmeff.rewards.clip import ClipReward, HPSv2Reward

    clip = tiny("clip")
    hps = HPSv2Reward(clip.model, clip.tokenize)
    with torch.no_grad():
        torch.testing.assert_close(clip(images(), PROMPTS), clip.model.logit_scale.exp() * hps(images(), PROMPTS))
    assert isinstance(clip, ClipReward)


def test_pickscore_matches_clip_model_logits():
    """PickScore equals the diagonal of transformers' own ``logits_per_image``."""
    reward = tiny("pickscore")
    tokens = reward.tokenizer(PROMPTS, padding="max_length", max_length=reward.max_length, return_tensors="pt")
    with torch.no_grad():
        out = reward.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                           pixel_values=reward.pixels(images()))
        torch.testing.assert_close(reward(images(), PROMPTS), out.logits_per_image.diagonal())


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_weights(name):
    """Half-precision rewards resample in fp32 (bf16 anti-aliasing is missing on CPU) and return fp32 scores."""
    reward = get_reward(name).tiny().to(torch.bfloat16)
    x = images(requires_grad=True)
    out = reward(x, PROMPTS)
    out.sum().backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and x.grad.abs().sum() > 0
