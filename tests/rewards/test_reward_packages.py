"""ImageReward and HPSv2 against the PyPI packages that define the released models (``image-reward`` 1.5, ``hpsv2``
1.2.0).

The packages cannot be imported here (image-reward needs transformers 4.x and timm 0.6.13), so
``tools/peer_rewards/export.py`` ran each package's own model classes in a separate environment and wrote the
fixtures read below: the release-size state-dict names and shapes, and a shrunk model's parameters (as seeded
recipes, to keep the files small), buffers, inputs and the package's scores. Here mmeff loads those state dicts
through its own loaders and must give the same scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmeff.errors import ConfigError
from mmeff.rewards.imagereward import ImageReward, release_configs, tiny_configs
from mmeff.rewards.imagereward_keys import modules_to_released, released_to_modules
from mmeff.testing.rewards import bert_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
#: float32 on both sides, same torch; only the attention kernels and summation order differ (measured gap <= 3e-7)
ATOL = 1e-5
#: where the package resamples a uint8 PIL image and mmeff a float tensor (measured gap 2.2e-3 on ImageReward)
RESAMPLE_ATOL = 5e-3


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}_tiny.pt", weights_only=True)


def release_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((FIXTURES / f"{name}_release_keys.json").read_text()).items()}


def draw(shape: list[int], seed: int, offset: float, scale: float) -> torch.Tensor:
    """The export's parameter rule (tools/peer_rewards/export.py ``draw``)."""
    return offset + scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def package_state(fixture: dict) -> dict[str, torch.Tensor]:
    """The shrunk package model's ``state_dict()``: parameters redrawn from their recipes, buffers as saved."""
    state = {k: draw(**recipe) for k, recipe in fixture["params"].items()}
    return {**state, **fixture["buffers"]}


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def shape_diff(ours: dict, theirs: dict) -> list[str]:
    lines = [f"only in mmeff: {k} {ours[k]}" for k in sorted(ours.keys() - theirs.keys())]
    lines += [f"only in the package: {k} {theirs[k]}" for k in sorted(theirs.keys() - ours.keys())]
    lines += [f"shape: {k} mmeff {ours[k]} package {theirs[k]}" for k in sorted(ours.keys() & theirs.keys())
              if tuple(ours[k]) != tuple(theirs[k])]
    return lines


# ---------------------------------------------------------------------------------------------------- ImageReward
#: entries of the package's state dict that the score does not use, which ``released_to_modules`` drops
IR_DROPPED = {"blip.text_encoder.embeddings.position_ids", "blip.vision_proj.weight", "blip.vision_proj.bias",
              "blip.text_proj.weight", "blip.text_proj.bias"}


def test_imagereward_release_names_and_shapes_match_the_package():
    package = release_shapes("imagereward")
    with torch.device("meta"):
        model = ImageReward.build(*release_configs(), bert_tokenizer())
    ours = {k: tuple(v.shape) for k, v in modules_to_released(model.state_dict()).items()}
    used = {k: v for k, v in package.items() if k not in IR_DROPPED}
    assert IR_DROPPED <= package.keys(), sorted(IR_DROPPED - package.keys())
    assert not shape_diff(ours, used), "\n".join(shape_diff(ours, used))
    # and the loader accepts the package's whole state dict (drops exactly IR_DROPPED, strict on the rest)
    mapped = released_to_modules({k: torch.empty(v, device="meta") for k, v in package.items()})
    assert set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped, strict=True, assign=True)


def tiny_imagereward(fixture: dict) -> ImageReward:
    from transformers import BertTokenizer

    vocab = fixture["vocab"]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})  # as BLIP's init_tokenizer
    vision, text = tiny_configs(tok)
    vit, med = fixture["vit"], fixture["med"]
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads,
            vision.image_size, vision.patch_size) == (vit["embed_dim"], round(vit["embed_dim"] * vit["mlp_ratio"]),
                                                      vit["depth"], vit["num_heads"], vit["img_size"],
                                                      vit["patch_size"])
    assert (text.vocab_size, text.hidden_size, text.encoder_hidden_size, text.intermediate_size,
            text.num_hidden_layers, text.num_attention_heads, text.max_position_embeddings, text.pad_token_id) == (
        med["vocab_size"], med["hidden_size"], vit["embed_dim"], med["intermediate_size"], med["num_hidden_layers"],
        med["num_attention_heads"], med["max_position_embeddings"], med["pad_token_id"])
    reward = ImageReward.build(vision, text, tok)
    reward.load_released(package_state(fixture))
    return reward


def test_imagereward_tokenizes_prompts_as_the_package():
    fixture = load_fixture("imagereward")
    reward = tiny_imagereward(fixture)
    tokens = reward.tokenizer(fixture["prompts"], padding="max_length", truncation=True,
                              max_length=ImageReward.MAX_LENGTH, return_tensors="pt")
    assert torch.equal(tokens.input_ids, fixture["input_ids"])
    assert torch.equal(tokens.attention_mask, fixture["attention_mask"])


def test_imagereward_scores_match_the_package_at_the_model_size():
    """Images already at the model's 32 px: the package's PIL Resize/CenterCrop are then the identity."""
    fixture = load_fixture("imagereward")
    reward = tiny_imagereward(fixture)
    expected = fixture["scores"]["square"]
    assert (expected.max() - expected.min()) > 100 * ATOL  # the fixture discriminates between inputs
    with torch.no_grad():
        got = reward(as_float(fixture["images"]["square"]), fixture["prompts"])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(got, fixture["score_gard_square"], atol=ATOL, rtol=0)  # the package's tensor path


def test_imagereward_scores_on_resized_images_are_close_to_the_package():
    """40x56 images: the package resizes the uint8 PIL image (PIL bicubic, rounded to uint8), mmeff resizes the
    float tensor (torch anti-aliased bicubic); the scores then differ by resampling only."""
    fixture = load_fixture("imagereward")
    reward = tiny_imagereward(fixture)
    with torch.no_grad():
        got = reward(as_float(fixture["images"]["wide"]), fixture["prompts"])
    torch.testing.assert_close(got, fixture["scores"]["wide"], atol=RESAMPLE_ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------- HPSv2
def test_hpsv2_release_names_and_shapes_match_the_package():
    """mmeff builds ``open_clip.create_model(HPSv2Reward.ARCH)`` and loads the checkpoint strictly into it."""
    import open_clip

    from mmeff.rewards.clip import HPSv2Reward

    with torch.device("meta"):
        model = open_clip.create_model(HPSv2Reward.ARCH, pretrained=None, device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = release_shapes("hpsv2")
    assert not shape_diff(ours, theirs), "\n".join(shape_diff(ours, theirs))


@pytest.fixture
def tiny_hpsv2(tmp_path, monkeypatch):
    """mmeff's ``HPSv2Reward.load`` on a checkpoint file holding the shrunk package model's state dict."""
    import open_clip

    from mmeff.rewards.clip import HPSv2Reward

    fixture = load_fixture("hpsv2")
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "peer-tiny-hps", fixture["cfg"])
    monkeypatch.setattr(HPSv2Reward, "ARCH", "peer-tiny-hps")
    file = tmp_path / HPSv2Reward.FILE
    torch.save({"state_dict": package_state(fixture)}, file)
    return HPSv2Reward.load(str(file)), fixture


def test_hpsv2_scores_match_the_package_at_the_model_size(tiny_hpsv2):
    reward, fixture = tiny_hpsv2
    expected = fixture["scores"]["square"]
    assert (expected.max() - expected.min()) > 100 * ATOL
    with torch.no_grad():
        got = reward(as_float(fixture["images"]["square"]), fixture["prompts"])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def resize_longest_and_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """The package's ``ResizeMaxSize``: longest side to ``size`` (bicubic), then centred zero (black) padding."""
    import torch.nn.functional as F

    from mmeff.rewards import ops

    h, w = images.shape[-2:]
    nh, nw = round(h * size / max(h, w)), round(w * size / max(h, w))
    x = ops.resize(images, (nh, nw), "bicubic")
    ph, pw = size - nh, size - nw
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


def test_hpsv2_non_square_images_follow_the_package_with_resize_mode_longest(tiny_hpsv2, tmp_path):
    """The package's ``score`` resizes the longest side and pads (ResizeMaxSize); ReNO's release, mmeff's default,
    resizes the shortest side and centre-crops. ``resize_mode="longest"`` gives the package's scores."""
    from mmeff.rewards import ops
    from mmeff.rewards.clip import HPSv2Reward

    reward, fixture = tiny_hpsv2
    wide = as_float(fixture["images"]["wide"])
    x = resize_longest_and_pad(wide, reward.image_size)
    torch.testing.assert_close(ops.resize_longest_and_pad(wide, reward.image_size), x, atol=0, rtol=0)
    with torch.no_grad():
        default = reward(wide, fixture["prompts"])
        reward.resize_mode = "longest"
        longest = reward(wide, fixture["prompts"])
    torch.testing.assert_close(longest, fixture["scores"]["wide"], atol=RESAMPLE_ATOL / 5, rtol=0)
    assert (default - fixture["scores"]["wide"]).abs().max() > 10 * RESAMPLE_ATOL / 5  # the two modes differ here
    with pytest.raises(ConfigError, match="resize_mode"):
        HPSv2Reward.load(str(tmp_path / "missing.pt"), resize_mode="pad")


def test_fixtures_record_the_package_versions():
    assert load_fixture("imagereward")["versions"]["image-reward"] == "1.5"
    assert load_fixture("hpsv2")["versions"]["hpsv2"] == "1.2.0"
