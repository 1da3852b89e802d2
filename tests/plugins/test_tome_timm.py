"""ToMe on a timm ViT (the paper's setting) against a transcription of the release (facebookresearch/ToMe)."""

from __future__ import annotations

import math

import pytest
import torch

import mmeff
from mmeff.errors import UnsupportedModelError
from mmeff.hooks import iter_hooks

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


# -- the release, transcribed (tome/merge.py, tome/patch/timm.py) ------------------------------------
def release_bipartite_soft_matching(metric, r, class_token=True):
    protected = int(class_token)
    r = min(r, (metric.shape[1] - protected) // 2)
    if r <= 0:
        return None
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    if class_token:
        scores[..., 0, :] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    if class_token:
        unm_idx = unm_idx.sort(dim=1)[0]

    def merge(x, mode="mean"):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def release_merge_wavg(merge, x, size=None):
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def release_attention(attn, x, size):
    b, n, c = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q @ k.transpose(-2, -1)) * attn.scale
    if size is not None:
        logits = logits + size.log()[:, None, None, :, 0]
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
    return attn.proj(out), k.mean(1)


def release_forward(model, images, r):
    """ToMeVisionTransformer.forward with ToMeBlock / ToMeAttention, r constant per block."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.norm_pre(x)
    size = None
    for block in model.blocks:
        x_attn, metric = release_attention(block.attn, block.norm1(x), size)
        x = x + block.drop_path1(x_attn)
        merge = release_bipartite_soft_matching(metric, r)
        if merge is not None:
            x, size = release_merge_wavg(merge, x, size)
        x = x + block.drop_path2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x)), x.shape[1]


# -- tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r", [8, 13])
def test_merged_features_equal_the_release(vit, images, r):
    with torch.no_grad():
        expected, tokens = release_forward(vit, images, r)
        pipe = mmeff.wrap(vit)
        pipe.add_plugin("tome", r=r)
        try:
            got = pipe(images)
            stats = pipe.last_stats["tome"]
        finally:
            pipe.remove_plugin("tome")
    assert stats["final_tokens"] == tokens == 197 - 12 * r
    assert stats["tokens_per_block"][:3] == [197, 197 - r, 197 - 2 * r]
    assert torch.allclose(got, expected, atol=2e-4, rtol=1e-4), (got - expected).abs().max()


def test_r_zero_is_the_plain_model_and_detach_is_bit_identical(vit, images):
    with torch.no_grad():
        plain = vit(images)
        pipe = mmeff.wrap(vit)
        pipe.add_plugin("tome", r=0)
        assert torch.equal(pipe(images), plain)
        pipe.remove_plugin("tome")
        pipe.add_plugin("tome", r=13)
        assert not torch.allclose(pipe(images), plain, atol=1e-3)
        pipe.remove_plugin("tome")
        assert torch.equal(vit(images), plain)
    assert not list(iter_hooks(vit))


def test_batch_rows_equal_solo_runs(vit, images):
    pipe = mmeff.wrap(vit)
    pipe.add_plugin("tome", r=13)
    try:
        with torch.no_grad():
            batch = pipe(images)
            solo = torch.cat([pipe(images[i : i + 1]) for i in range(2)])
    finally:
        pipe.remove_plugin("tome")
    assert torch.allclose(batch, solo, atol=1e-4)


def test_a_distilled_vit_is_refused_with_the_reason():
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    with pytest.raises(UnsupportedModelError, match="distillation token"):
        mmeff.wrap(deit).add_plugin("tome", r=4)
    assert not list(iter_hooks(deit))
