"""ImageReward: the released-key mapping round-trips, and the release-size model has the released shapes."""

import pytest
import torch

from mmeff.rewards.imagereward import ImageReward, release_configs
from mmeff.rewards.imagereward_keys import modules_to_released, released_to_modules
from mmeff.testing.rewards import bert_tokenizer

PROMPTS = ["a red cube", "two dogs beside a cat"]


def test_released_layout_round_trip():
    source, target = ImageReward.tiny(seed=0), ImageReward.tiny(seed=1)
    x = torch.rand(2, 3, 36, 44, generator=torch.Generator().manual_seed(0))
    released = modules_to_released(source.state_dict())
    assert all(k.startswith(("blip.visual_encoder.", "blip.text_encoder.", "mlp.layers.")) for k in released)
    # entries of the release the score does not use are dropped on load
    released["blip.text_proj.weight"] = torch.zeros(3, 3)
    released["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
    with torch.no_grad():
        assert not torch.equal(target(x, PROMPTS), source(x, PROMPTS))
        target.load_released(released)
        torch.testing.assert_close(target(x, PROMPTS), source(x, PROMPTS), atol=0, rtol=0)


def test_unknown_key_under_a_used_prefix_is_an_error():
    released = modules_to_released(ImageReward.tiny().state_dict())
    released["blip.visual_encoder.blocks.0.attn.q_bias"] = torch.zeros(3)
    with pytest.raises(KeyError, match="q_bias"):
        released_to_modules(released)


def test_missing_key_is_an_error():
    reward = ImageReward.tiny()
    released = modules_to_released(reward.state_dict())
    del released["blip.visual_encoder.norm.weight"]
    with pytest.raises(RuntimeError, match="post_layernorm.weight"):
        reward.load_released(released)


def test_release_size_names_and_shapes():
    """Built on the meta device: BLIP ViT-L/16 at 224 px, BERT-base with 1024-wide cross-attention, MLP(768)."""
    with torch.device("meta"):
        model = ImageReward.build(*release_configs(), bert_tokenizer())
    shapes = {k: tuple(v.shape) for k, v in modules_to_released(model.state_dict()).items()}
    expected = {
        "blip.visual_encoder.cls_token": (1, 1, 1024),
        "blip.visual_encoder.pos_embed": (1, 197, 1024),
        "blip.visual_encoder.patch_embed.proj.weight": (1024, 3, 16, 16),
        "blip.visual_encoder.blocks.23.attn.qkv.weight": (3072, 1024),
        "blip.visual_encoder.blocks.23.attn.proj.weight": (1024, 1024),
        "blip.visual_encoder.blocks.23.mlp.fc1.weight": (4096, 1024),
        "blip.visual_encoder.norm.weight": (1024,),
        "blip.text_encoder.embeddings.word_embeddings.weight": (30524, 768),
        "blip.text_encoder.embeddings.position_embeddings.weight": (512, 768),
        "blip.text_encoder.encoder.layer.11.attention.self.query.weight": (768, 768),
        "blip.text_encoder.encoder.layer.11.crossattention.self.key.weight": (768, 1024),
        "blip.text_encoder.encoder.layer.11.crossattention.output.LayerNorm.weight": (768,),
        "blip.text_encoder.encoder.layer.11.intermediate.dense.weight": (3072, 768),
        "blip.text_encoder.encoder.layer.11.output.dense.weight": (768, 3072),
        "mlp.layers.0.weight": (1024, 768),
        "mlp.layers.7.weight": (1, 16),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert not any("blocks.24" in k or "layer.12" in k or "pooler" in k or "token_type" in k for k in shapes)
