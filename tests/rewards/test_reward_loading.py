"""Loading: offline misses raise a ConfigError naming the id; local folders and files load."""

import json
import time

import pytest
import torch

from mmeff.errors import ConfigError
from mmeff.rewards import get_reward, load_reward
from mmeff.rewards.heads import score_mlp
from mmeff.testing.rewards import write_tiny_shapes_clip


@pytest.mark.parametrize(
    ("name", "path", "named"),
    [
        ("clip", None, "ViT-H-14:laion2B-s32B-b79K"),
        ("clip", "ViT-B-32:mmeff-missing-tag", "ViT-B-32:mmeff-missing-tag"),
        ("clip", "hf-hub:mmeff-missing/clip", "hf-hub:mmeff-missing/clip"),
        ("hpsv2", None, "xswu/HPSv2"),
        ("hpsv2", "/nonexistent/HPS_v2.1_compressed.pt", "/nonexistent/HPS_v2.1_compressed.pt"),
        ("pickscore", "mmeff-missing/pickscore", "mmeff-missing/pickscore"),
        ("imagereward", None, "THUDM/ImageReward"),
        ("imagereward", "/nonexistent/ImageReward.pt", "/nonexistent/ImageReward.pt"),
        ("aesthetic", None, "sac+logos+ava1-l14-linearMSE.pth"),
        ("aesthetic", "/nonexistent/head.pth", "/nonexistent/head.pth"),
        ("shapes_clip", "/nonexistent/shapes-clip", "/nonexistent/shapes-clip"),
    ],
)
def test_missing_weights_raise_config_error(name, path, named):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot be fetched") as info:
        get_reward(name).load(path)
    assert named in str(info.value)
    assert time.perf_counter() - start < 5, "an offline miss must not wait on the network"


def test_shapes_clip_loads_the_recipe_export(tmp_path):
    write_tiny_shapes_clip(tmp_path, seed=3)
    reward = load_reward("shapes_clip", str(tmp_path))
    assert reward.image_size == 32 and reward.tokenize(["a red cube"]).shape == (1, 16)
    from mmeff.testbed.train_clip import build

    torch.testing.assert_close(reward.model.state_dict()["logit_scale"], build(3)[0].state_dict()["logit_scale"])
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    reward(x, ["a red cube", "two blue circles"]).sum().backward()
    assert x.grad.abs().sum() > 0


def test_shapes_clip_reads_its_preprocess_config(tmp_path):
    write_tiny_shapes_clip(tmp_path)
    config = json.loads((tmp_path / "open_clip_config.json").read_text())
    config["preprocess_cfg"].update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    config["model_cfg"]["vision_cfg"].update(image_size=48, patch_size=8)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="size mismatch"):  # the weights are for 32 px: it really reads the config
        load_reward("shapes_clip", str(tmp_path))
    config["model_cfg"]["vision_cfg"].update(image_size=32, patch_size=4)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    reward = load_reward("shapes_clip", str(tmp_path))
    assert (reward.image_size, reward.mean, reward.std) == (32, (0.5,) * 3, (0.25,) * 3)


def test_clip_loads_any_open_clip_folder(tmp_path):
    write_tiny_shapes_clip(tmp_path)
    reward = load_reward("clip", str(tmp_path), dtype=torch.float64)
    assert reward.name == "clip" and reward.dtype == torch.float64
    assert reward(torch.rand(1, 3, 40, 40), ["a red cube"]).dtype == torch.float32


@pytest.mark.parametrize("prefix", ["", "layers."])
def test_aesthetic_head_loads_before_clip(tmp_path, prefix):
    head = score_mlp(768)
    torch.save({prefix + k: v for k, v in head.state_dict().items()}, tmp_path / "head.pth")
    # the head loads; then the CLIP tower is the missing piece, and the error names it
    with pytest.raises(ConfigError, match="mmeff-missing/clip"):
        get_reward("aesthetic").load(str(tmp_path / "head.pth"), clip="mmeff-missing/clip")
