"""Vision-side token math on small hand-worked cases."""

from __future__ import annotations

import torch

from mmeff.token_drop.ops import slots_of
from mmeff.token_drop.vision_ops import (
    bipartite_merge,
    compact_alive,
    local_window_merge,
    received_by_crop,
    scatter_to_grid,
    size_bias,
    visionzip_merge,
    window_members,
    window_similarity,
)


def test_bipartite_merge_of_four_tokens_plus_cls():
    # slots: CLS, t1..t4; A = (CLS, t2, t4), B = (t1, t3). t2's key equals t1's: they merge first.
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0]]])
    keys = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]]])
    sizes = torch.tensor([[1.0, 1.0, 1.0, 2.0, 1.0]])
    sources = torch.tensor([[-1, 0, 1, 2, 3]])
    new_x, new_sizes, new_sources = bipartite_merge(x, keys, sizes, sources, r=1)
    # survivors: A unmerged in order (CLS, t4), then B (t1 absorbed t2, t3)
    assert new_sources.tolist() == [[-1, 3, 0, 2]]
    assert new_sizes.tolist() == [[1.0, 1.0, 2.0, 2.0]]
    assert torch.allclose(new_x[0, 2], torch.tensor([2.0, 0.0]))  # (1*1 + 1*3) / 2
    # size-weighted: merge t4 (size 1) into t3 (size 2) next
    x2, s2, src2 = bipartite_merge(x, keys, sizes, sources, r=2)
    assert s2.sum() == sizes.sum() and src2[0, 0] == -1


def test_size_bias_is_log_size_and_masks_dead_slots():
    bias = size_bias(torch.tensor([[1.0, 4.0, 0.0]]), torch.float32)
    assert bias.shape == (1, 1, 1, 3)
    assert bias[0, 0, 0, 0] == 0 and torch.isclose(bias[0, 0, 0, 1], torch.log(torch.tensor(4.0)))
    assert bias[0, 0, 0, 2] == torch.finfo(torch.float32).min


def test_window_similarity_and_merge_on_a_6x6_grid():
    members = window_members(6)
    assert members.shape == (4, 9) and members[0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]
    patches = torch.randn(1, 36, 4)
    patches[0, members[0]] = torch.tensor([1.0, 2.0, 0.0, 0.0])  # window 0 uniform
    sim = window_similarity(patches, 6)
    assert torch.isclose(sim[0, 0], torch.tensor(1.0)) and (sim[0, 1:] < 0.9).all()
    x = torch.cat([torch.zeros(1, 1, 4), patches], 1)
    new_x, sizes = local_window_merge(x, torch.ones(1, 37), 6, threshold=0.95)
    assert sizes[0, 1 + members[0, -1]] == 9 and int((sizes == 0).sum()) == 8
    assert torch.allclose(new_x[0, 1 + members[0, -1]], torch.tensor([1.0, 2.0, 0.0, 0.0]))
    cx, cs, csrc = compact_alive(new_x, sizes, torch.arange(-1, 36)[None])
    assert cx.shape[1] == 29 and csrc[0, 0] == -1 and (cs > 0).all()


def test_visionzip_keeps_dominant_and_merges_context_into_targets():
    # CLS + 6 patches; CLS attends most to patches 2 and 5
    x = torch.arange(7.0)[None, :, None].repeat(1, 1, 2)
    cls = torch.tensor([[0.0, 0.1, 0.9, 0.0, 0.1, 0.8, 0.0]])
    keys = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.0, 1.0], [0.0, 1.0], [0.1, 1.0]]])
    sources = torch.arange(-1, 6)[None]
    out, src = visionzip_merge(x, cls, keys, sources, dominant=2, contextual=2)
    assert src.tolist() == [[-1, 1, 4, 0, 3]]  # CLS, dominant slots 2 and 5, targets slots 1 and 4
    # remaining 4 patches (slots 1, 3, 4, 6): targets every 2nd -> slots 1 and 4; slot 3 joins 1, slot 6 joins 4
    assert torch.allclose(out[0, 3], torch.tensor([1.0 + 3.0, 1.0 + 3.0]))
    assert torch.allclose(out[0, 4], torch.tensor([4.0 + 6.0, 4.0 + 6.0]))


def test_scatter_to_grid_writes_back_and_zeros_the_rest():
    features = torch.tensor([[[1.0], [2.0], [3.0]]])
    out = scatter_to_grid(features, torch.tensor([[4, 0, 2]]), torch.tensor([[True, True, False]]), 5)
    assert out[0, :, 0].tolist() == [2.0, 0.0, 0.0, 0.0, 1.0]


def test_slots_of_maps_a_sub_layout():
    idx = torch.tensor([[0, 2, 3, 5]])
    valid = torch.tensor([[False, True, True, True]])
    sub_idx, sub_valid = torch.tensor([[0, 5, 2]]), torch.tensor([[False, True, True]])
    assert slots_of(idx, valid, sub_idx, sub_valid, 6).tolist() == [[0, 3, 1]]


def test_received_by_crop_is_the_eager_siglip_layers_column_sums():
    """Each crop's own attention (no cross-crop rows), averaged over heads, summed over query rows:
    what a real SigLIP layer computes under eager ``output_attentions``."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=24, patch_size=6, attn_implementation="eager")
    tower = SiglipVisionModel(cfg).eval()
    pixels = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = tower(pixels, output_attentions=True, output_hidden_states=True)
        layer = tower.encoder.layers[-1]
        got = received_by_crop(layer.layer_norm1(out.hidden_states[-2]), layer.self_attn.q_proj,
                               layer.self_attn.k_proj, cfg.num_attention_heads, layer.self_attn.scale)
    want = out.attentions[-1].mean(1).sum(-2)  # (crops, patches)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])  # crops differ: rows never mix
