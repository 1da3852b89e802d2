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


def test_hpsv2_loads_a_release_layout_checkpoint_by_folder_or_file(tmp_path, monkeypatch):
    """The release is ``{"state_dict": ...}`` for open_clip's ViT-H-14; here the same file layout on a tiny
    architecture registered with open_clip, loaded strictly, gives the model it was saved from."""
    import open_clip

    from mmeff.rewards.clip import HPSv2Reward, tiny_open_clip_cfg

    (tmp_path / "mmeff-tiny-hps.json").write_text(json.dumps(tiny_open_clip_cfg()))
    open_clip.add_model_config(tmp_path / "mmeff-tiny-hps.json")
    monkeypatch.setattr(HPSv2Reward, "ARCH", "mmeff-tiny-hps")
    torch.manual_seed(0)
    saved = open_clip.create_model("mmeff-tiny-hps", pretrained=None)
    torch.save({"state_dict": saved.state_dict(), "epoch": 1}, tmp_path / HPSv2Reward.FILE)
    expected = HPSv2Reward(saved, open_clip.get_tokenizer("mmeff-tiny-hps"))
    images, prompts = torch.rand(2, 3, 40, 40), ["a red cube", "two blue circles"]
    for source in (tmp_path, tmp_path / HPSv2Reward.FILE):
        reward = load_reward("hpsv2", str(source))
        torch.testing.assert_close(reward(images, prompts), expected(images, prompts))
    torch.save({"state_dict": {k: v for k, v in saved.state_dict().items() if k != "logit_scale"}},
               tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="logit_scale"):  # a mismatched checkpoint is named, not half-loaded
        load_reward("hpsv2", str(tmp_path / "partial.pt"))


def test_pickscore_loads_model_and_processor_folders_with_their_constants(tmp_path):
    from transformers import CLIPImageProcessor

    tiny = get_reward("pickscore").tiny(seed=4)
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "processor")
    CLIPImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "processor")
    reward = load_reward("pickscore", str(tmp_path / "model"), processor=str(tmp_path / "processor"))
    assert (tuple(reward.mean), tuple(reward.std)) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert all(torch.equal(a, b) for a, b in zip(reward.model.state_dict().values(),
                                                 tiny.model.state_dict().values()))
    x = torch.rand(1, 3, 48, 48, requires_grad=True)
    reward(x, ["a red cube"]).sum().backward()
    assert x.grad.abs().sum() > 0
